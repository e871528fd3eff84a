/**
 * Real processes through Node's child_process (vmm.c vmm_start_vm's
 * fork+exec and vmm_sighdlr's waitpid loop).
 *
 * The child side of vmm_start_vm, as Node's spawn gives it:
 *  - setsid(): `detached: true`;
 *  - every given fd at its own number, or the one `at` gives it: the stdio
 *    array has one slot per number up to the highest, the fd's number in
 *    its slot and 'ignore' in the holes (Node compacts an array with holes,
 *    which would move the fds down); libuv dup2s each into place and clears
 *    close-on-exec on the child's copy only;
 *  - nothing else reaches the child: every fd this process made is
 *    close-on-exec, and before each spawn the fds it inherited without the
 *    flag (vmd's parent socket at fd 3, a harness's pipes) get it
 *    (`sealInheritedFds`), as the C child closes PROC_PARENT_SOCK_FILENO;
 *  - 0, 1, 2 on /dev/null ('ignore') or this process's ('inherit', vmd -d).
 *
 * Exec failures (ENOENT, EACCES) come back from libuv's exec pipe before
 * spawn() returns, so `child.pid` is defined exactly when the 'spawn' event
 * will follow; without a pid the 'error' event carries the errno. EAGAIN and
 * ENOMEM from fork are thrown synchronously by Node. Both become SpawnError
 * with the OpenBSD errno.
 *
 * `SpawnRequest.early` is ignored: libuv's spawn returns only after the
 * child's exec (it reads libuv's own exec pipe before returning), so there
 * is no moment between fork and exec to return at; an exec failure stays a
 * SpawnError here.
 *
 * `exits` is a queue, not a broadcast: its one consumer (the vmm's
 * SIGCHLD handler) sees every reaped child in order, including those
 * reaped before it started reading. Use `Child.exit` to wait for one child.
 *
 * Reaping: libuv waitpids on SIGCHLD and Node emits 'exit' for that child
 * in the same callback, so a pid leaves the table before any of our code
 * can run again; `kill` only signals pids in the table and so never a pid
 * that was reaped (and possibly reused). (libuv reaps a batch of children
 * before emitting their 'exit' events one by one, so in theory code run
 * between two of those events could signal an already-reaped pid; that
 * needs the pid to be reused within one loop turn.)
 */
import { spawn as nodeSpawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { closeSync, openSync } from "node:fs"
import { constants as osConstants } from "node:os"
import { Deferred, Duration, Effect, Exit, Layer, Option } from "effect"
import type { Scope } from "effect"
import { sealInheritedFds } from "../native/sys.ts"
import { Errno, errnoName, fromErrorCode } from "../schema/errno.ts"
import { childNumbers, ExitBox, Process, SpawnError, tableService, waitAtMost } from "../services/Process.ts"
import type {
  ExitStatus,
  ProcessService,
  SignalName,
  SpawnErrorReason,
  SpawnRequest
} from "../services/Process.ts"

/** How long the layer's finalizer waits for SIGKILLed children to be reaped. */
const REAP_TIMEOUT = Duration.seconds(10)

type StdioSlot = "ignore" | "inherit" | number

/**
 * The stdio array that puts each of `req.fds` at its child number (`at`,
 * else its own). libuv moves a source out of the way before another slot's
 * dup2 would replace it (uv__process_child_init's first loop).
 */
export const stdioFor = (req: SpawnRequest, at: ReadonlyArray<number> = req.fds.map((fd) => fd.num)): Array<StdioSlot> => {
  const top = at.reduce((max, n) => Math.max(max, n), 2)
  const slots: Array<StdioSlot> = Array.from({ length: top + 1 }, (_, i) =>
    i <= 2 && req.stdio === "inherit" ? "inherit" : "ignore"
  )
  for (const [i, fd] of req.fds.entries()) slots[at[i]!] = fd.num
  return slots
}

/**
 * Occupy every free fd number up to `top` (close-on-exec /dev/null), for
 * the caller to close once the spawn is back. libuv's spawn opens a pipe for
 * the child's exec status at the lowest free numbers just before its fork;
 * one there at a child's target number would be replaced by that target's
 * dup2, and a failed exec would then look like a success and write its
 * errno into the file given at that number. (Each target was an fd this
 * process held, hence taken, until fds were packed from 3.) The spawn
 * returns only after the exec, so nothing else opens fds in between.
 */
export const padBelow = (top: number): Array<number> => {
  const pads: Array<number> = []
  for (;;) {
    let fd: number
    try {
      fd = openSync("/dev/null", "r") // Node opens close-on-exec
    } catch {
      return pads // out of fds: nothing free to land on either
    }
    if (fd > top) {
      closeSync(fd)
      return pads
    }
    pads.push(fd)
  }
}

export const reasonOf = (errno: number): SpawnErrorReason =>
  errno === Errno.ENOENT || errno === Errno.ESRCH
    ? "NotFound"
    : errno === Errno.EAGAIN || errno === Errno.ENOMEM
      ? "Resources"
      : "Other"

const spawnError = (errno: number, message: string): SpawnError =>
  new SpawnError({ reason: reasonOf(errno), errno, message })

const codeOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e))

const signalNumber = (name: string | null): number => {
  const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
  return (name !== null ? signals[name] : undefined) ?? 0
}

const statusOf = (code: number | null, signal: string | null): ExitStatus =>
  code !== null ? { _tag: "Exited", code } : { _tag: "Signaled", signal: signalNumber(signal) }

interface LiveChild {
  readonly child: ChildProcess
  readonly exit: Deferred.Deferred<ExitStatus>
}

export const make: Effect.Effect<ProcessService, never, Scope.Scope> = Effect.gen(function* () {
  const live = new Map<number, LiveChild>()
  const exits = new ExitBox()

  const signal = (pid: number, sig: SignalName): number => {
    if (!live.has(pid)) return Errno.ESRCH
    try {
      process.kill(pid, sig)
      return 0
    } catch (e) {
      return fromErrorCode(codeOf(e))
    }
  }

  // Nothing orphaned: SIGKILL every child still alive and wait until each is reaped.
  yield* Effect.addFinalizer(() =>
    Effect.suspend(() => {
      const children = [...live.entries()]
      for (const [pid] of children) signal(pid, "SIGKILL")
      return waitAtMost(Effect.forEach(children, ([, c]) => Deferred.await(c.exit), { discard: true }), REAP_TIMEOUT).pipe(
        Effect.flatMap((done) =>
          Option.isSome(done) ? Effect.void : Effect.logWarning(`children not reaped after SIGKILL: ${[...live.keys()].join(" ")}`)
        )
      )
    })
  )

  const spawn = (req: SpawnRequest): Effect.Effect<{ pid: number; exit: Effect.Effect<ExitStatus> }, SpawnError> =>
    Effect.gen(function* () {
      const closed = req.fds.find((fd) => !fd.isOpen)
      if (closed !== undefined) {
        return yield* Effect.fail(spawnError(Errno.EBADF, `${req.command}: ${closed.toString()} is closed`))
      }
      const at = childNumbers(req)
      if (typeof at === "string") return yield* Effect.fail(spawnError(Errno.EINVAL, `spawn ${req.command}: ${at}`))
      const exit = yield* Deferred.make<ExitStatus>()
      /** How a spawn that returned no pid failed (its 'error' event). */
      const failed = yield* Deferred.make<never, SpawnError>()
      sealInheritedFds()
      let child: ChildProcess
      const pads = padBelow(Math.max(2, ...at))
      try {
        child = nodeSpawn(req.command, [...req.args], {
          detached: true,
          stdio: stdioFor(req, at),
          ...(req.env !== undefined ? { env: { ...process.env, ...req.env } } : {})
        })
      } catch (e) {
        const errno = fromErrorCode(codeOf(e))
        return yield* Effect.fail(spawnError(errno, `spawn ${req.command}: ${messageOf(e)}`))
      } finally {
        for (const fd of pads) closeSync(fd)
      }
      const pid = child.pid
      if (pid === undefined) {
        // A failed spawn (ENOENT, EAGAIN, EMFILE...) is an 'error' event on the next tick.
        // Listen now, in the same synchronous step: the fiber may yield before its next
        // effect runs (the op budget), and an 'error' with no listener would throw, uncaught,
        // and end the vmm (found by a review, reproduced with a forced yield).
        child.once("error", (e) => {
          const errno = fromErrorCode(codeOf(e))
          Deferred.unsafeDone(failed, Exit.fail(spawnError(errno, `spawn ${req.command}: ${errnoName(errno)}`)))
        })
        return yield* Deferred.await(failed)
      }
      const entry: LiveChild = { child, exit }
      live.set(pid, entry)
      // Errors after a successful spawn (none expected: we never use child.kill or IPC) are not ours to throw.
      child.on("error", () => {})
      child.once("exit", (code, sig) => {
        if (live.get(pid) === entry) live.delete(pid)
        const status = statusOf(code, sig)
        exits.push({ pid, status })
        Deferred.unsafeDone(exit, Exit.succeed(status))
      })
      return { pid, exit: Deferred.await(exit) }
    })

  return Process.of({
    spawn,
    kill: (pid, sig) =>
      Effect.suspend(() => {
        const errno = signal(pid, sig)
        return errno === 0
          ? Effect.void
          : Effect.fail(spawnError(errno, `kill ${pid} ${sig}: ${errnoName(errno)}`))
      }),
    ...tableService(live, exits)
  })
})

/** The Process service on real processes; its scope's end SIGKILLs and reaps every child still alive. */
export const layer: Layer.Layer<Process> = Layer.scoped(Process, make)

/**
 * Real processes started straight from this process with glibc's
 * posix_spawn (src/native/spawn.ts), their exits learnt from pidfds watched
 * on Node's own loop: vmm.c vmm_start_vm's fork+exec and vmm_sighdlr's
 * waitpid loop without a helper process. glibc's posix_spawn runs the
 * child on clone(CLONE_VM|CLONE_VFORK): nothing of Node's address space is
 * copied (Node's own spawn forks all of it), and it is safe in a
 * multi-threaded process. Linux (>= 5.3, for pidfd_open) with glibc >= 2.29
 * only; `directUnavailable()` says why not, and `layerOrNode` falls back to
 * ProcessNode.
 *
 * Why it is not bin/vmm's default (`--spawn direct` chooses it): the
 * CLONE_VFORK holds this whole process, its event loop included, until the
 * child has exec'd. That is ~0.1-0.2 ms on an idle machine (bench-vmm's
 * start latency: ~0.2-0.4 ms less than through the spawner), but the child
 * needs a CPU to get there: in the soak under load the vmm sat in
 * kernel_clone for up to 0.5 s, every VM's messages and exits waiting, and
 * zombies left unreaped (test/reliability/soak.test.ts's 100 ms check
 * failed). An exec that stalls (a hung filesystem) would stall the vmm.
 * vmm.c's fork returns at once; so does the spawner's.
 *
 * Same semantics as ProcessNode and ProcessSpawner
 * (test/process/ProcessDirect.test.ts runs their tests against it):
 *  - the child (posix_spawnattr_t built once, posix_spawn_file_actions_t
 *    built for each spawn in memory allocated once): its own session (POSIX_SPAWN_SETSID); no signal blocked
 *    (SETSIGMASK, an empty set) and every signal at its default disposition
 *    (SETSIGDEF with every signal: Node ignores SIGPIPE, and exec keeps an
 *    ignored signal ignored); 0, 1, 2 on /dev/null (one fd, opened
 *    close-on-exec when the layer is built, dup2'ed onto each) or this
 *    process's own ("inherit": dup2(n, n)); each of `req.fds` at its own
 *    number by dup2(fd, fd), which clears close-on-exec on the child's copy
 *    (glibc >= 2.29), and which wins over stdio for an fd numbered 0-2;
 *  - nothing else reaches the child: every fd this process makes is
 *    close-on-exec, the fds it inherited without the flag get it when the
 *    layer is built (`sealInheritedFds`), and the child closes every fd
 *    above the highest it is given (posix_spawn_file_actions_addclosefrom_np,
 *    glibc >= 2.34; without it, the seal is done before every spawn, as in
 *    ProcessNode). So an fd made without the flag after the layer is built
 *    reaches a child only if its number is below that child's highest fd:
 *    no fd of the vmm's is made so (test/reliability/hygiene.test.ts);
 *  - argv[0] is `command`, searched in PATH when it has no '/'
 *    (posix_spawnp); the environment is this process's (libc's `environ`
 *    itself, which process.env writes through to), or a copy of it with
 *    `req.env` laid over when that is given;
 *  - spawn fails with SpawnError and the OpenBSD errno: the fork's (EAGAIN,
 *    ENOMEM) or the child's execve's (ENOENT, EACCES), which posix_spawn
 *    returns itself, having waited for the exec;
 *  - `SpawnRequest.early` is ignored: posix_spawn returns only once the
 *    child has exec'd (the CLONE_VFORK), so there is no moment between fork
 *    and exec to return at; an exec failure stays a SpawnError (and glibc
 *    has reaped that child: it is never in `exits`).
 *
 * Reaping: right after posix_spawn returns, a ChildWatch (native/childWatch.ts:
 * the child's pidfd, opened before it can have been reaped, polled on Node's
 * loop, then waitpid(WNOHANG), with its pidfd closed before the exit is
 * reported); the exit then leaves the table, goes to the ExitBox and
 * completes `Child.exit`. Each exit is reported once, in the order reaped.
 * (Should something else in the process reap one of ours, ECHILD, its
 * status is lost: it is reported as Exited 255.)
 *
 * `kill` signals only a pid in the table, through its pidfd
 * (pidfd_send_signal: the process itself, never a reused pid); a pid not
 * in the table is ESRCH.
 *
 * The scope's end: spawns fail with EIO from then on; every child still in
 * the table gets SIGKILL, and the finalizer waits (up to `reapTimeout`,
 * 10 s) until each has been reaped and reported (its pidfd closed with it),
 * then until every poll handle is closed; then the /dev/null fd and the
 * spawn attributes go. A child not reaped in time is logged, its handle
 * and pidfd released all the same.
 *
 * If this process dies without its scope ending (SIGKILL, a crash), the
 * children are not told: unlike ProcessSpawner (its helper sees EOF, and
 * PR_SET_PDEATHSIG, which posix_spawn cannot set), they are left running,
 * in their own sessions, reparented to init, as with ProcessNode; a VM
 * process notices the vmm's end as EOF on its imsg channel, as in vmd.
 */
import { constants as osConstants } from "node:os"
import { Deferred, Duration, Effect, Exit, FiberId, Layer } from "effect"
import type { Scope } from "effect"
import * as libc from "../native/libc.ts"
import * as native from "../native/spawn.ts"
import { sealInheritedFds } from "../native/sys.ts"
import { ChildWatch } from "../native/childWatch.ts"
import { Errno, errnoName, fromErrorCode, fromHostErrno } from "../schema/errno.ts"
import { ExitBox, makeOr, Process, SpawnError, tableService } from "../services/Process.ts"
import type { Child, ExitStatus, ProcessService, SignalName, SpawnRequest } from "../services/Process.ts"
import * as ProcessNode from "./ProcessNode.ts"

/** How long the layer's finalizer waits for SIGKILLed children to be reaped. */
const REAP_TIMEOUT = Duration.seconds(10)
/** What a child reaped by someone else (ECHILD) is reported as: its status is lost. */
const LOST: ExitStatus = { _tag: "Exited", code: 255 }

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const signalNumber = (name: SignalName): number => signals[name] ?? 0
const SIGKILL = signalNumber("SIGKILL")

const spawnError = (errno: number, message: string): SpawnError =>
  new SpawnError({ reason: ProcessNode.reasonOf(errno), errno, message })

/**
 * Why this layer cannot run here (not Linux x86_64/aarch64, not glibc >=
 * 2.29, no pidfd_open), or null if it can.
 */
export const directUnavailable = (): string | null => native.spawnUnavailable()

export const directAvailable = (): boolean => directUnavailable() === null

export interface DirectOptions {
  /** How long the finalizer waits for SIGKILLed children to be reaped (10 s). */
  readonly reapTimeout?: Duration.DurationInput
  /** Tests: behave as if unavailable for this reason (null: ask the host). */
  readonly unavailable?: string | null
}

interface LiveChild {
  readonly pid: number
  readonly watch: ChildWatch
  readonly exit: Deferred.Deferred<ExitStatus>
  done: boolean
}

const hasNul = (s: string): boolean => s.includes("\0")

export const make = (options: DirectOptions = {}): Effect.Effect<ProcessService, SpawnError, Scope.Scope> =>
  Effect.gen(function* () {
    const why = options.unavailable ?? directUnavailable()
    if (why !== null) return yield* Effect.fail(spawnError(Errno.ENOSYS, `posix_spawn with pidfds unavailable: ${why}`))
    const reapTimeout = options.reapTimeout ?? REAP_TIMEOUT

    // What every spawn uses: /dev/null for stdio "null", the attributes. Released by the finalizer below.
    const { devnull, attr } = yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const fd = libc.open("/dev/null", libc.O_RDWR)
        if (fd < 0) {
          const errno = fromHostErrno(-fd)
          return Effect.fail(spawnError(errno, `/dev/null: ${errnoName(errno)}`))
        }
        const a = new native.SpawnAttr()
        const r = a.init()
        if (r < 0) {
          a.destroy()
          libc.close(fd)
          const errno = fromHostErrno(-r)
          return Effect.fail(spawnError(errno, `posix_spawnattr: ${errnoName(errno)}`))
        }
        return Effect.succeed({ devnull: fd, attr: a })
      }),
      ({ devnull: fd, attr: a }) =>
        Effect.sync(() => {
          a.destroy()
          libc.close(fd)
        })
    )

    const live = new Map<number, LiveChild>()
    const exits = new ExitBox()
    /** The file actions' memory, init'ed and destroyed around each spawn (spawns are synchronous: one at a time). */
    const fa = new native.FileActions()
    // The fds this process inherited without close-on-exec (vmd's parent
    // socket at fd 3, a harness's pipes) get the flag now, once: everything
    // opened from here on is close-on-exec from birth, and each child also
    // closes every fd above its highest one (addclosefrom_np). Sealing before
    // every spawn instead, as ProcessNode does, reads /proc/self/fd and
    // fcntls each fd: ~0.1 ms per spawn, and growing with the VMs (each
    // holds several fds). Without addclosefrom_np (glibc < 2.34) it still
    // seals before every spawn.
    sealInheritedFds()
    const sealEachSpawn = !native.closefromAvailable()
    let closing = false
    /** Watches whose poll handle libuv has not let go of yet, and who waits for none to be left. */
    let releasing = 0
    let onReleased: Array<() => void> = []

    const handleReleased = (): void => {
      if (--releasing === 0) for (const f of onReleased.splice(0)) f()
    }

    /** Reported once; the watch has closed the pidfd by then (the vmm holds nothing of a VM whose exit is out). */
    const finish = (c: LiveChild, status: ExitStatus): void => {
      if (c.done) return
      c.done = true
      if (live.get(c.pid) === c) live.delete(c.pid)
      exits.push({ pid: c.pid, status })
      Deferred.unsafeDone(c.exit, Exit.succeed(status))
    }

    /** SIGKILL and a blocking reap: for a child we cannot watch (it never enters the table). */
    const abandon = (pid: number): void => {
      try {
        process.kill(pid, "SIGKILL")
      } catch {
        // gone already
      }
      native.waitpid(pid, true)
    }

    /** Signal a child in the table: 0 or an OpenBSD errno. */
    const signal = (c: LiveChild, signo: number): number => {
      const r = native.pidfdSendSignal(c.watch.pidfd, signo)
      if (r !== -native.HOST_ENOSYS) return r < 0 ? fromHostErrno(-r) : 0
      try {
        process.kill(c.pid, signo)
        return 0
      } catch (e) {
        return fromErrorCode(typeof e === "object" && e !== null && "code" in e ? String(e.code) : undefined)
      }
    }

    // Nothing orphaned: SIGKILL every child still alive, wait until each is reaped and its pidfd closed.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closing = true
        const children = [...live.values()]
        for (const c of children) signal(c, SIGKILL)
        return Effect.forEach(children, (c) => Deferred.await(c.exit), { discard: true }).pipe(
          Effect.timeout(reapTimeout),
          Effect.catchAll(() =>
            Effect.suspend(() => {
              const left = [...live.values()]
              for (const c of left) {
                live.delete(c.pid)
                c.watch.release()
              }
              return Effect.logWarning(`children not reaped after SIGKILL: ${left.map((c) => c.pid).join(" ")}`)
            })
          ),
          Effect.zipRight(
            Effect.async<void>((resume) => {
              if (releasing === 0) return resume(Effect.void)
              const done = () => resume(Effect.void)
              onReleased.push(done)
              return Effect.sync(() => {
                onReleased = onReleased.filter((f) => f !== done)
              })
            })
          )
        )
      })
    )

    /** The spawn itself, synchronous from the checks to the table: nothing can come between. */
    const spawnNow = (req: SpawnRequest): Child | SpawnError => {
      const fail = (errno: number, why: string = errnoName(errno)) =>
        spawnError(errno, `spawn ${req.command}: ${why}`)
      if (closing) return fail(Errno.EIO, "the Process layer is closed")
      const closed = req.fds.find((fd) => !fd.isOpen)
      if (closed !== undefined) return fail(Errno.EBADF, `${closed.toString()} is closed`)
      const env =
        req.env === undefined
          ? null
          : Object.entries({ ...process.env, ...req.env }).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]))
      if (hasNul(req.command) || req.args.some(hasNul) || (env !== null && env.some(hasNul))) {
        return fail(Errno.EINVAL, "a NUL byte in the command, an argument or the environment")
      }

      if (sealEachSpawn) sealInheritedFds()
      const init = fa.init()
      if (init < 0) return fail(fromHostErrno(-init))
      let pid: number
      try {
        const mine = new Set(req.fds.map((fd) => fd.num))
        let r = 0
        for (const n of [0, 1, 2]) {
          if (mine.has(n) || r < 0) continue
          if (req.stdio === "null") r = fa.dup2(devnull, n)
          else if (libc.fcntl(n, libc.F_GETFD) >= 0) r = fa.dup2(n, n)
        }
        for (const n of mine) if (r >= 0) r = fa.dup2(n, n)
        if (r >= 0 && !sealEachSpawn) r = fa.closefrom(Math.max(2, ...mine) + 1)
        if (r < 0) return fail(fromHostErrno(-r), `posix_spawn_file_actions: ${errnoName(fromHostErrno(-r))}`)
        pid = native.posixSpawnp(req.command, fa, attr, [req.command, ...req.args], env)
      } finally {
        fa.destroy()
      }
      if (pid < 0) return fail(fromHostErrno(-pid))

      const exit = Deferred.unsafeMake<ExitStatus>(FiberId.none)
      let c: LiveChild | null = null
      const watch = ChildWatch.open(pid, (status) => c !== null && finish(c, status ?? LOST), handleReleased)
      if (typeof watch === "number") {
        abandon(pid)
        return fail(fromHostErrno(-watch), `watching it (pidfd_open, uv_poll): ${errnoName(fromHostErrno(-watch))}`)
      }
      releasing++
      c = { pid, watch, exit, done: false }
      live.set(pid, c)
      return { pid, exit: Deferred.await(exit) }
    }

    const service: ProcessService = {
      spawn: (req) =>
        Effect.suspend(() => {
          const r = spawnNow(req)
          return r instanceof SpawnError ? Effect.fail(r) : Effect.succeed(r)
        }),
      kill: (pid, sig) =>
        Effect.suspend(() => {
          const c = live.get(pid)
          const errno = c === undefined ? Errno.ESRCH : signal(c, signalNumber(sig))
          return errno === 0 ? Effect.void : Effect.fail(spawnError(errno, `kill ${pid} ${sig}: ${errnoName(errno)}`))
        }),
      ...tableService(live, exits)
    }
    return service
  })

/** The Process service on posix_spawn; fails (ENOSYS) where that cannot run (see `layerOrNode`). */
export const layerWith = (options: DirectOptions = {}): Layer.Layer<Process, SpawnError> =>
  Layer.scoped(Process, Effect.map(make(options), (s) => Process.of(s)))

export const layer: Layer.Layer<Process, SpawnError> = layerWith()

/** This service where it can run, else `fallback`'s (`name` in the warning). */
export const makeOrWith = (
  fallback: Effect.Effect<ProcessService, never, Scope.Scope>,
  name: string,
  options: DirectOptions = {}
): Effect.Effect<ProcessService, never, Scope.Scope> =>
  makeOr(
    Effect.suspend(() => make(options)),
    fallback,
    (e) => `${e.message}; using ${name}`
  )

/** This layer where it can run, else ProcessNode (with a warning). */
export const layerOrNodeWith = (options: DirectOptions = {}): Layer.Layer<Process> =>
  Layer.scoped(Process, makeOrWith(ProcessNode.make, "Node's spawn", options))

export const layerOrNode: Layer.Layer<Process> = layerOrNodeWith()

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
 * bin/vmm's default on Linux (falling back to ProcessSpawner, then
 * ProcessNode). The CLONE_VFORK holds its calling thread in the kernel until
 * the child has exec'd, so posix_spawn is called on one of libuv's pool
 * threads (koffi's async call), never on this one: this process's event
 * loop goes on meanwhile, and learns the pid when the call is back. Called
 * on this thread (sessions 5-6), it cost ~0.1-0.2 ms of stalled loop per
 * spawn on an idle machine and, in the soak under load, up to 0.5 s in
 * kernel_clone, every VM's messages and exits waiting and zombies left
 * unreaped: it was not the default then. On the pool, the soak passes
 * (longest zombie 34 ms), and bench-vmm's start latency is ~0.3 ms below
 * the spawner's (no helper process, no round trip to it). An exec that
 * stalls holds a pool thread (four by default), not the vmm.
 *
 * Same semantics as ProcessNode and ProcessSpawner
 * (test/process/ProcessDirect.test.ts runs their tests against it):
 *  - the child (posix_spawnattr_t built once, a posix_spawn_file_actions_t
 *    of its own for each spawn: spawns may overlap): its own session (POSIX_SPAWN_SETSID); no signal blocked
 *    (SETSIGMASK, an empty set) and every signal at its default disposition
 *    (SETSIGDEF with every signal: Node ignores SIGPIPE, and exec keeps an
 *    ignored signal ignored); 0, 1, 2 on /dev/null (one fd, opened
 *    close-on-exec when the layer is built, dup2'ed onto each) or this
 *    process's own ("inherit": dup2(n, n)); each of `req.fds` at its own
 *    number by dup2(fd, fd), which clears close-on-exec on the child's copy
 *    (glibc >= 2.29), and which wins over stdio for an fd numbered 0-2, or
 *    at the number `req.at` gives it (a source that another fd's dup2, or
 *    stdio's, would replace first is moved above every target beforehand);
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
 *    has reaped that child: it is never in `exits`);
 *  - a spawn interrupted while posix_spawn is on the pool, or still there
 *    when the scope ends (it then fails with EIO), has its child SIGKILLed
 *    and reaped once the call is back; nobody learnt that pid, and it is
 *    never in `exits`.
 *
 * Reaping: right after posix_spawn returns, a ChildWatch (native/childWatch.ts:
 * the child's pidfd, opened before it can have been reaped, polled on Node's
 * loop, then waitid(P_PIDFD, WNOHANG); the exit is reported, then the pidfd closed,
 * in the same callback); the exit leaves the table, goes to the ExitBox and
 * completes `Child.exit`. Each exit is reported once, in the order reaped.
 * `unsafeReapNow(pid)` does the watch's reap at once, for a
 * caller with a hint that the child is gone (the vmm, at EOF on the VM's
 * socket: the socket closes as the process exits, and its pidfd's callback
 * comes one event later; ~0.06-0.14 ms sooner to TERMINATE_VM_EVENT).
 * (Should something else in the process reap one of ours, ECHILD, its
 * status is lost: it is reported as Exited 255.)
 *
 * `kill` signals only a pid in the table, through its pidfd
 * (pidfd_send_signal: the process itself, never a reused pid); a pid not
 * in the table is ESRCH.
 *
 * The scope's end: spawns fail with EIO from then on; the finalizer waits
 * for every spawn on the pool to be back (up to `reapTimeout` too; one back
 * later still kills and reaps its child), then every child still in
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
import { Deferred, Duration, Effect, Exit, FiberId, Layer, Option } from "effect"
import type { Scope } from "effect"
import * as libc from "../native/libc.ts"
import * as native from "../native/spawn.ts"
import { sealInheritedFds } from "../native/sys.ts"
import { ChildWatch } from "../native/childWatch.ts"
import { Errno, errnoName, fromErrorCode, fromHostErrno } from "../schema/errno.ts"
import { childNumbers, ExitBox, makeOr, Process, SpawnError, tableService, waitAtMost } from "../services/Process.ts"
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

/** Once `count()` is 0 (at once if it is): whoever brings it to 0 calls `wake(waiters)`. */
const whenNone = (count: () => number, waiters: Set<() => void>): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (count() === 0) return resume(Effect.void)
    const done = () => resume(Effect.void)
    waiters.add(done)
    return Effect.sync(() => void waiters.delete(done))
  })

const wake = (waiters: Set<() => void>): void => {
  const all = [...waiters]
  waiters.clear()
  for (const f of all) f()
}

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
    /** Spawns whose posix_spawn is on the thread pool, and who waits for none to be left. */
    let inflight = 0
    const onSettled = new Set<() => void>()
    /** Watches whose poll handle libuv has not let go of yet, and who waits for none to be left. */
    let releasing = 0
    const onReleased = new Set<() => void>()

    const handleReleased = (): void => {
      if (--releasing === 0) wake(onReleased)
    }

    /** Reported once; the watch closes the pidfd right after, in the same callback. */
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

    // Nothing orphaned: no spawn from now on, and none in flight; SIGKILL every child still alive,
    // wait until each is reaped and its pidfd closed.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        closing = true
        // Every spawn in flight back (each SIGKILLs and reaps its child, `closing` being set);
        // an exec stuck for good (a hung filesystem) is waited for no longer than a reap.
        if (Option.isNone(yield* waitAtMost(whenNone(() => inflight, onSettled), reapTimeout))) {
          yield* Effect.logWarning(`spawns still in posix_spawn after ${Duration.format(reapTimeout)}: ${inflight}`)
        }
        const children = [...live.values()]
        for (const c of children) signal(c, SIGKILL)
        const reaped = yield* waitAtMost(Effect.forEach(children, (c) => Deferred.await(c.exit), { discard: true }), reapTimeout)
        if (Option.isNone(reaped)) {
          const left = [...live.values()]
          for (const c of left) {
            live.delete(c.pid)
            c.watch.release()
          }
          yield* Effect.logWarning(`children not reaped after SIGKILL: ${left.map((c) => c.pid).join(" ")}`)
        }
        yield* whenNone(() => releasing, onReleased)
      })
    )

    /**
     * The spawn: the checks and the file actions here, posix_spawn on libuv's
     * thread pool (its CLONE_VFORK holds a pool thread until the child has
     * exec'd, never this one), then, back on this thread, the child's watch
     * and the table. Not in the table meanwhile; a spawn interrupted
     * meanwhile, or still in flight when the layer closes, has its child
     * SIGKILLed and reaped when posix_spawn is back (nobody learnt its pid:
     * it is never in `exits`). The finalizer waits for every spawn in flight.
     */
    const spawnAsync = (
      req: SpawnRequest,
      resume: (e: Effect.Effect<Child, SpawnError>) => void
    ): Effect.Effect<void> | void => {
      const fail = (errno: number, why: string = errnoName(errno)) =>
        resume(Effect.fail(spawnError(errno, `spawn ${req.command}: ${why}`)))
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

      const at = childNumbers(req)
      if (typeof at === "string") return fail(Errno.EINVAL, at)

      if (sealEachSpawn) sealInheritedFds()
      // A source that is another fd's target, or 0-2 (which stdio's dup2s
      // replace), would be gone by its own dup2: a close-on-exec duplicate
      // above every target stands in for it, closed when posix_spawn is back.
      const mine = new Set(at)
      const top = Math.max(2, ...mine)
      const moved: Array<number> = []
      const dropMoved = (): void => {
        for (const n of moved.splice(0)) libc.close(n)
      }
      const sources: Array<number> = []
      for (const [i, fd] of req.fds.entries()) {
        const n = fd.num
        if (n === at[i] || (n > 2 && !mine.has(n))) {
          sources.push(n)
          continue
        }
        const d = libc.fcntl(n, libc.F_DUPFD_CLOEXEC, top + 1)
        if (d < 0) {
          dropMoved()
          return fail(fromHostErrno(-d), `moving fd ${n} out of the way: ${errnoName(fromHostErrno(-d))}`)
        }
        moved.push(d)
        sources.push(d)
      }
      // Its own file actions: spawns may overlap now.
      const fa = new native.FileActions()
      const init = fa.init()
      if (init < 0) {
        dropMoved()
        return fail(fromHostErrno(-init))
      }
      let r = 0
      for (const n of [0, 1, 2]) {
        if (mine.has(n) || r < 0) continue
        if (req.stdio === "null") r = fa.dup2(devnull, n)
        else if (libc.fcntl(n, libc.F_GETFD) >= 0) r = fa.dup2(n, n)
      }
      for (const [i, n] of sources.entries()) if (r >= 0) r = fa.dup2(n, at[i]!)
      if (r >= 0 && !sealEachSpawn) r = fa.closefrom(top + 1)
      if (r < 0) {
        fa.destroy()
        dropMoved()
        return fail(fromHostErrno(-r), `posix_spawn_file_actions: ${errnoName(fromHostErrno(-r))}`)
      }

      let abandoned = false
      const back = (pid: number): void => {
        try {
          fa.destroy()
          dropMoved()
          if (pid < 0) {
            if (!abandoned) fail(fromHostErrno(-pid))
            return
          }
          if (abandoned || closing) {
            abandon(pid)
            if (!abandoned) fail(Errno.EIO, "the Process layer closed while the child started")
            return
          }
          const exit = Deferred.unsafeMake<ExitStatus>(FiberId.none)
          let c: LiveChild | null = null
          const watch = ChildWatch.open(pid, (status) => c !== null && finish(c, status ?? LOST), handleReleased)
          if (typeof watch === "number") {
            abandon(pid)
            fail(fromHostErrno(-watch), `watching it (pidfd_open, uv_poll): ${errnoName(fromHostErrno(-watch))}`)
            return
          }
          releasing++
          c = { pid, watch, exit, done: false }
          live.set(pid, c)
          resume(Effect.succeed({ pid, exit: Deferred.await(exit) }))
        } finally {
          if (--inflight === 0) wake(onSettled)
        }
      }
      try {
        native.posixSpawnpAsync(req.command, fa, attr, [req.command, ...req.args], env, back)
      } catch (e) {
        // koffi refused the call (it converts the arguments first): nothing started.
        fa.destroy()
        dropMoved()
        return fail(Errno.EIO, `posix_spawn not called: ${e instanceof Error ? e.message : String(e)}`)
      }
      // (`back` runs later, on this thread, never inside the call above.)
      inflight++
      return Effect.sync(() => {
        abandoned = true
      })
    }

    const service: ProcessService = {
      spawn: (req) => Effect.async<Child, SpawnError>((resume) => spawnAsync(req, resume)),
      kill: (pid, sig) =>
        Effect.suspend(() => {
          const c = live.get(pid)
          const errno = c === undefined ? Errno.ESRCH : signal(c, signalNumber(sig))
          return errno === 0 ? Effect.void : Effect.fail(spawnError(errno, `kill ${pid} ${sig}: ${errnoName(errno)}`))
        }),
      ...tableService(live, exits),
      unsafeReapNow: (pid) => {
        live.get(pid)?.watch.reap()
      }
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

/**
 * Starting and watching VM processes (vmm.c's fork+exec and SIGCHLD handler).
 *
 * Layers: `ProcessNode` (real processes via Node's spawn, every fd at its
 * own number, own session) and `ProcessMock` (each "process" is a fiber
 * running a simulated program, for the property tests).
 */
import { Chunk, Context, Data, Deferred, Duration, Effect, ExecutionStrategy, Exit, Option, Scope, Stream } from "effect"
import type { Fd } from "./Fd.ts"
import { Inbox } from "./Inbox.ts"

export type ExitStatus =
  | { readonly _tag: "Exited"; readonly code: number }
  | { readonly _tag: "Signaled"; readonly signal: number }

export interface ChildExit {
  readonly pid: number
  readonly status: ExitStatus
}

export interface SpawnRequest {
  /** Program to exec (argv[0] is `command`). */
  readonly command: string
  readonly args: ReadonlyArray<string>
  /**
   * fds the child gets, each at its own number unless `at` says otherwise
   * (the numbers written into struct vmd_vm are the child's numbers). Every
   * other fd is closed in the child. The caller keeps ownership of these Fds.
   */
  readonly fds: ReadonlyArray<Fd>
  /**
   * The child's number for each of `fds` (`at[i]` for `fds[i]`), instead of
   * its own: each at least 3 and all different. The vmm packs a VM's fds
   * from 3 up, so that the numbers it passes (`-V`, `-i`, struct vmd_vm's)
   * stay low however many fds it holds itself: vm.c refuses a `-V` or `-i`
   * above 128. A source may be another fd's target (the layer moves it
   * out of the way first).
   */
  readonly at?: ReadonlyArray<number>
  /** "null": stdin/out/err on /dev/null; "inherit": this process's stdio (vmd -d). */
  readonly stdio: "null" | "inherit"
  /** Extra environment; the child otherwise inherits this process's. */
  readonly env?: Readonly<Record<string, string>>
  /**
   * Return as soon as the child is forked (its pid known), before its exec
   * completes, as vmm.c's fork does; a failed exec then shows only as the
   * child's exit (status 127) in `exits`/`takeExits`, never as a
   * SpawnError. Backends that cannot tell fork from exec (ProcessNode,
   * ProcessMock) may ignore it.
   */
  readonly early?: boolean
}

/**
 * The child's number for each of `req.fds` (`req.at`, else each fd's own),
 * or why `req.at` cannot be used (a layer fails the spawn with EINVAL).
 */
export const childNumbers = (req: SpawnRequest): ReadonlyArray<number> | string => {
  if (req.at === undefined) return req.fds.map((fd) => fd.num)
  if (req.at.length !== req.fds.length) return `${req.at.length} child numbers for ${req.fds.length} fds`
  if (req.at.some((n) => !Number.isInteger(n) || n < 3)) return `child fd numbers must be integers from 3: ${req.at.join(" ")}`
  if (new Set(req.at).size !== req.at.length) return `child fd numbers must differ: ${req.at.join(" ")}`
  return req.at
}

export type SpawnErrorReason = "NotFound" | "Resources" | "Other"

export class SpawnError extends Data.TaggedError("SpawnError")<{
  readonly reason: SpawnErrorReason
  readonly message: string
  /** OpenBSD errno (ENOENT 2, EAGAIN 35, ENOMEM 12, ...). */
  readonly errno: number
}> {}

export interface Child {
  readonly pid: number
  /** Completes when the child has exited and been reaped. */
  readonly exit: Effect.Effect<ExitStatus>
}

/** Signal numbers are host numbers; use these names. */
export type SignalName = "SIGTERM" | "SIGKILL" | "SIGINT" | "SIGHUP" | "SIGSTOP" | "SIGCONT"

export interface ProcessService {
  /** fork+exec (setsid in the child). The child runs in its own session. */
  readonly spawn: (req: SpawnRequest) => Effect.Effect<Child, SpawnError>
  /** kill(2); fails with the OpenBSD errno (ESRCH 3 for a pid that is gone). */
  readonly kill: (pid: number, signal: SignalName) => Effect.Effect<void, SpawnError>
  /** true while the pid is one of ours and has not been reaped. */
  readonly isAlive: (pid: number) => Effect.Effect<boolean>
  /**
   * The child that has this pid now, if one is alive, as `reaped`: true once
   * **that** process has been reaped (whatever later gets the same number);
   * null if the pid is no live child of ours. For what must follow one
   * process, not a pid (the SIGKILL a forced stop arms).
   */
  readonly childOf: (pid: number) => Effect.Effect<{ readonly reaped: Effect.Effect<boolean> } | null>
  /** Every reaped child of this service, in order (the SIGCHLD handler's waitpid loop). */
  readonly exits: Stream.Stream<ChildExit>
  /**
   * The same exits without a Stream: every one reaped so far, waiting until
   * there is at least one. `exits` and `takeExits` share one queue; the one
   * consumer uses either.
   */
  readonly takeExits: Effect.Effect<ReadonlyArray<ChildExit>>
  /**
   * The same exits handed to `listener` as each is reaped (on the event
   * loop, synchronously; those reaped before go at once): for a consumer
   * that only moves them into a queue of its own (the vmm's dispatcher),
   * without a fiber between (~0.2 ms on the path of every
   * TERMINATE_VM_EVENT). Set once, instead of `exits`/`takeExits`; the
   * listener must not throw.
   */
  readonly listenExits: (listener: (exit: ChildExit) => void) => Effect.Effect<void>
  /** Pids spawned and not yet reaped. */
  readonly children: Effect.Effect<ReadonlyArray<number>>
  /**
   * Look now whether child `pid` has exited, and if so reap and report it
   * at once, as its own notice would: for a caller that has a hint (the
   * VM's socket hit EOF). No-op where the layer learns exits otherwise.
   */
  readonly unsafeReapNow: (pid: number) => void
}

export class Process extends Context.Tag("vmd-vmm/Process")<Process, ProcessService>() {}

/**
 * The exits a layer has reaped and not yet handed over, for its one
 * consumer: `takeAll` (takeExits), `stream` (exits) or `listen` (listenExits).
 */
export class ExitBox extends Inbox<ChildExit> {
  constructor() {
    super("exits")
  }

  readonly stream: Stream.Stream<ChildExit> = Stream.repeatEffectChunk(Effect.map(this.takeAll, Chunk.unsafeFromArray))
}

/**
 * `wait`, for at most `limit`: Some(its result), or None when the time is up.
 * For the layers' finalizers (reaping at the scope's end): a finalizer runs
 * uninterruptibly, where `Effect.timeout` alone could never stop the wait;
 * the wait itself is made interruptible here.
 */
export const waitAtMost = <A, E>(wait: Effect.Effect<A, E>, limit: Duration.DurationInput): Effect.Effect<Option.Option<A>, E> =>
  Effect.timeoutOption(Effect.interruptible(wait), limit)

/**
 * The service `make` builds, or, if it fails, `fallback`'s with a warning
 * (`why`): what each Process layer's `...Or...` variant offers, as an effect
 * (bin/vmm builds its services without layers). A `make` that fails has its
 * own scope closed at once, as Layer.catchAll does for a failed layer; one
 * that succeeds keeps what it acquired until the enclosing scope ends.
 */
export const makeOr = <E>(
  make: Effect.Effect<ProcessService, E, Scope.Scope>,
  fallback: Effect.Effect<ProcessService, never, Scope.Scope>,
  why: (e: E) => string
): Effect.Effect<ProcessService, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
    return yield* Scope.extend(make, scope).pipe(
      Effect.onExit((exit) => (Exit.isFailure(exit) ? Scope.close(scope, exit) : Effect.void)),
      Effect.catchAll((e) => Effect.zipRight(Effect.logWarning(why(e)), fallback))
    )
  })

/**
 * What every Process layer derives the same way from its table of live
 * children (pid -> anything) and its ExitBox; and `unsafeReapNow` as a
 * no-op, for a layer told of each exit rather than looking (ProcessDirect,
 * which looks, has its own).
 */
export const tableService = (
  live: ReadonlyMap<number, { readonly exit: Deferred.Deferred<ExitStatus> }>,
  exits: ExitBox
): Pick<ProcessService, "isAlive" | "childOf" | "exits" | "takeExits" | "listenExits" | "children" | "unsafeReapNow"> => ({
  unsafeReapNow: () => {},
  isAlive: (pid) => Effect.sync(() => live.has(pid)),
  childOf: (pid) =>
    Effect.sync(() => {
      const child = live.get(pid)
      return child === undefined ? null : { reaped: Deferred.isDone(child.exit) }
    }),
  exits: exits.stream,
  takeExits: exits.takeAll,
  listenExits: (l) => exits.listen(l),
  children: Effect.sync(() => [...live.keys()])
})

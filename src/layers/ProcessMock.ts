/**
 * Simulated processes for the property tests: each "process" is a fiber
 * running a program the test gives the layer, with pids from a counter.
 *
 * Signals, as kill(2) would deliver them:
 *  - SIGKILL ends the program (its fiber is interrupted): Signaled(SIGKILL);
 *  - SIGTERM, SIGINT, SIGHUP end it the same way with their own number,
 *    unless the program trapped that signal (`ctx.trap`): then the signal is
 *    queued for `ctx.nextSignal` and the program decides (a program that
 *    traps SIGTERM and never reads it ignores it, which is how the process
 *    backend's 10 s SIGKILL escalation is tested);
 *  - SIGSTOP, SIGCONT are recorded and otherwise have no effect.
 * kill returns at once and the program ends later, as with a real process.
 *
 * `exits` has ProcessNode's semantics: a queue with one consumer that
 * sees every exit in order.
 *
 * The program's first synchronous steps run before spawn returns, so a
 * program that traps SIGTERM first never misses one sent right after spawn.
 *
 * `SpawnRequest.early` is ignored (a simulated program has no exec to
 * overlap with); the request, flag included, is recorded in `spawned`.
 *
 * A program that returns n exits with n & 0xff; one that dies (a defect)
 * exits 1, as fatal() does. Timing is whatever the program does with
 * Effect's Clock, so TestClock drives it.
 */
import { Clock, Context, Deferred, Effect, Exit, Fiber, Layer, Queue } from "effect"
import type { Scope } from "effect"
import { constants as osConstants } from "node:os"
import { Errno, errnoName } from "../schema/errno.ts"
import { childNumbers, ExitBox, Process, SpawnError, tableService } from "../services/Process.ts"
import type { ExitStatus, ProcessService, SignalName, SpawnRequest } from "../services/Process.ts"
import { reasonOf } from "./ProcessNode.ts"

export type TrappableSignal = "SIGTERM" | "SIGINT" | "SIGHUP"

export interface MockProgramContext {
  readonly pid: number
  /** From now on `sig` is queued for `nextSignal` instead of ending the program. */
  readonly trap: (sig: TrappableSignal) => Effect.Effect<void>
  /** The next trapped signal (waits for one). */
  readonly nextSignal: Effect.Effect<TrappableSignal>
}

/** A simulated program: runs until it returns its exit code. */
export type MockProgram = (req: SpawnRequest, ctx: MockProgramContext) => Effect.Effect<number>

export interface ProcessMockControlService {
  /** The next spawn fails with this OpenBSD errno (ENOENT, EAGAIN, ENOMEM, ...); queued, first in first out. */
  readonly failNextSpawn: (errno: number) => Effect.Effect<void>
  /** Every successful spawn, in order. */
  readonly spawned: Effect.Effect<ReadonlyArray<{ readonly pid: number; readonly request: SpawnRequest }>>
  /** Every signal that reached a live process, in order, with the Clock time (ms) it was sent. */
  readonly signalsSent: Effect.Effect<ReadonlyArray<SentSignal>>
}

export interface SentSignal {
  readonly pid: number
  readonly signal: SignalName
  readonly at: number
}

export class ProcessMockControl extends Context.Tag("vmd-vmm/ProcessMockControl")<
  ProcessMockControl,
  ProcessMockControlService
>() {}

export interface ProcessMockOptions {
  /** The first pid handed out (default 1000); later ones count up. */
  readonly firstPid?: number
  /** Pids for the first spawns, in order, before the count (a pid used again, as after a wrap). */
  readonly pids?: ReadonlyArray<number>
}

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const signalNumber = (sig: SignalName): number => signals[sig] ?? 0

const isTrappable = (sig: SignalName): sig is TrappableSignal =>
  sig === "SIGTERM" || sig === "SIGINT" || sig === "SIGHUP"

interface MockChild {
  readonly pid: number
  readonly exit: Deferred.Deferred<ExitStatus>
  readonly trapped: Set<TrappableSignal>
  readonly pending: Queue.Queue<TrappableSignal>
  fiber: Fiber.RuntimeFiber<number> | null
  /** The signal that ended it, set by kill before the fiber is interrupted. */
  killedBy: number | null
}

const fail = (errno: number, message: string) =>
  Effect.fail(new SpawnError({ reason: reasonOf(errno), errno, message: `${message}: ${errnoName(errno)}` }))

export const make = (
  program: MockProgram,
  options: ProcessMockOptions = {}
): Effect.Effect<readonly [ProcessService, ProcessMockControlService], never, Scope.Scope> =>
  Effect.gen(function* () {
    let nextPid = options.firstPid ?? 1000
    const givenPids = [...(options.pids ?? [])]
    const live = new Map<number, MockChild>()
    const exits = new ExitBox()
    const failures: Array<number> = []
    const spawned: Array<{ pid: number; request: SpawnRequest }> = []
    const sent: Array<SentSignal> = []

    const reap = (child: MockChild, exit: Exit.Exit<number>) =>
      Effect.gen(function* () {
        let status: ExitStatus
        if (Exit.isSuccess(exit)) status = { _tag: "Exited", code: exit.value & 0xff }
        else if (Exit.isInterrupted(exit)) status = { _tag: "Signaled", signal: child.killedBy ?? signalNumber("SIGKILL") }
        else {
          yield* Effect.logError(`mock process ${child.pid} died`, exit.cause)
          status = { _tag: "Exited", code: 1 }
        }
        live.delete(child.pid)
        exits.push({ pid: child.pid, status })
        yield* Deferred.succeed(child.exit, status)
      })

    const deliver = (child: MockChild, sig: SignalName): Effect.Effect<void> =>
      Effect.flatMap(Clock.currentTimeMillis, (at) => {
        sent.push({ pid: child.pid, signal: sig, at })
        if (sig === "SIGSTOP" || sig === "SIGCONT") return Effect.void
        if (isTrappable(sig) && child.trapped.has(sig)) return Queue.offer(child.pending, sig)
        if (child.killedBy === null) child.killedBy = signalNumber(sig)
        return child.fiber === null ? Effect.void : Fiber.interruptFork(child.fiber)
      })

    const spawn = (req: SpawnRequest) =>
      Effect.gen(function* () {
        const injected = failures.shift()
        if (injected !== undefined) return yield* fail(injected, `spawn ${req.command}`)
        const closed = req.fds.find((fd) => !fd.isOpen)
        if (closed !== undefined) return yield* fail(Errno.EBADF, `spawn ${req.command}: ${closed.toString()}`)
        const at = childNumbers(req)
        if (typeof at === "string") return yield* fail(Errno.EINVAL, `spawn ${req.command}: ${at}`)
        const pid = givenPids.shift() ?? nextPid++
        if (live.has(pid)) return yield* fail(Errno.EAGAIN, `spawn ${req.command}: pid ${pid} in use`)
        const child: MockChild = {
          pid,
          exit: yield* Deferred.make<ExitStatus>(),
          trapped: new Set(),
          pending: yield* Queue.unbounded<TrappableSignal>(),
          fiber: null,
          killedBy: null
        }
        live.set(pid, child)
        spawned.push({ pid, request: req })
        const ctx: MockProgramContext = {
          pid,
          trap: (sig) => Effect.sync(() => void child.trapped.add(sig)),
          nextSignal: Queue.take(child.pending)
        }
        // (forks inherit the uninterruptible region; the program must be killable)
        const fiber = yield* Effect.forkDaemon(Effect.interruptible(program(req, ctx)))
        child.fiber = fiber
        // The waitpid: whatever ends the program (even an interrupt before it ran), it is reaped.
        yield* Effect.forkDaemon(Effect.flatMap(Fiber.await(fiber), (exit) => reap(child, exit)))
        // Let the program's first synchronous steps (trapping signals) run before spawn returns.
        yield* Effect.yieldNow()
        return { pid, exit: Deferred.await(child.exit) }
      }).pipe(Effect.uninterruptible)

    // Nothing orphaned: SIGKILL whatever still runs and wait for it to be reaped.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        const children = [...live.values()]
        return Effect.forEach(children, (c) => deliver(c, "SIGKILL"), { discard: true }).pipe(
          Effect.zipRight(Effect.forEach(children, (c) => Deferred.await(c.exit), { discard: true }))
        )
      })
    )

    const service = Process.of({
      spawn,
      kill: (pid, sig) =>
        Effect.suspend(() => {
          const child = live.get(pid)
          return child === undefined ? fail(Errno.ESRCH, `kill ${pid} ${sig}`) : deliver(child, sig)
        }),
      ...tableService(live, exits)
    })
    const control: ProcessMockControlService = {
      failNextSpawn: (errno) => Effect.sync(() => void failures.push(errno)),
      spawned: Effect.sync(() => [...spawned]),
      signalsSent: Effect.sync(() => [...sent])
    }
    return [service, control] as const
  })

/** Process on simulated programs, plus ProcessMockControl for the test. */
export const layer = (
  program: MockProgram,
  options: ProcessMockOptions = {}
): Layer.Layer<Process | ProcessMockControl> =>
  Layer.scopedContext(
    Effect.map(make(program, options), ([service, control]) =>
      Context.make(Process, service).pipe(Context.add(ProcessMockControl, control))
    )
  )

/**
 * The vmm process's event loop (proc_run + vmm_run + libevent dispatch).
 *
 * vmm.c is single-threaded: each parent message, VM message and SIGCHLD is
 * handled to completion before the next, and vmm_start_vm blocks the whole
 * process during the start handshake. We keep that ordering with one queue
 * and one dispatcher fiber; the channels and the exit watcher only feed it
 * (but for an exit that comes while the dispatcher is idle, handled at once:
 * see listenExits below).
 * That is what makes the state machine testable against a model.
 */
import { Effect, Exit, Scheduler } from "effect"
import type { Channel, ChannelError, Imsg } from "../services/ImsgChannel.ts"
import { ImsgChannel } from "../services/ImsgChannel.ts"
import { Process, type ChildExit } from "../services/Process.ts"
import { VmRegistry, type Vm } from "../services/VmRegistry.ts"
import { VmmDevice } from "../services/VmmDevice.ts"
import type { Fd } from "../services/Fd.ts"
import { Inbox } from "../services/Inbox.ts"
import type { VmmContext, VmmOptions, VmmState } from "./context.ts"
import { insidePollCallback } from "../native/uvpoll.ts"
import { dispatchParent } from "./dispatchParent.ts"
import { dispatchVm, endMisbehavingVm } from "./dispatchVm.ts"
import { afterExit, childExited, sighdlrNow } from "./childExit.ts"
import { vmmShutdown } from "./shutdown.ts"
import { defaultVmdConfig } from "./defaults.ts"
import { emitLog, logDebug, logInfo, logWarnx, setVerbose } from "./log.ts"

export type VmmEvent =
  | { readonly _tag: "Parent"; readonly imsg: Imsg; readonly backlog: Backlog }
  | { readonly _tag: "ParentEnd"; readonly error: ChannelError | null }
  | { readonly _tag: "Vm"; readonly vm: Vm; readonly imsg: Imsg; readonly backlog: Backlog }
  | { readonly _tag: "VmEnd"; readonly vm: Vm; readonly error: ChannelError }
  | { readonly _tag: "Exit"; readonly exit: ChildExit }
  /** An exit whose TERMINATE_VM_EVENT is written (sighdlrNow): terminate_vm is left. */
  | { readonly _tag: "AfterExit"; readonly vm: Vm }
  | { readonly _tag: "Shutdown"; readonly reason: string }

/** How the process ended: 0 for EOF from the parent or a signal, 1 for a broken parent stream. */
export type VmmExitCode = 0 | 1

export interface VmmHandle {
  /** Ask the loop to shut down (SIGTERM / SIGINT). */
  readonly shutdown: (reason: string) => Effect.Effect<void>
  /** Completes with the exit code once every VM is gone and the parent channel is flushed. */
  readonly done: Effect.Effect<VmmExitCode>
  readonly context: VmmContext
}

const closeImsgFd = (imsg: Imsg) => imsg.fd?.closeSync()

/** Bytes of one peer's messages that may wait in the dispatcher's queue before its channel is held. */
export const BACKLOG_HIGH = 1024 * 1024
/** ... and read again once the dispatcher has taken them down to this. */
const BACKLOG_LOW = BACKLOG_HIGH / 2
/** What a queued message costs besides its payload (its objects, the event). */
const MESSAGE_COST = 128

/**
 * One channel's messages waiting in the dispatcher's queue. vmm.c reads no
 * socket while it blocks (a start handshake can take up to its timeout), so
 * a peer that floods its socket then is held back by the kernel; ours reads
 * on the event loop meanwhile, and would queue without bound: above
 * BACKLOG_HIGH the channel is held (not read) until the dispatcher catches
 * up, and the kernel holds the peer back again.
 */
class Backlog {
  #bytes = 0
  #held = false
  constructor(readonly channel: Channel) {}

  queued(imsg: Imsg): void {
    this.#bytes += MESSAGE_COST + imsg.data.length
    if (!this.#held && this.#bytes >= BACKLOG_HIGH) {
      this.#held = true
      this.channel.unsafeHold(true)
    }
  }

  taken(imsg: Imsg): void {
    this.#bytes -= MESSAGE_COST + imsg.data.length
    if (this.#held && this.#bytes <= BACKLOG_LOW) {
      this.#held = false
      this.channel.unsafeHold(false)
    }
  }
}

/**
 * The dispatcher fiber's scheduler.
 *
 * - Woken from a poll callback (a message read, an exit reaped, the start
 *   handshake's answer), the dispatcher runs there and then, as libevent
 *   runs vmm.c's handlers, instead of in a promise job after the loop's
 *   check phase (koffi's callbacks run outside Node's callback scope; see
 *   uvpoll.ts). Timestamps inside the vmm: ~0.07 ms less per wake-up, ~0.15
 *   ms less from a VM's death to TERMINATE_VM_EVENT. Never re-entrantly: a
 *   task scheduled while one runs (a yield) is queued as usual. The event
 *   sources only push into the queue and are between reads when they do,
 *   so running the dispatcher inside them is safe; it may close the channel
 *   whose callback it runs in (vm_remove), which the channel allows.
 * - MixedScheduler reads the max-ops FiberRef on every operation of the
 *   fiber (a map lookup per step of every request); this yields after the
 *   same 2048 ops without it.
 */
let runningNow = false
const dispatcherScheduler: Scheduler.Scheduler = {
  scheduleTask: (task, priority, fiber) => {
    if (!runningNow && insidePollCallback()) {
      runningNow = true
      try {
        task()
      } finally {
        runningNow = false
      }
      return
    }
    Scheduler.defaultScheduler.scheduleTask(task, priority, fiber)
  },
  shouldYield: (fiber) => (fiber.currentOpCount > 2048 ? 0 : false)
}

/**
 * Start the vmm process on the parent channel's fd. Runs until the parent
 * goes away, shutdown is requested, or the parent's byte stream breaks.
 */
export const startVmmServer = (parentFd: Fd, options: VmmOptions) =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const process = yield* Process
    const registry = yield* VmRegistry
    const device = yield* VmmDevice
    const scope = yield* Effect.scope

    setVerbose(options.verbose)
    const state: VmmState = {
      vmmFd: null,
      pspFd: null,
      config: defaultVmdConfig(),
      verbose: options.verbose,
      stopping: false,
      handshakePid: 0
    }
    // /dev/psp is ours from RECEIVE_PSP_FD until we exit (vmm.c leaves it to exit(2));
    // /dev/vmm is closed by the VmmDevice it was attached to.
    yield* Effect.addFinalizer(() => Effect.sync(() => state.pspFd?.closeSync()))
    // The dispatcher's queue: many producers (the channel and exit listeners,
    // the signal handlers), one consumer.
    const events = new Inbox<VmmEvent>("vmm events")
    // A shutdown asked for, or the parent gone: a start handshake waiting for its VM's id
    // gives up, by the end of that VM's process (VmmState.stopping). A kill rather than a
    // race on every start's id read: forking a racing fiber cost ~0.4 ms per start.
    const stop = () => {
      if (state.stopping) return
      state.stopping = true
      if (state.handshakePid > 0) Effect.runFork(Effect.ignore(process.kill(state.handshakePid, "SIGKILL")))
    }

    const parent = yield* imsg.open(parentFd)

    // The VM channels open now. They belong to the server's scope, which
    // closes those still open when it ends; vm_remove closes one at once.
    // (A scope per VM, forked and extended, cost ~0.3 ms per start and per
    // exit: on the path of START_VM_RESPONSE and TERMINATE_VM_EVENT.)
    const vmChannels = new Set<Channel>()
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        const open = [...vmChannels]
        vmChannels.clear()
        return Effect.forEach(open, (c) => c.close, { discard: true })
      })
    )

    const openVmChannel = (socket: Fd) =>
      Effect.match(imsg.openOwned(socket, { paused: true }), { onFailure: () => null, onSuccess: (c) => c })

    const watchVm = (vm: Vm, channel: Channel) =>
      Effect.gen(function* () {
        vmChannels.add(channel)
        // Messages go straight into the queue as they are read (no fiber
        // per VM). EOF, or our own close, is no event: vmm.c just stops
        // watching the socket (the exit comes by SIGCHLD), and a dispatcher
        // turn for nothing would delay the spawner's exit report behind it.
        // But EOF is a hint that the process has exited: the Process layer
        // looks now (a no-op for a pid it has reaped, or one still running).
        // An error after vm_remove closed the channel cannot come.
        const backlog = new Backlog(channel)
        yield* channel.listen({
          messages: (ms) => {
            for (const imsg of ms) {
              backlog.queued(imsg)
              events.push({ _tag: "Vm", vm, imsg, backlog })
            }
          },
          end: (error) => {
            if (error !== null) events.push({ _tag: "VmEnd", vm, error })
            // its exit, if it has exited, handled now rather than after its pidfd's turn
            else if (vm.pid > 0) process.unsafeReapNow(vm.pid)
          }
        })
        vm.channel = channel
        vm.closeChannel = () => {
          vmChannels.delete(channel)
          channel.unsafeClose()
        }
        yield* channel.resume
      })

    const ctx: VmmContext = { options, state, registry, device, process, imsg, parent, openVmChannel, watchVm }

    // SIGCHLD (before the dispatcher starts, so before anything is spawned).
    // An exit that comes while the dispatcher waits with nothing queued is
    // its next event: it is handled at once, in the callback that reaped it,
    // up to TERMINATE_VM_EVENT written (sighdlrNow: no fiber woken, ~0.2 ms
    // less from a VM's death to the event); terminate_vm follows on the
    // dispatcher (AfterExit). Otherwise it waits its turn in the queue.
    yield* process.listenExits((exit) => {
      if (runningNow || !events.waiting) return events.push({ _tag: "Exit", exit })
      let vm: Vm | null = null
      runningNow = true
      try {
        vm = sighdlrNow(ctx, exit)
      } catch (defect) {
        // as the dispatcher does with a defect: log it and go on
        emitLog("warning", `internal error handling Exit: ${String(defect)}`)
      } finally {
        runningNow = false
      }
      if (vm !== null) events.push({ _tag: "AfterExit", vm })
    })

    // The parent's messages go straight into the queue as they are read, as
    // the VMs' do: no fiber between the socket and the dispatcher.
    const parentBacklog = new Backlog(parent)
    yield* parent.listen({
      messages: (ms) => {
        for (const imsg of ms) {
          parentBacklog.queued(imsg)
          events.push({ _tag: "Parent", imsg, backlog: parentBacklog })
        }
      },
      end: (error) => {
        stop()
        events.push({ _tag: "ParentEnd", error })
      }
    })

    /** Is this still the registered VM (events for a removed VM are stale)? */
    const live = (vm: Vm) => Effect.map(registry.byVmid(vm.vmid), (found) => found === vm)

    const handle = (e: VmmEvent): Effect.Effect<VmmExitCode | null> =>
      Effect.gen(function* () {
        switch (e._tag) {
          case "Parent":
            yield* dispatchParent(ctx, e.imsg)
            return null
          case "Vm":
            // A VM ended for misbehaving (its channel closed, its exit still to come) is
            // heard no more: what it sent after the bad message, in the same read, is dropped.
            if (!(yield* live(e.vm)) || e.vm.channel === null) {
              closeImsgFd(e.imsg)
              return null
            }
            yield* dispatchVm(ctx, e.vm, e.imsg)
            return null
          case "VmEnd":
            if (yield* live(e.vm)) yield* endMisbehavingVm(ctx, e.vm, `broken channel (${e.error.message})`)
            return null
          case "Exit":
            yield* childExited(ctx, e.exit)
            return null
          case "AfterExit":
            yield* afterExit(ctx, e.vm)
            return null
          case "ParentEnd":
            if (e.error !== null) {
              yield* logWarnx(`vmm_dispatch_parent: imsgbuf_read: ${e.error.message}`)
              return 1
            }
            yield* logDebug("parent closed the channel")
            return 0
          case "Shutdown":
            yield* logDebug(e.reason)
            return 0
        }
      })

    const loop = Effect.gen(function* () {
      for (;;) {
        const e = yield* events.takeOne
        if (e._tag === "Vm" || e._tag === "Parent") e.backlog.taken(e.imsg)
        const code = yield* handle(e).pipe(
          Effect.catchAllDefect((defect) =>
            // A bug must not take the other VMs down: log it and go on.
            Effect.as(logWarnx(`internal error handling ${e._tag}: ${String(defect)}`), null)
          )
        )
        if (code !== null) return code
        // What the handler queued for the parent goes now, not after the
        // loop has gone back to wait (~0.07 ms on TERMINATE_VM_EVENT's path).
        yield* parent.writePending
      }
    })

    const run = Effect.gen(function* () {
      const code = yield* loop
      // proc_shutdown: vmm_shutdown, flush what we owe the parent, exit.
      yield* vmmShutdown(ctx)
      yield* parent.flush.pipe(Effect.timeout("2 seconds"), Effect.ignore)
      yield* logInfo(`exiting, pid ${globalThis.process.pid}`)
      return code
    })

    const fiber = yield* Effect.forkIn(Effect.withScheduler(run, dispatcherScheduler), scope)
    const handle_: VmmHandle = {
      shutdown: (reason) =>
        Effect.sync(() => {
          stop()
          events.push({ _tag: "Shutdown", reason })
        }),
      done: fiber.await.pipe(
        Effect.map((exit) => (Exit.isSuccess(exit) ? exit.value : 1))
      ),
      context: ctx
    }
    return handle_
  })

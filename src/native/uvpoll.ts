/**
 * libuv poll handles on Node's own loop (uv_poll_init/start/stop/close),
 * through koffi. Readiness of a raw fd without a second event loop.
 *
 * Two koffi callbacks are registered for the whole process (poll and close)
 * and dispatch on the handle address, so handles are not limited by koffi's
 * callback slots. A handle's memory is freed only in uv_close's callback,
 * as libuv requires; `close` is idempotent and the memory is freed once.
 * Callers `close` the handle before they close(2) its fd: uv_close makes an
 * epoll DEL of its own (even after a `stop`), which would find the fd closed
 * (EBADF), or, were its number reused meanwhile, take the new fd out of epoll.
 */
import { Data, Effect } from "effect"
import type { Scope } from "effect"
import koffi from "koffi"
import { self } from "./libc.ts"

export const UV_READABLE = 1
export const UV_WRITABLE = 2
export const UV_DISCONNECT = 4
const UV_POLL = 8 // uv_handle_type

/** A libuv call failed; `code` is libuv's negative errno. */
export class UvPollError extends Data.TaggedError("UvPollError")<{
  readonly op: string
  readonly code: number
}> {}

const PollCb = koffi.proto("void", ["intptr_t", "int", "int"])
const CloseCb = koffi.proto("void", ["intptr_t"])

const uv = {
  defaultLoop: self.func("uv_default_loop", "void *", []),
  handleSize: self.func("uv_handle_size", "size_t", ["int"]),
  pollInit: self.func("uv_poll_init", "int", ["void *", "void *", "int"]),
  pollStart: self.func("uv_poll_start", "int", ["void *", "int", koffi.pointer(PollCb)]),
  pollStop: self.func("uv_poll_stop", "int", ["void *"]),
  close: self.func("uv_close", "void", ["void *", koffi.pointer(CloseCb)]),
  strerror: self.func("uv_strerror", "const char *", ["int"])
}

/** libuv's message for an error code ("bad file descriptor"). */
export const uvStrerror = (code: number): string => String(uv.strerror(code))

/** (status, events): status < 0 is a libuv error; events is UV_READABLE | UV_WRITABLE | UV_DISCONNECT. */
export type PollListener = (status: number, events: number) => void

const live = new Map<number, UvPoll>()

/*
 * koffi calls a registered callback with napi_call_function, outside any
 * Node callback scope, so promise jobs it queues (a resumed fiber) would
 * wait for the next unrelated Node callback. One setImmediate after the
 * poll phase gives them a checkpoint in the same loop iteration.
 */
let drainPending = false
const clearDrain = (): void => {
  drainPending = false
}
const drainSoon = (): void => {
  if (!drainPending) {
    drainPending = true
    setImmediate(clearDrain)
  }
}
/** Poll callbacks running now (0 outside them). */
let inCallback = 0

/**
 * True while a poll callback runs: on the event loop's own stack, outside
 * any fiber and promise job, where a scheduler may run a fiber at once
 * instead of queueing it behind the setImmediate above.
 */
export const insidePollCallback = (): boolean => inCallback > 0

/**
 * Run `f` as a poll callback: what every uv_poll callback here runs in, and
 * any other callback koffi makes on the loop's own stack (the completion of
 * an async call, as ProcessDirect's posix_spawn), so that a fiber it resumes
 * may run there and then too.
 */
export const asPollCallback = (f: () => void): void => {
  inCallback++
  try {
    f()
  } finally {
    inCallback--
    // after f: the checkpoint is the same, and its cost (a setImmediate) is
    // then off the path of what f writes (TERMINATE_VM_EVENT)
    drainSoon()
  }
}

let callbacks: { readonly poll: unknown; readonly close: unknown } | null = null
let loop: unknown = null
let handleSize = 0

const registered = (): { readonly poll: unknown; readonly close: unknown } => {
  if (callbacks === null) {
    loop = uv.defaultLoop()
    handleSize = Number(uv.handleSize(UV_POLL))
    callbacks = {
      poll: koffi.register(
        (addr: number, status: number, events: number) => asPollCallback(() => live.get(addr)?.dispatch(status, events)),
        koffi.pointer(PollCb)
      ),
      close: koffi.register((addr: number) => {
        drainSoon()
        live.get(addr)?.closed()
      }, koffi.pointer(CloseCb))
    }
  }
  return callbacks
}

export class UvPoll {
  readonly #mem: unknown
  readonly #addr: number
  readonly #listener: PollListener
  #events = 0
  #state: "open" | "closing" | "closed" = "open"
  readonly #onClosed: Array<() => void> = []

  private constructor(
    readonly fd: number,
    listener: PollListener
  ) {
    this.#listener = listener
    this.#mem = koffi.alloc("uint8_t", handleSize)
    this.#addr = Number(koffi.address(this.#mem))
  }

  /** uv_poll_init on Node's loop; the handle is idle until `start`. A UvPoll or libuv's error code. */
  static open(fd: number, listener: PollListener): UvPoll | number {
    registered()
    const p = new UvPoll(fd, listener)
    const r = uv.pollInit(loop, p.#mem, fd) as number
    if (r < 0) {
      koffi.free(p.#mem)
      return r
    }
    live.set(p.#addr, p)
    return p
  }

  /** The events being watched (0 when stopped). */
  get events(): number {
    return this.#events
  }

  get isOpen(): boolean {
    return this.#state === "open"
  }

  /** Watch `events` (replacing the previous set; 0 stops). 0 or libuv's error code. */
  start(events: number): number {
    if (this.#state !== "open") return 0
    if (events === this.#events) return 0
    if (events === 0) {
      this.stop()
      return 0
    }
    const r = uv.pollStart(this.#mem, events, registered().poll) as number
    if (r === 0) this.#events = events
    return r
  }

  stop(): void {
    if (this.#state !== "open" || this.#events === 0) return
    uv.pollStop(this.#mem)
    this.#events = 0
  }

  /**
   * uv_close, which stops the handle; `done` runs once the close callback has
   * freed the handle (at once if that already happened). Safe to call again.
   */
  close(done?: () => void): void {
    if (this.#state === "closed") {
      done?.()
      return
    }
    if (done) this.#onClosed.push(done)
    if (this.#state === "closing") return
    // uv_close stops a started handle itself (one epoll_ctl DEL, not a
    // uv_poll_stop's and then uv_close's again)
    this.#events = 0
    this.#state = "closing"
    uv.close(this.#mem, registered().close)
  }

  /** @internal from the poll callback */
  dispatch(status: number, events: number): void {
    if (this.#state !== "open") return
    // An error (POLLERR: UV_EBADF) comes after libuv has stopped the handle
    // (uv__poll_io): a later `start` must start it again, even with the same events.
    if (status < 0) this.#events = 0
    this.#listener(status, events)
  }

  /** @internal from the close callback */
  closed(): void {
    live.delete(this.#addr)
    koffi.free(this.#mem)
    this.#state = "closed"
    for (const f of this.#onClosed.splice(0)) f()
  }
}

/** Close a handle and wait for uv_close's callback. */
export const closePoll = (p: UvPoll): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    p.close(() => resume(Effect.void))
  })

/** A poll handle owned by the current Scope: closed (and freed) exactly once when the scope ends. */
export const acquirePoll = (fd: number, listener: PollListener): Effect.Effect<UvPoll, UvPollError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      const p = UvPoll.open(fd, listener)
      return typeof p === "number" ? Effect.fail(new UvPollError({ op: "uv_poll_init", code: p })) : Effect.succeed(p)
    }),
    closePoll
  )

/**
 * imsg channels (OpenBSD libutil imsg, current layout: imsg.md §1-3).
 *
 * `ImsgChannel` is the transport service: it opens a framed channel on a
 * socket fd, makes socketpairs, and offers the raw reads and writes that
 * the VM start handshake does on a socket before it becomes a channel
 * (vmd.md §7). One `Channel` talks to the parent (fd 3), one to each VM.
 *
 * Layers: `ImsgChannelNative` (koffi sendmsg/recvmsg + libuv poll) and
 * `ImsgChannelMemory` (paired in-memory sockets, fds tracked).
 */
import { Context, Data, Effect, Scope, Stream } from "effect"
import { releaseImsg as release } from "../imsg/parser.ts"
import type { Fd } from "./Fd.ts"

/**
 * A received message. `fd` is owned by the receiver: take it or close it.
 * `data` stays valid until `releaseImsg` is called on the message (forever
 * if it never is).
 */
export interface Imsg {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly fd: Fd | null
  /**
   * The header was marked as carrying an fd and none came with it: the peer
   * sent none, or the kernel dropped it (MSG_CTRUNC: this process is out of
   * file descriptors). `fd` is null then, as libutil's imsg_get gives -1.
   */
  readonly fdMissing?: boolean
}

/**
 * imsg_free for a received message's payload, optional: the consumer is done
 * with `data` (keeps no view of it), so the channel may write a later read
 * over it, instead of a fresh receive buffer per ~512 KiB received, which
 * under bulk receive costs back-to-back mark-compacts (see
 * src/imsg/parser.ts). After it, `data` may change at any time. The fd, if
 * any, is untouched: still the consumer's to take or close. Idempotent; a
 * no-op on a message that holds no receive buffer (an empty payload, a
 * message built by hand).
 */
export const releaseImsg: (m: Imsg) => void = release

/** A message to send. pid 0 is replaced by the sender's pid, as imsg_compose does. */
export interface OutgoingImsg {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data?: Uint8Array
  /**
   * Ownership passes to the channel, which closes it once sent (libutil
   * semantics), or at once if the send fails.
   */
  readonly fd?: Fd | null
}

export type ChannelErrorReason =
  | "Framing" // a header with len < 16 or > maxsize (libutil: ERANGE)
  | "TooLarge" // an outgoing message larger than MAX_IMSGSIZE
  | "Closed" // send on a closed channel
  | "Io" // sendmsg/recvmsg/read/write failed with an errno
  | "Timeout" // a raw read or write did not complete in time
  | "Eof" // a raw read hit end of file before n bytes

export class ChannelError extends Data.TaggedError("ChannelError")<{
  readonly reason: ChannelErrorReason
  readonly message: string
  /** OpenBSD errno where one applies (EPIPE 32, ERANGE 34, ...). */
  readonly errno?: number
}> {}

export interface ChannelListener {
  readonly messages: (batch: ReadonlyArray<Imsg>) => void
  readonly end: (error: ChannelError | null) => void
}

export interface Channel {
  /** The socket's fd number (for logs and --trace). */
  readonly fd: number
  /**
   * Queue a message (imsg_compose). Never blocks: the writer drains the
   * queue when the socket is writable, gathering messages into one sendmsg
   * as msgbuf_write does. Fails only if the message is too large or the
   * channel is closed.
   */
  readonly send: (msg: OutgoingImsg) => Effect.Effect<void, ChannelError>
  /**
   * Queue many messages at once, in order: as `send` for each, at the cost
   * of one. All or nothing: if one is too large, or the channel is closed,
   * none is queued and every fd among them is closed.
   */
  readonly sendAll: (msgs: Iterable<OutgoingImsg>) => Effect.Effect<void, ChannelError>
  /**
   * Received messages in order. Ends on EOF (or EPIPE on write); fails with
   * ChannelError on a framing or I/O error. Only one consumer.
   */
  readonly messages: Stream.Stream<Imsg, ChannelError>
  /**
   * The same messages without a Stream around them: the next batch (at
   * least one message, in order), waiting if none is there; null once the
   * channel has ended (EOF); fails as `messages` does. The one consumer uses
   * either this or `messages`, not both.
   */
  readonly receive: Effect.Effect<ReadonlyArray<Imsg> | null, ChannelError>
  /**
   * The third way to consume, for a consumer that only moves messages into a
   * queue of its own (the vmm's dispatcher, one per VM channel): every batch
   * goes to `listener.messages` as soon as it is read, on the event loop,
   * then `listener.end` runs once (null at EOF or on close, else the error).
   * No fiber per channel: forking one cost ~50 µs per VM start and its end
   * ~0.2 ms per VM exit. Set once, instead of `receive`/`messages`; the
   * listener must not throw.
   */
  readonly listen: (listener: ChannelListener) => Effect.Effect<void>
  /** Wait until every queued message has been written (or the channel died). */
  readonly flush: Effect.Effect<void>
  /**
   * Write what is queued now, as far as the socket takes it (the rest goes
   * when it is writable), instead of at the end of this turn of the event
   * loop: for a dispatcher that has finished handling an event (libevent
   * writes vmm.c's replies on its next turn; nothing comes between).
   * Never waits; a no-op when nothing is queued or a write is under way.
   */
  readonly writePending: Effect.Effect<void>
  /** Close the socket (idempotent); the message stream ends; unsent messages are dropped and their fds closed. */
  readonly close: Effect.Effect<void>
  /** Messages queued and not yet written (imsgbuf_queuelen). */
  readonly queued: Effect.Effect<number>
  /** Start reading a channel opened paused (`openOwned`'s option); a no-op otherwise. */
  readonly resume: Effect.Effect<void>
  /**
   * `send`, `writePending` and `close` done now, outside an effect, for code
   * that is already one synchronous step: the vmm's exit path
   * (vmm_sighdlr), where each effect of a cold runtime costs tens of µs.
   * unsafeSend returns null, or the error `send` fails with (the message's
   * fd is closed then).
   */
  readonly unsafeSend: (msg: OutgoingImsg) => ChannelError | null
  /**
   * `unsafeSend` and `unsafeWritePending` in one: when nothing is queued or
   * being written, a small fd-less message is written with one sendmsg at
   * once, without going through the queue (the vmm's TERMINATE_VM_EVENT:
   * bench-vmm's exit notification); otherwise it is queued and the queue
   * written now. Same result, errors and outcome of the write as the pair.
   */
  readonly unsafeSendNow: (msg: OutgoingImsg) => ChannelError | null
  readonly unsafeWritePending: () => void
  readonly unsafeClose: () => void
  /** `queued`, now. */
  readonly unsafeQueued: () => number
  /**
   * Stop reading the socket (true) until called with false: flow control
   * for a `listen` consumer, which gets every batch as soon as it is read
   * and so has no high-water mark of its own (the vmm holds a channel whose
   * messages pile up in its dispatcher's queue). Synchronous, for the
   * listener's callbacks; a no-op on a closed channel.
   */
  readonly unsafeHold: (hold: boolean) => void
}

export interface ImsgChannelService {
  /**
   * Start imsg framing on a socket fd (imsgbuf_init + imsgbuf_allow_fdpass).
   * The channel owns the fd from then on; it is closed when the scope ends
   * or on `close`.
   */
  readonly open: (fd: Fd) => Effect.Effect<Channel, ChannelError, Scope.Scope>
  /**
   * `open` for a caller that keeps the channel in a scope of its own making
   * and runs `close` itself (the vmm's VM channels, which the server scope
   * closes at the end): no Scope in the context, which costs tens of µs per
   * channel on the path of every VM start (acquireRelease, Scope.extend).
   * On failure the fd is left to the caller, as with `open`.
   * `paused`: the channel reads nothing until `resume` (the vmm opens a
   * VM's channel while the VM process execs, then reads the raw id the
   * handshake still has to come on the socket, then resumes it).
   */
  readonly openOwned: (fd: Fd, options?: { readonly paused?: boolean }) => Effect.Effect<Channel, ChannelError>
  /** socketpair(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC). */
  readonly socketpair: (label: string) => Effect.Effect<readonly [Fd, Fd], ChannelError>
  /** Write all of `bytes` to a socket not yet framed (atomicio(vwrite)). */
  readonly writeRaw: (fd: Fd, bytes: Uint8Array, timeoutMs: number) => Effect.Effect<void, ChannelError>
  /**
   * Read exactly n bytes from a socket not yet framed (atomicio(read)).
   * blockMs: first wait up to that long blocking this thread, as vmm.c's
   * atomicio does for the whole read, where the layer can (native sockets);
   * then on the event loop, within timeoutMs in all.
   */
  readonly readRaw: (fd: Fd, n: number, timeoutMs: number, blockMs?: number) => Effect.Effect<Uint8Array, ChannelError>
}

export class ImsgChannel extends Context.Tag("vmd-vmm/ImsgChannel")<ImsgChannel, ImsgChannelService>() {}

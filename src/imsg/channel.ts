/**
 * One imsg channel over a non-blocking stream socket: the part shared by
 * the native and in-memory layers. A `SocketDriver` moves bytes (recvmsg,
 * sendmsg, readiness); this file does what imsgbuf_read/imsgbuf_write and
 * vmd's imsg_event_add do around them:
 *
 * - reading: on readable, recv into the process-wide receive slab, parse
 *   every message of each read (payloads are views of the slab, or copies for
 *   a small read: see parser.ts), hand them in chunks to the single consumer
 *   of `messages`. Reading pauses while the consumer lags (highWaterBytes)
 *   and resumes when it pulls.
 * - writing: `send` only queues (a small fd-less message framed at once
 *   into a compose chunk, as imsg_compose does); the queue is written at the
 *   end of the current turn (a microtask), gathered into sendmsgs of up to
 *   MAX_BATCH bytes (see writer.ts), and on EAGAIN
 *   the driver watches for writability until the queue is empty (EV_WRITE
 *   only while queued). An idle channel holds no buffer of its own.
 * - endings: EOF ends the stream; EPIPE drops the output queue and ends the
 *   stream once nothing more is readable; a framing or I/O error fails it.
 */
import { Chunk, Effect, Option, Stream } from "effect"
import { Errno, errnoName } from "../schema/errno.ts"
import type { HeaderFormat } from "../schema/imsgHeader.ts"
import { IMSG_HEADER_SIZE, MAX_IMSG_PAYLOAD, writeHeader } from "../schema/imsgHeader.ts"
import type { Fd } from "../services/Fd.ts"
import type { Channel, ChannelListener, Imsg, OutgoingImsg } from "../services/ImsgChannel.ts"
import { ChannelError } from "../services/ImsgChannel.ts"
import { ImsgParser } from "./parser.ts"
import type { Batch } from "./writer.ts"
import { ImsgWriter, MAX_BATCH } from "./writer.ts"

/** What a channel needs from a socket. Errors are OpenBSD errno, negated. */
export interface SocketDriver {
  readonly fd: number
  /** One recvmsg into `into`: bytes (0 = EOF) or -errno; received fds are appended to `fds`. */
  recv(into: Uint8Array, fds: Array<Fd>): number
  /**
   * One sendmsg of the batch's pieces (an iovec each) with `batch.fd`
   * attached. Bytes sent or -errno. When it returns > 0 the fd is gone from
   * the sender (closed, or moved to the peer in memory). The pieces are
   * valid only during the call.
   */
  send(batch: Batch<Fd>): number
  /** Ask for `events.readable` / `events.writable` callbacks. */
  watch(readable: boolean, writable: boolean): void
  /** Stop watching and close the socket; `done` runs when nothing will call back. */
  close(done: () => void): void
}

export interface DriverEvents {
  readonly readable: () => void
  readonly writable: () => void
  /** Readiness itself failed (OpenBSD errno). */
  readonly error: (errno: number) => void
}

export interface ChannelOptions {
  /** Header layout for the fd flag; "legacy" talks to old libutil peers with fds (imsg.md §1.3). */
  readonly format?: HeaderFormat
  /** Pause reading once this many bytes of messages wait for the consumer. */
  readonly highWaterBytes?: number
  /**
   * Open without reading: the socket is not read (nor watched for it) until
   * `resume`, so that raw bytes still due on it before framing starts (the
   * start handshake's VM id) can be read with readRaw meanwhile.
   */
  readonly paused?: boolean
}

const DEFAULT_HIGH_WATER = 1 << 20
/** recvmsg calls per readable event at most: reads that carry fds (each ends at its message), or `drain`. */
const READS_PER_EVENT = 64
type Ending = { readonly _tag: "Eof" } | { readonly _tag: "Failed"; readonly error: ChannelError }
const EOF: Ending = { _tag: "Eof" }

/**
 * The staging area of every channel's writer (writer.ts: a writer whose
 * batch was overwritten by another's stages it again from its queue).
 */
let staging: Uint8Array | null = null
const sharedStaging = (): Uint8Array => {
  if (staging === null) {
    const b = Buffer.allocUnsafeSlow(MAX_BATCH)
    staging = new Uint8Array(b.buffer, b.byteOffset, b.length)
  }
  return staging
}

/**
 * Where `sendWriteNow` frames the one message it writes past the queue: one
 * buffer for every channel (the write is synchronous), with the one-piece
 * batch that hands it to the driver.
 */
const DIRECT_MAX_PAYLOAD = 1024
const directFrame = new Uint8Array(IMSG_HEADER_SIZE + DIRECT_MAX_PAYLOAD)
const directBatch = { first: 0, count: 1, bufs: [directFrame], offs: [0], lens: [0], length: 0, fd: null }

/** A sendmsg result that means "the socket is full, try when writable" (nothing was sent). */
const wouldBlock = (n: number): boolean => n === -Errno.EAGAIN || n === -Errno.ENOBUFS

const closeFd = (fd: Fd): void => {
  fd.closeSync()
}

const ioError = (op: string, errno: number): ChannelError =>
  new ChannelError({ reason: "Io", message: `${op}: ${errnoName(errno)}`, errno })

class ImsgConnection {
  readonly #driver: SocketDriver
  readonly #parser: ImsgParser<Fd>
  readonly #writer: ImsgWriter<Fd>
  readonly #highWater: number
  readonly #fds: Array<Fd> = []
  #inbox: Array<Imsg> = []
  #inboxBytes = 0
  #ending: Ending | null = null
  #closed = false
  /** The peer stopped reading (EPIPE): end the stream once nothing more is readable. */
  #peerGone = false
  #reading = true
  /** Opened paused and not resumed yet: nothing is read. */
  #paused: boolean
  /** The listener's consumer lags (Channel.unsafeHold): nothing is read until it lets go. */
  #held = false
  /** In #pollError (a poll error while handling one is a failed restart of the poll). */
  #inPollError = false
  #writing = false
  #writeScheduled = false
  #wake: (() => void) | null = null
  #listener: ChannelListener | null = null
  #endHeard = false
  #flushed: Array<() => void> = []

  constructor(socket: (events: DriverEvents) => SocketDriver, options: ChannelOptions) {
    this.#highWater = options.highWaterBytes ?? DEFAULT_HIGH_WATER
    this.#parser = new ImsgParser<Fd>({ closeFd, format: options.format ?? "current" })
    this.#driver = socket({
      readable: () => this.#guard(() => this.#readNow()),
      writable: () => this.#guard(() => this.#writeNow()),
      error: (errno) => this.#guard(() => this.#pollError(errno))
    })
    this.#writer = new ImsgWriter<Fd>(sharedStaging, {
      pid: process.pid,
      format: options.format ?? "current"
    })
    this.#paused = options.paused ?? false
    if (!this.#paused) this.#driver.watch(true, false)
  }

  /** Callbacks come from the event loop, where a throw would vanish: turn it into a stream failure. */
  #guard(f: () => void): void {
    try {
      f()
    } catch (e) {
      this.#fail(new ChannelError({ reason: "Io", message: `imsg channel bug: ${String(e)}` }))
    }
  }

  /** Reading now: not ended, under the high-water mark, not opened paused, not held. */
  get #readingNow(): boolean {
    return this.#reading && !this.#paused && !this.#held
  }

  #watch(): void {
    if (!this.#closed) this.#driver.watch(this.#readingNow, this.#writing)
  }

  /** Stop reading, or read again (Channel.unsafeHold). */
  holdNow(hold: boolean): void {
    if (this.#held === hold) return
    this.#held = hold
    this.#watch()
  }

  /** Start reading a channel opened paused (Channel.resume). */
  resumeNow(): void {
    if (!this.#paused) return
    this.#paused = false
    if (this.#reading) this.#watch()
  }

  // ---- input ------------------------------------------------------------

  /**
   * Read what the socket has, up to READS_PER_EVENT reads. A read without
   * fds ends it (level-triggered polling calls again), unless `drain`: then
   * it goes on to EAGAIN or the end. Whether it stopped at EAGAIN with the
   * stream still going.
   */
  #readNow(drain = false): boolean {
    if (!this.#readingNow) return false
    let again = false
    const d = this.#driver
    const fds = this.#fds
    const before = this.#inbox.length
    for (let i = 0; i < READS_PER_EVENT && this.#reading; i++) {
      const into = this.#parser.readTarget()
      fds.length = 0
      const n = d.recv(into, fds)
      if (n <= 0) for (const f of fds) f.closeSync()
      if (n > 0) {
        this.#inboxBytes += n
        const r = this.#parser.commit(n, fds, this.#inbox)
        if (!r.ok) {
          this.#fail(
            new ChannelError({ reason: "Framing", message: `imsg with bad length ${r.len}`, errno: Errno.ERANGE })
          )
          return false
        }
        // A short read means drained, unless it carried an fd: Linux ends a read after the
        // bytes that came with fds. Level-triggered polling calls again if more is there.
        // A read that filled all the room it had ends the turn too: a peer writing as fast
        // as this reads keeps every read full, and the next one would need a fresh receive
        // slab while this turn's messages, not yet handed over, still hold the current one
        // (in bench-imsg's 100 B C -> TS, one new 512 KiB slab per ~3 reads, page faults and
        // all); after the turn the consumer has them, and a consumer that releases them
        // leaves the slab to be started again.
        if (!drain && fds.length === 0) break
      } else if (n === 0) {
        this.#end(EOF)
        break
      } else if (n === -Errno.EAGAIN) {
        if (this.#peerGone) this.#end(EOF)
        else again = true
        break
      } else if (n === -Errno.ECONNRESET) {
        // The peer closed with data of ours unread: it is gone, as at EOF (after what it sent).
        this.#end(EOF)
        break
      } else {
        this.#fail(ioError("recvmsg", -n))
        return false
      }
    }
    // (an inbox still empty has only part of a message: reading on completes it)
    if (this.#inboxBytes >= this.#highWater && this.#inbox.length > 0 && this.#reading) {
      this.#reading = false
      this.#watch()
    }
    if (this.#inbox.length > before || this.#ending !== null) this.#notify()
    return again && this.#ending === null
  }

  /**
   * libuv reports POLLERR as EBADF, and has stopped the handle (uv__poll_io).
   * On a stream socket that is the peer closing with data of ours unread
   * (ECONNRESET): what it sent before is still to be read, and ends as EOF
   * (read to the end, not just one read); a write meets EPIPE
   * and drops the queue. Fail only if reading to EAGAIN does not explain the
   * error. While reading is paused (high water, held), the read that resumes
   * it meets the error again and reads what is left then.
   * Found by test/reliability: a VM that reset with a message unread was
   * taken for a misbehaving one, and its reboot (exit 35) reported as 0.
   */
  #pollError(errno: number): void {
    // Re-entered from the #watch below: starting the poll again failed (the driver reports
    // that synchronously). Nothing more to try: fail, rather than recurse.
    if (this.#inPollError) return this.#fail(ioError("poll", errno))
    this.#inPollError = true
    try {
      const unexplained = this.#readNow(true)
      if (this.#writing) this.#writeNow()
      if (this.#ending !== null || this.#closed) return
      if (unexplained) return this.#fail(ioError("poll", errno))
      this.#watch()
    } finally {
      this.#inPollError = false
    }
  }

  #notify(): void {
    const l = this.#listener
    if (l !== null) {
      if (this.#inbox.length > 0) l.messages(this.#takeInbox())
      const e = this.#ending
      if (e !== null && !this.#endHeard) {
        this.#endHeard = true
        l.end(e._tag === "Eof" ? null : e.error)
      }
      return
    }
    const w = this.#wake
    if (w !== null) {
      this.#wake = null
      w()
    }
  }

  /** Stop reading and end the stream after what is buffered. */
  #end(ending: Ending): void {
    if (this.#ending !== null) return
    this.#ending = ending
    this.#reading = false
    this.#parser.dispose()
    // The listener first (the vmm's exit path goes on from its EOF), then the poll;
    // stopped even if the listener throws, or a socket at EOF would be polled on and on.
    try {
      this.#notify()
    } finally {
      this.#watch()
    }
  }

  #fail(error: ChannelError): void {
    this.#end({ _tag: "Failed", error })
  }

  /** Hand the inbox over; reading resumes if it had paused for the consumer. */
  #takeInbox(): Array<Imsg> {
    const msgs = this.#inbox
    this.#inbox = []
    this.#inboxBytes = 0
    if (!this.#reading && this.#ending === null && !this.#closed) {
      this.#reading = true
      this.#watch()
    }
    return msgs
  }

  /** What the consumer gets next, or null to wait. */
  #take(): Effect.Effect<Chunk.Chunk<Imsg>, Option.Option<ChannelError>> | null {
    if (this.#inbox.length > 0) return Effect.succeed(Chunk.unsafeFromArray(this.#takeInbox()))
    const e = this.#ending
    if (e === null) return null
    return e._tag === "Eof" ? Effect.fail(Option.none()) : Effect.fail(Option.some(e.error))
  }

  readonly #pull: Effect.Effect<Chunk.Chunk<Imsg>, Option.Option<ChannelError>> = Effect.suspend(
    () =>
      (this.#listener !== null ? Effect.dieMessage("imsg channel: messages of a channel with a listener") : null) ??
      this.#take() ??
      Effect.async<Chunk.Chunk<Imsg>, Option.Option<ChannelError>>((resume) => {
        this.#wake = () => resume(this.#pull)
        return Effect.sync(() => {
          this.#wake = null
        })
      })
  )

  readonly messages: Stream.Stream<Imsg, ChannelError> = Stream.repeatEffectChunkOption(this.#pull)

  listen(listener: ChannelListener): Effect.Effect<void> {
    return Effect.sync(() => {
      if (this.#listener !== null || this.#wake !== null) throw new Error("imsg channel: a second consumer")
      this.#listener = listener
      this.#notify()
    })
  }

  /** #pull without Chunk and Option: what a plain loop consumes (Channel.receive). */
  readonly receive: Effect.Effect<ReadonlyArray<Imsg> | null, ChannelError> = Effect.suspend(() => {
    if (this.#listener !== null) return Effect.dieMessage("imsg channel: receive on a channel with a listener")
    if (this.#inbox.length > 0) return Effect.succeed(this.#takeInbox())
    const e = this.#ending
    if (e !== null) return e._tag === "Eof" ? Effect.succeed(null) : Effect.fail(e.error)
    return Effect.async<ReadonlyArray<Imsg> | null, ChannelError>((resume) => {
      this.#wake = () => resume(this.receive)
      return Effect.sync(() => {
        this.#wake = null
      })
    })
  })

  // ---- output -----------------------------------------------------------

  #tooLarge(size: number): ChannelError {
    return new ChannelError({ reason: "TooLarge", message: `imsg payload ${size} > ${MAX_IMSG_PAYLOAD}`, errno: Errno.ERANGE })
  }

  #closedError(): ChannelError {
    return new ChannelError({
      reason: "Closed",
      message: `send on closed imsg channel fd ${this.#driver.fd}`,
      errno: Errno.EPIPE
    })
  }

  /** Queue one message now: null, or why not (its fd is closed then). */
  #enqueue(msg: OutgoingImsg): ChannelError | null {
    const size = msg.data?.length ?? 0
    // The fd is ours from here on (OutgoingImsg): a send that fails closes it.
    // Found by test/reliability: a PAUSE_VM with an fd for a VM whose peer
    // had gone leaked the fd in the vmm.
    if (size > MAX_IMSG_PAYLOAD) {
      msg.fd?.closeSync()
      return this.#tooLarge(size)
    }
    if (this.#closed || this.#peerGone) {
      msg.fd?.closeSync()
      return this.#closedError()
    }
    this.#writer.push(msg)
    this.#scheduleWrite()
    return null
  }

  /** One write per turn, however many messages were queued in it. */
  #scheduleWrite(): void {
    if (!this.#writing && !this.#writeScheduled) {
      this.#writeScheduled = true
      queueMicrotask(this.#writeSoon)
    }
  }

  /** Queue one message now (Channel.unsafeSend). */
  sendNow(msg: OutgoingImsg): ChannelError | null {
    return this.#enqueue(msg)
  }

  /**
   * `sendNow` then `writePendingNow` (Channel.unsafeSendNow). With nothing
   * queued or being written, a small fd-less message is framed and written
   * with one sendmsg straight away, without the writer's queue (its compose
   * chunk, run and gather: tens of µs of cold code on the exit path). Each
   * outcome is the pair's: what the socket does not take (a partial write,
   * EAGAIN) is queued and written when it is writable; EPIPE drops it and
   * marks the peer gone; another error fails the channel.
   */
  sendWriteNow(msg: OutgoingImsg): ChannelError | null {
    const data = msg.data
    const plen = data === undefined ? 0 : data.length
    if (
      msg.fd == null &&
      plen <= DIRECT_MAX_PAYLOAD &&
      !this.#closed &&
      !this.#peerGone &&
      !this.#writing &&
      !this.#writeScheduled &&
      this.#writer.length === 0
    ) {
      const size = IMSG_HEADER_SIZE + plen
      // no fd: the len word is the same in either header format
      writeHeader(directFrame, 0, msg.type, size, false, msg.peerid, msg.pid === 0 ? process.pid : msg.pid)
      if (plen > 0) directFrame.set(data as Uint8Array, IMSG_HEADER_SIZE)
      directBatch.lens[0] = size
      directBatch.length = size
      this.#guard(() => {
        const n = this.#driver.send(directBatch)
        if (n === size) return
        if (n > 0 || wouldBlock(n)) {
          // as the queue's write would have left it: the rest queued, written when the socket takes it
          this.#writer.push(msg)
          if (n > 0) this.#writer.written(n)
          this.#waitWritable()
        } else this.#writeFailed(n)
      })
      return null
    }
    const e = this.#enqueue(msg)
    if (e === null) this.writePendingNow()
    return e
  }

  send(msg: OutgoingImsg): Effect.Effect<void, ChannelError> {
    return Effect.suspend(() => {
      const e = this.#enqueue(msg)
      return e === null ? Effect.void : Effect.fail(e)
    })
  }

  sendAll(msgs: Iterable<OutgoingImsg>): Effect.Effect<void, ChannelError> {
    return Effect.suspend(() => {
      const list = Array.isArray(msgs) ? (msgs as ReadonlyArray<OutgoingImsg>) : Array.from(msgs)
      let error: ChannelError | null = this.#closed || this.#peerGone ? this.#closedError() : null
      if (error === null) {
        for (const m of list) {
          const size = m.data?.length ?? 0
          if (size > MAX_IMSG_PAYLOAD) {
            error = this.#tooLarge(size)
            break
          }
        }
      }
      if (error !== null) {
        for (const m of list) m.fd?.closeSync()
        return Effect.fail(error)
      }
      this.#writer.pushAll(list)
      if (list.length > 0) this.#scheduleWrite()
      return Effect.void
    })
  }

  readonly #writeSoon = (): void => {
    this.#writeScheduled = false
    if (!this.#writing) this.#guard(() => this.#writeNow())
  }

  /** The scheduled write, now (its microtask then finds nothing to do). */
  writePendingNow(): void {
    if (this.#writeScheduled && !this.#writing && !this.#closed) this.#writeSoon()
  }

  readonly writePending: Effect.Effect<void> = Effect.sync(() => this.writePendingNow())

  /** msgbuf_write until the queue is empty or the socket is full. */
  #writeNow(): void {
    if (this.#closed) return
    const d = this.#driver
    const w = this.#writer
    for (;;) {
      const batch = w.gather()
      if (batch === null) break
      const n = d.send(batch)
      if (n > 0) {
        w.written(n)
        if (n < batch.length) return this.#waitWritable()
      } else if (wouldBlock(n)) {
        return this.#waitWritable()
      } else {
        this.#writeFailed(n)
        break
      }
    }
    if (this.#writing) {
      this.#writing = false
      this.#watch()
    }
    this.#drained()
  }

  /** A sendmsg that sent nothing and cannot be retried (n: 0 or -errno, not EAGAIN): the queue is dropped. */
  #writeFailed(n: number): void {
    this.#writer.clear(closeFd)
    if (n === -Errno.EPIPE) {
      // the peer is gone: what it sent before is still readable
      this.#peerGone = true
      if (this.#reading) this.#readNow()
    } else {
      this.#fail(ioError("sendmsg", n === 0 ? Errno.EIO : -n))
    }
  }

  #waitWritable(): void {
    if (!this.#writing) {
      this.#writing = true
      this.#watch()
    }
  }

  #drained(): void {
    for (const f of this.#flushed.splice(0)) f()
  }

  readonly flush: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (this.#writer.length === 0 || this.#closed) return resume(Effect.void)
    const f = () => resume(Effect.void)
    this.#flushed.push(f)
    return Effect.sync(() => {
      const i = this.#flushed.indexOf(f)
      if (i >= 0) this.#flushed.splice(i, 1)
    })
  })

  queuedNow(): number {
    return this.#writer.length
  }

  readonly queued: Effect.Effect<number> = Effect.sync(() => this.queuedNow())

  // ---- closing ----------------------------------------------------------

  /** Everything of closing but waiting for the driver; false if already closed. */
  #shut(): boolean {
    if (this.#closed) return false
    this.#closed = true
    this.#reading = this.#writing = false
    this.#writer.clear(closeFd)
    for (const m of this.#inbox) if (m.fd !== null) m.fd.closeSync()
    this.#inbox = []
    this.#end(EOF)
    this.#drained()
    return true
  }

  readonly close: Effect.Effect<void> = Effect.suspend(() =>
    this.#shut()
      ? Effect.async<void>((resume) => {
          this.#driver.close(() => resume(Effect.void))
        })
      : Effect.void
  )

  /** close without waiting for the driver's callback (Channel.unsafeClose). */
  closeNow(): void {
    if (this.#shut()) this.#driver.close(() => {})
  }

  get fd(): number {
    return this.#driver.fd
  }
}

/** A channel on a driver, closed when the scope ends. */
export const makeChannel = (
  socket: (events: DriverEvents) => SocketDriver,
  options: ChannelOptions = {}
): Channel => {
  const c = new ImsgConnection(socket, options)
  return {
    fd: c.fd,
    send: (msg) => c.send(msg),
    sendAll: (msgs) => c.sendAll(msgs),
    messages: c.messages,
    receive: c.receive,
    listen: (l) => c.listen(l),
    flush: c.flush,
    writePending: c.writePending,
    close: c.close,
    queued: c.queued,
    unsafeSend: (msg) => c.sendNow(msg),
    unsafeSendNow: (msg) => c.sendWriteNow(msg),
    unsafeWritePending: () => c.writePendingNow(),
    unsafeClose: () => c.closeNow(),
    unsafeQueued: () => c.queuedNow(),
    unsafeHold: (hold) => c.holdNow(hold),
    resume: Effect.sync(() => c.resumeNow())
  }
}

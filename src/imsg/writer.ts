/**
 * The output queue and its gathering into sendmsg batches (msgbuf_write,
 * imsg.md §2). Pure: it fills a staging area and says which fd goes with it.
 *
 * - Messages leave in FIFO order as one byte stream.
 * - A message carrying an fd may only begin a batch; fd-less messages after
 *   it may share that batch. The fd rides on a batch only when the batch
 *   starts at byte 0 of that message.
 * - After a partial write the unsent rest stays staged and is sent next,
 *   without its fd: the fd went with the first sendmsg that sent anything
 *   (libutil: "assumption: fd got sent if sendmsg sent anything"); the
 *   caller disposes of it then.
 *
 * Where libutil hands the kernel an iovec per message, this copies messages
 * into one staging area, which is cheaper than an iovec per small message
 * from JS. The copy happens when the batch is gathered, not at `push`
 * (imsg_compose copies at once): a caller must not change `data` after
 * sending it. Received payloads are never rewritten, so forwarding one is safe.
 */
import type { HeaderFormat } from "../schema/imsgHeader.ts"
import { IMSG_HEADER_SIZE, lenWord, MAX_IMSGSIZE } from "../schema/imsgHeader.ts"

export interface QueuedImsg<F> {
  readonly type: number
  readonly peerid: number
  /** 0 becomes the writer's pid (imsg_compose). */
  readonly pid: number
  readonly data?: Uint8Array | undefined
  readonly fd?: F | null | undefined
}

/** staging[offset, offset + length) to send, with `fd` attached when not null. */
export interface Batch<F> {
  readonly offset: number
  readonly length: number
  readonly fd: F | null
}

export interface WriterOptions {
  /** Written for pid 0. */
  readonly pid: number
  readonly format?: HeaderFormat
}

const EMPTY = new Uint8Array(0)

const sizeOf = <F>(m: QueuedImsg<F>): number => IMSG_HEADER_SIZE + (m.data?.length ?? 0)

export class ImsgWriter<F> {
  #staging: Uint8Array = EMPTY
  #dv: DataView = new DataView(EMPTY.buffer)
  #getStaging: (() => Uint8Array) | null
  readonly #pid: number
  readonly #format: HeaderFormat
  #queue: Array<QueuedImsg<F> | undefined> = []
  #head = 0
  /** Bytes of the head message already accepted by the socket. */
  #headSent = 0
  #start = 0
  #end = 0

  /**
   * `staging` may be a function: it is then called on the first `gather`, so
   * that a channel that never sends never allocates one.
   */
  constructor(staging: Uint8Array | (() => Uint8Array), options: WriterOptions) {
    this.#pid = options.pid
    this.#format = options.format ?? "current"
    if (typeof staging === "function") this.#getStaging = staging
    else {
      this.#getStaging = null
      this.#setStaging(staging)
    }
  }

  #setStaging(staging: Uint8Array): void {
    if (staging.length < MAX_IMSGSIZE) throw new RangeError("imsg staging area smaller than MAX_IMSGSIZE")
    this.#staging = staging
    this.#dv = new DataView(staging.buffer, staging.byteOffset, staging.byteLength)
  }

  /** Messages not completely written (imsgbuf_queuelen). */
  get length(): number {
    return this.#queue.length - this.#head
  }

  /** Queue a message; its size must already be checked against MAX_IMSGSIZE. */
  push(msg: QueuedImsg<F>): void {
    this.#queue.push(msg)
  }

  /**
   * The next batch, or null when the queue is empty. What a partial write
   * left staged goes first, as it is; only an empty staging area is filled
   * again, from the head of the queue.
   */
  gather(): Batch<F> | null {
    const q = this.#queue
    if (this.#head === q.length) return null
    const head = q[this.#head] as QueuedImsg<F>
    // the head's fd rides only on a batch that starts at its first byte
    const fd = this.#headSent === 0 ? (head.fd ?? null) : null
    if (this.#start < this.#end) return { offset: this.#start, length: this.#end - this.#start, fd }
    if (this.#getStaging !== null) {
      this.#setStaging(this.#getStaging())
      this.#getStaging = null
    }
    const st = this.#staging
    const dv = this.#dv
    let o = 0
    for (let i = this.#head; i < q.length; i++) {
      const m = q[i] as QueuedImsg<F>
      // an fd-carrying message only begins a batch
      if (i > this.#head && m.fd != null) break
      const size = sizeOf(m)
      if (o + size > st.length) break
      dv.setUint32(o, m.type, true)
      dv.setUint32(o + 4, lenWord(size, m.fd != null, this.#format), true)
      dv.setUint32(o + 8, m.peerid, true)
      dv.setUint32(o + 12, m.pid === 0 ? this.#pid : m.pid, true)
      if (size > IMSG_HEADER_SIZE) st.set(m.data ?? EMPTY, o + IMSG_HEADER_SIZE)
      o += size
    }
    this.#start = 0
    this.#end = o
    return { offset: 0, length: o, fd }
  }

  /** The socket accepted n > 0 bytes of the last batch. Its fd, if any, is gone now. */
  written(n: number): void {
    this.#start += n
    const q = this.#queue
    while (n > 0) {
      const rest = sizeOf(q[this.#head] as QueuedImsg<F>) - this.#headSent
      if (n < rest) {
        this.#headSent += n
        break
      }
      n -= rest
      q[this.#head++] = undefined
      this.#headSent = 0
    }
    if (this.#start === this.#end) this.#start = this.#end = 0
    if (this.#head === q.length) {
      this.#queue = []
      this.#head = 0
    } else if (this.#head >= 1024 && this.#head * 2 >= q.length) {
      this.#queue = q.slice(this.#head)
      this.#head = 0
    }
  }

  /** Drop every queued message; `closeFd` gets each fd that was not sent. */
  clear(closeFd: (fd: F) => void): void {
    const q = this.#queue
    for (let i = this.#head; i < q.length; i++) {
      const fd = q[i]?.fd
      if (fd != null && !(i === this.#head && this.#headSent > 0)) closeFd(fd)
    }
    this.#queue = []
    this.#head = this.#headSent = this.#start = this.#end = 0
  }
}

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
 * Where libutil hands the kernel an iovec per message, this copies headers
 * and small payloads into a staging area (cheaper than an iovec per small
 * message from JS) and gives large payloads an iovec of their own (no copy).
 * The staging area may be shared by every channel of the process, so an
 * idle channel holds none: after a partial write the rest of the batch is
 * sent as it is if no other writer has gathered into the staging area
 * since, and is staged again from the queue otherwise.
 * The copy happens when the batch is gathered, not at `push` (imsg_compose
 * copies at once): a caller must not change `data` after sending it.
 * Received payloads are never rewritten, so forwarding one is safe.
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

/**
 * One sendmsg's worth: pieces first..count-1, piece i being bufs[i][offs[i], offs[i] + lens[i]),
 * `length` bytes in all, with `fd` attached when not null. The arrays are reused by the
 * next `gather`.
 */
export interface Batch<F> {
  readonly first: number
  readonly count: number
  readonly bufs: ReadonlyArray<Uint8Array>
  readonly offs: ReadonlyArray<number>
  readonly lens: ReadonlyArray<number>
  readonly length: number
  readonly fd: F | null
}

/** The bytes one sendmsg of the batch sends: its pieces, in order, in one buffer. */
export const batchBytes = <F>(b: Batch<F>): Uint8Array => {
  const out = new Uint8Array(b.length)
  let o = 0
  for (let i = b.first; i < b.count; i++) {
    const off = b.offs[i] as number
    const len = b.lens[i] as number
    out.set((b.bufs[i] as Uint8Array).subarray(off, off + len), o)
    o += len
  }
  return out
}

export interface WriterOptions {
  /** Written for pid 0. */
  readonly pid: number
  readonly format?: HeaderFormat
}

const EMPTY = new Uint8Array(0)
/** Payloads from this size on get an iovec of their own instead of a copy into the staging area. */
export const OWN_IOVEC = 2048
/** Bytes per batch at most (about a Linux socket buffer); a first message is always taken whole. */
export const MAX_BATCH = 256 * 1024
/** Pieces per batch at most (IOV_MAX is 1024). */
export const MAX_PIECES = 1024

const sizeOf = <F>(m: QueuedImsg<F>): number => IMSG_HEADER_SIZE + (m.data?.length ?? 0)

/** The writer whose batch is in the (shared) staging area. */
let stagingUser: object | null = null

class Pieces<F> implements Batch<F> {
  first = 0
  count = 0
  readonly bufs: Array<Uint8Array> = []
  readonly offs: Array<number> = []
  readonly lens: Array<number> = []
  length = 0
  fd: F | null = null

  add(buf: Uint8Array, off: number, len: number): void {
    const i = this.count++
    this.bufs[i] = buf
    this.offs[i] = off
    this.lens[i] = len
    this.length += len
  }

  /** n bytes of the front were sent. */
  advance(n: number): void {
    this.length -= n
    let i = this.first
    while (n > 0) {
      const len = this.lens[i] as number
      if (n < len) {
        this.offs[i] = (this.offs[i] as number) + n
        this.lens[i] = len - n
        break
      }
      n -= len
      this.bufs[i++] = EMPTY
    }
    this.first = i
  }

  /** Forget the buffers (a staged payload must not be kept alive by the writer). */
  release(): void {
    for (let i = this.first; i < this.count; i++) this.bufs[i] = EMPTY
    this.first = this.count = this.length = 0
    this.fd = null
  }
}

export class ImsgWriter<F> {
  #staging: Uint8Array = EMPTY
  #dv: DataView = new DataView(EMPTY.buffer)
  readonly #getStaging: () => Uint8Array
  readonly #pid: number
  readonly #format: HeaderFormat
  #queue: Array<QueuedImsg<F> | undefined> = []
  #head = 0
  /** Bytes of the head message already accepted by the socket. */
  #headSent = 0
  readonly #batch = new Pieces<F>()
  /** #batch holds what is left of the last gather (valid while stagingUser is this writer). */
  #batchLive = false

  /**
   * `staging` (at least MAX_IMSGSIZE bytes; MAX_BATCH to fill a batch) may be
   * a function: it is then called at every `gather`, so that a channel that
   * never sends never allocates one, and channels may share one.
   */
  constructor(staging: Uint8Array | (() => Uint8Array), options: WriterOptions) {
    this.#pid = options.pid
    this.#format = options.format ?? "current"
    this.#getStaging = typeof staging === "function" ? staging : () => staging
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
   * The next batch, or null when the queue is empty: from the first unsent
   * byte of the head message on, as many messages as fit (MAX_BATCH,
   * MAX_PIECES), stopping before a second fd-carrying message.
   */
  gather(): Batch<F> | null {
    const q = this.#queue
    const b = this.#batch
    if (this.#batchLive && stagingUser === this) return b
    b.release()
    this.#batchLive = false
    if (this.#head === q.length) return null
    const staging = this.#getStaging()
    if (staging !== this.#staging) this.#setStaging(staging)
    stagingUser = this
    this.#batchLive = true
    const st = this.#staging
    const dv = this.#dv
    const head = q[this.#head] as QueuedImsg<F>
    const skip = this.#headSent
    // the head's fd rides only on a batch that starts at its first byte
    b.fd = skip === 0 ? (head.fd ?? null) : null
    let o = 0
    /** Start of the staged bytes not yet made a piece. */
    let from = 0
    let total = 0
    for (let i = this.#head; i < q.length; i++) {
      const m = q[i] as QueuedImsg<F>
      const data = m.data ?? EMPTY
      const plen = data.length
      const size = IMSG_HEADER_SIZE + plen
      const own = plen >= OWN_IOVEC
      if (i > this.#head) {
        // an fd-carrying message only begins a batch
        if (m.fd != null) break
        if (total + size > MAX_BATCH || b.count + 2 >= MAX_PIECES) break
        if (o + IMSG_HEADER_SIZE + (own ? 0 : plen) > st.length) break
      }
      const s = i === this.#head ? skip : 0
      dv.setUint32(o, m.type, true)
      dv.setUint32(o + 4, lenWord(size, m.fd != null, this.#format), true)
      dv.setUint32(o + 8, m.peerid, true)
      dv.setUint32(o + 12, m.pid === 0 ? this.#pid : m.pid, true)
      if (own) {
        if (s < IMSG_HEADER_SIZE) {
          if (i === this.#head) from = s
          o += IMSG_HEADER_SIZE
          b.add(st, from, o - from)
        } else o += IMSG_HEADER_SIZE
        const ps = s > IMSG_HEADER_SIZE ? s - IMSG_HEADER_SIZE : 0
        b.add(data, ps, plen - ps)
        from = o
      } else {
        if (i === this.#head) from = s
        if (plen > 0) st.set(data, o + IMSG_HEADER_SIZE)
        o += size
      }
      total += size - s
    }
    if (o > from) b.add(st, from, o - from)
    return b
  }

  /** The socket accepted n > 0 bytes of the last batch. Its fd, if any, is gone now. */
  written(n: number): void {
    const b = this.#batch
    if (this.#batchLive && n < b.length) {
      b.advance(n)
      b.fd = null // it went with the bytes just sent
    } else {
      b.release()
      this.#batchLive = false
    }
    const q = this.#queue
    let rest = sizeOf(q[this.#head] as QueuedImsg<F>) - this.#headSent
    while (n >= rest) {
      n -= rest
      q[this.#head++] = undefined
      this.#headSent = 0
      if (this.#head === q.length) break
      rest = sizeOf(q[this.#head] as QueuedImsg<F>)
    }
    if (n > 0) this.#headSent += n
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
    this.#batch.release()
    this.#batchLive = false
    this.#queue = []
    this.#head = this.#headSent = 0
  }
}

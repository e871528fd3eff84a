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
 * Where libutil hands the kernel an iovec per message, this frames the
 * small fd-less messages when they are queued, as imsg_compose does: header
 * and payload copied into a compose chunk (64 KiB, from a process-wide pool,
 * held only while it has bytes unsent), consecutive ones forming one run of
 * bytes that `gather` hands over as one piece and `written` retires at once.
 * A queue of small messages so costs a header and a copy per message and
 * nothing per message after that (bench-imsg: ~60-70 ns per 100-byte message
 * less than keeping each message object until it was gathered and written).
 * A message carrying an fd, or a payload of OWN_IOVEC bytes or more, stays
 * queued as it is; when gathered, its header (and a small payload) is copied
 * into a staging area and a large payload gets an iovec of its own (no
 * copy). The staging area may be shared by every channel of the process, so
 * an idle channel holds none (nor any chunk): after a partial write the
 * rest of the batch is sent as it is if no other writer has gathered into
 * the staging area since, and is staged again from the queue otherwise.
 * A large payload, or one sent with an fd, is read when the batch is
 * gathered, not at `push`: a caller must not change `data` after sending
 * it. Received payloads are never rewritten, so forwarding one is safe.
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
  /** Tests: compose chunks of this many bytes (at least OWN_IOVEC + 15; not pooled) instead of CHUNK_SIZE. */
  readonly chunkSize?: number
}

const EMPTY = new Uint8Array(0)
/** Payloads from this size on get an iovec of their own instead of a copy into the staging area. */
export const OWN_IOVEC = 2048
/** Bytes per batch at most (about a Linux socket buffer); a first message is always taken whole. */
export const MAX_BATCH = 256 * 1024
/** Pieces per batch at most (IOV_MAX is 1024). */
export const MAX_PIECES = 1024

const sizeOf = <F>(m: QueuedImsg<F>): number => IMSG_HEADER_SIZE + (m.data?.length ?? 0)

/** Bytes per compose chunk (a frame composed at push is at most OWN_IOVEC + 15 bytes). */
export const CHUNK_SIZE = 64 * 1024
/** Free chunks kept for reuse, process-wide (a fresh ArrayBuffer per batch would feed V8's old-generation limit). */
const POOL_MAX = 8

interface Chunk {
  readonly buf: Uint8Array
  readonly dv: DataView
  /** Bytes composed into it so far. */
  used: number
  /** Runs in it not completely written: it goes back to the pool when none is left and it is not a writer's current chunk. */
  runs: number
}

const pool: Array<Chunk> = []

const takeChunk = (size: number): Chunk => {
  const c = size === CHUNK_SIZE ? pool.pop() : undefined
  if (c !== undefined) return c
  const b = Buffer.allocUnsafeSlow(size)
  const buf = new Uint8Array(b.buffer, b.byteOffset, b.length)
  return { buf, dv: new DataView(buf.buffer, buf.byteOffset, buf.length), used: 0, runs: 0 }
}

const giveChunk = (c: Chunk): void => {
  c.used = 0
  c.runs = 0
  if (pool.length < POOL_MAX && c.buf.length === CHUNK_SIZE) pool.push(c)
}

/** Free compose chunks in the process-wide pool (tests). */
export const pooledChunks = (): number => pool.length

/**
 * Consecutive small fd-less messages, framed at push: bytes [start, end) of
 * its chunk, `count` messages, the first of them beginning at `start`.
 */
class Run {
  constructor(
    readonly chunk: Chunk,
    public start: number,
    public end: number,
    public count: number
  ) {}
}

type Entry<F> = QueuedImsg<F> | Run

const entrySize = <F>(e: Entry<F>): number => (e instanceof Run ? e.end - e.start : sizeOf(e))

/** Framed when queued, into a run: no fd, and a payload too small for an iovec of its own. */
const composed = <F>(m: QueuedImsg<F>): boolean => m.fd == null && (m.data?.length ?? 0) < OWN_IOVEC

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
  readonly #chunkSize: number
  #queue: Array<Entry<F> | undefined> = []
  #head = 0
  /** Bytes of the head entry already accepted by the socket (less than its first message, for a run). */
  #headSent = 0
  /** Messages not completely written. */
  #pending = 0
  /** Where small messages are composed, while any is queued. */
  #chunk: Chunk | null = null
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
    this.#chunkSize = options.chunkSize ?? CHUNK_SIZE
    if (this.#chunkSize < IMSG_HEADER_SIZE + OWN_IOVEC - 1) throw new RangeError("imsg compose chunk smaller than a small message")
    this.#getStaging = typeof staging === "function" ? staging : () => staging
  }

  #setStaging(staging: Uint8Array): void {
    if (staging.length < MAX_IMSGSIZE) throw new RangeError("imsg staging area smaller than MAX_IMSGSIZE")
    this.#staging = staging
    this.#dv = new DataView(staging.buffer, staging.byteOffset, staging.byteLength)
  }

  /** Whether it holds a compose chunk (it does only while a small message is queued). */
  get holdsChunk(): boolean {
    return this.#chunk !== null
  }

  /** Messages not completely written (imsgbuf_queuelen). */
  get length(): number {
    return this.#pending
  }

  /**
   * Queue a message; its size must already be checked against MAX_IMSGSIZE.
   * A small fd-less one is framed into the compose chunk now.
   */
  push(msg: QueuedImsg<F>): void {
    this.#add([msg])
  }

  /** Queue these messages, in order (`push` each, with the compose state kept in locals across them). */
  pushAll(msgs: ReadonlyArray<QueuedImsg<F>>): void {
    this.#add(msgs)
  }

  #add(list: ReadonlyArray<QueuedImsg<F>>): void {
    const n = list.length
    const pid = this.#pid
    let i = 0
    while (i < n) {
      const first = list[i] as QueuedImsg<F>
      if (!composed(first)) {
        this.#queue.push(first)
        this.#pending++
        i++
        continue
      }
      // A run of small fd-less messages, framed into the chunk with its state in locals.
      // (A full chunk still has runs unsent: it goes back to the pool when they are written.)
      const limit = this.#chunkSize
      let c = this.#chunk
      if (c === null || c.used + IMSG_HEADER_SIZE + (first.data?.length ?? 0) > limit) c = this.#chunk = takeChunk(limit)
      const buf = c.buf
      const dv = c.dv
      const from = c.used
      const begin = i
      let o = from
      for (; i < n; i++) {
        const m = list[i] as QueuedImsg<F>
        if (!composed(m)) break
        const data = m.data
        const plen = data === undefined ? 0 : data.length
        const size = IMSG_HEADER_SIZE + plen
        if (o + size > limit) break
        dv.setUint32(o, m.type, true)
        dv.setUint32(o + 4, size, true) // lenWord(size, false, either format): no fd, no flag
        dv.setUint32(o + 8, m.peerid, true)
        dv.setUint32(o + 12, m.pid === 0 ? pid : m.pid, true)
        if (plen > 0) buf.set(data as Uint8Array, o + IMSG_HEADER_SIZE)
        o += size
      }
      const count = i - begin
      c.used = o
      this.#pending += count
      // the queue's last entry, if it is the run these bytes continue, takes them
      const q = this.#queue
      const last = q.length > this.#head ? q[q.length - 1] : undefined
      if (last instanceof Run && last.chunk === c && last.end === from) {
        last.end = o
        last.count += count
      } else {
        c.runs++
        q.push(new Run(c, from, o, count))
      }
    }
  }

  /**
   * The next batch, or null when the queue is empty: from the first unsent
   * byte of the head entry on, as many entries as fit (MAX_BATCH,
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
    const head = q[this.#head] as Entry<F>
    const skip = this.#headSent
    // the head's fd rides only on a batch that starts at its first byte (a run has none)
    b.fd = skip === 0 && !(head instanceof Run) ? (head.fd ?? null) : null
    let o = 0
    /** Start of the staged bytes not yet made a piece. */
    let from = 0
    let total = 0
    for (let i = this.#head; i < q.length; i++) {
      const e = q[i] as Entry<F>
      const s = i === this.#head ? skip : 0
      if (e instanceof Run) {
        const size = e.end - e.start
        if (i > this.#head && (total + size > MAX_BATCH || b.count + 2 >= MAX_PIECES)) break
        if (o > from) b.add(st, from, o - from)
        from = o
        b.add(e.chunk.buf, e.start + s, size - s)
        total += size - s
        continue
      }
      const m = e
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

  /** A run or a message completely written. */
  #retire(e: Entry<F>): void {
    if (!(e instanceof Run)) {
      this.#pending--
      return
    }
    this.#pending -= e.count
    this.#runGone(e.chunk)
  }

  /** A run of chunk `c` written or dropped. */
  #runGone(c: Chunk): void {
    if (--c.runs === 0) {
      if (c !== this.#chunk) giveChunk(c)
      else c.used = 0 // nothing of it is unsent: compose from its start again
    }
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
    let e = q[this.#head] as Entry<F>
    let rest = entrySize(e) - this.#headSent
    while (n >= rest) {
      n -= rest
      this.#retire(e)
      q[this.#head++] = undefined
      this.#headSent = 0
      if (this.#head === q.length) break
      e = q[this.#head] as Entry<F>
      rest = entrySize(e)
    }
    if (n > 0) {
      let sent = this.#headSent + n
      if (e instanceof Run) {
        // whole messages of a run partly written are written: the run begins at the first that is not
        const dv = e.chunk.dv
        for (let len = dv.getUint32(e.start + 4, true); sent >= len; len = dv.getUint32(e.start + 4, true)) {
          sent -= len
          e.start += len
          e.count--
          this.#pending--
        }
      }
      this.#headSent = sent
    }
    if (this.#head === q.length) {
      this.#queue = []
      this.#head = 0
      this.#dropChunk()
    } else if (this.#head >= 1024 && this.#head * 2 >= q.length) {
      this.#queue = q.slice(this.#head)
      this.#head = 0
    }
  }

  /** Nothing queued: the current chunk goes back to the pool (an idle writer holds none). */
  #dropChunk(): void {
    const c = this.#chunk
    if (c !== null && c.runs === 0) {
      this.#chunk = null
      giveChunk(c)
    }
  }

  /** Drop every queued message; `closeFd` gets each fd that was not sent. */
  clear(closeFd: (fd: F) => void): void {
    const q = this.#queue
    for (let i = this.#head; i < q.length; i++) {
      const e = q[i] as Entry<F>
      if (e instanceof Run) {
        this.#runGone(e.chunk)
        continue
      }
      const fd = e.fd
      if (fd != null && !(i === this.#head && this.#headSent > 0)) closeFd(fd)
    }
    this.#batch.release()
    this.#batchLive = false
    this.#queue = []
    this.#head = this.#headSent = this.#pending = 0
    this.#dropChunk()
  }
}

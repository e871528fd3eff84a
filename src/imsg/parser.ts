/**
 * Incremental imsg parser (imsgbuf_read + imsg_parse_hdr, imsg.md §2-3).
 *
 * Pure: bytes in, messages out. Reads land in the parser's own buffer
 * (`readTarget`, then `commit` with the fds that read received), or are
 * copied in (`feed`). Leftover bytes of an unfinished message stay where
 * they are, so any split or merge of the stream parses alike.
 *
 * fd rule (msgbuf_read): of the fds of one read only the first is kept, the
 * rest are closed at once. The kept fd goes to the first header completed
 * by the bytes of that same read whose len has the fd mark; if no such
 * header is completed, the fd is closed at the end of the call. A marked
 * header with no fd to take gets fd null, and `fdMissing` (the peer sent
 * none, or the kernel dropped it: MSG_CTRUNC, out of file descriptors;
 * libutil's imsg_get gives fd -1 alike).
 *
 * A masked len < 16 or > maxSize is a framing error (libutil: ERANGE), found
 * as soon as the header is complete; the parser then refuses further input.
 *
 * Memory: reads land in one receive slab shared by every parser of the
 * process (readTarget, recvmsg and commit run back to back on the one JS
 * thread, and commit checks it). An idle parser holds no buffer.
 * - A read with at least COPY_LIMIT bytes of complete messages (a busy
 *   channel) leaves them where they are: payloads are views of the slab (as
 *   Node's sockets hand out slices of their read buffer), and the next read
 *   goes after them. No copy per message.
 * - A smaller read (the usual control message) has its payloads copied out
 *   into a small arena (64 KiB), and its part of the slab is used again by
 *   the next read: a retained small message keeps an arena alive, not a slab.
 * The bytes of an unfinished message stay in the slab while the same
 * parser reads next; otherwise they are copied to where the next read goes.
 *
 * Release (imsg_free): a slab or arena is rewritten only once nothing views
 * it. Each message whose payload is a view of one holds a reference on it
 * until `releaseImsg`; a parser whose unfinished bytes are in a slab holds
 * one while they are there. When a read needs room (or finds the slab
 * unreferenced), a slab whose only reference is the reading parser's own
 * unfinished bytes is started again: those bytes move to its start; else a
 * full slab that has become free (a few are kept once released from) is
 * taken rather than a new one. An arena with no reference is started
 * again likewise. A consumer that never releases gets what it always did:
 * payloads that never change, and a fresh slab whenever one is full.
 *
 * Why no release can be inferred: views may be held for any time, and JS
 * learns that a view died only at a mark-compact (V8's scavenges keep
 * WeakRef and FinalizationRegistry targets alive); copying payloads out
 * instead would allocate as many bytes. The cost of fresh slabs (Node 20,
 * V8 11.3): external bytes allocated since the last mark-compact count
 * against the old generation's allocation limit, so once a mark-compact
 * has left the limit at its minimum (an old generation that hardly grows),
 * ~8 MiB of new slabs start incremental marking again, before a scavenge
 * has freed the dead ones: back-to-back mark-compacts under bulk receive
 * (bench-imsg "16 KiB + fd, C → TS"), whatever the slab or semispace size,
 * unless the consumer releases what it has read.
 */
import type { HeaderFormat } from "../schema/imsgHeader.ts"
import { IMSG_FD_MARK, IMSG_HEADER_SIZE, IMSGF_HASFD_LEGACY, MAX_IMSGSIZE } from "../schema/imsgHeader.ts"

export interface ParsedImsg<F> {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly fd: F | null
  /** The header was marked as carrying an fd, and none came with it. */
  readonly fdMissing?: boolean
}

export type FeedResult = { readonly ok: true } | { readonly ok: false; readonly len: number }

export interface ParserOptions<F> {
  /** Close an fd nobody claimed. Called exactly once per such fd. */
  readonly closeFd: (fd: F) => void
  /** Largest len including the header (imsgbuf.maxsize); MAX_IMSGSIZE by default. */
  readonly maxSize?: number
  readonly format?: HeaderFormat
}

const OK: FeedResult = { ok: true }
const EMPTY = new Uint8Array(0)
/** Size of a receive slab: several reads (Linux socket buffers are about 208 KiB). */
const SLAB = 512 * 1024
/** readTarget never offers less room than this. */
export const MIN_READ = 16 * 1024
/** Reads of fewer bytes than this (with the unfinished message before them) have their payloads copied out. */
const COPY_LIMIT = 8 * 1024
/** Size of a small-payload arena. */
const ARENA = 64 * 1024

/** Uninitialised memory (malloc, not calloc): only bytes a read wrote are ever looked at. */
const allocate = (size: number): Uint8Array => {
  const b = Buffer.allocUnsafeSlow(size)
  return new Uint8Array(b.buffer, b.byteOffset, b.length)
}

/**
 * A receive slab or small-payload arena, with the number of references on it:
 * delivered messages viewing it (until released) and parsers whose
 * unfinished bytes are in it. It is rewritten only when that number is 0
 * (or, for the slab, 1 held by the reading parser itself).
 */
class Region {
  refs = 0
  /** A message of it was released: its consumer releases, so it may become free again (a spare, see `nextSlab`). */
  released = false
  readonly dv: DataView
  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
  }
}

const NO_REGION = new Region(EMPTY)

/** A received message. A class: one hidden class for every message. */
class Received<F> implements ParsedImsg<F> {
  /** The region its data views, holding one reference on it; null once released (or never). */
  #region: Region | null
  constructor(
    readonly type: number,
    readonly peerid: number,
    readonly pid: number,
    readonly data: Uint8Array,
    readonly fd: F | null,
    region: Region | null,
    readonly fdMissing: boolean
  ) {
    this.#region = region
  }

  static release(m: object): void {
    if (#region in m) {
      const r = m.#region
      if (r !== null) {
        r.refs--
        r.released = true
        m.#region = null
      }
    }
  }
}

/**
 * imsg_free for the payload: the message's `data` is no longer looked at
 * (nor any view of it kept), so its bytes may be overwritten by a later
 * read. Without it the payload stays valid forever (and the receive slab is
 * never reused). Its fd, if any, is not touched: the consumer still owns it.
 * Idempotent; a no-op on a message whose data is no view of a slab or
 * arena: not from a parser (built by hand), an empty payload, or one
 * already released.
 */
export const releaseImsg = (m: ParsedImsg<unknown>): void => Received.release(m)

/**
 * The process-wide receive slab: bytes before `fill` may be referenced (views
 * handed out, or a parser's unfinished message); the next read goes at `fill`.
 */
let slab: Region = NO_REGION
let fill = 0
/** The parser between its readTarget and commit. */
let reader: object | null = null
/**
 * Full slabs that a consumer releases from (at most MAX_SPARES, oldest
 * first): the next slab is one of them once nothing refers to it, when the
 * consumer lags behind the reads by more than a slab (a channel reads up to
 * its high-water mark, 1 MiB, before its consumer takes any). A slab no
 * message was ever released from is not kept: without releases, no memory
 * is held beyond what the views hold.
 */
const spares: Array<Region> = []
const MAX_SPARES = 3

/** A slab of at least `size` bytes to replace the current one: a free spare, or a new one. */
const nextSlab = (size: number): Region => {
  const old = slab
  let next: Region | null = null
  if (size <= SLAB) {
    for (let i = 0; i < spares.length; i++) {
      const r = spares[i] as Region
      if (r.refs === 0) {
        next = r
        spares.splice(i, 1)
        break
      }
    }
  }
  if (old.released && old.bytes.length === SLAB) {
    if (spares.length === MAX_SPARES) spares.shift()
    spares.push(old)
  }
  return next ?? new Region(allocate(Math.max(SLAB, size)))
}

/** Where small reads' payloads are copied: arena.bytes[arenaFill...] is free. */
let arena: Region = NO_REGION
let arenaFill = 0

/** len bytes of arena room, for payloads that must outlive the slab's bytes. */
const arenaRoom = (len: number): void => {
  // nothing views the arena: start it again
  if (arena.refs === 0) arenaFill = 0
  if (arena.bytes.length - arenaFill < len) {
    arena = new Region(allocate(Math.max(ARENA, len)))
    arenaFill = 0
  }
}

export class ImsgParser<F> {
  readonly #closeFd: (fd: F) => void
  readonly #max: number
  readonly #current: boolean
  /** The bytes of an unfinished message: #buf[#start, #end) (#buf is EMPTY when there are none). */
  #buf: Uint8Array = EMPTY
  #start = 0
  #end = 0
  /** The slab that #buf[#start, #end) is in, holding one reference on it while there are such bytes; else null. */
  #held: Region | null = null
  /** The header at #start was parsed in an earlier call (its fd decided then). */
  #headerDone = false
  #len = 0
  #fd: F | null = null
  /** The header at #start has the fd mark. */
  #marked = false
  #failed: FeedResult | null = null

  constructor(options: ParserOptions<F>) {
    this.#closeFd = options.closeFd
    this.#max = options.maxSize ?? MAX_IMSGSIZE
    this.#current = (options.format ?? "current") === "current"
  }

  /** The len (mark removed) of a header's len word. */
  #lenOf(word: number): number {
    return this.#current ? word & 0x7fffffff : word & 0xffff
  }

  /** Hold `region` for the unfinished bytes (null: there are none in a slab). */
  #hold(region: Region | null): void {
    const h = this.#held
    if (h === region) return
    if (region !== null) region.refs++
    if (h !== null) h.refs--
    this.#held = region
  }

  /** Bytes of an unfinished message are buffered (EOF now would cut a message). */
  get midMessage(): boolean {
    return this.#end > this.#start
  }

  /**
   * Where the next read goes: at least `min` bytes of room, right after the
   * bytes of the unfinished message. The room is in the shared slab: `commit`
   * must follow before any other parser's readTarget.
   */
  readTarget(min: number = MIN_READ): Uint8Array {
    const tail = this.#end - this.#start
    let s = slab
    if (!(this.#buf === s.bytes && this.#end === fill && s.bytes.length - fill >= min)) {
      if (s.refs === (this.#held === s ? 1 : 0) && s.bytes.length >= tail + min) {
        // nothing but our own unfinished bytes refers to the slab: start it again
        if (tail > 0) {
          if (this.#buf === s.bytes) s.bytes.copyWithin(0, this.#start, this.#end)
          else s.bytes.set(this.#buf.subarray(this.#start, this.#end), 0)
        }
        fill = 0
      } else {
        if (s.bytes.length - fill < tail + min) {
          slab = s = nextSlab(tail + min)
          fill = 0
        }
        if (tail > 0) s.bytes.set(this.#buf.subarray(this.#start, this.#end), fill)
      }
      this.#buf = s.bytes
      this.#start = fill
      this.#end = fill += tail
      this.#hold(tail > 0 ? s : null)
    }
    reader = this
    return s.bytes.subarray(fill)
  }

  /**
   * `n` bytes of one read were written at the start of readTarget(); `fds`
   * came with them (ownership passes to the parser). Complete messages are
   * appended to `out`, whose fds then belong to the caller.
   */
  commit(n: number, fds: ReadonlyArray<F>, out: Array<ParsedImsg<F>>): FeedResult {
    let fd: F | null = fds.length > 0 ? (fds[0] ?? null) : null
    for (let i = 1; i < fds.length; i++) this.#closeFd(fds[i] as F)
    if (this.#failed !== null) {
      if (fd !== null) this.#closeFd(fd)
      return this.#failed
    }
    if (reader !== this) throw new Error("ImsgParser.commit without its readTarget")
    reader = null
    // readTarget placed the unfinished bytes in the current slab, and the read after them
    const region = slab
    const buf = region.bytes
    const dv = region.dv
    const start = this.#start
    const end = this.#end + n
    // a small read's payloads are copied out, so that its part of the slab can be used again
    const small = end - start < COPY_LIMIT
    if (small) arenaRoom(end - start)
    const into = small ? arena : region
    const ab = into.bytes.buffer
    const abOffset = into.bytes.byteOffset
    let p = start
    let failed: FeedResult | null = null
    for (;;) {
      if (!this.#headerDone) {
        if (end - p < IMSG_HEADER_SIZE) break
        const word = dv.getUint32(p + 4, true)
        const len = this.#lenOf(word)
        if (len < IMSG_HEADER_SIZE || len > this.#max) {
          failed = { ok: false, len }
          break
        }
        this.#len = len
        this.#marked = this.#current ? word >= IMSG_FD_MARK : ((word >>> 16) & IMSGF_HASFD_LEGACY) !== 0
        if (fd !== null && this.#marked) {
          this.#fd = fd
          fd = null
        }
      }
      const len = this.#len
      if (end - p < len) {
        this.#headerDone = true // its fd is decided; the payload comes later
        break
      }
      this.#headerDone = false
      const plen = len - IMSG_HEADER_SIZE
      let data: Uint8Array = EMPTY
      let held: Region | null = null
      if (plen > 0) {
        const from = p + IMSG_HEADER_SIZE
        if (small) {
          into.bytes.set(buf.subarray(from, from + plen), arenaFill)
          data = new Uint8Array(ab, abOffset + arenaFill, plen)
          arenaFill += plen
        } else data = new Uint8Array(ab, abOffset + from, plen)
        held = into
        into.refs++
      }
      out.push(
        new Received<F>(dv.getUint32(p, true), dv.getUint32(p + 8, true), dv.getUint32(p + 12, true), data, this.#fd, held, this.#marked && this.#fd === null)
      )
      this.#fd = null
      p += len
    }
    const tail = failed !== null ? 0 : end - p
    if (small) {
      if (tail > 0) {
        // an unfinished message: its bytes move out too, so that nothing here refers to the slab
        const keep = allocate(tail)
        keep.set(buf.subarray(p, end))
        this.#buf = keep
        this.#start = 0
        this.#end = tail
      } else {
        this.#buf = EMPTY
        this.#start = this.#end = 0
      }
      this.#hold(null)
      fill = start
    } else {
      // a busy read: payloads are views of the slab, the next read goes after them
      fill = end
      if (tail > 0) {
        this.#start = p
        this.#end = end
        this.#hold(region)
      } else {
        this.#buf = EMPTY
        this.#start = this.#end = 0
        this.#hold(null)
      }
    }
    if (buf.length > SLAB) {
      // a slab grown for one oversized read is not kept for the next ones
      slab = NO_REGION
      fill = 0
    }
    if (fd !== null) this.#closeFd(fd)
    if (failed !== null) {
      this.#failed = failed
      return failed
    }
    return OK
  }

  /** Parse bytes[start, end) as one read (copied in); see `commit`. */
  feed(bytes: Uint8Array, start: number, end: number, fds: ReadonlyArray<F>, out: Array<ParsedImsg<F>>): FeedResult {
    this.readTarget(end - start).set(bytes.subarray(start, end))
    return this.commit(end - start, fds, out)
  }

  /** Drop buffered bytes and close the fd of an unfinished message. */
  dispose(): void {
    if (this.#fd !== null) this.#closeFd(this.#fd)
    this.#fd = null
    this.#headerDone = false
    this.#buf = EMPTY
    this.#start = this.#end = 0
    this.#hold(null)
  }
}

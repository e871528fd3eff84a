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
 * header with no fd to take gets fd null.
 *
 * A masked len < 16 or > maxSize is a framing error (libutil: ERANGE), found
 * as soon as the header is complete; the parser then refuses further input.
 *
 * Memory: reads land in one receive slab shared by every parser of the
 * process (readTarget, recvmsg and commit run back to back on the one JS
 * thread, and commit checks it). An idle parser holds no buffer.
 * - A read with at least COPY_LIMIT bytes of complete messages (a busy
 *   channel) leaves them where they are: payloads are views of the slab,
 *   which is never rewritten (as Node's sockets hand out slices of their
 *   read buffer), and the next read goes after them. No copy per message.
 * - A smaller read (the usual control message) has its payloads copied out
 *   into a small arena (64 KiB, never rewritten either), and its part of the
 *   slab is used again by the next read: a retained small message keeps an
 *   arena alive, not a slab.
 * The bytes of an unfinished message stay in the slab while the same
 * parser reads next; otherwise they are copied to where the next read goes.
 */
import type { HeaderFormat } from "../schema/imsgHeader.ts"
import { IMSG_FD_MARK, IMSG_HEADER_SIZE, IMSGF_HASFD_LEGACY, MAX_IMSGSIZE } from "../schema/imsgHeader.ts"

export interface ParsedImsg<F> {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly fd: F | null
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

/** A received message. A class: one hidden class for every message; data is set once its read is placed. */
class Received<F> implements ParsedImsg<F> {
  constructor(
    readonly type: number,
    readonly peerid: number,
    readonly pid: number,
    public data: Uint8Array,
    readonly fd: F | null
  ) {}
}

/**
 * The process-wide receive slab: bytes before `fill` may be referenced (views
 * handed out, or a parser's unfinished message); the next read goes at `fill`.
 */
let slab: Uint8Array = EMPTY
let slabDv: DataView = new DataView(EMPTY.buffer)
let fill = 0
/** The parser between its readTarget and commit. */
let reader: object | null = null
/** Where small reads' payloads are copied: arena[arenaFill...] is free. */
let arena: Uint8Array = EMPTY
let arenaFill = 0

/** len bytes of arena room, for payloads that must outlive the slab's bytes. */
const arenaRoom = (len: number): void => {
  if (arena.length - arenaFill < len) {
    arena = allocate(Math.max(ARENA, len))
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
  /** The header at #start was parsed in an earlier call (its fd decided then). */
  #headerDone = false
  #len = 0
  #fd: F | null = null
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
    if (!(this.#buf === slab && this.#end === fill && slab.length - fill >= min)) {
      if (slab.length - fill < tail + min) {
        slab = allocate(Math.max(SLAB, tail + min))
        slabDv = new DataView(slab.buffer, slab.byteOffset, slab.length)
        fill = 0
      }
      if (tail > 0) slab.set(this.#buf.subarray(this.#start, this.#end), fill)
      this.#buf = slab
      this.#start = fill
      this.#end = fill += tail
    }
    reader = this
    return slab.subarray(fill)
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
    const buf = this.#buf
    const dv = slabDv
    const start = this.#start
    const end = this.#end + n
    // a small read's payloads are copied out, so that its part of the slab can be used again
    const small = end - start < COPY_LIMIT
    if (small) arenaRoom(end - start)
    const ab = small ? arena.buffer : buf.buffer
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
        if (fd !== null && (this.#current ? word >= IMSG_FD_MARK : ((word >>> 16) & IMSGF_HASFD_LEGACY) !== 0)) {
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
      if (plen > 0) {
        const from = p + IMSG_HEADER_SIZE
        if (small) {
          arena.set(buf.subarray(from, from + plen), arenaFill)
          data = new Uint8Array(ab, arena.byteOffset + arenaFill, plen)
          arenaFill += plen
        } else data = new Uint8Array(ab, buf.byteOffset + from, plen)
      }
      out.push(new Received<F>(dv.getUint32(p, true), dv.getUint32(p + 8, true), dv.getUint32(p + 12, true), data, this.#fd))
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
      if (buf === slab) fill = start
    } else {
      // a busy read: payloads are views of the slab, the next read goes after them
      if (buf === slab) fill = end
      if (tail > 0) {
        this.#start = p
        this.#end = end
      } else {
        this.#buf = EMPTY
        this.#start = this.#end = 0
      }
    }
    if (buf.length > SLAB && buf === slab) {
      // a slab grown for one oversized read is not kept for the next ones
      slab = EMPTY
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
  }
}

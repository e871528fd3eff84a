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
 * Payloads are views of a slab that is never rewritten (as Node's sockets
 * hand out slices of their read buffer): no copy per message, and a
 * retained message keeps at most one slab alive. Only the unfinished tail
 * is copied when a full slab is retired.
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
/**
 * Read slabs start small (a VM channel carries a few messages a minute) and
 * double each time one fills up, to MAX_SLAB (the parent channel in a burst).
 */
const FIRST_SLAB = 32 * 1024
const MAX_SLAB = 256 * 1024
/** readTarget never offers less room than this. */
export const MIN_READ = 16 * 1024

/** Uninitialised memory (malloc, not calloc): only bytes a read wrote are ever looked at. */
const allocate = (size: number): Uint8Array => {
  const b = Buffer.allocUnsafeSlow(size)
  return new Uint8Array(b.buffer, b.byteOffset, b.length)
}

export class ImsgParser<F> {
  readonly #closeFd: (fd: F) => void
  readonly #max: number
  readonly #current: boolean
  #buf: Uint8Array = EMPTY
  #dv: DataView = new DataView(EMPTY.buffer)
  /** Bytes before `#parsed` were delivered; [#parsed, #filled) wait for the rest of a message. */
  #parsed = 0
  #filled = 0
  /** The header at #parsed was parsed in an earlier call (its fd decided then). */
  #headerDone = false
  #len = 0
  #fd: F | null = null
  #failed: FeedResult | null = null
  #slab = FIRST_SLAB

  constructor(options: ParserOptions<F>) {
    this.#closeFd = options.closeFd
    this.#max = options.maxSize ?? MAX_IMSGSIZE
    this.#current = (options.format ?? "current") === "current"
  }

  /** Bytes of an unfinished message are buffered (EOF now would cut a message). */
  get midMessage(): boolean {
    return this.#filled > this.#parsed
  }

  /** Where the next read goes: at least `min` bytes of room, right after the buffered tail. */
  readTarget(min: number = MIN_READ): Uint8Array {
    if (this.#buf.length - this.#filled < min) {
      const tail = this.#filled - this.#parsed
      const next = allocate(Math.max(this.#slab, tail + min))
      this.#slab = Math.min(this.#slab * 2, MAX_SLAB)
      next.set(this.#buf.subarray(this.#parsed, this.#filled))
      this.#buf = next
      this.#dv = new DataView(next.buffer, next.byteOffset, next.length)
      this.#parsed = 0
      this.#filled = tail
    }
    return this.#buf.subarray(this.#filled)
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
    const dv = this.#dv
    const ab = dv.buffer
    const base = dv.byteOffset + IMSG_HEADER_SIZE
    const end = (this.#filled += n)
    let p = this.#parsed
    for (;;) {
      if (!this.#headerDone) {
        if (end - p < IMSG_HEADER_SIZE) break
        const word = dv.getUint32(p + 4, true)
        const len = this.#current ? word & 0x7fffffff : word & 0xffff
        if (len < IMSG_HEADER_SIZE || len > this.#max) {
          this.#failed = { ok: false, len }
          if (fd !== null) this.#closeFd(fd)
          return this.#failed
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
      out.push({
        type: dv.getUint32(p, true),
        peerid: dv.getUint32(p + 8, true),
        pid: dv.getUint32(p + 12, true),
        data: plen === 0 ? EMPTY : new Uint8Array(ab, base + p, plen),
        fd: this.#fd
      })
      this.#fd = null
      p += len
    }
    this.#parsed = p
    if (fd !== null) this.#closeFd(fd)
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
    this.#parsed = this.#filled
  }
}

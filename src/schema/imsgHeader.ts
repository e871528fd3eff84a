/**
 * struct imsg_hdr (imsg.md §1): 16 bytes, four little-endian uint32.
 *
 * | offset | field  | meaning                                                   |
 * |--------|--------|-----------------------------------------------------------|
 * | 0      | type   | message type                                              |
 * | 4      | len    | bits 0-30: length including this header; bit 31: has fd  |
 * | 8      | peerid | copied verbatim                                           |
 * | 12     | pid    | sender pid (imsg_compose puts getpid() for 0)             |
 *
 * The legacy layout (imsg.h 1.5 .. imsg.c 1.35, §1.3, still in Debian's
 * openbgpd/openntpd) has `len` u16 at 4 and `flags` u16 at 6 with
 * IMSGF_HASFD = 1; fd-less messages are byte-identical to the current ones.
 */

export const IMSG_HEADER_SIZE = 16
/** Largest `len`, header included (imsg.h MAX_IMSGSIZE). */
export const MAX_IMSGSIZE = 16384
/** Largest payload: MAX_IMSGSIZE - IMSG_HEADER_SIZE. */
export const MAX_IMSG_PAYLOAD = MAX_IMSGSIZE - IMSG_HEADER_SIZE
/** Bit 31 of `len`: an fd accompanies this message. */
export const IMSG_FD_MARK = 0x80000000
/** Legacy layout: `flags` bit 0 (bytes 6-7) marks an fd. */
export const IMSGF_HASFD_LEGACY = 1

/** Which fd flag the header carries: bit 31 of len (current) or flags u16 (legacy, §1.3). */
export type HeaderFormat = "current" | "legacy"

export interface ImsgHeader {
  readonly type: number
  /** Total length including the header, fd mark removed. */
  readonly len: number
  readonly hasFd: boolean
  readonly peerid: number
  readonly pid: number
}

const u32 = (b: Uint8Array, o: number): number =>
  ((b[o] ?? 0) | ((b[o + 1] ?? 0) << 8) | ((b[o + 2] ?? 0) << 16) | ((b[o + 3] ?? 0) << 24)) >>> 0

const put32 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = v & 0xff
  b[o + 1] = (v >>> 8) & 0xff
  b[o + 2] = (v >>> 16) & 0xff
  b[o + 3] = (v >>> 24) & 0xff
}

export const readType = u32
export const readPeerid = (b: Uint8Array, o: number): number => u32(b, o + 8)
export const readPid = (b: Uint8Array, o: number): number => u32(b, o + 12)

/** The raw 32-bit `len` word at offset 4 (mark included). */
export const readLenWord = (b: Uint8Array, o: number): number => u32(b, o + 4)

/** Length (mark removed) of a raw len word. */
export const lenOf = (word: number, format: HeaderFormat = "current"): number =>
  format === "current" ? (word & 0x7fffffff) >>> 0 : word & 0xffff

/** Whether a raw len word marks an attached fd. */
export const hasFdMark = (word: number, format: HeaderFormat = "current"): boolean =>
  format === "current" ? word >= IMSG_FD_MARK : ((word >>> 16) & IMSGF_HASFD_LEGACY) !== 0

/** A masked len < 16 or > max is a framing error (imsgbuf_read: ERANGE). */
export const validLen = (len: number, max: number = MAX_IMSGSIZE): boolean => len >= IMSG_HEADER_SIZE && len <= max

/** The len word for a message of `len` bytes (header included), fd flag per format. */
export const lenWord = (len: number, hasFd: boolean, format: HeaderFormat = "current"): number =>
  (hasFd ? (format === "current" ? len | IMSG_FD_MARK : len | (IMSGF_HASFD_LEGACY << 16)) : len) >>> 0

/** Write a header at `offset`. `len` includes the header. */
export const writeHeader = (
  b: Uint8Array,
  offset: number,
  type: number,
  len: number,
  hasFd: boolean,
  peerid: number,
  pid: number,
  format: HeaderFormat = "current"
): void => {
  put32(b, offset, type)
  put32(b, offset + 4, lenWord(len, hasFd, format))
  put32(b, offset + 8, peerid)
  put32(b, offset + 12, pid)
}

/** Decode a header (fd mark removed from len). */
export const decodeHeader = (b: Uint8Array, offset = 0, format: HeaderFormat = "current"): ImsgHeader => {
  const word = readLenWord(b, offset)
  return {
    type: u32(b, offset),
    len: lenOf(word, format),
    hasFd: hasFdMark(word, format),
    peerid: readPeerid(b, offset),
    pid: readPid(b, offset)
  }
}

/** Encode a header into 16 new bytes. */
export const encodeHeader = (h: ImsgHeader, format: HeaderFormat = "current"): Uint8Array => {
  const b = new Uint8Array(IMSG_HEADER_SIZE)
  writeHeader(b, 0, h.type, h.len, h.hasFd, h.peerid, h.pid, format)
  return b
}

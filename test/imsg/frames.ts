/** Test helpers: building imsg byte streams and cutting them into reads. */
import fc from "fast-check"
import { IMSG_HEADER_SIZE, writeHeader } from "../../src/schema/imsgHeader.ts"
import type { FeedResult, ImsgParser, ParsedImsg } from "../../src/imsg/parser.ts"

export interface Frame {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  /** bit 31 of len */
  readonly marked: boolean
}

export const frameArb = (maxPayload = 200, size: fc.SizeForArbitrary = "small"): fc.Arbitrary<Frame> =>
  fc.record({
    type: fc.nat(0xffffffff),
    peerid: fc.nat(0xffffffff),
    pid: fc.nat(0xffffffff),
    // size "max": lengths spread up to maxPayload (fast-check's default keeps them near 10)
    data: fc.uint8Array({ maxLength: maxPayload, size }),
    marked: fc.boolean()
  })

/** The wire bytes of frames, and where each frame starts. */
export const encodeFrames = (frames: ReadonlyArray<Frame>): { bytes: Uint8Array; starts: Array<number> } => {
  const total = frames.reduce((n, f) => n + IMSG_HEADER_SIZE + f.data.length, 0)
  const bytes = new Uint8Array(total)
  const starts: Array<number> = []
  let o = 0
  for (const f of frames) {
    starts.push(o)
    writeHeader(bytes, o, f.type, IMSG_HEADER_SIZE + f.data.length, f.marked, f.peerid, f.pid)
    bytes.set(f.data, o + IMSG_HEADER_SIZE)
    o += IMSG_HEADER_SIZE + f.data.length
  }
  return { bytes, starts }
}

/** Sorted, distinct cut points strictly inside (0, total), turned into [start, end) reads. */
export const readsOf = (total: number, cuts: Iterable<number>): Array<readonly [number, number]> => {
  const cs = [...new Set([...cuts].filter((c) => c > 0 && c < total))].sort((a, b) => a - b)
  const bounds = [0, ...cs, total]
  const reads: Array<readonly [number, number]> = []
  for (let i = 0; i + 1 < bounds.length; i++) reads.push([bounds[i] as number, bounds[i + 1] as number])
  return reads
}

export const hex = (s: string): Uint8Array => Uint8Array.from(s.trim().split(/\s+/).map((b) => parseInt(b, 16)))

export const toHex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ")

/**
 * Several encoded streams, each read by its own parser, in turns (parsers
 * that share the process's receive slab): `step(k, n)` feeds stream k's
 * parser its next 1..n bytes (at least one, at most what is left) into
 * `outs[k]` and returns feed's result and where that step's messages begin
 * in `outs[k]`; `left(k)` says whether stream k has bytes left.
 */
export const feedInTurns = <F>(enc: ReadonlyArray<Uint8Array>, parsers: ReadonlyArray<ImsgParser<F>>) => {
  const at = enc.map(() => 0)
  const outs = enc.map(() => [] as Array<ParsedImsg<F>>)
  const step = (k: number, n: number): { readonly result: FeedResult; readonly before: number } => {
    const bytes = enc[k] as Uint8Array
    const a = at[k] as number
    const b = Math.min(bytes.length, a + Math.max(1, n))
    const out = outs[k] as Array<ParsedImsg<F>>
    const before = out.length
    const result = (parsers[k] as ImsgParser<F>).feed(bytes, a, b, [], out)
    at[k] = b
    return { result, before }
  }
  const left = (k: number): boolean => (at[k] as number) < (enc[k] as Uint8Array).length
  return { outs, step, left }
}

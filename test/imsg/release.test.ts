import { beforeEach, describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import type { ParsedImsg } from "../../src/imsg/parser.ts"
import { ImsgParser, releaseImsg } from "../../src/imsg/parser.ts"
import { MAX_IMSG_PAYLOAD } from "../../src/schema/imsgHeader.ts"
import type { Imsg } from "../../src/services/ImsgChannel.ts"
import { releaseImsg as releaseFromService } from "../../src/services/ImsgChannel.ts"
import type { Frame } from "./frames.ts"
import { encodeFrames, feedInTurns } from "./frames.ts"

const parser = () => new ImsgParser<number>({ closeFd: () => {} })

/** n messages of `size` payload bytes, message i filled with (seed + i) & 0xff, as one byte stream. */
const stream = (n: number, size: number, seed: number): Uint8Array =>
  encodeFrames(
    Array.from({ length: n }, (_, i) => ({ type: 1, peerid: i, pid: 0, data: new Uint8Array(size).fill((seed + i) & 0xff), marked: false }))
  ).bytes

const intact = (m: ParsedImsg<number>, size: number, seed: number): boolean =>
  m.data.length === size && m.data.every((x) => x === ((seed + m.peerid) & 0xff))

/** Feed `bytes` in reads of `step` bytes, releasing every message at once: the buffers the reads' payloads landed in. */
const churn = (bytes: Uint8Array, step: number): Array<ArrayBufferLike> => {
  const p = parser()
  const buffers: Array<ArrayBufferLike> = []
  for (let a = 0; a < bytes.length; a += step) {
    const out: Array<ParsedImsg<number>> = []
    expect(p.feed(bytes, a, Math.min(bytes.length, a + step), [], out)).toEqual({ ok: true })
    for (const m of out) {
      buffers.push(m.data.buffer)
      releaseImsg(m)
    }
  }
  return buffers
}

/**
 * Rewrite every byte that may be rewritten: reads of one 8 KiB message each
 * (busy reads, 64 to a slab, so that a slab is filled to its last byte),
 * all kept until the end (so that a reused slab is filled from its start),
 * then released; twice (the first round may free the slab it ends in).
 */
const junk = stream(200, 8192 - 16, 0x5a)
const overwriteFreeSlabs = () => {
  for (let round = 0; round < 2; round++) {
    const p = parser()
    const out: Array<ParsedImsg<number>> = []
    for (let a = 0; a < junk.length; a += 8192) expect(p.feed(junk, a, a + 8192, [], out)).toEqual({ ok: true })
    for (const m of out) releaseImsg(m)
  }
}

/** A message of a random size up to 16 KiB, its payload a pattern drawn from `seed` (random bytes of that size would be slow). */
const frameSpec = fc.record({
  type: fc.nat(0xffffffff),
  peerid: fc.nat(0xffffffff),
  pid: fc.nat(0xffffffff),
  size: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 4000 }), fc.integer({ min: 0, max: MAX_IMSG_PAYLOAD })),
  seed: fc.nat(0xffff)
})
const frameOf = (f: { type: number; peerid: number; pid: number; size: number; seed: number }): Frame => {
  const data = new Uint8Array(f.size)
  for (let i = 0; i < f.size; i++) data[i] = (f.seed + i * 7 + (i >> 8)) & 0xff
  return { type: f.type, peerid: f.peerid, pid: f.pid, data, marked: false }
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.length).equals(b)

describe("releaseImsg", () => {
  // each test starts with a current slab that nothing refers to (what earlier tests kept is elsewhere)
  beforeEach(overwriteFreeSlabs)

  it("payloads stay what was sent until released, whatever the reads, releases and other parsers' unfinished bytes", () => {
    fc.assert(
      fc.property(
        // two streams of messages, some large (16 KiB: reads of the slab path). size "max": fast-check's
        // default size would keep arrays to about 10 elements (and frameArb's payloads to about 10 bytes)
        fc.array(fc.array(frameSpec, { minLength: 1, maxLength: 40, size: "max" }), { minLength: 2, maxLength: 2 }),
        // reads: which parser, how many bytes (both sides of the 8 KiB copy limit)
        fc.array(
          fc.tuple(
            fc.nat(1),
            fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 20_000 }), fc.integer({ min: 8192, max: 120_000 }))
          ),
          { minLength: 1, maxLength: 80, size: "max" }
        ),
        // what becomes of each message: 0 kept for ever, 1 released at once, 2..3 released that many reads later
        fc.array(
          fc.oneof(
            { weight: 6, arbitrary: fc.constant(1) },
            { weight: 1, arbitrary: fc.constant(0) },
            { weight: 1, arbitrary: fc.integer({ min: 2, max: 3 }) }
          ),
          { maxLength: 100, size: "max" }
        ),
        // or every message released at once (the slab reused as often as can be)
        fc.boolean(),
        (streams, turns, fates, releaseAll) => {
          const frameLists = streams.map((specs) => specs.map(frameOf))
          const enc = frameLists.map((frames) => encodeFrames(frames).bytes)
          const parsers = streams.map(() => parser())
          const feeds = feedInTurns(enc, parsers)
          const got = feeds.outs
          const kept: Array<[ParsedImsg<number>, Frame]> = []
          /** Messages to release after so many more reads, with what they must hold until then. */
          let pending: Array<{ m: ParsedImsg<number>; f: Frame; reads: number }> = []
          let nth = 0
          const step = (k: number, n: number) => {
            const { result, before } = feeds.step(k, n)
            expect(result).toEqual({ ok: true })
            const out = got[k] as Array<ParsedImsg<number>>
            pending = pending.filter((p) => {
              if (--p.reads > 0) return true
              expect(same(p.m.data, p.f.data)).toBe(true)
              releaseImsg(p.m)
              return false
            })
            for (let i = before; i < out.length; i++) {
              const m = out[i] as ParsedImsg<number>
              const f = (frameLists[k] as Array<Frame>)[i] as Frame
              expect([m.type, m.peerid, m.pid, same(m.data, f.data)]).toEqual([f.type, f.peerid, f.pid, true])
              const fate = releaseAll ? 1 : (fates[nth++ % Math.max(1, fates.length)] ?? 1)
              if (fate === 0) kept.push([m, f])
              else if (fate <= 1) releaseImsg(m)
              else pending.push({ m, f, reads: fate - 1 })
            }
          }
          for (const [who, n] of turns) if (feeds.left(who)) step(who, n)
          streams.forEach((_, k) => {
            while (feeds.left(k)) step(k, 30_000)
          })
          frameLists.forEach((frames, k) => {
            expect(got[k]?.length).toBe(frames.length)
            expect(parsers[k]?.midMessage).toBe(false)
          })
          for (const p of pending) expect(same(p.m.data, p.f.data)).toBe(true)
          // many more reads, free slabs rewritten: what was not released is still what was sent
          overwriteFreeSlabs()
          for (const [m, f] of kept) expect(same(m.data, f.data)).toBe(true)
          for (const p of pending) expect(same(p.m.data, p.f.data)).toBe(true)
        }
      ),
      // no shrinking: shrinking 80 reads of 40 messages of up to 16 KiB takes many minutes
      { numRuns: 200, endOnFailure: true }
    )
    // ~3 s alone; room for a loaded machine (CI beside other jobs)
  }, 120_000)

  it("once every message of the bulk reads is released, later reads land in the same slab", () => {
    // 3 MiB in reads of 10 messages (~160 KiB): six slabs' worth
    const buffers = churn(stream(200, MAX_IMSG_PAYLOAD, 1), 10 * (MAX_IMSG_PAYLOAD + 16))
    expect(buffers.length).toBe(200)
    expect(new Set(buffers).size).toBe(1)
  })

  it("a consumer that releases a read's messages only after the next read: full slabs are taken again once free", () => {
    // reads of ~300 KB (one to a slab), each released after the next one: never the current slab free
    const bytes = stream(400, MAX_IMSG_PAYLOAD, 5)
    const p = parser()
    const buffers = new Set<ArrayBufferLike>()
    let previous: Array<ParsedImsg<number>> = []
    for (let a = 0; a < bytes.length; a += 300_000) {
      const out: Array<ParsedImsg<number>> = []
      p.feed(bytes, a, Math.min(bytes.length, a + 300_000), [], out)
      for (const m of previous) {
        expect(intact(m, MAX_IMSG_PAYLOAD, 5)).toBe(true)
        releaseImsg(m)
      }
      for (const m of out) buffers.add(m.data.buffer)
      previous = out
    }
    for (const m of previous) expect(intact(m, MAX_IMSG_PAYLOAD, 5)).toBe(true)
    // 22 reads: without the spares, a new slab for each (the first reads may also find the slabs of earlier tests)
    expect(buffers.size).toBeLessThanOrEqual(4)
  })

  it("the reading parser's unfinished bytes move to the start of a reused slab intact", () => {
    const bytes = stream(100, MAX_IMSG_PAYLOAD, 7)
    const p = parser()
    const all: Array<ParsedImsg<number>> = []
    const buffers = new Set<ArrayBufferLike>()
    // reads of 100000 bytes: most end inside a message
    for (let a = 0; a < bytes.length; a += 100_000) {
      const out: Array<ParsedImsg<number>> = []
      p.feed(bytes, a, Math.min(bytes.length, a + 100_000), [], out)
      for (const m of out) {
        expect(intact(m, MAX_IMSG_PAYLOAD, 7)).toBe(true)
        buffers.add(m.data.buffer)
        releaseImsg(m)
      }
      all.push(...out)
    }
    expect(all.map((m) => m.peerid)).toEqual(Array.from({ length: 100 }, (_, i) => i))
    expect(buffers.size).toBe(1)
  })

  it("an unreleased message keeps its slab from reuse, and stays intact", () => {
    const bytes = stream(200, MAX_IMSG_PAYLOAD, 3)
    const p = parser()
    let keep: ParsedImsg<number> | null = null
    const buffers: Array<ArrayBufferLike> = []
    const step = 10 * (MAX_IMSG_PAYLOAD + 16)
    for (let a = 0; a < bytes.length; a += step) {
      const out: Array<ParsedImsg<number>> = []
      p.feed(bytes, a, a + step, [], out)
      for (const m of out) {
        buffers.push(m.data.buffer)
        if (keep === null) keep = m
        else releaseImsg(m)
      }
    }
    const kept = keep as unknown as ParsedImsg<number>
    expect(intact(kept, MAX_IMSG_PAYLOAD, 3)).toBe(true)
    // the first slab was not reused: later reads went on to another one (which, all released, is reused)
    expect(buffers.filter((b) => b === kept.data.buffer).length).toBeLessThan(200)
    expect(new Set(buffers).size).toBe(2)
    overwriteFreeSlabs()
    expect(intact(kept, MAX_IMSG_PAYLOAD, 3)).toBe(true)
  })

  it("another parser's unfinished bytes keep the slab from reuse", () => {
    const other = parser()
    const theirs = stream(3, MAX_IMSG_PAYLOAD, 9)
    const out: Array<ParsedImsg<number>> = []
    // a busy read that ends inside the second message: its first half stays in the slab
    other.feed(theirs, 0, MAX_IMSG_PAYLOAD + 16 + 9000, [], out)
    for (const m of out) releaseImsg(m)
    overwriteFreeSlabs()
    other.feed(theirs, MAX_IMSG_PAYLOAD + 16 + 9000, theirs.length, [], out)
    expect(out.length).toBe(3)
    for (const m of out) expect(intact(m, MAX_IMSG_PAYLOAD, 9)).toBe(true)
  })

  it("releasing twice is releasing once", () => {
    const bytes = stream(3, MAX_IMSG_PAYLOAD, 11)
    const p = parser()
    const out: Array<ParsedImsg<number>> = []
    p.feed(bytes, 0, bytes.length, [], out)
    const [a, b, d] = out as [ParsedImsg<number>, ParsedImsg<number>, ParsedImsg<number>]
    releaseImsg(a)
    releaseImsg(a)
    releaseImsg(b)
    // d is still held: were a's second release counted, the slab would look free
    overwriteFreeSlabs()
    expect(intact(d, MAX_IMSG_PAYLOAD, 11)).toBe(true)
  })

  it("small reads: copied payloads are reused once released, kept ones stay intact, double release counts once", () => {
    const bytes = stream(2000, 100, 13)
    const p = parser()
    const kept: Array<ParsedImsg<number>> = []
    const buffers = new Set<ArrayBufferLike>()
    // reads of 4 messages (464 bytes: below the copy limit)
    for (let a = 0; a < bytes.length; a += 4 * 116) {
      const out: Array<ParsedImsg<number>> = []
      p.feed(bytes, a, a + 4 * 116, [], out)
      for (const m of out) {
        if (m.peerid === 0) {
          kept.push(m)
          continue
        }
        buffers.add(m.data.buffer)
        releaseImsg(m)
        releaseImsg(m)
      }
    }
    // 200 KB of payloads, copied into arenas of 64 KiB: one arena, after the first (held by message 0)
    expect(buffers.size).toBe(2)
    // small reads whose payloads are all kept until the end: a free arena is filled from its start
    const churnSmall = stream(4000, 100, 99)
    const q = parser()
    const out: Array<ParsedImsg<number>> = []
    for (let a = 0; a < churnSmall.length; a += 4 * 116) q.feed(churnSmall, a, a + 4 * 116, [], out)
    for (const m of out) releaseImsg(m)
    for (const m of kept) expect(intact(m, 100, 13)).toBe(true)
  })

  it("is a no-op on messages not from a parser, and on empty payloads", () => {
    const byHand: Imsg = { type: 1, peerid: 2, pid: 3, data: new Uint8Array([1, 2, 3]), fd: null }
    releaseFromService(byHand)
    releaseFromService(byHand)
    expect(byHand).toEqual({ type: 1, peerid: 2, pid: 3, data: new Uint8Array([1, 2, 3]), fd: null })
    const p = parser()
    const out: Array<ParsedImsg<number>> = []
    const empty = stream(1, 0, 0)
    p.feed(empty, 0, empty.length, [], out)
    releaseImsg(out[0] as ParsedImsg<number>)
    releaseImsg(out[0] as ParsedImsg<number>)
    expect(out[0]?.data.length).toBe(0)
  })
})

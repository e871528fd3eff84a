import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import type { ParsedImsg } from "../../src/imsg/parser.ts"
import { ImsgParser } from "../../src/imsg/parser.ts"
import { IMSG_HEADER_SIZE, MAX_IMSG_PAYLOAD, writeHeader } from "../../src/schema/imsgHeader.ts"
import type { Frame } from "./frames.ts"
import { encodeFrames, feedInTurns, frameArb, hex, readsOf } from "./frames.ts"

/** A parser over number "fds" that records every close. */
const recording = () => {
  const closed: Array<number> = []
  const parser = new ImsgParser<number>({ closeFd: (fd) => closed.push(fd) })
  return { parser, closed }
}

const plain = (m: ParsedImsg<number>) => ({ type: m.type, peerid: m.peerid, pid: m.pid, data: Array.from(m.data) })
const plainFrame = (f: Frame) => ({ type: f.type, peerid: f.peerid, pid: f.pid, data: Array.from(f.data) })

describe("ImsgParser", () => {
  it("any chunking of a message sequence yields the same messages, each fd going to its own message", () => {
    fc.assert(
      fc.property(fc.array(frameArb(), { maxLength: 40 }), fc.array(fc.nat(20_000), { maxLength: 60 }), (frames, rawCuts) => {
      const { bytes, starts } = encodeFrames(frames)
      // The kernel delivers an fd with the read holding the start of the sendmsg that carried it,
      // and a read never spans two fd-carrying sendmsgs: no cut inside a marked header, and a
      // cut between consecutive marked messages.
      const marked = starts.filter((_, i) => frames[i]?.marked)
      const cuts = rawCuts.map((c) => c % (bytes.length + 1)).filter((c) => !marked.some((s) => c > s && c < s + 16))
      let prevEnd = 0
      for (const s of marked) {
        if (!cuts.some((c) => c >= prevEnd && c <= s)) cuts.push(s)
        prevEnd = s + IMSG_HEADER_SIZE
      }
      const reads = readsOf(bytes.length, cuts)
      const fdOf = new Map(marked.map((s, i) => [s, 100 + i]))
      const { parser, closed } = recording()
      const out: Array<ParsedImsg<number>> = []
      for (const [a, b] of reads) {
        const fds = marked.filter((s) => s >= a && s < b).map((s) => fdOf.get(s) as number)
        expect(fds.length).toBeLessThanOrEqual(1)
        expect(parser.feed(bytes, a, b, fds, out)).toEqual({ ok: true })
      }
      expect(out.map(plain)).toEqual(frames.map(plainFrame))
      expect(out.map((m) => m.fd)).toEqual(starts.map((s) => fdOf.get(s) ?? null))
      expect(closed).toEqual([])
      expect(parser.midMessage).toBe(false)
      })
    )
  })

  it("an fd goes to the first marked header completed in its read; every other fd is closed exactly once", () => {
    fc.assert(
      fc.property(
      fc.array(frameArb(40), { maxLength: 30 }),
      fc.array(fc.nat(5_000), { maxLength: 40 }),
      fc.array(fc.nat(2), { maxLength: 80 })
    , (frames, rawCuts, fdCounts) => {
      const { bytes, starts } = encodeFrames(frames)
      const reads = readsOf(bytes.length, rawCuts)
      const { parser, closed } = recording()
      const out: Array<ParsedImsg<number>> = []
      const expectedFd: Array<number | null> = frames.map(() => null)
      const expectedClosed: Array<number> = []
      let next = 100
      reads.forEach(([a, b], r) => {
        const fds = Array.from({ length: fdCounts[r] ?? 0 }, () => next++)
        // model: headers whose 16th byte lies in this read, in order
        const taker = starts.findIndex((s, i) => s + 15 >= a && s + 15 < b && frames[i]?.marked)
        fds.forEach((fd, k) => {
          if (k === 0 && taker >= 0) expectedFd[taker] = fd
          else expectedClosed.push(fd)
        })
        parser.feed(bytes, a, b, fds, out)
      })
      expect(out.map(plain)).toEqual(frames.map(plainFrame))
      expect(out.map((m) => m.fd)).toEqual(expectedFd)
      // a marked header that got no fd says so; one that got its fd, or was never marked, does not
      expect(out.map((m) => m.fdMissing)).toEqual(frames.map((f, i) => f.marked && expectedFd[i] === null))
      expect([...closed].sort((x, y) => x - y)).toEqual(expectedClosed.sort((x, y) => x - y))
      })
    )
  })

  it("a marked header with no fd in its read yields fd null and fdMissing, also when the fd came in an earlier read", () => {
    const { parser } = recording()
    const out: Array<ParsedImsg<number>> = []
    const { bytes } = encodeFrames([
      { type: 1, peerid: 2, pid: 3, data: new Uint8Array([9]), marked: true },
      { type: 4, peerid: 5, pid: 6, data: new Uint8Array([7]), marked: false }
    ])
    parser.feed(bytes, 0, bytes.length, [], out)
    expect(out).toEqual([
      { type: 1, peerid: 2, pid: 3, data: new Uint8Array([9]), fd: null, fdMissing: true },
      { type: 4, peerid: 5, pid: 6, data: new Uint8Array([7]), fd: null, fdMissing: false }
    ])
    // its header split over two reads, the fd with the second (where the header completes): no miss
    const again = recording()
    const got: Array<ParsedImsg<number>> = []
    again.parser.feed(bytes, 0, 8, [], got)
    again.parser.feed(bytes, 8, bytes.length, [42], got)
    expect(got.map((m) => [m.fd, m.fdMissing])).toEqual([
      [42, false],
      [null, false]
    ])
  })

  it("an fd whose read completes no marked header is closed; extra fds of one read are closed at once", () => {
    const { parser, closed } = recording()
    const out: Array<ParsedImsg<number>> = []
    const { bytes } = encodeFrames([
      { type: 1, peerid: 0, pid: 0, data: new Uint8Array(4), marked: false },
      { type: 2, peerid: 0, pid: 0, data: new Uint8Array(4), marked: true }
    ])
    parser.feed(bytes, 0, 10, [7, 8], out) // 10 bytes: no header completed
    expect(closed).toEqual([8, 7])
    parser.feed(bytes, 10, bytes.length, [9], out)
    expect(out.map((m) => m.fd)).toEqual([null, 9])
  })

  it.each([15, 16385, 0x7fffffff])("a masked len of %i is a framing error, and stays one", (len) => {
    const { parser, closed } = recording()
    const out: Array<ParsedImsg<number>> = []
    const b = new Uint8Array(32)
    writeHeader(b, 0, 1, len, true, 0, 0)
    expect(parser.feed(b, 0, 32, [5], out)).toEqual({ ok: false, len })
    expect(parser.feed(b, 0, 32, [6], out)).toEqual({ ok: false, len })
    expect(out).toEqual([])
    expect(closed).toEqual([5, 6])
  })

  it("accepts the largest message (16368 payload bytes) split byte by byte", () => {
    const { parser } = recording()
    const out: Array<ParsedImsg<number>> = []
    const { bytes } = encodeFrames([
      { type: 3, peerid: 4, pid: 5, data: new Uint8Array(MAX_IMSG_PAYLOAD).fill(7), marked: false }
    ])
    for (let i = 0; i < bytes.length; i++) parser.feed(bytes, i, i + 1, [], out)
    expect(out.length).toBe(1)
    expect(out[0]?.data.length).toBe(MAX_IMSG_PAYLOAD)
    expect(out[0]?.data.every((x) => x === 7)).toBe(true)
  })

  it("legacy format: flags = 1 marks the fd", () => {
    const closed: Array<number> = []
    const parser = new ImsgParser<number>({ closeFd: (fd) => closed.push(fd), format: "legacy" })
    const out: Array<ParsedImsg<number>> = []
    const b = hex("2c 00 00 00 14 00 01 00 00 00 00 00 04 03 02 01 00 00 00 00")
    expect(parser.feed(b, 0, b.length, [42], out)).toEqual({ ok: true })
    expect(out).toEqual([{ type: 44, peerid: 0, pid: 0x01020304, data: new Uint8Array(4), fd: 42, fdMissing: false }])
  })

  it("dispose closes the fd of an unfinished message", () => {
    const { parser, closed } = recording()
    const out: Array<ParsedImsg<number>> = []
    const { bytes } = encodeFrames([{ type: 1, peerid: 0, pid: 0, data: new Uint8Array(8), marked: true }])
    parser.feed(bytes, 0, 20, [3], out)
    expect(parser.midMessage).toBe(true)
    parser.dispose()
    expect(closed).toEqual([3])
    expect(out).toEqual([])
  })

  it("parsers sharing the receive slab, reading in turns, each get their own messages; payloads handed out never change", () => {
    fc.assert(
      fc.property(
        // size "max": payloads and streams large enough for reads past the copy limit (the slab path)
        fc.array(fc.array(frameArb(3000, "max"), { maxLength: 25, size: "max" }), { minLength: 2, maxLength: 3 }),
        fc.array(fc.tuple(fc.nat(2), fc.nat(20_000)), { minLength: 1, maxLength: 80 }),
        (streams, turns) => {
          const enc = streams.map((frames) => encodeFrames(frames.map((f) => ({ ...f, marked: false }))).bytes)
          const parsers = streams.map(() => recording().parser)
          const feeds = feedInTurns(enc, parsers)
          const outs = feeds.outs
          const snapshots = streams.map(() => [] as Array<Array<number>>)
          const step = (k: number, n: number) => {
            const { result, before } = feeds.step(k, n)
            expect(result).toEqual({ ok: true })
            for (const m of (outs[k] as Array<ParsedImsg<number>>).slice(before)) (snapshots[k] as Array<Array<number>>).push(Array.from(m.data))
          }
          // random turns (reads of 1 to 20000 bytes: both sides of the copy limit), then every stream to its end
          for (const [who, n] of turns) if (feeds.left(who % streams.length)) step(who % streams.length, n)
          streams.forEach((_, k) => {
            while (feeds.left(k)) step(k, 7000)
          })
          streams.forEach((frames, k) => {
            const out = outs[k] as Array<ParsedImsg<number>>
            expect(out.map(plain)).toEqual(frames.map(plainFrame))
            // what each message held when it was handed out is what it holds now
            expect(out.map((m) => Array.from(m.data))).toEqual(snapshots[k])
            expect((parsers[k] as ImsgParser<number>).midMessage).toBe(false)
          })
        }
      ),
      // no shrinking: shrinking streams of large payloads takes minutes
      { numRuns: 150, endOnFailure: true }
    )
    // ~7 s alone: room for a loaded machine
  }, 120_000)

  it("shared slab: a busy read of another parser between two reads of an unfinished message changes neither", () => {
    const stream = (t: number) =>
      encodeFrames(
        Array.from({ length: 6 }, (_, i) => ({ type: t, peerid: i, pid: 0, data: new Uint8Array(3000).fill(t * 10 + i), marked: false }))
      ).bytes
    const a = stream(1)
    const b = stream(2)
    const pa = recording().parser
    const pb = recording().parser
    const oa: Array<ParsedImsg<number>> = []
    const ob: Array<ParsedImsg<number>> = []
    // 10000 bytes: three messages and part of the fourth, each time (a busy read, views of the slab)
    expect(pa.feed(a, 0, 10000, [], oa)).toEqual({ ok: true })
    expect(pb.feed(b, 0, 10000, [], ob)).toEqual({ ok: true })
    expect(pa.feed(a, 10000, a.length, [], oa)).toEqual({ ok: true })
    expect(pb.feed(b, 10000, b.length, [], ob)).toEqual({ ok: true })
    const summary = (out: Array<ParsedImsg<number>>) => out.map((m) => [m.type, m.peerid, m.data.length, m.data.every((x) => x === m.type * 10 + m.peerid)])
    expect(summary(oa)).toEqual([0, 1, 2, 3, 4, 5].map((i) => [1, i, 3000, true]))
    expect(summary(ob)).toEqual([0, 1, 2, 3, 4, 5].map((i) => [2, i, 3000, true]))
  })
})

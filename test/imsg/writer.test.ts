import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import type { Batch, QueuedImsg } from "../../src/imsg/writer.ts"
import { batchBytes, CHUNK_SIZE, ImsgWriter, MAX_BATCH, MAX_PIECES, OWN_IOVEC, pooledChunks } from "../../src/imsg/writer.ts"
import { MAX_IMSGSIZE } from "../../src/schema/imsgHeader.ts"
import { encodeFrames, hex } from "./frames.ts"

const PID = 0x2b96

const msgArb: fc.Arbitrary<QueuedImsg<number>> = fc.record({
  type: fc.nat(0xffffffff),
  peerid: fc.nat(0xffffffff),
  pid: fc.oneof(fc.constant(0), fc.nat(0xffffffff)),
  // both sides of OWN_IOVEC: copied into the staging area, or an iovec of their own
  data: fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ minLength: OWN_IOVEC - 20, maxLength: 6000 })),
  fd: fc.option(fc.constant(0), { nil: null })
})

/** The bytes one sendmsg of the batch would send (its pieces in order). */
const flat = <F>(b: Batch<F>): Uint8Array => {
  expect(b.lens.slice(b.first, b.count).reduce((x, y) => x + y, 0)).toBe(b.length)
  return batchBytes(b)
}

const shape = <F>(b: Batch<F> | null) => (b === null ? null : { length: b.length, fd: b.fd })

describe("ImsgWriter (msgbuf_write gathering)", () => {
  it("reproduces the two sendmsgs of the hex dump in imsg.md §2", () => {
    const w = new ImsgWriter<number>(new Uint8Array(65536), { pid: PID })
    w.push({ type: 0x1234, peerid: 7, pid: 0, data: new TextEncoder().encode("abc") })
    w.push({ type: 5, peerid: 0xffffffff, pid: 1, fd: 9, data: hex("01 02 03 04") })
    w.push({ type: 6, peerid: 0, pid: 1 })
    const b1 = w.gather()
    expect(shape(b1)).toEqual({ length: 19, fd: null })
    expect(flat(b1!)).toEqual(hex(`34 12 00 00 13 00 00 00 07 00 00 00 96 2b 00 00 61 62 63`))
    w.written(19)
    const b2 = w.gather()
    expect(shape(b2)).toEqual({ length: 36, fd: 9 })
    expect(flat(b2!)).toEqual(
      hex("05 00 00 00 14 00 00 80 ff ff ff ff 01 00 00 00 01 02 03 04 06 00 00 00 10 00 00 00 00 00 00 00 01 00 00 00")
    )
    w.written(36)
    expect(w.length).toBe(0)
    expect(w.gather()).toBeNull()
  })

  it("any sequence of partial writes sends the queue's bytes in order; each fd rides once, at its message's first byte, first in its batch; another writer on the same staging area in between changes nothing", () => {
    fc.assert(
      fc.property(
        fc.array(msgArb, { maxLength: 60 }),
        fc.array(fc.nat(70_000), { minLength: 1, maxLength: 50 }),
        fc.array(fc.boolean(), { minLength: 1, maxLength: 20 }),
        fc.option(fc.integer({ min: OWN_IOVEC + 15, max: 4096 }), { nil: undefined }),
        (input, accepts, interleave, chunkSize) => {
      const msgs = input.map((m, i) => (m.fd === null ? m : { ...m, fd: 100 + i }))
      const staging = new Uint8Array(MAX_IMSGSIZE * 2)
      // small compose chunks too, so that runs cross from chunk to chunk
      const w = new ImsgWriter<number>(staging, { pid: PID, ...(chunkSize === undefined ? {} : { chunkSize }) })
      // another channel's writer on the same staging area
      const other = new ImsgWriter<number>(staging, { pid: PID })
      // half queued now (pushAll), the rest one per write (push), so that small messages also extend a run partly written
      let queued = Math.ceil(msgs.length / 2)
      w.pushAll(msgs.slice(0, queued))
      const { bytes: expected, starts } = encodeFrames(
        msgs.map((m) => ({
          type: m.type,
          peerid: m.peerid,
          pid: m.pid === 0 ? PID : m.pid,
          data: m.data ?? new Uint8Array(0),
          marked: m.fd != null
        }))
      )
      const sent = new Uint8Array(expected.length)
      let pos = 0
      const fdsAt = new Map<number, number>()
      let k = 0
      let again = false
      /** Messages not completely written once `pos` bytes are: what `length` must say. */
      const unfinished = (pos: number) =>
        msgs.slice(0, queued).filter((m, i) => (starts[i] as number) + 16 + (m.data?.length ?? 0) > pos).length
      for (let b = w.gather(); b !== null || queued < msgs.length; b = w.gather()) {
        if (b === null) {
          w.push(msgs[queued++]!)
          continue
        }
        expect(b.length).toBeGreaterThan(0)
        expect(b.count).toBeLessThanOrEqual(MAX_PIECES)
        expect(b.length).toBeLessThanOrEqual(MAX_BATCH)
        const bytes = flat(b)
        // a message carrying an fd never starts inside a batch, only at its first byte
        for (let i = 0; i < msgs.length; i++) {
          const s = starts[i] as number
          if (msgs[i]?.fd != null && s > pos && s < pos + b.length) throw new Error(`fd message ${i} inside a batch`)
        }
        let n = Math.min(b.length, (accepts[k++ % accepts.length] as number) % (b.length + 2))
        if (n === 0 && again) n = b.length
        again = n === 0
        if (n === 0) continue // EAGAIN: nothing sent, the same batch comes again
        if (b.fd !== null) {
          expect(fdsAt.has(b.fd)).toBe(false)
          fdsAt.set(b.fd, pos)
        }
        expect(pos + n).toBeLessThanOrEqual(sent.length)
        sent.set(bytes.subarray(0, n), pos)
        pos += n
        w.written(n)
        expect(w.length).toBe(unfinished(pos))
        if (queued < msgs.length) w.push(msgs[queued++]!)
        expect(w.length).toBe(unfinished(pos))
        if (interleave[k % interleave.length]) {
          // another channel's batch uses the staging area before this writer's next one
          other.push({ type: 9, peerid: 9, pid: 9, data: new Uint8Array(3000).fill(0xee) })
          other.push({ type: 9, peerid: 9, pid: 9, data: new Uint8Array(30).fill(0xee) })
          expect(other.gather()).not.toBeNull()
          other.clear(() => {})
        }
      }
      expect(w.length).toBe(0)
      expect(w.holdsChunk).toBe(false)
      expect(pos).toBe(expected.length)
      const differ = sent.findIndex((x, i) => x !== expected[i])
      expect(differ).toBe(-1)
      const expectedFds = new Map<number, number>()
      msgs.forEach((m, i) => {
        if (m.fd != null) expectedFds.set(m.fd, starts[i] as number)
      })
      expect(fdsAt).toEqual(expectedFds)
      })
    )
  })

  it("fd-less messages after an fd message share its batch; the next fd message starts a new one", () => {
    const w = new ImsgWriter<number>(new Uint8Array(65536), { pid: PID })
    w.push({ type: 1, peerid: 0, pid: 1, fd: 3 })
    w.push({ type: 2, peerid: 0, pid: 1 })
    w.push({ type: 3, peerid: 0, pid: 1 })
    w.push({ type: 4, peerid: 0, pid: 1, fd: 4 })
    expect(shape(w.gather())).toEqual({ length: 48, fd: 3 })
    w.written(48)
    expect(shape(w.gather())).toEqual({ length: 16, fd: 4 })
  })

  it("after a partial write the rest goes without the fd; clear closes only unsent fds", () => {
    const w = new ImsgWriter<number>(new Uint8Array(65536), { pid: PID })
    w.push({ type: 1, peerid: 0, pid: 1, fd: 3, data: new Uint8Array(100).fill(7) })
    w.push({ type: 2, peerid: 0, pid: 1, fd: 4 })
    const first = w.gather()
    expect(shape(first)).toEqual({ length: 116, fd: 3 })
    const whole = flat(first!)
    w.written(50)
    const rest = w.gather()
    expect(shape(rest)).toEqual({ length: 66, fd: null })
    expect(flat(rest!)).toEqual(whole.subarray(50))
    expect(w.length).toBe(2)
    const closed: Array<number> = []
    w.clear((fd) => closed.push(fd))
    expect(closed).toEqual([4])
    expect(w.length).toBe(0)
  })

  it("legacy format writes the fd flag in flags (imsg.md §5.4 RECONF_CTRL)", () => {
    const staging = new Uint8Array(65536)
    const w = new ImsgWriter<number>(staging, { pid: 0x04030201, format: "legacy" })
    w.push({ type: 44, peerid: 0, pid: 0, fd: 5, data: new Uint8Array(4) })
    const b = w.gather()
    expect(shape(b)).toEqual({ length: 20, fd: 5 })
    expect(flat(b!)).toEqual(hex("2c 00 00 00 14 00 01 00 00 00 00 00 01 02 03 04 00 00 00 00"))
  })

  it("a large payload goes as its own piece (no copy), a small fd-less one is framed when queued; a batch stops at MAX_BATCH", () => {
    const w = new ImsgWriter<number>(new Uint8Array(MAX_BATCH), { pid: PID })
    const big = new Uint8Array(16000).fill(1)
    const small = new Uint8Array(10).fill(2)
    w.push({ type: 1, peerid: 0, pid: 1, data: small })
    small.fill(9) // copied at push, as imsg_compose copies
    w.push({ type: 2, peerid: 0, pid: 1, data: big })
    w.push({ type: 3, peerid: 0, pid: 1, data: new Uint8Array(10).fill(3) })
    const b = w.gather()!
    expect(b.count).toBe(4) // [hdr1 + 10 bytes] (composed), [hdr2] (staged), big, [hdr3 + 10 bytes] (composed)
    expect(b.bufs[2]).toBe(big)
    expect(b.lens).toEqual([26, 16, 16000, 26])
    expect(flat(b).subarray(16, 26)).toEqual(new Uint8Array(10).fill(2))
    w.written(b.length)
    for (let i = 0; i < 40; i++) w.push({ type: 4, peerid: 0, pid: 1, data: big })
    const c = w.gather()!
    expect(c.length).toBe(Math.floor(MAX_BATCH / 16016) * 16016)
  })

  it("consecutive small fd-less messages go as one piece; an idle writer holds no compose chunk, and chunks are reused", () => {
    const w = new ImsgWriter<number>(new Uint8Array(MAX_BATCH), { pid: PID })
    for (let i = 0; i < 100; i++) w.push({ type: i, peerid: 0, pid: 1, data: new Uint8Array(100).fill(i) })
    expect(w.holdsChunk).toBe(true)
    const b = w.gather()!
    expect(b.count).toBe(1)
    expect(b.length).toBe(100 * 116)
    w.written(b.length)
    expect(w.length).toBe(0)
    expect(w.holdsChunk).toBe(false)
    const pooled = pooledChunks()
    expect(pooled).toBeGreaterThan(0)
    // more than one chunk's worth: the next takes pooled chunks first
    w.pushAll(Array.from({ length: 1000 }, () => ({ type: 1, peerid: 0, pid: 1, data: new Uint8Array(100) })))
    expect(w.length).toBe(1000)
    expect(pooledChunks()).toBe(Math.max(0, pooled - Math.ceil((1000 * 116) / CHUNK_SIZE)))
    w.clear(() => {})
    expect(w.holdsChunk).toBe(false)
    expect(pooledChunks()).toBeGreaterThanOrEqual(pooled)
  })
})

import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import type { QueuedImsg } from "../../src/imsg/writer.ts"
import { ImsgWriter } from "../../src/imsg/writer.ts"
import { MAX_IMSGSIZE } from "../../src/schema/imsgHeader.ts"
import { encodeFrames, hex } from "./frames.ts"

const PID = 0x2b96

const msgArb: fc.Arbitrary<QueuedImsg<number>> = fc.record({
  type: fc.nat(0xffffffff),
  peerid: fc.nat(0xffffffff),
  pid: fc.oneof(fc.constant(0), fc.nat(0xffffffff)),
  data: fc.uint8Array({ maxLength: 3000 }),
  fd: fc.option(fc.constant(0), { nil: null })
})

describe("ImsgWriter (msgbuf_write gathering)", () => {
  it("reproduces the two sendmsgs of the hex dump in imsg.md §2", () => {
    const w = new ImsgWriter<number>(new Uint8Array(65536), { pid: PID })
    w.push({ type: 0x1234, peerid: 7, pid: 0, data: new TextEncoder().encode("abc") })
    w.push({ type: 5, peerid: 0xffffffff, pid: 1, fd: 9, data: hex("01 02 03 04") })
    w.push({ type: 6, peerid: 0, pid: 1 })
    const b1 = w.gather()
    expect(b1).toEqual({ offset: 0, length: 19, fd: null })
    w.written(19)
    const b2 = w.gather()
    expect(b2).toEqual({ offset: 0, length: 36, fd: 9 })
    w.written(36)
    expect(w.length).toBe(0)
    expect(w.gather()).toBeNull()
  })

  it("any sequence of partial writes sends the queue's bytes in order; each fd rides once, at its message's first byte, first in its batch", () => {
    fc.assert(
      fc.property(fc.array(msgArb, { maxLength: 40 }), fc.array(fc.nat(70_000), { minLength: 1, maxLength: 50 }), (input, accepts) => {
      const msgs = input.map((m, i) => (m.fd === null ? m : { ...m, fd: 100 + i }))
      const staging = new Uint8Array(MAX_IMSGSIZE * 2)
      const w = new ImsgWriter<number>(staging, { pid: PID })
      msgs.forEach((m) => w.push(m))
      const { bytes: expected, starts } = encodeFrames(
        msgs.map((m) => ({
          type: m.type,
          peerid: m.peerid,
          pid: m.pid === 0 ? PID : m.pid,
          data: m.data ?? new Uint8Array(0),
          marked: m.fd != null
        }))
      )
      const sent: Array<number> = []
      const fdsAt = new Map<number, number>()
      let k = 0
      let again = false
      for (let b = w.gather(); b !== null; b = w.gather()) {
        expect(b.length).toBeGreaterThan(0)
        expect(b.offset + b.length).toBeLessThanOrEqual(staging.length)
        const pos = sent.length
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
        sent.push(...staging.subarray(b.offset, b.offset + n))
        w.written(n)
      }
      expect(w.length).toBe(0)
      expect(Uint8Array.from(sent)).toEqual(expected)
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
    expect(w.gather()).toEqual({ offset: 0, length: 48, fd: 3 })
    w.written(48)
    expect(w.gather()).toEqual({ offset: 0, length: 16, fd: 4 })
  })

  it("after a partial write the rest goes without the fd; clear closes only unsent fds", () => {
    const w = new ImsgWriter<number>(new Uint8Array(65536), { pid: PID })
    w.push({ type: 1, peerid: 0, pid: 1, fd: 3, data: new Uint8Array(100) })
    w.push({ type: 2, peerid: 0, pid: 1, fd: 4 })
    expect(w.gather()).toEqual({ offset: 0, length: 116, fd: 3 })
    w.written(50)
    expect(w.gather()).toEqual({ offset: 50, length: 66, fd: null })
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
    expect(b).toEqual({ offset: 0, length: 20, fd: 5 })
    expect(staging.subarray(0, 20)).toEqual(hex("2c 00 00 00 14 00 01 00 00 00 00 00 01 02 03 04 00 00 00 00"))
  })
})

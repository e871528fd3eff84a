import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, Stream, TestClock } from "effect"
import type { Scope } from "effect"
import fc from "fast-check"
import { ImsgChannelMemory, MemorySockets } from "../../src/layers/ImsgChannelMemory.ts"
import { Errno } from "../../src/schema/errno.ts"
import type { Imsg } from "../../src/services/ImsgChannel.ts"
import { ImsgChannel, releaseImsg } from "../../src/services/ImsgChannel.ts"
import { hex } from "./frames.ts"
import { makeChannel, type DriverEvents, type SocketDriver } from "../../src/imsg/channel.ts"

const take = (messages: Stream.Stream<Imsg, unknown>, n: number) =>
  messages.pipe(Stream.take(n), Stream.runCollect, Effect.map(Chunk.toArray))

/** Fresh fake kernel per test; after the test no fd may be left open or closed twice. */
const memory = <A, E>(body: Effect.Effect<A, E, ImsgChannel | MemorySockets | Scope.Scope>) =>
  Effect.gen(function* () {
    const table = yield* MemorySockets
    const a = yield* Effect.scoped(body)
    expect(table.doubleCloses).toBe(0)
    return { a, open: table.openFds() }
  }).pipe(Effect.provide(ImsgChannelMemory.layer))

/** A socketpair of the fake kernel with a channel open on each end. */
const openPair = (label: string) =>
  Effect.gen(function* () {
    const svc = yield* ImsgChannel
    const table = yield* MemorySockets
    const [x, y] = yield* svc.socketpair(label)
    return { table, x, y, cx: yield* svc.open(x), cy: yield* svc.open(y) }
  })

describe("ImsgChannelMemory", () => {
  it.effect("messages and an fd cross a pair; the Fd object itself travels; pid 0 becomes ours", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const { table, cx, cy } = yield* openPair("vm1")
          const disk = table.makeFd("disk0")
          yield* cx.send({ type: 9, peerid: 3, pid: 0, data: hex("01 02") })
          yield* cx.send({ type: 10, peerid: 4, pid: 1, fd: disk })
          yield* cx.send({ type: 11, peerid: 5, pid: 1 })
          const got = yield* take(cy.messages, 3)
          expect(got.map((m) => [m.type, m.peerid, m.pid])).toEqual([
            [9, 3, process.pid],
            [10, 4, 1],
            [11, 5, 1]
          ])
          expect(got[1]?.fd).toBe(disk)
          expect(disk.isOpen).toBe(true)
          disk.closeSync()
          return table.openFds().map((f) => f.label)
        })
      )
      expect(a).toEqual(["vm1[0]", "vm1[1]"])
      expect(open).toEqual([])
    })
  )

  it.effect("EOF when the peer closes ends the stream after what was buffered", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const [x, y] = yield* svc.socketpair("p")
          const cx = yield* svc.open(x)
          const cy = yield* svc.open(y)
          yield* cx.send({ type: 1, peerid: 0, pid: 1 })
          yield* cx.send({ type: 2, peerid: 0, pid: 1 })
          yield* cx.flush
          yield* cx.close
          return (yield* Stream.runCollect(cy.messages).pipe(Effect.map(Chunk.toArray))).map((m) => m.type)
        })
      )
      expect(a).toEqual([1, 2])
    })
  )

  it.effect("EPIPE on write drops the queue, closes its fds, ends the stream cleanly; later sends fail Closed", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const table = yield* MemorySockets
          const [x, y] = yield* svc.socketpair("p")
          const cx = yield* svc.open(x)
          yield* svc.open(y)
          table.failNextWrite(x, Errno.EPIPE)
          const f = table.makeFd("f")
          yield* cx.send({ type: 1, peerid: 0, pid: 1, fd: f })
          yield* cx.flush
          const rest = yield* Stream.runCollect(cx.messages)
          const again = yield* Effect.either(cx.send({ type: 2, peerid: 0, pid: 1 }))
          return { rest: Chunk.size(rest), fOpen: f.isOpen, again }
        })
      )
      expect(a.rest).toBe(0)
      expect(a.fOpen).toBe(false)
      expect(Either.isLeft(a.again) && a.again.left.reason).toBe("Closed")
      expect(open).toEqual([])
    })
  )

  it.effect("raw handshake with short writes and reads, then the same socket becomes a channel", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const table = yield* MemorySockets
          const [vmm, vm] = yield* svc.socketpair("vm")
          table.shortWrites(vmm, 100)
          table.shortReads(vm, 7)
          const vmdVm = new Uint8Array(13352).map((_, i) => i & 0xff)
          const prefix = new Uint8Array(40).fill(0xaa)
          const child = yield* Effect.fork(
            Effect.gen(function* () {
              const got = yield* svc.readRaw(vm, 13352 + 40, 1000)
              yield* svc.writeRaw(vm, hex("07 00 00 00"), 1000)
              return got
            })
          )
          yield* svc.writeRaw(vmm, vmdVm, 1000)
          yield* svc.writeRaw(vmm, prefix, 1000)
          const id = yield* svc.readRaw(vmm, 4, 1000)
          const got = yield* Fiber.join(child)
          table.shortWrites(vmm, Infinity)
          const cvmm = yield* svc.open(vmm)
          const cvm = yield* svc.open(vm)
          yield* cvm.send({ type: 37, peerid: 0, pid: 1 })
          const [m] = yield* take(cvmm.messages, 1)
          return { id, same: got.subarray(0, 13352).every((b, i) => b === (vmdVm[i] ?? -1)), tail: got.subarray(13352), type: m?.type }
        })
      )
      expect(a.id).toEqual(hex("07 00 00 00"))
      expect(a.same).toBe(true)
      expect(a.tail).toEqual(new Uint8Array(40).fill(0xaa))
      expect(a.type).toBe(37)
    })
  )

  it.effect("readRaw: EOF before n bytes is Eof; silence is Timeout under TestClock", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const [x, y] = yield* svc.socketpair("p")
          const slow = yield* Effect.fork(Effect.either(svc.readRaw(x, 4, 500)))
          yield* TestClock.adjust("499 millis")
          yield* Effect.yieldNow()
          const early = slow.unsafePoll()
          yield* TestClock.adjust("1 millis")
          const timedOut = yield* Fiber.join(slow)
          yield* svc.writeRaw(y, hex("01 02"), 100)
          y.closeSync()
          const eof = yield* Effect.either(svc.readRaw(x, 4, 100))
          x.closeSync()
          return { early, timedOut, eof }
        })
      )
      expect(a.early).toBeNull()
      expect(Either.isLeft(a.timedOut) && a.timedOut.left.reason).toBe("Timeout")
      expect(Either.isLeft(a.eof) && a.eof.left.reason).toBe("Eof")
    })
  )

  it.effect("a bad length from the peer fails the stream with Framing (ERANGE)", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const [x, y] = yield* svc.socketpair("p")
          const cx = yield* svc.open(x)
          yield* svc.writeRaw(y, hex("01 00 00 00 0f 00 00 00 00 00 00 00 00 00 00 00"), 100)
          return yield* Effect.flip(Stream.runDrain(cx.messages))
        })
      )
      expect(a.reason).toBe("Framing")
      expect(a.errno).toBe(Errno.ERANGE)
    })
  )

  it.effect("receive: every message in order, in batches, waiting when none is there; null after EOF; Framing fails it", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const [x, y] = yield* svc.socketpair("p")
          const cx = yield* svc.open(x)
          const cy = yield* svc.open(y)
          const waiting = yield* Effect.fork(cy.receive)
          for (let i = 0; i < 5; i++) yield* cx.send({ type: 20 + i, peerid: i, pid: 0 })
          const first = yield* Fiber.join(waiting)
          const types = (first ?? []).map((m) => m.type)
          while (types.length < 5) {
            const more = yield* cy.receive
            if (more === null) break
            types.push(...more.map((m) => m.type))
          }
          yield* cx.close
          const end = yield* cy.receive
          const again = yield* cy.receive
          const [p, q] = yield* svc.socketpair("q")
          const cp = yield* svc.open(p)
          yield* svc.writeRaw(q, hex("01 00 00 00 0f 00 00 00 00 00 00 00 00 00 00 00"), 100)
          const bad = yield* Effect.flip(cp.receive)
          return { nonEmpty: (first ?? []).length > 0, types, end, again, bad: bad.reason }
        })
      )
      expect(a).toEqual({ nonEmpty: true, types: [20, 21, 22, 23, 24], end: null, again: null, bad: "Framing" })
    })
  )

  it.effect("listen: every batch handed over as it arrives, in order, then end once: null at EOF, the error on Framing, null on close; no second consumer", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const [x, y] = yield* svc.socketpair("p")
          const cx = yield* svc.open(x)
          const cy = yield* svc.openOwned(y)
          const types: Array<number> = []
          const ends: Array<string> = []
          // Two sent before listening: handed over when the listener is set.
          yield* cx.send({ type: 20, peerid: 0, pid: 0 })
          yield* cx.send({ type: 21, peerid: 1, pid: 0 })
          yield* Effect.yieldNow()
          yield* cy.listen({
            messages: (ms) => types.push(...ms.map((m) => m.type)),
            end: (e) => ends.push(e === null ? "eof" : e.reason)
          })
          for (let i = 2; i < 5; i++) yield* cx.send({ type: 20 + i, peerid: i, pid: 0 })
          yield* cx.flush
          for (let i = 0; i < 10 && types.length < 5; i++) yield* Effect.yieldNow()
          const second = yield* Effect.exit(cy.listen({ messages: () => {}, end: () => {} }))
          const alsoReceive = yield* Effect.exit(cy.receive)
          yield* cx.close
          for (let i = 0; i < 10 && ends.length === 0; i++) yield* Effect.yieldNow()
          const eofEnds = [...ends]
          yield* cy.close // after EOF: no second end
          // A framing error ends a listened channel with the error.
          const [p, q] = yield* svc.socketpair("q")
          const cp = yield* svc.openOwned(p)
          const bad: Array<string> = []
          yield* cp.listen({ messages: () => bad.push("msg"), end: (e) => bad.push(e === null ? "eof" : e.reason) })
          yield* svc.writeRaw(q, hex("01 00 00 00 0f 00 00 00 00 00 00 00 00 00 00 00"), 100)
          for (let i = 0; i < 10 && bad.length === 0; i++) yield* Effect.yieldNow()
          yield* cp.close
          q.closeSync()
          // Closing a listened channel ourselves ends it with null.
          const [r, t] = yield* svc.socketpair("r")
          const cr = yield* svc.openOwned(r)
          const closed: Array<string> = []
          yield* cr.listen({ messages: () => {}, end: (e) => closed.push(e === null ? "eof" : e.reason) })
          yield* cr.close
          t.closeSync()
          return { types, eofEnds, ends, second: second._tag, alsoReceive: alsoReceive._tag, bad, closed }
        })
      )
      expect(a).toEqual({
        types: [20, 21, 22, 23, 24],
        eofEnds: ["eof"],
        ends: ["eof"],
        second: "Failure",
        alsoReceive: "Failure",
        bad: ["Framing"],
        closed: ["eof"]
      })
      expect(open).toEqual([])
    })
  )

  it.effect("openOwned: the channel is not tied to a scope; its fd stays open until close", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const table = yield* MemorySockets
          const [x, y] = yield* svc.socketpair("p")
          const cy = yield* Effect.scoped(svc.openOwned(y))
          const afterScope = table.isOpen(y)
          const cx = yield* svc.open(x)
          yield* cx.send({ type: 7, peerid: 1, pid: 0 })
          const got = yield* cy.receive
          yield* cy.close
          return { afterScope, got: (got ?? []).map((m) => m.type), afterClose: table.isOpen(y) }
        })
      )
      expect(a).toEqual({ afterScope: true, got: [7], afterClose: false })
      expect(open).toEqual([])
    })
  )

  it.live("a high-water mark below one message: the read that reaches it with no message complete reads on", () =>
    Effect.gen(function* () {
      const { a: got } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const table = yield* MemorySockets
          const [x, y] = yield* svc.socketpair("hw")
          table.shortReads(y, 150)
          const cx = yield* svc.open(x)
          const cy = yield* ImsgChannelMemory.open(table, y, { highWaterBytes: 100 })
          yield* cx.send({ type: 9, peerid: 0, pid: 1, data: new Uint8Array(200) })
          return yield* cy.receive.pipe(Effect.timeout("1 second"), Effect.either)
        })
      )
      expect(Either.isRight(got) && got.right?.map((m) => [m.type, m.data.length])).toEqual([[9, 200]])
    })
  )

  it.effect("unsafeSendNow: what the socket does not take (part of a write, EAGAIN) is sent later, once; EPIPE ends writing as the queue's write does", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const { table, x, cx, cy } = yield* openPair("p")
          const payload = (n: number) => new Uint8Array(28).fill(n)
          // the socket takes 10 bytes a write: the first 10 go at once, the rest is queued
          table.shortWrites(x, 10)
          expect(cx.unsafeSendNow({ type: 18, peerid: 1, pid: 1, data: payload(1) })).toBeNull()
          const partial = cx.unsafeQueued()
          // a message sent after it follows it
          yield* cx.send({ type: 19, peerid: 2, pid: 1, data: payload(2) })
          yield* cx.flush
          table.shortWrites(x, Infinity)
          // EAGAIN: queued, written once the socket is writable
          table.failNextWrite(x, Errno.EAGAIN)
          expect(cx.unsafeSendNow({ type: 20, peerid: 3, pid: 1, data: payload(3) })).toBeNull()
          const afterEagain = cx.unsafeQueued()
          yield* cx.flush
          const got = yield* take(cy.messages, 3)
          // EPIPE: as unsafeSend + unsafeWritePending, the message is dropped and the peer taken
          // for gone: a later send is refused (the queue's write is not tried again)
          table.failNextWrite(x, Errno.EPIPE)
          expect(cx.unsafeSendNow({ type: 21, peerid: 4, pid: 1, data: payload(4) })).toBeNull()
          const laterSend = cx.unsafeSend({ type: 22, peerid: 5, pid: 1 })?.reason
          yield* cx.close
          const rest = yield* cy.receive
          return { partial, afterEagain, got: got.map((m) => [m.type, m.peerid, m.data.length, m.data[0]]), laterSend, rest }
        })
      )
      expect(a.partial).toBe(1)
      expect(a.afterEagain).toBe(1)
      expect(a.got).toEqual([
        [18, 1, 28, 1],
        [19, 2, 28, 2],
        [20, 3, 28, 3]
      ])
      expect(a.laterSend).toBe("Closed")
      expect(a.rest).toBeNull() // nothing written twice, nothing after the EPIPE
      expect(open).toEqual([])
    })
  )

  it.effect("unsafeSendNow and unsafeSend + unsafeWritePending leave a channel alike after a write error", () =>
    Effect.gen(function* () {
      const outcome = (now: boolean, errno: number) =>
        memory(
          Effect.gen(function* () {
            const { table, x, cx, cy } = yield* openPair("e")
            table.failNextWrite(x, errno)
            const msg = { type: 7, peerid: 1, pid: 1, data: Uint8Array.of(1, 2, 3) }
            const sent = now ? cx.unsafeSendNow(msg) : (cx.unsafeSend(msg) ?? (cx.unsafeWritePending(), null))
            yield* cx.flush
            const queued = cx.unsafeQueued()
            const later = cx.unsafeSend({ type: 8, peerid: 2, pid: 1 })?.reason ?? null
            yield* cx.flush
            yield* cx.close
            const got: Array<number> = []
            for (;;) {
              const ms = yield* cy.receive.pipe(Effect.either)
              if (Either.isLeft(ms) || ms.right === null) break
              got.push(...ms.right.map((m) => m.type))
            }
            const failed = yield* cx.receive.pipe(Effect.either)
            return { sent, queued, later, got, failed: Either.isLeft(failed) ? failed.left.reason : "ok" }
          })
        ).pipe(Effect.map((r) => r.a))
      for (const errno of [Errno.EAGAIN, Errno.EPIPE, Errno.EIO]) {
        const pair = yield* outcome(false, errno)
        const now = yield* outcome(true, errno)
        expect(now, `errno ${errno}`).toEqual(pair)
      }
    })
  )

  it.effect("backpressure: 4 MB to a reader that pauses, all in order; close drops unsent fds", () =>
    Effect.gen(function* () {
      const { a, open } = yield* memory(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          const table = yield* MemorySockets
          const [x, y] = yield* svc.socketpair("p")
          table.setCapacity(y, 8192)
          const cx = yield* svc.open(x)
          const cy = yield* ImsgChannelMemory.open(table, y, { highWaterBytes: 32 * 1024 })
          const n = 4200 // 4.2 MB
          for (let i = 0; i < n; i++) yield* cx.send({ type: i, peerid: 0, pid: 1, data: new Uint8Array(984).fill(i & 0xff) })
          const peak = yield* cx.queued
          let expected = 0
          let ok = true
          const reader = yield* Effect.fork(
            cy.messages.pipe(
              Stream.take(n),
              Stream.runForEach((m) =>
                Effect.gen(function* () {
                  ok &&= m.type === expected && m.data[0] === (expected & 0xff)
                  expected++
                  if (expected % 97 === 0) yield* Effect.yieldNow()
                })
              )
            )
          )
          yield* cx.flush
          yield* Fiber.join(reader)
          // now a message that cannot be written: the reader stopped reading
          table.setCapacity(y, 0)
          const f = table.makeFd("late")
          yield* cx.send({ type: 1, peerid: 0, pid: 1, fd: f })
          yield* Effect.yieldNow()
          yield* cx.close
          return { peak, ok, expected, fOpen: f.isOpen }
        })
      )
      expect(a.peak).toBeGreaterThan(1000)
      expect(a.ok).toBe(true)
      expect(a.expected).toBe(4200)
      expect(a.fOpen).toBe(false)
      expect(open).toEqual([])
    })
  )

  it.effect("a consumer that releases what it reads keeps to one receive slab while the peer stays ahead of the reader", () =>
    Effect.gen(function* () {
      const { a } = yield* memory(
        Effect.gen(function* () {
          const { table, y, cx, cy } = yield* openPair("p")
          // 8 MiB of 100-byte messages queued at once: every read fills all the room it is given
          table.setCapacity(y, 16 << 20)
          const n = 72_000
          const payload = new Uint8Array(100)
          for (let i = 0; i < n; i++) cx.unsafeSend({ type: 7, peerid: i, pid: 1, data: payload })
          yield* cx.flush
          const slabs = new Set<ArrayBufferLike>()
          let got = 0
          let inOrder = true
          while (got < n) {
            const batch = yield* cy.receive
            if (batch === null) break
            for (const m of batch) {
              inOrder &&= m.peerid === got++
              slabs.add(m.data.buffer)
              releaseImsg(m)
            }
          }
          return { got, inOrder, slabs: slabs.size }
        })
      )
      expect(a.got).toBe(72_000)
      expect(a.inOrder).toBe(true)
      // A read that fills its room ends the turn: were the next read of the same turn made
      // before the consumer has the first one's messages, it would need a fresh slab (16 here).
      // One slab when this test runs alone; two in the whole file, where an earlier test's
      // unreleased message still holds the slab current when this one starts.
      expect(a.slabs).toBeLessThanOrEqual(2)
    })
  )

  it.effect("property: with random short reads and writes every message and fd arrives in order, nothing leaks", () =>
    Effect.promise(() =>
      fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ size: fc.nat(3000), fd: fc.boolean() }), { minLength: 1, maxLength: 60 }),
          fc.integer({ min: 1, max: 5000 }),
          // whole reads in half the runs: those (with writes of 16 bytes or more) check each fd's message
          fc.option(fc.integer({ min: 1, max: 5000 }), { nil: Infinity, freq: 2 }),
          (msgs, maxWrite, maxRead) =>
            Effect.runPromise(
              memory(
                Effect.gen(function* () {
                  const svc = yield* ImsgChannel
                  const table = yield* MemorySockets
                  const [x, y] = yield* svc.socketpair("p")
                  table.shortWrites(x, maxWrite)
                  table.shortReads(y, maxRead)
                  const cx = yield* svc.open(x)
                  const cy = yield* svc.open(y)
                  const fds = msgs.map((m, i) => (m.fd ? table.makeFd(`f${i}`) : null))
                  for (let i = 0; i < msgs.length; i++) {
                    yield* cx.send({ type: i, peerid: 0, pid: 1, data: new Uint8Array(msgs[i]?.size ?? 0).fill(i), fd: fds[i] ?? null })
                  }
                  const got = yield* take(cy.messages, msgs.length)
                  expect(got.map((m) => m.type)).toEqual(msgs.map((_, i) => i))
                  expect(got.map((m) => m.data.length)).toEqual(msgs.map((m) => m.size))
                  // Writes or reads that cut a header away from the bytes its fd came with break
                  // libutil's fd rule (the fd is closed, or a later marked header takes it); the
                  // fds are then only never leaked. Otherwise each fd reaches its own message.
                  if (maxRead === Infinity && maxWrite >= 16) expect(got.map((m) => m.fd)).toEqual(fds)
                  for (const m of got) m.fd?.closeSync()
                })
              )
            ).then(({ open }) => {
              expect(open).toEqual([])
            })
        ),
        { numRuns: 60 }
      )
    )
  )
})

describe("a channel whose poll cannot be started again after an error", () => {
  it.effect("fails with the error instead of retrying for ever (no recursion through the driver)", () =>
    Effect.gen(function* () {
      let events: DriverEvents | null = null
      let watches = 0
      const driver = (e: DriverEvents): SocketDriver => {
        events = e
        return {
          fd: 99,
          recv: () => -Errno.EAGAIN,
          send: () => -Errno.EAGAIN, // the queue waits for POLLOUT
          watch: (_readable, writable) => {
            watches++
            // starting it with POLLOUT fails (as uv_poll_start's EEXIST would), synchronously
            if (writable && watches > 1) events?.error(Errno.EEXIST)
          },
          close: (done) => done()
        }
      }
      const ch = makeChannel(driver)
      ch.unsafeHold(true)
      ch.unsafeSend({ type: 1, peerid: 0, pid: 1 })
      ch.unsafeWritePending()
      const ended = yield* ch.receive.pipe(Effect.either)
      expect(Either.isLeft(ended) && ended.left.message).toMatch(/poll/)
      expect(watches).toBeLessThan(10)
      yield* ch.close
    })
  )
})

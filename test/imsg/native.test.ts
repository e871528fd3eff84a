import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Deferred, Effect, Either, Fiber, Stream } from "effect"
import type { Scope } from "effect"
import { ImsgChannelNative } from "../../src/layers/ImsgChannelNative.ts"
import * as libc from "../../src/native/libc.ts"
import { Errno } from "../../src/schema/errno.ts"
import { MAX_IMSG_PAYLOAD } from "../../src/schema/imsgHeader.ts"
import { Fd } from "../../src/services/Fd.ts"
import type { Imsg } from "../../src/services/ImsgChannel.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { encodeFrames, hex, toHex } from "./frames.ts"
import { fdCount, recvRaw, sendRaw } from "./sockets.ts"

const native = <A, E>(body: Effect.Effect<A, E, ImsgChannel | Scope.Scope>) =>
  Effect.gen(function* () {
    const before = libc.nativeDoubleCloses
    const a = yield* Effect.scoped(body)
    expect(libc.nativeDoubleCloses).toBe(before)
    return a
  }).pipe(Effect.provide(ImsgChannelNative.layer))

const take = (messages: Stream.Stream<Imsg, unknown>, n: number) =>
  messages.pipe(Stream.take(n), Stream.runCollect, Effect.map(Chunk.toArray))

const le32 = (n: number) => toHex(Uint8Array.of(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24))

const devNull = (label: string) => libc.nativeFd(libc.open("/dev/null", libc.O_RDONLY), label)

/** One recvmsg now, without waiting: what it returned (bytes or -errno) and the bytes read. */
const recvNow = (fd: number): { readonly n: number; readonly bytes: Uint8Array } => {
  const buf = new libc.ScmBuffer()
  const into = new Uint8Array(256)
  try {
    const n = buf.recv(fd, into)
    return { n, bytes: into.slice(0, Math.max(0, n)) }
  } finally {
    buf.free()
  }
}

/** One recvmsg on a raw fd: bytes, 0 at EOF, or -errno (-11: nothing there). */
const recvOnce = (fd: number): number => recvNow(fd).n

describe("ImsgChannelNative over real socketpairs", () => {
  it.live("writes the hex dump of imsg.md §2 byte for byte, in the same two sendmsgs", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("dump")
        const ch = yield* svc.open(a)
        const passed = devNull("passed")
        yield* ch.send({ type: 0x1234, peerid: 7, pid: 0, data: new TextEncoder().encode("abc") })
        yield* ch.send({ type: 5, peerid: 0xffffffff, pid: 1, fd: passed, data: hex("01 02 03 04") })
        yield* ch.send({ type: 6, peerid: 0, pid: 1 })
        yield* ch.flush
        expect(passed.isOpen).toBe(false) // the sender's copy is closed once sent
        // a 19-byte read would carry the fd if the first sendmsg had it
        const first = yield* recvRaw(b.num, 19)
        const second = yield* recvRaw(b.num, 4096)
        expect(toHex(first.bytes)).toBe(`34 12 00 00 13 00 00 00 07 00 00 00 ${le32(process.pid)} 61 62 63`)
        expect(first.fds).toEqual([])
        expect(toHex(second.bytes)).toBe(
          "05 00 00 00 14 00 00 80 ff ff ff ff 01 00 00 00 01 02 03 04 06 00 00 00 10 00 00 00 00 00 00 00 01 00 00 00"
        )
        expect(second.fds.length).toBe(1)
        for (const f of second.fds) libc.close(f)
        b.closeSync()
      })
    )
  )

  it.live("openOwned + listen: messages (one with an fd) handed over from the event loop, then end(null) at EOF; the fd is closed by close, not by the scope", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("listen")
        const before = fdCount()
        const rx = yield* svc.openOwned(b)
        const tx = yield* svc.open(a)
        const done = yield* Deferred.make<ReadonlyArray<string>>()
        const got: Array<string> = []
        yield* rx.listen({
          messages: (ms) => {
            for (const m of ms) {
              got.push(`${m.type}:${m.fd === null ? "-" : "fd"}`)
              m.fd?.closeSync()
            }
          },
          end: (e) => {
            got.push(e === null ? "eof" : e.reason)
            Deferred.unsafeDone(done, Effect.succeed([...got]))
          }
        })
        yield* tx.send({ type: 1, peerid: 0, pid: 0 })
        yield* tx.send({ type: 2, peerid: 0, pid: 0, fd: devNull("passed") })
        yield* tx.send({ type: 3, peerid: 0, pid: 0, data: new Uint8Array(5000) })
        yield* tx.flush
        yield* tx.close
        const seen = yield* Deferred.await(done).pipe(Effect.timeout("5 seconds"))
        expect(seen).toEqual(["1:-", "2:fd", "3:-", "eof"])
        expect(b.isOpen).toBe(true)
        yield* rx.close
        expect(b.isOpen).toBe(false)
        expect(fdCount()).toBe(before - 2)
      })
    )
  )

  it.live("writePending writes what send queued at once, before this turn ends; without it the write waits for the turn's end", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("pending")
        const ch = yield* svc.open(a)
        const peek = () => recvOnce(b.num)
        // Right after send, in the same run of this fiber: the write is still scheduled (EAGAIN here).
        yield* ch.send({ type: 7, peerid: 0, pid: 0, data: Uint8Array.of(1) })
        expect(peek()).toBe(-11)
        yield* ch.writePending
        expect(peek()).toBe(17) // the message, written by writePending
        // Nothing queued: a no-op.
        yield* ch.writePending
        expect(peek()).toBe(-11)
        yield* ch.close
        b.closeSync()
      })
    )
  )

  it.live("unsafeSendNow: with nothing queued the message is on the socket when it returns, never queued; behind queued messages it keeps their order", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("now")
        const ch = yield* svc.open(a)
        const frame = (type: number, peerid: number, payload: string) =>
          toHex(encodeFrames([{ type, peerid, pid: 1, data: hex(payload), marked: false }]).bytes)
        const got = () => recvNow(b.num).bytes
        // nothing queued: on the socket before it returns (no microtask, no writePending), nothing left queued
        expect(ch.unsafeSendNow({ type: 18, peerid: 3, pid: 1, data: hex("05 00 00 00") })).toBeNull()
        expect(ch.unsafeQueued()).toBe(0)
        expect(toHex(got())).toBe(frame(18, 3, "05 00 00 00"))
        // pid 0 is ours, as with send
        expect(ch.unsafeSendNow({ type: 7, peerid: 0, pid: 0 })).toBeNull()
        expect(new DataView(got().buffer).getUint32(12, true)).toBe(process.pid)
        // one queued (its write scheduled, not done): the new one goes after it, both now
        expect(ch.unsafeSend({ type: 8, peerid: 1, pid: 1, data: hex("aa") })).toBeNull()
        expect(got().length).toBe(0)
        expect(ch.unsafeSendNow({ type: 9, peerid: 2, pid: 1, data: hex("bb") })).toBeNull()
        expect(ch.unsafeQueued()).toBe(0)
        expect(toHex(got())).toBe(frame(8, 1, "aa") + " " + frame(9, 2, "bb"))
        // an fd goes the queue's way, with its message
        const dev = libc.nativeFd(libc.open("/dev/null", libc.O_RDONLY), "devnull")
        expect(ch.unsafeSendNow({ type: 10, peerid: 0, pid: 1, fd: dev })).toBeNull()
        const withFd = yield* recvRaw(b.num, 256)
        expect(withFd.fds.length).toBe(1)
        for (const fd of withFd.fds) libc.close(fd)
        // closed: the error send fails with
        ch.unsafeClose()
        expect(ch.unsafeSendNow({ type: 7, peerid: 0, pid: 1 })?.reason).toBe("Closed")
        b.closeSync()
      })
    )
  )

  it.live("unsafeSend, unsafeWritePending, unsafeQueued and unsafeClose act at once, outside an effect, as send, writePending, queued and close do", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("unsafe")
        const fdNum = a.num
        const ch = yield* svc.open(a)
        const peek = () => recvOnce(b.num)
        expect(ch.unsafeQueued()).toBe(0)
        expect(ch.unsafeSend({ type: 7, peerid: 0, pid: 0, data: Uint8Array.of(1, 2) })).toBeNull()
        expect(peek()).toBe(-11) // queued, the write scheduled
        expect([ch.unsafeQueued(), yield* ch.queued]).toEqual([1, 1])
        ch.unsafeWritePending()
        expect(peek()).toBe(18)
        expect([ch.unsafeQueued(), yield* ch.queued]).toEqual([0, 0])
        // too large: the error send fails with, and the message's fd closed
        const dev = libc.nativeFd(libc.open("/dev/null", libc.O_RDONLY), "devnull")
        const tooLarge = ch.unsafeSend({ type: 7, peerid: 0, pid: 0, data: new Uint8Array(16385), fd: dev })
        expect(tooLarge?.reason).toBe("TooLarge")
        expect(dev.isOpen).toBe(false)
        // close: the socket is closed before unsafeClose returns, the stream ends
        ch.unsafeClose()
        expect(a.isOpen).toBe(false)
        expect(libc.fcntl(fdNum, libc.F_GETFD, 0)).toBeLessThan(0)
        expect(peek()).toBe(0) // EOF for the peer
        expect(ch.unsafeSend({ type: 7, peerid: 0, pid: 0 })?.reason).toBe("Closed")
        ch.unsafeClose() // idempotent
        yield* ch.close
        expect(yield* ch.receive).toBeNull()
        b.closeSync()
      })
    )
  )

  it.live("passes an fd: the receiver's fd is the same file (st_dev, st_ino), close-on-exec", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const dir = mkdtempSync(join(tmpdir(), "imsg-"))
        const path = join(dir, "disk.img")
        writeFileSync(path, "x")
        const file = libc.nativeFd(libc.open(path, libc.O_RDWR), "disk")
        const id = libc.fstatId(file.num)
        const [a, b] = yield* svc.socketpair("fdpass")
        const ca = yield* svc.open(a)
        const cb = yield* svc.open(b)
        yield* ca.send({ type: 21, peerid: 3, pid: 1, fd: file, data: hex("aa") })
        const [m] = yield* take(cb.messages, 1)
        rmSync(dir, { recursive: true })
        expect(m?.type).toBe(21)
        const got = m?.fd
        expect(got).toBeInstanceOf(Fd)
        if (!got) throw new Error("no fd")
        expect(file.isOpen).toBe(false)
        expect(libc.fstatId(got.num)).toEqual(id)
        expect(libc.fcntl(got.num, libc.F_GETFD) & libc.FD_CLOEXEC).toBe(libc.FD_CLOEXEC)
        got.closeSync()
      })
    )
  )

  it("a sendmsg without an fd has msg_control NULL and msg_controllen 0, as libutil's msgbuf_write (OpenBSD's sendit() refuses a non-NULL msg_control shorter than a cmsghdr with EINVAL; Linux does not check)", () => {
    const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
    if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
    const [s0, s1] = pair
    const scm = new libc.ScmBuffer(4)
    // msghdr (LP64, both systems): msg_control at 32 (8 bytes), msg_controllen at 40
    const control = () => {
      const h = scm.msghdr
      const dv = new DataView(h.buffer)
      return { pointer: dv.getBigUint64(32, true), length: dv.getUint32(40, true) }
    }
    const payload = new Uint8Array(16)
    const file = libc.open("/dev/null", libc.O_RDWR)
    try {
      expect(scm.send(s0, payload, -1)).toBe(16)
      expect(control()).toEqual({ pointer: 0n, length: 0 })
      expect(scm.send(s0, payload, file)).toBe(16)
      expect(control().pointer).not.toBe(0n)
      expect(control().length).toBe(24) // CMSG_SPACE(sizeof(int))
      expect(scm.sendPieces(s0, 0, 2, [payload, payload], [0, 4], [4, 4], -1)).toBe(8)
      expect(control()).toEqual({ pointer: 0n, length: 0 })
      // and a receive hands the kernel its control area again (the passed fd arrives)
      const into = new Uint8Array(64)
      let bytes = 0
      const fds: Array<number> = []
      while (bytes < 40) {
        const n = scm.recv(s1, into)
        expect(n).toBeGreaterThan(0)
        bytes += n
        fds.push(...scm.fds)
      }
      expect(bytes).toBe(40)
      expect(fds.length).toBe(1)
      for (const fd of fds) libc.close(fd)
    } finally {
      scm.free()
      for (const fd of [s0, s1, file]) libc.close(fd)
    }
  })

  it.live("a message with an fd and the fd-less ones after it leave in one sendmsg", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("batch")
        const ch = yield* svc.open(a)
        yield* ch.send({ type: 1, peerid: 0, pid: 1, data: new Uint8Array(10) })
        yield* ch.send({ type: 2, peerid: 0, pid: 1, fd: devNull("f"), data: new Uint8Array(4) })
        for (let t = 3; t <= 5; t++) yield* ch.send({ type: t, peerid: 0, pid: 1, data: new Uint8Array(t) })
        yield* ch.flush
        // the first message alone: a 26-byte read would carry the fd if its sendmsg had it
        const r1 = yield* recvRaw(b.num, 26)
        const r2 = yield* recvRaw(b.num, 65536)
        expect([r1.bytes.length, r1.fds.length]).toEqual([26, 0])
        // fd message (20) + 3 fd-less (19, 20, 21) in one read: Linux ends a read with the
        // sendmsg that carried an fd, so these 80 bytes were one sendmsg
        expect([r2.bytes.length, r2.fds.length]).toEqual([80, 1])
        expect(Array.from(r2.bytes.subarray(0, 8))).toEqual([2, 0, 0, 0, 20, 0, 0, 0x80])
        for (const f of r2.fds) libc.close(f)
        b.closeSync()
      })
    )
  )

  it.live.each([15, 16385])("a header with len %i fails the stream with Framing (ERANGE)", (len) =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("bad")
        const ch = yield* svc.open(a)
        const good = encodeFrames([{ type: 1, peerid: 0, pid: 1, data: new Uint8Array(3), marked: false }]).bytes
        const bad = new Uint8Array(32)
        bad.set(hex(`09 00 00 00 ${le32(len)}`))
        sendRaw(b.num, Uint8Array.from([...good, ...bad]))
        const seen: Array<number> = []
        const err = yield* Effect.flip(Stream.runForEach(ch.messages, (m) => Effect.sync(() => seen.push(m.type))))
        expect(seen).toEqual([1])
        expect([err.reason, err.errno]).toEqual(["Framing", Errno.ERANGE])
        b.closeSync()
      })
    )
  )

  it.live("EOF in the middle of a message ends the stream cleanly after the complete ones", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("eof")
        const ch = yield* svc.open(a)
        const { bytes } = encodeFrames([
          { type: 1, peerid: 0, pid: 1, data: new Uint8Array(5), marked: false },
          { type: 2, peerid: 0, pid: 1, data: new Uint8Array(100), marked: false }
        ])
        sendRaw(b.num, bytes.subarray(0, 21 + 40))
        b.closeSync()
        const got = yield* Stream.runCollect(ch.messages).pipe(Effect.map(Chunk.toArray))
        expect(got.map((m) => m.type)).toEqual([1])
      })
    )
  )

  it.live("an fd that no marked header claims is closed (/proc/self/fd back to its count)", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("unclaimed")
        const ch = yield* svc.open(a)
        const before = fdCount()
        const extra = libc.dup(b.num)
        const unmarked = encodeFrames([{ type: 7, peerid: 0, pid: 1, data: new Uint8Array(4), marked: false }]).bytes
        expect(sendRaw(b.num, unmarked, extra)).toBe(20)
        libc.close(extra) // only the copy in flight is left
        const [m] = yield* take(ch.messages, 1)
        expect(m?.type).toBe(7)
        expect(m?.fd).toBeNull()
        expect(fdCount()).toBe(before)
        b.closeSync()
      })
    )
  )

  it.live("a marked header without an fd yields fd null", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("nofd")
        const ch = yield* svc.open(a)
        sendRaw(b.num, encodeFrames([{ type: 8, peerid: 0, pid: 1, data: new Uint8Array(0), marked: true }]).bytes)
        const [m] = yield* take(ch.messages, 1)
        expect([m?.type, m?.fd]).toEqual([8, null])
        b.closeSync()
      })
    )
  )

  it.live("backpressure: 10 MB to a slow reader arrive complete and in order", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("bulk")
        const ca = yield* svc.open(a)
        const cb = yield* ImsgChannelNative.open(b, { highWaterBytes: 64 * 1024 })
        const sizes: Array<number> = []
        for (let total = 0, i = 0; total < 10 * 1024 * 1024; i++) {
          const size = (i * 7919) % (MAX_IMSG_PAYLOAD + 1)
          sizes.push(size)
          total += size + 16
        }
        let received = 0
        let inOrder = true
        const reader = yield* Effect.fork(
          cb.messages.pipe(
            Stream.take(sizes.length),
            Stream.runForEach((m) =>
              Effect.gen(function* () {
                const i = received++
                inOrder &&= m.type === i && m.data.length === sizes[i] && (m.data.length === 0 || m.data[m.data.length - 1] === (i & 0xff))
                if (i % 25 === 0) yield* Effect.sleep("1 millis")
              })
            )
          )
        )
        let peak = 0
        for (let i = 0; i < sizes.length; i++) {
          yield* ca.send({ type: i, peerid: 0, pid: 1, data: new Uint8Array(sizes[i] ?? 0).fill(i & 0xff) })
          if (i % 200 === 199) {
            yield* Effect.yieldNow()
            peak = Math.max(peak, yield* ca.queued)
          }
        }
        yield* ca.flush
        expect(yield* ca.queued).toBe(0)
        yield* Fiber.join(reader)
        expect(received).toBe(sizes.length)
        expect(inOrder).toBe(true)
        expect(peak).toBeGreaterThan(0) // the writer did wait for the socket
      })
    ),
    60_000
  )

  it.live("raw handshake (13352 + 40 bytes out, a 4-byte id back), then the same sockets carry imsgs", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [vmm, vm] = yield* svc.socketpair("vm")
        const vmdVm = new Uint8Array(13352).map((_, i) => (i * 31) & 0xff)
        const prefix = new Uint8Array(40).fill(0x5a)
        const child = yield* Effect.fork(
          Effect.gen(function* () {
            const got = yield* svc.readRaw(vm, 13352 + 40, 2000)
            yield* svc.writeRaw(vm, hex("2a 00 00 00"), 2000)
            return got
          })
        )
        yield* svc.writeRaw(vmm, vmdVm, 2000)
        yield* svc.writeRaw(vmm, prefix, 2000)
        const id = yield* svc.readRaw(vmm, 4, 2000)
        const got = yield* Fiber.join(child)
        expect(id).toEqual(hex("2a 00 00 00"))
        expect(got).toEqual(Uint8Array.from([...vmdVm, ...prefix]))
        const cvmm = yield* svc.open(vmm)
        const cvm = yield* svc.open(vm)
        yield* cvm.send({ type: 37, peerid: 0, pid: 0 })
        const [m] = yield* take(cvmm.messages, 1)
        expect(m?.type).toBe(37)
      })
    )
  )

  it.live("readRaw: EOF before n bytes is Eof, silence is Timeout; a closed Fd is Closed", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [x, y] = yield* svc.socketpair("raw")
        const t0 = Date.now()
        const silent = yield* Effect.either(svc.readRaw(x, 4, 100))
        expect(Either.isLeft(silent) && silent.left.reason).toBe("Timeout")
        expect(Date.now() - t0).toBeGreaterThanOrEqual(90)
        yield* svc.writeRaw(y, hex("01 02"), 100)
        y.closeSync()
        const eof = yield* Effect.either(svc.readRaw(x, 4, 1000))
        expect(Either.isLeft(eof) && eof.left.reason).toBe("Eof")
        x.closeSync()
        const closed = yield* Effect.either(svc.readRaw(x, 4, 1000))
        expect(Either.isLeft(closed) && closed.left.reason).toBe("Closed")
      })
    )
  )

  it.live("readRaw with blockMs: an answer within it is read in place, without the loop turning", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [x, y] = yield* svc.socketpair("raw")
        // Another process answers after ~30 ms; the test's own thread is blocked meanwhile.
        const child = spawn("sh", ["-c", "sleep 0.03; printf '\\052\\0\\0\\0' >&3"], { stdio: ["ignore", "ignore", "inherit", y.num] })
        yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
        y.closeSync()
        let loopTurned = false
        setImmediate(() => {
          loopTurned = true
        })
        const id = yield* svc.readRaw(x, 4, 5000, 3000)
        expect(id).toEqual(hex("2a 00 00 00"))
        expect(loopTurned).toBe(false)
        x.closeSync()
      })
    )
  )

  it.live("readRaw with blockMs: past it, the wait goes on on the loop, within the same deadline", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [x, y] = yield* svc.socketpair("raw")
        let loopTurned = false
        setImmediate(() => {
          loopTurned = true
        })
        const late = setTimeout(() => libc.write(y.num, hex("07 00 00 00")), 150)
        yield* Effect.addFinalizer(() => Effect.sync(() => clearTimeout(late)))
        const id = yield* svc.readRaw(x, 4, 5000, 20)
        expect(id).toEqual(hex("07 00 00 00"))
        expect(loopTurned).toBe(true)
        // Silence: the blocked part is within the deadline (blockMs beyond it is cut to it).
        const t0 = Date.now()
        const silent = yield* Effect.either(svc.readRaw(x, 4, 200, 5000))
        const took = Date.now() - t0
        expect(Either.isLeft(silent) && silent.left.reason).toBe("Timeout")
        expect(took).toBeGreaterThanOrEqual(190)
        expect(took).toBeLessThan(4000)
        x.closeSync()
        y.closeSync()
      })
    )
  )

  it.live("EPIPE from a closed peer ends the stream cleanly and drops the queue", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("pipe")
        const ch = yield* svc.open(a)
        sendRaw(b.num, encodeFrames([{ type: 3, peerid: 0, pid: 1, data: new Uint8Array(2), marked: false }]).bytes)
        b.closeSync()
        const f = devNull("queued")
        yield* ch.send({ type: 1, peerid: 0, pid: 1, fd: f })
        for (let t = 2; t <= 4; t++) yield* ch.send({ type: t, peerid: 0, pid: 1, data: new Uint8Array(t) })
        yield* ch.flush
        // the first write met EPIPE: nothing stays queued, the queued fd is closed
        expect(yield* ch.queued).toBe(0)
        expect(f.isOpen).toBe(false)
        const got = yield* Stream.runCollect(ch.messages).pipe(Effect.map(Chunk.toArray))
        expect(got.map((m) => m.type)).toEqual([3])
      })
    )
  )

  // POLLERR: a unix stream socket reports it once the peer has closed with data of ours
  // unread; libuv stops the poll handle and calls back with EBADF (uv__poll_io).
  const frame = (type: number, size = 0) => encodeFrames([{ type, peerid: 0, pid: 1, data: new Uint8Array(size), marked: false }]).bytes
  const unreadBy = (ch: { readonly send: (m: { type: number; peerid: number; pid: number; data: Uint8Array }) => Effect.Effect<void, unknown> }) =>
    ch.send({ type: 1, peerid: 0, pid: 1, data: new Uint8Array(8) })

  it.live("POLLERR: the peer's last messages, then its close with ours unread, end the stream as EOF, not an error", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("pollerr-eof")
        const ch = yield* svc.open(a)
        yield* unreadBy(ch)
        yield* ch.flush // b never reads it
        // two short sends: a drain that stopped at the first short read would leave one unread
        sendRaw(b.num, frame(77))
        sendRaw(b.num, frame(78, 4))
        b.closeSync()
        const got = yield* Stream.runCollect(ch.messages).pipe(Effect.map(Chunk.toArray), Effect.timeout("5 seconds"))
        expect(got.map((m) => m.type)).toEqual([77, 78])
      })
    )
  )

  it.live("POLLERR while only writing (reading ended by a framing error): the queue is dropped, its fds closed, flush returns", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("pollerr-write")
        const ch = yield* svc.open(a)
        // more than the socket takes: the channel waits for POLLOUT
        for (let i = 0; i < 64; i++) yield* ch.send({ type: 1, peerid: 0, pid: 1, data: new Uint8Array(16000) })
        yield* ch.writePending
        const bad = new Uint8Array(16)
        new DataView(bad.buffer).setUint32(4, 8, true)
        sendRaw(b.num, bad)
        const ended = yield* Stream.runDrain(ch.messages).pipe(Effect.either, Effect.timeout("5 seconds"))
        expect(Either.isLeft(ended) && (ended.left as { reason?: string }).reason).toBe("Framing")
        const f = devNull("queued")
        yield* ch.send({ type: 2, peerid: 0, pid: 1, fd: f })
        b.closeSync()
        yield* ch.flush.pipe(Effect.timeout("5 seconds"))
        expect(yield* ch.queued).toBe(0)
        expect(f.isOpen).toBe(false)
      })
    )
  )

  it.live("POLLERR while reading is paused for a lagging consumer: every message is still delivered, then EOF", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("pollerr-paused")
        const ch = yield* ImsgChannelNative.open(a, { highWaterBytes: 64 * 1024 })
        // the peer never reads: the channel watches for POLLOUT throughout
        for (let i = 0; i < 64; i++) yield* ch.send({ type: 1, peerid: 0, pid: 1, data: new Uint8Array(16000) })
        yield* ch.writePending
        for (let i = 0; i < 12; i++) expect(sendRaw(b.num, frame(100 + i, 16000))).toBe(16016)
        yield* Effect.sleep("50 millis") // read, up to the high-water mark: reading pauses
        for (let i = 12; i < 24; i++) expect(sendRaw(b.num, frame(100 + i, 16000))).toBe(16016)
        b.closeSync()
        yield* Effect.sleep("50 millis") // POLLERR comes while paused
        const got = yield* Stream.runCollect(ch.messages).pipe(Effect.map(Chunk.toArray), Effect.timeout("5 seconds"))
        expect(got.map((m) => m.type)).toEqual(Array.from({ length: 24 }, (_, i) => 100 + i))
      })
    )
  )

  it.live("opening and closing channels leaves no fd behind", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const before = fdCount()
        for (let i = 0; i < 50; i++) {
          yield* Effect.scoped(
            Effect.gen(function* () {
              const [a, b] = yield* svc.socketpair("churn")
              const ca = yield* svc.open(a)
              const cb = yield* svc.open(b)
              yield* ca.send({ type: i, peerid: 0, pid: 1, fd: devNull("churn") })
              const [m] = yield* take(cb.messages, 1)
              m?.fd?.closeSync()
              yield* ca.close
              yield* ca.close // idempotent
            })
          )
        }
        expect(fdCount()).toBe(before)
      })
    )
  )

  it.live("a child whose parent channel is an inherited blocking fd 3 opens it and echoes, fds included", () =>
    native(
      Effect.gen(function* () {
        const svc = yield* ImsgChannel
        // blocking, like proc.c's end once inherited; close-on-exec so the child holds only its fd 3
        const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
        if (typeof pair === "number") return yield* Effect.die(new Error(`socketpair: ${pair}`))
        const mine = libc.nativeFd(pair[0], "to child")
        const childEnd = libc.nativeFd(pair[1], "child end")
        const exited = yield* Deferred.make<number | null>()
        const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "echo-child.ts")], {
          stdio: ["ignore", "inherit", "inherit", childEnd.num]
        })
        child.on("exit", (code) => Deferred.unsafeDone(exited, Effect.succeed(code)))
        childEnd.closeSync()
        const ch = yield* svc.open(mine)
        const [hello] = yield* take(ch.messages, 1)
        expect(Array.from(hello?.data ?? [])).toEqual([1, 1]) // blocking before open, O_NONBLOCK after
        const file = devNull("round trip")
        const id = libc.fstatId(file.num)
        yield* ch.send({ type: 40, peerid: 9, pid: 1, fd: file, data: hex("de ad") })
        const [echo] = yield* take(ch.messages, 1)
        expect([echo?.type, echo?.peerid, echo?.pid]).toEqual([41, 9, child.pid])
        expect(libc.fstatId(echo?.fd?.num ?? -1)).toEqual(id)
        echo?.fd?.closeSync()
        yield* ch.close
        expect(yield* Deferred.await(exited)).toBe(0)
      })
    ),
    30_000
  )
})

/**
 * Orderings the single-threaded vmm.c guarantees: one event handled to
 * completion before the next, the start handshake blocking everything, and
 * the parent's pipelined requests answered in order.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, TestClock } from "effect"
import { booted, idleFds, startRunning, vmSocketFds } from "./fixtures.ts"
import { expectOpen, expectParent, reply, sendStart } from "./steps.ts"
import { E, M, PEERID_NONE, vmopId, vmopResult } from "./wire.ts"

const startResponse = (vmid: number, res: number, pid = 0) => reply(M.START_VM_RESPONSE, vmid, vmopResult(res, vmid, pid))
const event = (vmid: number, res: number) => reply(M.TERMINATE_VM_EVENT, PEERID_NONE, vmopResult(res, vmid, 0))

describe("ordering", () => {
  it.scoped("a VM that exits right after its handshake is reported after its START_VM_RESPONSE", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700 })
      h.plan("brief", { _tag: "ExitAfterId", code: E.EAGAIN })
      yield* sendStart(h, 3, { name: "brief" })
      yield* h.settle
      // No stop was pending: 35 goes to the parent, which restarts it.
      expectParent(h.takeParent(), [startResponse(3, 0, 700), event(3, E.EAGAIN)])
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a VM that exits while another VM's handshake blocks the vmm is reported once the handshake ends", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700, handshakeTimeoutMs: 1_000 })
      const a = yield* startRunning(h, 1, { name: "a" })
      h.plan("slow", { _tag: "Hang" })
      yield* sendStart(h, 2, { name: "slow" })
      yield* h.settle
      yield* h.vmCommand(a, { _tag: "Exit", code: 4 })
      yield* h.settle
      // vmm is blocked in the handshake: nothing yet, though A is gone.
      expect(h.takeParent()).toEqual([])
      expect(h.simByPid(a).end).toEqual({ _tag: "Exited", code: 4 })
      yield* TestClock.adjust("1 second")
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(2, E.ENOMEM), event(1, 4)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a shutdown ends a start handshake's wait at once: the vmm exits without waiting out the timeout", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700, handshakeTimeoutMs: 30_000 })
      const a = yield* startRunning(h, 1, { name: "a" })
      h.plan("slow", { _tag: "Hang" })
      yield* sendStart(h, 2, { name: "slow" })
      yield* h.settle
      yield* h.handle.shutdown("received SIGTERM")
      yield* h.settle
      // no TestClock.adjust: done without the 30 s
      const code = yield* h.handle.done.pipe(Effect.timeout("5 seconds"), Effect.option)
      expect(code).toEqual(Option.some(0))
      expect(h.simByPid(a).end).not.toBe(null)
      expect(h.simByPid(701).end).not.toBe(null)
    })
  )

  it.scoped("a start queued behind a hung one when the shutdown comes gives up too, without waiting for its id", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700, handshakeTimeoutMs: 30_000 })
      h.plan("slow", { _tag: "Hang" })
      h.plan("slower", { _tag: "Hang" })
      yield* sendStart(h, 1, { name: "slow" })
      yield* sendStart(h, 2, { name: "slower" })
      yield* h.settle
      yield* h.handle.shutdown("received SIGTERM")
      yield* h.settle
      expect(yield* h.handle.done.pipe(Effect.timeout("5 seconds"), Effect.option)).toEqual(Option.some(0))
      expectParent(h.takeParent(), [startResponse(1, E.EIO), startResponse(2, E.EIO)])
      expect([h.simByPid(700).end, h.simByPid(701).end].every((e) => e !== null)).toBe(true)
    })
  )

  it.scoped("the parent going away ends a start handshake's wait at once", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700, handshakeTimeoutMs: 30_000 })
      h.plan("slow", { _tag: "Hang" })
      yield* sendStart(h, 1, { name: "slow" })
      yield* h.settle
      expect(yield* h.closeParent.pipe(Effect.timeout("5 seconds"), Effect.option)).toEqual(Option.some(0))
      expect(h.simByPid(700).end).not.toBe(null)
    })
  )

  it.scoped("requests pipelined behind a start wait for its handshake and are answered in order", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 700 })
      yield* sendStart(h, 1, { name: "a", ncpus: 2 })
      yield* h.send({ type: M.PAUSE_VM, peerid: 9, data: vmopId(1) })
      yield* h.send({ type: M.TERMINATE_VM_REQUEST, peerid: 9, data: vmopId(1) })
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 9 })
      yield* h.settle
      const got = h.takeParent()
      // The dispatcher's own replies in request order; then what the VM did
      // meanwhile: its PAUSE reply, and its reset (a pending stop: 0).
      expect(got.map((m) => [m.type, m.peerid])).toEqual([
        [M.START_VM_RESPONSE, 1],
        [M.TERMINATE_VM_RESPONSE, 9],
        [M.GET_INFO_VM_DATA, 9],
        [M.GET_INFO_VM_END_DATA, 9],
        [M.PAUSE_VM_RESPONSE, PEERID_NONE],
        [M.TERMINATE_VM_EVENT, PEERID_NONE]
      ])
      expectParent(got.slice(4), [reply(M.PAUSE_VM_RESPONSE, PEERID_NONE, vmopResult(0, 1, 0)), event(1, 0)])
    })
  )

  it.scoped("a VM that breaks the imsg framing is ended; the others keep running", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("broken", { _tag: "Normal" }, { termCode: 9 })
      const bad = yield* startRunning(h, 1, { name: "broken" })
      const good = yield* startRunning(h, 2, { name: "fine" })
      // A header whose len (8) is below the 16-byte header: libutil's ERANGE.
      const header = new Uint8Array(16)
      new DataView(header.buffer).setUint32(4, 8, true)
      yield* h.vmCommand(bad, { _tag: "Raw", bytes: header })
      yield* h.settle
      expectParent(h.takeParent(), [event(1, 9)])
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, data: vmopId(2) })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.PAUSE_VM_RESPONSE, PEERID_NONE, vmopResult(0, 2, 0))])
      expect(h.simByPid(good).end).toBe(null)
      expectOpen(h, [...idleFds, ...vmSocketFds(2)])
    })
  )

  it.scoped("a VM ended for misbehaving is heard no more: what follows the bad message in the same read is dropped", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      // terminated, it exits EAGAIN: a reboot, unless the vmm marked it as shutting down
      h.plan("bad", { _tag: "Normal" }, { termCode: E.EAGAIN })
      const bad = yield* startRunning(h, 1, { name: "bad" })
      const frame = (type: number, peerid: number, data: Uint8Array) => {
        const b = new Uint8Array(16 + data.length)
        const v = new DataView(b.buffer)
        v.setUint32(0, type, true)
        v.setUint32(4, b.length, true)
        v.setUint32(8, peerid, true)
        b.set(data, 16)
        return b
      }
      // one write: a PAUSE_VM_RESPONSE one byte short, VM_REBOOT, a well-formed PAUSE_VM_RESPONSE
      const bytes = [frame(M.PAUSE_VM_RESPONSE, 5, vmopResult(0, 1, 0).subarray(0, 27)), frame(M.VM_REBOOT, 0, new Uint8Array(0)), frame(M.PAUSE_VM_RESPONSE, 6, vmopResult(0, 1, 0))]
      const all = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0))
      bytes.reduce((o, b) => (all.set(b, o), o + b.length), 0)
      yield* h.vmCommand(bad, { _tag: "Raw", bytes: all })
      yield* h.settle
      // Not the reply, and its exit is no reboot: the VM_REBOOT after the bad message did
      // not clear the shutdown mark (35 would have the parent start it again).
      expectParent(h.takeParent(), [event(1, 0)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a VM flooding its socket while another VM's handshake blocks the vmm is read no further than a bound", () =>
    Effect.gen(function* () {
      const h = yield* booted({ handshakeTimeoutMs: 1_000 })
      const a = yield* startRunning(h, 1, { name: "flooder" })
      const vmmEnd = h.table.openFds().find((f) => f.label === "vm 1 channel[0]")?.num ?? -1
      h.plan("slow", { _tag: "Hang" })
      yield* sendStart(h, 2, { name: "slow" })
      yield* h.settle
      // 200,000 VM_SHUTDOWNs (16 bytes each, 3.2 MB), then a PAUSE_VM_RESPONSE
      const n = 200_000
      const flood = new Uint8Array(16 * n + 16 + 28)
      const v = new DataView(flood.buffer)
      for (let i = 0; i < n; i++) {
        v.setUint32(i * 16, M.VM_SHUTDOWN, true)
        v.setUint32(i * 16 + 4, 16, true)
      }
      v.setUint32(16 * n, M.PAUSE_VM_RESPONSE, true)
      v.setUint32(16 * n + 4, 16 + 28, true)
      v.setUint32(16 * n + 8, 7, true)
      flood.set(vmopResult(0, 1, 0), 16 * n + 16)
      const before = h.table.bytesRead(vmmEnd)
      yield* h.vmCommand(a, { _tag: "Raw", bytes: flood })
      yield* h.settle
      // Held: about BACKLOG_HIGH's worth of messages queued (1 MiB at 128 bytes each,
      // 131 KB of them on the wire), and the rest left to the kernel (here, the socket).
      const read = h.table.bytesRead(vmmEnd) - before
      expect(read).toBeGreaterThan(0)
      expect(read).toBeLessThan(flood.length / 4)
      expect(h.takeParent()).toEqual([])
      // The handshake ends: everything is read and handled, in order, and the VM goes on.
      yield* TestClock.adjust("1 second")
      yield* h.settle
      expect(h.table.bytesRead(vmmEnd) - before).toBe(flood.length)
      expectParent(h.takeParent(), [startResponse(2, E.ENOMEM), reply(M.PAUSE_VM_RESPONSE, 7, vmopResult(0, 1, 0))])
      expect(h.simByPid(a).end).toBe(null)
    })
  )

  it.scoped("messages a VM sent before the vmm forgot it are dropped with their fds", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 1, { name: "a" })
      // The VM answers and the parent resets at the same time: the reset wins, the answer is stale.
      yield* h.vmCommand(a, { _tag: "Send", type: M.PAUSE_VM_RESPONSE, peerid: 5, data: vmopResult(0, 1, 0), withFd: true })
      yield* h.send({ type: M.CTL_RESET, data: new Uint8Array([1, 0, 0, 0]) })
      yield* h.settle
      // Either order would be vmm.c's (forwarded before the reset, or dropped after it). Here
      // the reset always comes first: the simulated VM's fiber sends its answer only once this
      // fiber yields, after the reset is queued. So the answer is stale: dropped, its fd closed
      // (expectOpen), never forwarded nor an event (fails if server.ts dispatches it anyway).
      expect(h.takeParent()).toEqual([])
      expectOpen(h, idleFds)
    })
  )
})

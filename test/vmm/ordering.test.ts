/**
 * Orderings the single-threaded vmm.c guarantees: one event handled to
 * completion before the next, the start handshake blocking everything, and
 * the parent's pipelined requests answered in order.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
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

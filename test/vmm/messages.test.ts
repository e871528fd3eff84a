/**
 * The other parent requests (vmd.md §6 d–h, g) and the VM → vmm messages:
 * GET_INFO_VM, PAUSE/UNPAUSE, CTL_VERBOSE, CTL_RESET, CONFIG,
 * PRIV_GET_ADDR_RESPONSE, RECEIVE_VMM_FD, malformed input, parent EOF.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { ImsgChannelMemory } from "../../src/layers/ImsgChannelMemory.ts"
import { makeHarness } from "./harness.ts"
import { booted, DEV_VMM, idleFds, startRunning, vmSocketFds } from "./fixtures.ts"
import { expectNoDoubleClose, expectOpen, expectParent, openLabels, reply, sendStart } from "./steps.ts"
import {
  CONFIG_VMS,
  createParams,
  E,
  int32,
  M,
  PEERID_NONE,
  readInfo,
  uint32,
  vcpuStates,
  vmdConfig,
  vmopAddrResult,
  vmopId,
  vmopResult
} from "./wire.ts"

const event = (vmid: number, res: number) => reply(M.TERMINATE_VM_EVENT, PEERID_NONE, vmopResult(res, vmid, 0))

describe("GET_INFO_VM_REQUEST", () => {
  it.scoped("GET_INFO_VM_REQUEST sends one DATA per VM with the request's peerid then END_DATA", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 300 })
      yield* startRunning(h, 11, { name: "alpha", ncpus: 2, memory: 256n << 20n })
      yield* startRunning(h, 12, { name: "beta" })
      // A VM in vmm(4) that vmd does not know (another vmd's, or an orphan): vir_id 0.
      yield* h.kernel.create({ name: "stray", ncpus: 3, memorySize: 1n << 30n, creatorPid: 99 })
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 0x1234 })
      yield* h.settle
      const got = h.takeParent()
      expect(got.map((m) => [m.type, m.peerid, m.pid])).toEqual([
        [M.GET_INFO_VM_DATA, 0x1234, 1],
        [M.GET_INFO_VM_DATA, 0x1234, 1],
        [M.GET_INFO_VM_DATA, 0x1234, 1],
        [M.GET_INFO_VM_END_DATA, 0x1234, 1]
      ])
      const info = got.slice(0, 3).map((m) => readInfo(m.data))
      const common = { used: 0n, ttyname: "", uid: 0, gid: 0n, state: 0 }
      expect(info).toEqual([
        { ...common, memory: 256n << 20n, ncpus: 2n, vcpuState: vcpuStates(2), creatorPid: 300, id: 11, name: "alpha" },
        { ...common, memory: 512n << 20n, ncpus: 1n, vcpuState: vcpuStates(1), creatorPid: 301, id: 12, name: "beta" },
        { ...common, memory: 1n << 30n, ncpus: 3n, vcpuState: vcpuStates(3), creatorPid: 99, id: 0, name: "stray" }
      ])
      expectParent(got.slice(3), [reply(M.GET_INFO_VM_END_DATA, 0x1234, int32(0))])
    })
  )

  it.scoped("with no VM, only END_DATA 0", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 5 })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.GET_INFO_VM_END_DATA, 5, int32(0))])
    })
  )

  it.scoped("before RECEIVE_VMM_FD, END_DATA carries EBADF (ioctl on -1)", () =>
    Effect.gen(function* () {
      const h = yield* makeHarness()
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 5 })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.GET_INFO_VM_END_DATA, 5, int32(E.EBADF))])
    })
  )

  it.scoped("a failing VMM_IOC_INFO gives its errno in END_DATA; a size query that reports entries gives EIO", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 1, { name: "a" })
      yield* h.kernel.failNext("INFO", E.ENOMEM)
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 5 })
      yield* h.settle
      yield* h.kernel.injectInfoCount(1n)
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 6 })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.GET_INFO_VM_END_DATA, 5, int32(E.ENOMEM)), reply(M.GET_INFO_VM_END_DATA, 6, int32(E.EIO))])
    })
  )
})

describe("PAUSE_VM / UNPAUSE_VM", () => {
  it.scoped("PAUSE_VM for an unknown VM answers PAUSE_VM_RESPONSE ENOENT (UNPAUSE likewise)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, data: vmopId(8) })
      yield* h.send({ type: M.UNPAUSE_VM, peerid: 3, data: vmopId(0) })
      yield* h.settle
      expectParent(h.takeParent(), [
        reply(M.PAUSE_VM_RESPONSE, 3, vmopResult(E.ENOENT, 8, 0)),
        reply(M.UNPAUSE_VM_RESPONSE, 3, vmopResult(E.ENOENT, 0, 0))
      ])
    })
  )

  it.scoped("PAUSE_VM is forwarded to the VM with peerid 0xffffffff and the parent's pid", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 6, { name: "a" })
      const vid = vmopId(6, 0, "a")
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, pid: 4242, data: vid })
      yield* h.send({ type: M.UNPAUSE_VM, peerid: 3, pid: 4243, data: vid })
      yield* h.settle
      expect(h.simByPid(pid).received).toEqual([
        { type: M.PAUSE_VM, peerid: PEERID_NONE, pid: 4242, data: vid, fd: false },
        { type: M.UNPAUSE_VM, peerid: PEERID_NONE, pid: 4243, data: vid, fd: false }
      ])
      h.takeParent()
    })
  )

  it.scoped("PAUSE_VM_RESPONSE from the VM is forwarded to the parent (same peerid and payload, pid 1)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 6, { name: "a" })
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, pid: 4242, data: vmopId(6) })
      yield* h.send({ type: M.UNPAUSE_VM, peerid: 3, pid: 4242, data: vmopId(6) })
      yield* h.settle
      expectParent(h.takeParent(), [
        reply(M.PAUSE_VM_RESPONSE, PEERID_NONE, vmopResult(0, 6, 0)),
        reply(M.UNPAUSE_VM_RESPONSE, PEERID_NONE, vmopResult(0, 6, 0))
      ])
    })
  )

  it.scoped("an unsolicited *_RESPONSE from a VM is forwarded as is", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 6, { name: "a" })
      const data = vmopResult(-7, 0xdeadbeef, 55)
      yield* h.vmCommand(pid, { _tag: "Send", type: M.UNPAUSE_VM_RESPONSE, peerid: 0x42, data })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.UNPAUSE_VM_RESPONSE, 0x42, data)])
    })
  )

  it.scoped.each([
    { name: "PAUSE_VM", type: M.PAUSE_VM },
    { name: "UNPAUSE_VM", type: M.UNPAUSE_VM }
  ])("$name for a VM not started yet (no channel) is not answered, as vmm.c's failed compose is not; its fd is closed and a line logged", ({ name, type }) =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 6, { name: "pending" }, { end: "none" })
      const before = openLabels(h)
      // vmd's parent sets VM_STATE_PAUSED on any PAUSE_VM_RESPONSE naming the VM, whatever its result
      yield* h.send({ type, peerid: 3, data: vmopId(6), fd: h.makeFd("passed along") })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expectOpen(h, before)
      expect(h.logs.filter((l) => l.includes(`${name}: vm 6 is not started`))).toHaveLength(1)
      // the VM still starts
      yield* h.send({ type: M.START_VM_END, peerid: 6, fd: h.makeFd("vm6.tty") })
      yield* h.settle
      expect(h.takeParent().map((m) => m.type)).toEqual([M.START_VM_RESPONSE])
    })
  )

  it.scoped("a wrong-size PAUSE_VM answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 6, { name: "a" })
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, data: vmopId(6).subarray(0, 40) })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.PAUSE_VM_RESPONSE, 3, vmopResult(E.EINVAL, 0, 0))])
    })
  )
})

describe("CTL_VERBOSE, CTL_RESET, CONFIG, PRIV_GET_ADDR_RESPONSE", () => {
  it.scoped("CTL_VERBOSE is forwarded to every VM, and the next VM is started with -v / -vv", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 1, { name: "a" })
      const b = yield* startRunning(h, 2, { name: "b" })
      yield* sendStart(h, 3, { name: "pending" }, { end: "none" })
      yield* h.send({ type: M.CTL_VERBOSE, pid: 31, data: int32(1) })
      yield* h.settle
      for (const pid of [a, b]) {
        expect(h.simByPid(pid).received).toEqual([{ type: M.CTL_VERBOSE, peerid: PEERID_NONE, pid: 31, data: int32(1), fd: false }])
      }
      const c = yield* startRunning(h, 4, { name: "c" })
      expect(h.simByPid(c).argv.slice(6)).toEqual(["-v"])
      yield* h.send({ type: M.CTL_VERBOSE, data: int32(3) })
      const d = yield* startRunning(h, 5, { name: "d" })
      expect(h.simByPid(d).argv.slice(6)).toEqual(["-vv"])
      yield* h.send({ type: M.CTL_VERBOSE, data: int32(0) })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
    })
  )

  it.scoped("a wrong-size CTL_VERBOSE, CTL_RESET or CONFIG is ignored: no reply, nothing forwarded", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 1, { name: "a" })
      yield* h.send({ type: M.CTL_VERBOSE, data: new Uint8Array(2) })
      yield* h.send({ type: M.CTL_RESET, data: new Uint8Array(8).fill(0xff) })
      yield* h.send({ type: M.CONFIG, data: vmdConfig(new Uint8Array(40)).subarray(0, 200) })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect(h.simByPid(a).received).toEqual([])
      expect((yield* h.registry.all).length).toBe(1)
    })
  )

  it.scoped("CTL_RESET with CONFIG_VMS terminates and removes every VM, without events", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 1, { name: "a" })
      const b = yield* startRunning(h, 2, { name: "b" })
      yield* sendStart(h, 3, { name: "pending", ndisks: 1 }, { disks: [[0, true]], end: "none" })
      yield* h.send({ type: M.CTL_RESET, data: uint32(CONFIG_VMS | 0x02) })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect(yield* h.registry.all).toEqual([])
      expect(yield* h.kernel.list).toEqual([])
      expect([h.simByPid(a).end, h.simByPid(b).end]).toEqual([
        { _tag: "Exited", code: 0 },
        { _tag: "Exited", code: 0 }
      ])
      expectOpen(h, idleFds)
      // The ids are free again.
      yield* startRunning(h, 1, { name: "a" })
    })
  )

  it.scoped("CTL_RESET without CONFIG_VMS keeps the VMs", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 1, { name: "a" })
      yield* h.send({ type: M.CTL_RESET, data: uint32(0x02) })
      yield* h.settle
      expect((yield* h.registry.all).length).toBe(1)
      expect((yield* h.kernel.list).length).toBe(1)
    })
  )

  it.scoped("PRIV_GET_ADDR_RESPONSE is forwarded to the VM (peerid 0xffffffff, the parent's pid); unknown or not started: dropped", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "a", nnics: 1 }, { nics: [[0, true]] })
      yield* sendStart(h, 2, { name: "pending" }, { end: "none" })
      const addr = vmopAddrResult(1, 0, [0xfe, 0xe1, 0xbb, 0xd1, 0x02, 0x03])
      yield* h.send({ type: M.PRIV_GET_ADDR_RESPONSE, peerid: 1, pid: 17, data: addr })
      yield* h.send({ type: M.PRIV_GET_ADDR_RESPONSE, peerid: 9, data: vmopAddrResult(9, 0, [1, 2, 3, 4, 5, 6]) })
      yield* h.send({ type: M.PRIV_GET_ADDR_RESPONSE, peerid: 2, data: vmopAddrResult(2, 0, [1, 2, 3, 4, 5, 6]) })
      yield* h.send({ type: M.PRIV_GET_ADDR_RESPONSE, peerid: 1, data: addr.subarray(0, 12) })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect(h.simByPid(pid).received).toEqual([{ type: M.PRIV_GET_ADDR_RESPONSE, peerid: PEERID_NONE, pid: 17, data: addr, fd: false }])
    })
  )

  it.scoped("a message type the vmm does not handle is ignored and its fd closed", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send({ type: M.LOAD, data: new Uint8Array(3), fd: h.makeFd("junk") })
      yield* h.send({ type: M.WAIT_VM_REQUEST, data: vmopId(1) })
      yield* h.send({ type: 999 })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expectOpen(h, idleFds)
    })
  )
})

describe("RECEIVE_VMM_FD", () => {
  it.scoped("RECEIVE_VMM_FD terminates every VM the kernel reports", () =>
    Effect.gen(function* () {
      const h = yield* makeHarness({ kernelVms: ["old1", "old2", "old3"] })
      yield* h.send({ type: M.RECEIVE_VMM_FD, fd: h.makeFd(DEV_VMM) })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect(yield* h.kernel.list).toEqual([])
    })
  )

  it.scoped("the sweep stops at the first VMM_IOC_TERM that fails", () =>
    Effect.gen(function* () {
      const h = yield* makeHarness({ kernelVms: ["old1", "old2", "old3"] })
      yield* h.kernel.failNext("TERM", E.EIO)
      yield* h.send({ type: M.RECEIVE_VMM_FD, fd: h.makeFd(DEV_VMM) })
      yield* h.settle
      expect((yield* h.kernel.list).map((k) => k.name)).toEqual(["old1", "old2", "old3"])
    })
  )

  it.scoped("a second RECEIVE_VMM_FD is refused and its fd closed", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send({ type: M.RECEIVE_VMM_FD, fd: h.makeFd("second") })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expectOpen(h, idleFds)
      // the first is still the one in use
      yield* startRunning(h, 1, { name: "a" })
      expect((yield* h.kernel.list).length).toBe(1)
    })
  )
})

describe("VM → vmm messages", () => {
  it.scoped("a malformed message from one VM ends that VM only", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("bad", { _tag: "Normal" }, { termCode: 1 })
      const bad = yield* startRunning(h, 1, { name: "bad" })
      const good = yield* startRunning(h, 2, { name: "good" })
      yield* h.vmCommand(bad, { _tag: "Send", type: M.START_VM_REQUEST, data: createParams({ name: "evil" }).subarray(0, 100) })
      yield* h.settle
      // Marked shutting down, TERM'd, channel closed: the exit is reported as usual.
      expectParent(h.takeParent(), [event(1, 1)])
      expect(h.simByPid(bad).terminated).toBe(true)
      yield* h.send({ type: M.PAUSE_VM, peerid: 3, data: vmopId(2) })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.PAUSE_VM_RESPONSE, PEERID_NONE, vmopResult(0, 2, 0))])
      expect(h.simByPid(good).end).toBe(null)
      expectOpen(h, [...idleFds, ...vmSocketFds(2)])
    })
  )

  it.scoped("a PAUSE_VM_RESPONSE of the wrong size ends that VM and is not forwarded", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("bad", { _tag: "Normal" }, { termCode: E.EAGAIN })
      const bad = yield* startRunning(h, 1, { name: "bad" })
      yield* h.vmCommand(bad, { _tag: "Send", type: M.PAUSE_VM_RESPONSE, data: new Uint8Array(27) })
      yield* h.settle
      // termCode 35 while shutting down reads as 0
      expectParent(h.takeParent(), [event(1, 0)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("an fd sent by a VM is closed, never forwarded; the message itself is handled", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "a" })
      yield* h.vmCommand(pid, { _tag: "Send", type: M.PAUSE_VM_RESPONSE, peerid: 9, data: vmopResult(0, 1, 0), withFd: true })
      yield* h.vmCommand(pid, { _tag: "Send", type: M.VM_SHUTDOWN, withFd: true })
      yield* h.settle
      expectParent(h.takeParent(), [reply(M.PAUSE_VM_RESPONSE, 9, vmopResult(0, 1, 0))])
      expect(openLabels(h).filter((l) => l.startsWith("vm-sent"))).toEqual([])
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(1, 0)])
      expectNoDoubleClose(h)
    })
  )
})

describe("parent EOF and a broken parent stream", () => {
  it.scoped("a broken frame stream from the parent ends the vmm with exit code 1, after ending every VM", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 1, { name: "a" })
      // A header whose len (4) is below the 16-byte header: the stream cannot be framed.
      const header = new Uint8Array(16)
      new DataView(header.buffer).setUint32(4, 4, true)
      yield* Effect.orDie(ImsgChannelMemory.make(h.table).writeRaw(h.parentFd, header, 1_000))
      expect(yield* h.handle.done).toBe(1)
      yield* h.settle
      expect(h.simByPid(a).end).toEqual({ _tag: "Exited", code: 0 })
      expect(yield* h.registry.all).toEqual([])
      expect(yield* h.kernel.list).toEqual([])
      expect(h.logs.some((l) => /imsg/.test(l))).toBe(true)
    })
  )

  it.effect("EOF from the parent ends every VM and the vmm exits 0; every fd is closed once", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const h = yield* Scope.extend(booted(), scope)
      const a = yield* startRunning(h, 1, { name: "a" })
      yield* sendStart(h, 2, { name: "pending", ndisks: 1 }, { disks: [[0, true]], end: "none" })
      const psp = h.makeFd("/dev/psp")
      yield* h.send({ type: M.RECEIVE_PSP_FD, fd: psp })
      yield* h.settle
      expect(yield* h.closeParent).toBe(0)
      yield* h.settle
      expect(h.simByPid(a).end).toEqual({ _tag: "Exited", code: 0 })
      expect(yield* h.kernel.list).toEqual([])
      // What the process still holds until it exits: its end of fd 3, /dev/vmm, /dev/psp.
      expectOpen(h, ["parent[0]", DEV_VMM, "/dev/psp"])
      yield* Scope.close(scope, Exit.void)
      expectOpen(h, [])
    })
  )
})

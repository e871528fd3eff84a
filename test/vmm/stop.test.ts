/**
 * Stopping VMs and reporting their end (vmd.md §6 c): TERMINATE_VM_REQUEST,
 * the SIGCHLD handler's TERMINATE_VM_EVENT, and the VM's own VM_SHUTDOWN /
 * VM_REBOOT marks.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { booted, idleFds, startRunning, vmSocketFds } from "./fixtures.ts"
import { expectOpen, expectParent, reply, sendStart } from "./steps.ts"
import { E, M, PEERID_NONE, VMOP_FORCE, vmopId, vmopResult } from "./wire.ts"

const stop = (vmid: number, flags = 0, peerid = 77) => ({ type: M.TERMINATE_VM_REQUEST, peerid, data: vmopId(vmid, flags) })
const stopResponse = (vmid: number, res: number, peerid = 77) => reply(M.TERMINATE_VM_RESPONSE, peerid, vmopResult(res, vmid, 0))
const event = (vmid: number, res: number) => reply(M.TERMINATE_VM_EVENT, PEERID_NONE, vmopResult(res, vmid, 0))

describe("TERMINATE_VM_REQUEST", () => {
  it.scoped("TERMINATE_VM_REQUEST with id 0 answers ENOENT", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 1, { name: "a" })
      yield* h.send(stop(0))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(0, E.ENOENT)])
    })
  )

  it.scoped("unknown VM answers VMD_VM_STOP_INVALID (1004), forced or not", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send(stop(9))
      yield* h.send(stop(9, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(9, E.VMD_VM_STOP_INVALID), stopResponse(9, E.VMD_VM_STOP_INVALID)])
    })
  )

  it.scoped("a wrong-size TERMINATE_VM_REQUEST answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.send({ type: M.TERMINATE_VM_REQUEST, peerid: 77, data: vmopId(1).subarray(0, 75) })
      yield* h.send({ type: M.TERMINATE_VM_REQUEST, peerid: 77 })
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(0, E.EINVAL), stopResponse(0, E.EINVAL)])
    })
  )

  it.scoped("graceful stop sends VM_REBOOT with peerid 0 and marks shutting down; the reset that follows is reported as 0", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "a" })
      yield* h.send(stop(1))
      yield* h.settle
      // TERMINATE_VM_RESPONSE first, then the VM's EAGAIN exit as a 0 event (the stop was pending).
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, 0)])
      const sim = h.simByPid(pid)
      // imsg_compose_event(..., VM_REBOOT, 0, 0, -1, NULL, 0): peerid 0, pid = the vmm's own pid, no payload.
      expect(sim.received).toEqual([{ type: M.VM_REBOOT, peerid: 0, pid: process.pid, data: new Uint8Array(0), fd: false }])
      expect(sim.end).toEqual({ _tag: "Exited", code: E.EAGAIN })
      expect(yield* h.registry.all).toEqual([])
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("while shutting down, another stop answers 0 and sends nothing more", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("acpi-less", { _tag: "Normal" }, { onReboot: "ignore" })
      const pid = yield* startRunning(h, 1, { name: "acpi-less" })
      yield* h.send(stop(1))
      yield* h.send(stop(1))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0), stopResponse(1, 0)])
      expect(h.simByPid(pid).received.map((r) => r.type)).toEqual([M.VM_REBOOT])
      expect(((yield* h.registry.byVmid(1))?.state ?? 0) & 0x04).toBe(0x04)
    })
  )

  it.scoped("forced stop terminates the VM in vmm(4) and answers 0; its exit follows as TERMINATE_VM_EVENT", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      // The vcpus die with the VM; whatever the process exits with, 35 while stopping reads as 0.
      h.plan("a", { _tag: "Normal" }, { termCode: E.EAGAIN })
      h.plan("b", { _tag: "Normal" }, { termCode: 3 })
      yield* startRunning(h, 1, { name: "a" })
      yield* startRunning(h, 2, { name: "b" })
      yield* h.send(stop(1, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, 0)])
      yield* h.send(stop(2, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(2, 0), event(2, 3)])
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a forced stop whose VMM_IOC_TERM fails still answers 0 (vmm.c ignores the result); the VM runs on, marked shutting down", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "a" })
      yield* h.kernel.failNext("TERM", E.EIO)
      yield* h.send(stop(1, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0)])
      expect(h.simByPid(pid).end).toBe(null)
      // The guest's reset now ends it (reported as 0), it does not restart.
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(1, 0)])
      expect(yield* h.kernel.list).toEqual([])
    })
  )

  it.scoped("stopping a VM that is registered but not started: graceful answers ERANGE (vmm.c's failed compose on an imsgbuf of maxsize 0), then 1004; forced answers 0", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 1, { name: "pending" }, { end: "none" })
      yield* sendStart(h, 2, { name: "pending2" }, { end: "none" })
      yield* h.send(stop(1))
      yield* h.send(stop(1))
      yield* h.send(stop(2, VMOP_FORCE))
      yield* h.settle
      // vmm.c composes VM_REBOOT on the VM's zeroed imsgbuf: libutil refuses it (ERANGE), the
      // errno is the answer, and the shutdown mark stays (so the second stop is 1004).
      expectParent(h.takeParent(), [stopResponse(1, E.ERANGE), stopResponse(1, E.VMD_VM_STOP_INVALID), stopResponse(2, 0)])
      expect((yield* h.registry.all).map((vm) => vm.vmid)).toEqual([1, 2])
    })
  )
})

describe("VM exits (vmm_sighdlr)", () => {
  it.scoped("an exit is reported with its code and the VM's id, peerid 0xffffffff; the VM is TERM'd and removed", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 4, { name: "a" })
      yield* startRunning(h, 5, { name: "b" })
      yield* h.vmCommand(pid, { _tag: "Exit", code: 1 })
      yield* h.settle
      expectParent(h.takeParent(), [event(4, 1)])
      expect((yield* h.registry.all).map((vm) => vm.vmid)).toEqual([5])
      expect((yield* h.kernel.list).map((k) => k.name)).toEqual(["b"])
      expectOpen(h, [...idleFds, ...vmSocketFds(5)])
    })
  )

  it.scoped("EAGAIN exit without a pending stop is reported as 35 (the parent restarts the VM)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 4, { name: "a" })
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(4, E.EAGAIN)])
    })
  )

  it.scoped("EAGAIN exit while shutting down is reported as 0", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("a", { _tag: "Normal" }, { onReboot: "ignore" })
      const pid = yield* startRunning(h, 4, { name: "a" })
      yield* h.send(stop(4))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(4, 0)])
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(4, 0)])
    })
  )

  it.scoped("VM_SHUTDOWN from the VM marks it shutting down: its EAGAIN exit is reported as 0", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 4, { name: "a" })
      yield* h.vmCommand(pid, { _tag: "Send", type: M.VM_SHUTDOWN })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(4, 0)])
    })
  )

  it.scoped("VM_REBOOT from the VM clears the mark a graceful stop set: its EAGAIN exit is reported as 35", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("a", { _tag: "Normal" }, { onReboot: "ignore" })
      const pid = yield* startRunning(h, 4, { name: "a" })
      yield* h.send(stop(4))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(4, 0)])
      yield* h.vmCommand(pid, { _tag: "Send", type: M.VM_REBOOT })
      yield* h.settle
      yield* h.vmCommand(pid, { _tag: "Exit", code: E.EAGAIN })
      yield* h.settle
      expectParent(h.takeParent(), [event(4, E.EAGAIN)])
    })
  )

  it.scoped("a VM killed by a signal is reported as EIO", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const a = yield* startRunning(h, 4, { name: "a" })
      const b = yield* startRunning(h, 5, { name: "b" })
      yield* h.kill(a, "SIGKILL")
      yield* h.settle
      yield* h.kill(b, "SIGTERM")
      yield* h.settle
      expectParent(h.takeParent(), [event(4, E.EIO), event(5, E.EIO)])
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("every started VM that ends yields exactly one TERMINATE_VM_EVENT, even when stopped twice", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("a", { _tag: "Normal" }, { onReboot: "ignore" })
      yield* startRunning(h, 4, { name: "a" })
      yield* h.send(stop(4))
      yield* h.send(stop(4, VMOP_FORCE))
      yield* h.send(stop(4, VMOP_FORCE))
      yield* h.settle
      yield* h.send(stop(4))
      yield* h.settle
      expectParent(h.takeParent(), [
        stopResponse(4, 0),
        stopResponse(4, 0),
        stopResponse(4, 0),
        event(4, 0),
        stopResponse(4, E.VMD_VM_STOP_INVALID)
      ])
    })
  )
})

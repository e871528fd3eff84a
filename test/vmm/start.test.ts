/**
 * Starting a VM (vmd.md §6 a', b and §7): config_getvm / getcdrom / getdisk
 * / getif, vmm_start_vm and the reply the parent gets for every step.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { booted, DEV_VMM, idleFds, startRunning, vmSocketFds } from "./fixtures.ts"
import { expectOpen, expectParent, openLabels, reply, sendStart } from "./steps.ts"
import { createParams, DEFAULT_PREFIX, E, localPrefix, M, PEERID_NONE, vmdConfig, vmopResult } from "./wire.ts"

const startResponse = (vmid: number, res: number, pid = 0) => reply(M.START_VM_RESPONSE, vmid, vmopResult(res, vmid, pid))

describe("START_VM_*", () => {
  it.scoped("a full start answers START_VM_RESPONSE {0, vmid, pid} and hands the child every fd at its number", () =>
    Effect.gen(function* () {
      const h = yield* booted({ firstPid: 4000 })
      const sent = yield* sendStart(
        h,
        7,
        { name: "web", ncpus: 2, memory: 1n << 30n, ndisks: 2, nnics: 2, cdrom: "/iso/install.iso" },
        { cdrom: "fd", disks: [[0, true], [0, true], [1, true]], nics: [[0, true], [1, true]] }
      )
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(7, 0, 4000)])

      const sim = h.simByPid(4000)
      const vm = sim.vmdVm
      if (vm === null) return expect.unreachable("the child read no struct")
      // The struct: vmd's id, the child's pid, no kernel id yet, vm_peerid -1, RUNNING, no imsg fd.
      expect(vm).toMatchObject({ name: "web", ncpus: 2n, memory: 1n << 30n, ndisks: 2n, nnics: 2n, vmid: 7, pid: 4000, vmmid: 0, peerid: PEERID_NONE, state: 1, ibufFd: -1 })
      // Each disk's layer count is in vmc_diskbases; each fd number is one the child holds.
      expect(vm.diskbases).toEqual([2, 1, 0, 0])
      const structFds = [vm.kernel, vm.cdrom, ...vm.disks.flat(), ...vm.ifs, vm.tty].filter((n) => n !== -1)
      expect(structFds).toHaveLength(2 + 3 + 2 + 1)
      // The child's fds are packed from 3 up (its socket, /dev/vmm, then the VM's), whatever
      // their numbers in the vmm; each number in the struct names the file sent for it.
      expect(sim.fdNums).toEqual(Array.from({ length: 2 + structFds.length }, (_, i) => 3 + i))
      const label = (n: number) => sim.fdAt.get(n)?.label
      expect(structFds.map(label)).toEqual(sent.map((s) => s.fd).filter((l) => l !== ""))
      expect(vm.vmcKernel).toBe(vm.kernel)
      expect(vm.disks[0]?.slice(2)).toEqual([-1, -1])
      expect(vm.disks[2]).toEqual([-1, -1, -1, -1])
      expect(vm.ifs.slice(2)).toEqual([-1, -1])
      // argv: -V <child socket> -i <vmm fd> -j -1 (no psp), child numbers
      expect(sim.argv).toEqual(["-V", "3", "-i", "4", "-j", "-1"])
      expect(label(4)).toBe(DEV_VMM)
      expect(h.table.openFds().find((f) => f.label === DEV_VMM)?.num, "the vmm's own /dev/vmm is not at 4").not.toBe(4)
      expect(sim.prefix).toEqual(DEFAULT_PREFIX)
      // The vmm closed its copies of every passed fd; it keeps its socket end, the child has the other.
      expect(sent.map((s) => s.fd).filter((l) => openLabels(h).includes(l))).toEqual([])
      expectOpen(h, [...idleFds, ...vmSocketFds(7)])
      // The kernel has the VM the child created, with what the struct asked for.
      expect((yield* h.kernel.list).map((k) => [k.id, k.name, k.ncpus, k.memorySize, k.creatorPid])).toEqual([[1, "web", 2, 1n << 30n, 4000]])
      expect((yield* h.registry.byVmid(7))?.vmmid).toBe(1)
    })
  )

  it.scoped("with -d the child gets -d (and the vmm's stdio); with -vv, -vv", () =>
    Effect.gen(function* () {
      const h = yield* booted({ debug: true, verbose: 2 })
      const pid = yield* startRunning(h, 3, { name: "dbg" })
      expect(h.simByPid(pid).argv.slice(6)).toEqual(["-d", "-vv"])
      expect((yield* h.control.spawned)[0]?.request.stdio).toBe("inherit")
    })
  )

  it.scoped("vm_register defaults: 0 vcpus become 1 and 0 memory 512 MiB", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 3, { name: "tiny", ncpus: 0, memory: 0n })
      expect(h.simByPid(pid).vmdVm).toMatchObject({ ncpus: 1n, memory: 512n << 20n })
    })
  )

  it.scoped("a wrong-size START_VM_REQUEST answers EINVAL and closes the kernel fd", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 5, { name: "x" }, { requestData: createParams({ name: "x" }).subarray(0, 8391), end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(5, E.EINVAL)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("duplicate name → EALREADY, and vmd's config_getvm removes the VM already registered under it", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "dup" })
      yield* sendStart(h, 2, { name: "dup" }, { disks: [[0, true]] })
      yield* h.settle
      // REQUEST fails; DISK and END then find no VM 2.
      expectParent(h.takeParent(), [startResponse(2, E.EALREADY), startResponse(2, E.ENOENT), startResponse(2, E.ENOENT)])
      // vm_remove of the running VM: no TERM, no event; its process sees EOF and exits 0, ignored.
      expect(yield* h.registry.all).toEqual([])
      expect(h.simByPid(pid).end).toEqual({ _tag: "Exited", code: 0 })
      // (vmm.c 1.136 does not TERM it: its VM stays in vmm(4), as on OpenBSD.)
      expect((yield* h.kernel.list).map((k) => k.name)).toEqual(["dup"])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a second START_VM_END for a running VM: EALREADY, its VM terminated in vmm(4) and removed, its process ends on EOF, nothing listed after", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const pid = yield* startRunning(h, 1, { name: "once" })
      expect((yield* h.kernel.list).map((k) => k.name)).toEqual(["once"])
      yield* h.send({ type: M.START_VM_END, peerid: 1, fd: h.makeFd("vm1.tty again") })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(1, E.EALREADY)])
      expect(yield* h.registry.all).toEqual([])
      // not left in vmm(4) (where GET_INFO would list it with id 0 until the next sweep)
      expect(yield* h.kernel.list).toEqual([])
      expect(h.simByPid(pid).end).not.toBe(null)
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 9 })
      yield* h.settle
      expect(h.takeParent().map((m) => m.type)).toEqual([M.GET_INFO_VM_END_DATA])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a vmc_id that is already registered also answers EALREADY", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 1, { name: "one" }, { end: "none" })
      yield* sendStart(h, 2, { name: "two", vmcId: 1 }, { end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(2, E.EALREADY)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("vmc_flags 0 answers VMD_DISK_MISSING (1002)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 4, { name: "noflags", flags: 0 }, { end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(4, E.VMD_DISK_MISSING)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped.each(["", "-a", ".a", "_a", "a b", "a/b", "caf\u00e9", "x".repeat(10) + "!"])("bad name %j answers EINVAL", (name) =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 4, { name }, { end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(4, E.EINVAL)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("names of [A-Za-z0-9._-] not starting with - . _ are accepted, up to 63 characters", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* startRunning(h, 1, { name: "Web.01-a_b" })
      yield* startRunning(h, 2, { name: "9" })
      yield* startRunning(h, 3, { name: "n".repeat(63) })
    })
  )

  it.scoped("more than 64 vcpus answers EINVAL; 64 is accepted", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 4, { name: "big", ncpus: 65 }, { end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(4, E.EINVAL)])
      yield* startRunning(h, 5, { name: "max", ncpus: 64 })
    })
  )

  it.scoped("more than 4 disks or 4 nics answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 4, { name: "disks", ndisks: 5 }, { end: "none" })
      yield* sendStart(h, 5, { name: "nics", nnics: 5 }, { end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(4, E.EINVAL), startResponse(5, E.EINVAL)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("no kernel, disk or cdrom answers EINVAL; a disk or a cdrom path alone is enough", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 4, { name: "nothing" }, { kernel: false, end: "none" })
      yield* sendStart(h, 5, { name: "cd", cdrom: "/iso/a.iso" }, { kernel: false, end: "none" })
      yield* sendStart(h, 6, { name: "disk", ndisks: 1 }, { kernel: false, end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(4, E.EINVAL)])
      expect((yield* h.registry.all).map((vm) => vm.vmid)).toEqual([5, 6])
    })
  )

  it.scoped("a failed DISK removes the VM; later steps answer ENOENT (START_VM_DISK index ≥ ndisks answers EINVAL)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 8, { name: "d", ndisks: 1, nnics: 1 }, { disks: [[0, true], [1, true]], nics: [[0, true]] })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(8, E.EINVAL), startResponse(8, E.ENOENT), startResponse(8, E.ENOENT)])
      expect(yield* h.registry.all).toEqual([])
      expect(h.sims()).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a 5th layer for one disk answers EINVAL (vmc_diskbases counts the layers)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const layers = Array.from({ length: 5 }, () => [0, true] as const)
      yield* sendStart(h, 8, { name: "deep", ndisks: 1 }, { disks: layers })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(8, E.EINVAL), startResponse(8, E.ENOENT)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("diskbases already set by the parent count towards the 4 layers", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 8, { name: "based", ndisks: 1, diskbases: [3] }, { disks: [[0, true], [0, true]] })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(8, E.EINVAL), startResponse(8, E.ENOENT)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a START_VM_DISK without an fd or with a wrong-size index answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 8, { name: "nofd", ndisks: 1 }, { disks: [[0, false]], end: "none" })
      yield* sendStart(h, 9, { name: "badidx", ndisks: 1 }, { end: "none" })
      yield* h.send({ type: M.START_VM_DISK, peerid: 9, data: new Uint8Array(8), fd: h.makeFd("disk") })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(8, E.EINVAL), startResponse(9, E.EINVAL)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("START_VM_IF twice for one nic, past nnics, or without an fd answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 1, { name: "twice", nnics: 2 }, { nics: [[0, true], [0, true]], end: "none" })
      yield* sendStart(h, 2, { name: "past", nnics: 1 }, { nics: [[1, true]], end: "none" })
      yield* sendStart(h, 3, { name: "nofd", nnics: 1 }, { nics: [[0, false]], end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(1, E.EINVAL), startResponse(2, E.EINVAL), startResponse(3, E.EINVAL)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a wrong-size START_VM_IF index answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 9, { name: "badif", nnics: 1 }, { end: "none" })
      yield* h.send({ type: M.START_VM_IF, peerid: 9, data: new Uint8Array(2), fd: h.makeFd("tap") })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(9, E.EINVAL)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("START_VM_CDROM without an fd answers EINVAL", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 1, { name: "cd", cdrom: "/x.iso" }, { cdrom: "nofd", end: "none" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(1, E.EINVAL)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("START_VM_CDROM, DISK, IF and END for an unknown VM answer ENOENT and close the fd", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      for (const [type, data] of [
        [M.START_VM_CDROM, new Uint8Array(0)],
        [M.START_VM_DISK, new Uint8Array(4)],
        [M.START_VM_IF, new Uint8Array(4)],
        [M.START_VM_END, new Uint8Array(0)]
      ] as const) {
        yield* h.send({ type, peerid: 42, data, fd: h.makeFd("stray") })
      }
      yield* h.settle
      expectParent(h.takeParent(), [1, 2, 3, 4].map(() => startResponse(42, E.ENOENT)))
      expectOpen(h, idleFds)
    })
  )

  it.scoped("START_VM_END with no tty answers EINVAL and removes the VM", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* sendStart(h, 6, { name: "notty", ndisks: 1 }, { disks: [[0, true]], end: "notty" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.EINVAL)])
      expect(yield* h.registry.all).toEqual([])
      expect(h.sims()).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a failed fork answers EIO and removes the VM", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      yield* h.control.failNextSpawn(E.EAGAIN)
      yield* sendStart(h, 6, { name: "nofork" }, { cdrom: "fd" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.EIO)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a child that dies before reading its struct answers EIO", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.closeNextChildAtStart(1)
      yield* sendStart(h, 6, { name: "early" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.EIO)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a child that dies after reading its struct answers ENOMEM (no vm id)", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("dies", { _tag: "DieAfterStruct", code: E.EIO })
      yield* sendStart(h, 6, { name: "dies" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.ENOMEM)])
      expect(yield* h.registry.all).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a child that answers vm id 0 answers EINVAL; its exit is ignored", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("zero", { _tag: "AnswerZero" })
      yield* sendStart(h, 6, { name: "zero" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.EINVAL)])
      expect(h.sims().every((s) => s.end !== null)).toBe(true)
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a short vm id answers ENOMEM", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.plan("short", { _tag: "ShortId" })
      yield* sendStart(h, 6, { name: "short" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.ENOMEM)])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a child that never answers: ENOMEM once the handshake times out, and the child is killed", () =>
    Effect.gen(function* () {
      const h = yield* booted({ handshakeTimeoutMs: 5_000 })
      h.plan("hang", { _tag: "Hang" })
      yield* sendStart(h, 6, { name: "hang" })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      yield* TestClock.adjust("4999 millis")
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      yield* TestClock.adjust("1 millis")
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, E.ENOMEM)])
      expect(h.sims()[0]?.end).toEqual({ _tag: "Killed" })
      expectOpen(h, idleFds)
    })
  )

  it.scoped("the local prefix the child reads is CONFIG's; CTL_RESET puts the IPv4 default back", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const prefix = localPrefix([10, 0, 0, 0], [255, 0, 0, 0], [0xfd, 0x12, 0x34], [0xff, 0xff, 0xff])
      yield* h.send({ type: M.CONFIG, data: vmdConfig(prefix) })
      const a = yield* startRunning(h, 1, { name: "a" })
      expect(h.simByPid(a).prefix).toEqual(prefix)
      yield* h.send({ type: M.CTL_RESET, data: new Uint8Array([0, 0, 0, 0]) })
      const b = yield* startRunning(h, 2, { name: "b" })
      const purged = prefix.slice()
      purged.set(DEFAULT_PREFIX.subarray(0, 8))
      expect(h.simByPid(b).prefix).toEqual(purged)
    })
  )

  it.scoped("RECEIVE_PSP_FD is passed to every child (-j) and a second one is refused and closed", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const psp = h.makeFd("/dev/psp")
      yield* h.send({ type: M.RECEIVE_PSP_FD, fd: psp })
      yield* h.send({ type: M.RECEIVE_PSP_FD, fd: h.makeFd("psp again") })
      const pid = yield* startRunning(h, 1, { name: "a" })
      const sim = h.simByPid(pid)
      expect(sim.argv.slice(4, 6)).toEqual(["-j", "5"])
      expect(sim.fdAt.get(5)).toBe(psp)
      expectOpen(h, [...idleFds, "/dev/psp", ...vmSocketFds(1)])
    })
  )

  it.scoped("a VM registered but not yet ended keeps its fds until START_VM_END", () =>
    Effect.gen(function* () {
      const h = yield* booted()
      const sent = yield* sendStart(h, 3, { name: "later", ndisks: 1, nnics: 1 }, { cdrom: "fd", disks: [[0, true]], nics: [[0, true]], end: "none" })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expectOpen(h, [...idleFds, ...sent.map((s) => s.fd)])
      yield* h.send({ type: M.START_VM_END, peerid: 3, fd: h.makeFd("tty") })
      yield* h.settle
      expect(h.takeParent().map((m) => m.type)).toEqual([M.START_VM_RESPONSE])
      expectOpen(h, [...idleFds, ...vmSocketFds(3)])
    })
  )
})

describe("vmm_start_vm failures of the vmm's own socket operations", () => {
  it.scoped.each([
    ["socketpair", E.EIO],
    ["writeStruct", E.EIO],
    ["writePrefix", E.EIO],
    ["open", E.EIO]
  ] as const)("a failing %s answers %i, removes the VM, ends the child, and closes every fd once", ([which, errno]) =>
    Effect.gen(function* () {
      const h = yield* booted()
      h.failNext(which)
      yield* sendStart(h, 6, { name: "unlucky", ndisks: 1 }, { disks: [[0, true]], cdrom: "fd" })
      yield* h.settle
      expectParent(h.takeParent(), [startResponse(6, errno)])
      expect(yield* h.registry.all).toEqual([])
      expect(h.sims().every((s) => s.end !== null)).toBe(true)
      expect(yield* h.kernel.list).toEqual([])
      expectOpen(h, idleFds)
    })
  )
})

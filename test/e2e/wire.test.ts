/**
 * End to end, one message and one fd at a time: a raw parent (the
 * stand-in's message builders on a channel of our own) drives bin/vmm, and
 * the test looks at what the vmm sends back and at what the VM processes
 * hold in /proc.
 */
import { describe, expect } from "@effect/vitest"
import { Effect, Either } from "effect"
import { spawn } from "node:child_process"
import { statSync } from "node:fs"
import { sealInheritedFds } from "../../src/native/sys.ts"
import * as M from "../../src/parent/messages.ts"
import type { VmSpec } from "../../src/parent/spec.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import { decodeInt, decodeVmopInfoResult, decodeVmopResult, encodeVmopAddrResult, type VmopResult } from "../../src/schema/structs.ts"
import type { Imsg } from "../../src/services/ImsgChannel.ts"
import {
  e2e,
  fullSpec,
  type Run,
  smallSpec,
  SPAWN_METHODS,
  type SpawnMethod,
  spyMessages,
  spyReport,
  useFixture,
  withSpawn
} from "./harness.ts"
import { pidfdTargets } from "./pidfd.ts"
import { childrenOf, cmdline, fdKind, fdLinks, fdsOpenOn, type FileId, fileIdAt, procStat, running, sameFile } from "./proc.ts"
import { nextMatching, prepareStart, rawVmm, type RawVmm, type SentFiles } from "./raw.ts"

const fixture = useFixture("wire")

const result = (m: Imsg): VmopResult => Either.getOrThrow(decodeVmopResult(m.data))

/** config_setvm's sequence; returns the START_VM_RESPONSE's vmop_result and what was sent. */
const start = (raw: RawVmm, vmid: number, spec: VmSpec) =>
  Effect.gen(function* () {
    const prep = yield* prepareStart(vmid, spec)
    for (const m of prep.messages) yield* raw.send(m)
    const { match } = yield* nextMatching(raw, (m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE)
    const r = result(match)
    expect(r, `start of ${spec.name}`).toMatchObject({ vmr_result: 0, vmr_id: vmid })
    return { pid: r.vmr_pid, sent: prep.sent, pty: prep.pty }
  })

/** GET_INFO_VM_REQUEST with `peerid`: the DATA rows, then END_DATA's int. */
const info = (raw: RawVmm, peerid: number) =>
  Effect.gen(function* () {
    yield* raw.send(M.getInfo(peerid))
    const rows = []
    for (;;) {
      const m = yield* raw.next()
      expect(m.peerid).toBe(peerid)
      if (m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA) return { rows, end: Either.getOrThrow(decodeInt(m.data)) }
      expect(m.type).toBe(T.IMSG_VMDOP_GET_INFO_VM_DATA)
      rows.push(Either.getOrThrow(decodeVmopInfoResult(m.data)))
    }
  })

const pathId = (path: string): FileId => {
  const st = statSync(path, { bigint: true })
  return { dev: st.dev, ino: st.ino }
}

/** Every file the parent sent, the pty master last. */
const sentList = (s: SentFiles): ReadonlyArray<readonly [string, FileId]> => [
  ...(s.kernel === null ? [] : [["kernel", s.kernel] as const]),
  ...(s.cdrom === null ? [] : [["cdrom", s.cdrom] as const]),
  ...s.disks.flatMap((layers, i) => layers.map((id, j) => [`disk ${i} layer ${j}`, id] as const)),
  ...s.taps.map((id, i) => [`tap ${i}`, id] as const),
  ["tty", s.tty] as const
]

const argAfter = (argv: ReadonlyArray<string>, flag: string): number => Number(argv[argv.indexOf(flag) + 1])

const BASELINE = "process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1 << 30)"

/** A bare Node process, spawned like a VM (stdio on /dev/null), for what every Node process holds. */
const nodeBaseline = Effect.acquireRelease(
  Effect.sync(() => {
    // as ProcessNode does before each spawn: what this process inherited stays here
    sealInheritedFds()
    return spawn(process.execPath, ["-e", BASELINE], { stdio: "ignore" })
  }),
  (child) =>
    Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
      child.kill("SIGKILL")
    })
)

/** bin/vmm for this run, driven raw; `vmExec` replaces our Node VM process. */
const rawFor = (run: Run, vmExec?: string, vmmDevice?: string, spawn: SpawnMethod = "spawner") =>
  rawVmm(run.options({ ...withSpawn(spawn), ...(vmExec === undefined ? {} : { vmExec }) }), vmmDevice)

const kinds = (links: ReadonlyMap<number, string>) => [...links.values()].map(fdKind).sort()

describe("end to end on the wire", () => {
  e2e(fixture, "info: one GET_INFO_VM_DATA per started VM (memory, ncpus, creator pid, name, vir_id), then END_DATA 0", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const raw = yield* rawFor(run, f.vmprog)
      expect(yield* info(raw, 70)).toEqual({ rows: [], end: 0 })

      const one = yield* start(raw, 1, { ...smallSpec(f, "one"), memory: 1n << 30n, vcpus: 4 })
      const two = yield* start(raw, 2, fullSpec(f, "two"))
      // registered but not started (no START_VM_END yet): not listed
      const pending = yield* prepareStart(3, smallSpec(f, "pending"))
      yield* raw.send(pending.messages[0]!)
      const { rows, end } = yield* info(raw, 71)
      expect(end).toBe(0)
      expect(rows.map((r) => [r.vir_name, r.vir_id, r.vir_creator_pid, r.vir_memory_size, r.vir_ncpus])).toEqual([
        ["one", 1, one.pid, 1n << 30n, 4n],
        ["two", 2, two.pid, 512n << 20n, 1n]
      ])
      for (const r of rows) {
        expect(r.vir_used_size).toBeGreaterThan(0n)
        // the parent fills these in
        expect([r.vir_ttyname, r.vir_state, r.vir_uid]).toEqual(["", 0, 0])
      }
    })
  )

  for (const spawn of SPAWN_METHODS) {
    e2e(fixture, `--spawn ${spawn}: our VM process holds each fd the vmm held, packed from 3 up, the file the parent sent; nothing else but Node's own; own session`, (run) =>
      Effect.gen(function* () {
        const f = fixture()
        // started first, so that it is fully up when we compare
        const baseline = yield* nodeBaseline
        const raw = yield* rawFor(run, undefined, undefined, spawn)
        yield* info(raw, 79) // the vmm is up
        const vmmFdsBefore = kinds(fdLinks(raw.vmm.pid))
        const spec = fullSpec(f, "node")
        const prep = yield* prepareStart(5, spec)
        const end = prep.messages.at(-1)!
        for (const m of prep.messages.slice(0, -1)) yield* raw.send(m)
        // a barrier: once info is answered, the vmm holds what came before it
        yield* info(raw, 80)
        const held = new Map<string, number>()
        for (const [what, id] of sentList(prep.sent).slice(0, -1)) {
          const nums = fdsOpenOn(raw.vmm.pid, id)
          expect(nums, `the vmm holds ${what} once`).toHaveLength(1)
          held.set(what, nums[0]!)
        }
        yield* raw.send(end)
        const { match } = yield* nextMatching(raw, (m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE)
        const pid = result(match).vmr_pid
        expect(result(match).vmr_result).toBe(0)

        const argv = cmdline(pid)
        expect(argv.slice(-6)).toEqual(["-V", String(argAfter(argv, "-V")), "-i", "-1", "-j", "-1"])
        expect(procStat(pid)?.session, "setsid").toBe(pid)
        // the spawn method really used: under direct (ProcessDirect) the vmm holds one pidfd per running VM,
        // this VM's; under the spawner, only the helper's (its one child: the VMs are the helper's); under Node's spawn, none
        const helper = spawn === "spawner" ? childrenOf(raw.vmm.pid) : []
        expect(helper.includes(pid), "the VM is not the vmm's child under the spawner").toBe(false)
        expect(pidfdTargets(raw.vmm.pid), "the vmm's pidfds").toEqual(spawn === "direct" ? [pid] : helper)

        // each file once, in the order the vmm lists them after the socket (-V 3), from 4 up,
        // whatever its number in the vmm (vm.c refuses a -V above 128: the vmm's own numbers run high)
        const vmNums: Array<number> = []
        for (const [what, id] of sentList(prep.sent)) {
          const nums = fdsOpenOn(pid, id)
          expect(nums, `the VM holds ${what} once`).toHaveLength(1)
          vmNums.push(nums[0]!)
          expect(fdsOpenOn(raw.vmm.pid, id), `the vmm closed its copy of ${what}`).toEqual([])
        }
        const vSocket = argAfter(argv, "-V")
        expect(vSocket).toBe(3)
        expect([...vmNums].sort((x, y) => x - y)).toEqual(vmNums.map((_, i) => 4 + i))
        expect([...held.values()].some((n) => n > 3 + vmNums.length), "the vmm's own numbers are not already packed").toBe(true)
        // the rest: the -V socket and what a bare Node process holds
        const links = new Map(fdLinks(pid))
        for (const [, id] of sentList(prep.sent)) for (const n of fdsOpenOn(pid, id)) links.delete(n)
        expect(fdKind(links.get(vSocket) ?? "")).toBe("socket")
        links.delete(vSocket)
        expect(kinds(links)).toEqual(kinds(fdLinks(baseline.pid ?? -1)))

        // stop it; the vmm is back to the fds it had before
        yield* raw.send(M.terminateVm(81, 5, true))
        yield* nextMatching(raw, (m) => m.type === T.IMSG_VMDOP_TERMINATE_VM_EVENT)
        expect(running(pid)).toBe(false)
        // The event is written first, then the VM's socket and pidfd closed, in the same
        // callback: by the time the vmm answers anything else they are gone.
        yield* raw.send(M.getInfo(82))
        yield* nextMatching(raw, (m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA)
        expect(kinds(fdLinks(raw.vmm.pid)), "the vmm holds nothing of the VM").toEqual(vmmFdsBefore)
        expect(pidfdTargets(raw.vmm.pid), "no pidfd of the VM left").toEqual(helper)
      })
    )

    e2e(fixture, `--spawn ${spawn}: the C VM program holds exactly 0-2 on /dev/null, its socket, /dev/vmm and every fd of its struct, each the file the parent sent`, (run) =>
      Effect.gen(function* () {
        const f = fixture()
        const raw = yield* rawFor(run, f.spy, "/dev/null", spawn)
        const { pid, sent } = yield* start(raw, 9, fullSpec(f, "spied"))
        const r = spyReport(run, pid)
        expect([r.vmid, r.name, r.j]).toEqual([9, "spied", -1])
        expect(r.vmpid, "struct vmd_vm's vm_pid is the VM process").toBe(pid)
        expect(cmdline(pid)).toEqual([f.spy, "-V", String(r.V), "-i", String(r.i), "-j", "-1"])
        expect(procStat(pid)?.session, "setsid").toBe(pid)

        const at = (n: number) => fileIdAt(pid, n)
        expect(sameFile(sent.kernel!)(at(r.kernel)), "kernel").toBe(true)
        expect(sameFile(sent.cdrom!)(at(r.cdrom)), "cdrom").toBe(true)
        expect(r.disks.map(([d, l]) => [d, l])).toEqual(sent.disks.flatMap((layers, d) => layers.map((_, l) => [d, l])))
        for (const [d, l, n] of r.disks) expect(sameFile(sent.disks[d]![l]!)(at(n)), `disk ${d} layer ${l}`).toBe(true)
        expect(r.ifs.map(([i]) => i)).toEqual([0, 1])
        for (const [i, n] of r.ifs) expect(sameFile(sent.taps[i]!)(at(n)), `tap ${i}`).toBe(true)
        expect(sameFile(sent.tty)(at(r.tty)), "tty").toBe(true)
        expect(sameFile(pathId("/dev/null"))(at(r.i)), "/dev/vmm (here /dev/null) at -i").toBe(true)
        expect(fdKind(fdLinks(pid).get(r.V) ?? "")).toBe("socket")

        const given = [r.V, r.i, r.kernel, r.cdrom, ...r.disks.map(([, , n]) => n), ...r.ifs.map(([, n]) => n), r.tty]
        // packed from 3 up, whatever their numbers in the vmm: -V 3, -i 4, then the VM's
        expect([r.V, r.i]).toEqual([3, 4])
        expect([...given].sort((x, y) => x - y)).toEqual(given.map((_, i) => 3 + i))
        const links = fdLinks(pid)
        expect([...links.keys()].sort((x, y) => x - y), "nothing else").toEqual([0, 1, 2, ...given].sort((x, y) => x - y))
        expect([0, 1, 2].map((n) => links.get(n))).toEqual(["/dev/null", "/dev/null", "/dev/null"])
      })
    )
  }

  e2e(fixture, "CTL_VERBOSE, PAUSE_VM, PRIV_GET_ADDR_RESPONSE and VM_REBOOT reach the VM as vmm.c sends them; graceful and forced stops end with result 0", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const raw = yield* rawFor(run, f.spy)
      const a = yield* start(raw, 1, smallSpec(f, "a"))
      const b = yield* start(raw, 2, smallSpec(f, "b"))

      yield* raw.send(M.verbose(3))
      yield* raw.send(M.pauseVm(50, 1, true))
      const paused = yield* raw.next()
      expect([paused.type, paused.peerid]).toEqual([T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.PEERID_NONE])
      expect(result(paused)).toMatchObject({ vmr_result: 0, vmr_id: 1 })
      yield* raw.send(M.pauseVm(51, 2, false))
      expect(result(yield* raw.next())).toMatchObject({ vmr_result: 0, vmr_id: 2 })
      // [type, peerid, pid, len, int]
      expect(spyMessages(run, a.pid)).toEqual([
        [T.IMSG_CTL_VERBOSE, T.PEERID_NONE, 1, 4, 3],
        [T.IMSG_VMDOP_PAUSE_VM, T.PEERID_NONE, 1, 76, 0]
      ])
      expect(spyMessages(run, b.pid)[0]).toEqual([T.IMSG_CTL_VERBOSE, T.PEERID_NONE, 1, 4, 3])

      // PRIV_GET_ADDR_RESPONSE (priv -> parent -> vmm): forwarded to the VM it names, dropped for an unknown one; no reply.
      // The spy logs no payload of 16 bytes (its int column is 0 then); the vmm forwards the header's pid as it came,
      // so each message carries its var_vmid there too, and the logs tell which one reached which VM.
      const addr = (vmid: number) =>
        Either.getOrThrow(encodeVmopAddrResult({ var_vmid: vmid, var_nic_idx: 0, var_addr: Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd1, 1, 2) }))
      const markA = spyMessages(run, a.pid).length
      const markB = spyMessages(run, b.pid).length
      yield* raw.send({ type: T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, peerid: 2, pid: 2, data: addr(2) })
      yield* raw.send({ type: T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, peerid: 77, pid: 77, data: addr(77) })
      // a round trip through each VM: whatever either address became reached its VM before this
      yield* raw.send(M.pauseVm(52, 2, true))
      expect(result(yield* raw.next())).toMatchObject({ vmr_result: 0, vmr_id: 2 })
      yield* raw.send(M.pauseVm(53, 1, false))
      expect(result(yield* raw.next())).toMatchObject({ vmr_result: 0, vmr_id: 1 })
      // everything since the mark: b got its own address (pid 2) once, a none, vmid 77's nowhere
      expect(spyMessages(run, b.pid).slice(markB)).toEqual([
        [T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, T.PEERID_NONE, 2, 16, 0],
        [T.IMSG_VMDOP_PAUSE_VM, T.PEERID_NONE, 1, 76, 0]
      ])
      expect(spyMessages(run, a.pid).slice(markA)).toEqual([[T.IMSG_VMDOP_UNPAUSE_VM, T.PEERID_NONE, 1, 76, 0]])

      // graceful: VM_REBOOT (peerid 0, the vmm's pid); the spy exits 35, reported as 0
      yield* raw.send(M.terminateVm(60, 1, false))
      const response = yield* raw.next()
      expect([response.type, response.peerid]).toEqual([T.IMSG_VMDOP_TERMINATE_VM_RESPONSE, 60])
      expect(result(response).vmr_result).toBe(0)
      const event = yield* raw.next()
      expect([event.type, event.peerid]).toEqual([T.IMSG_VMDOP_TERMINATE_VM_EVENT, T.PEERID_NONE])
      expect(result(event)).toMatchObject({ vmr_result: 0, vmr_id: 1 })
      expect(spyMessages(run, a.pid).at(-1)).toEqual([T.IMSG_VMDOP_VM_REBOOT, 0, raw.vmm.pid, 0, 0])
      expect(running(a.pid)).toBe(false)

      // forced: nothing is asked of the VM; SIGTERM ends it with 0
      yield* raw.send(M.terminateVm(61, 2, true))
      expect(result(yield* raw.next())).toMatchObject({ vmr_result: 0 })
      const forced = yield* raw.next()
      expect(forced.type).toBe(T.IMSG_VMDOP_TERMINATE_VM_EVENT)
      expect(result(forced)).toMatchObject({ vmr_result: 0, vmr_id: 2 })
      expect(spyMessages(run, b.pid).map((m) => m[0])).not.toContain(T.IMSG_VMDOP_VM_REBOOT)

      // a stop for a VM that is gone: VMD_VM_STOP_INVALID
      yield* raw.send(M.terminateVm(62, 2, false))
      expect(result(yield* raw.next())).toMatchObject({ vmr_result: 1004 })
    })
  )
})

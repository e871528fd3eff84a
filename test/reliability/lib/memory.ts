/**
 * Fuzzing both dispatchers of a whole vmm on the in-memory layers (the
 * model tests' harness, test/vmm/harness.ts): a hostile parent and hostile
 * VM processes, with innocent VMs alongside that must keep running and
 * answering.
 *
 * Each round: a batch of parent messages (random types, sizes, payloads,
 * fds; start sequences for the fuzzer's own VMs) and VM messages from the
 * current fuzzing VMs (benign, wrong type, wrong size, with fds, or raw
 * bytes that break the frame stream); then, with nothing in flight, an
 * info round trip and a pause/unpause round trip to an innocent VM, and
 * the checks: the vmm is alive, no defect was logged, each innocent VM is
 * registered and running, each VM that sent something hostile is gone.
 * At the end the parent closes fd 3: the vmm exits 0, every VM has ended,
 * and no fd is left open or closed twice.
 *
 * With a `guide` (guided.ts), messages come from the guide when it has one
 * (a mutated window of a corpus entry) and it is told what was sent and
 * when each round ends (it takes coverage then).
 */
import { Effect, Queue } from "effect"
import type { Scope } from "effect"
import * as T from "../../../src/schema/imsgTypes.ts"
import { Fd } from "../../../src/services/Fd.ts"
import type { Harness } from "../../vmm/harness.ts"
import { makeHarness } from "../../vmm/harness.ts"
import { createParams, vmopId } from "../../vmm/wire.ts"
import { parentMessage, parentStartSequence, rawGarbage, vmMessage, type FuzzImsg, type ParentGenOptions, type VmFuzzImsg } from "./gen.ts"
import { FuzzFailure } from "./pure.ts"
import type { Rng } from "./rng.ts"

export interface DispatchStats {
  parentMessages: number
  vmMessages: number
  rawGarbage: number
  decodeErrors: number
  invalidTypes: number
  vmsEnded: number
  fuzzVmsStarted: number
  roundTrips: number
  crashes: number
}

export const emptyDispatchStats = (): DispatchStats => ({
  parentMessages: 0,
  vmMessages: 0,
  rawGarbage: 0,
  decodeErrors: 0,
  invalidTypes: 0,
  vmsEnded: 0,
  fuzzVmsStarted: 0,
  roundTrips: 0,
  crashes: 0
})

export interface InProcessOptions {
  readonly parentMessages: number
  readonly vmMessages: number
  /** Messages between checks. */
  readonly batch?: number
  readonly innocents?: number
  /** Coverage guidance (guided.ts): where messages come from, told what was sent and when a round ends. */
  readonly guide?: DispatchGuide
}

/** A message source for the in-process fuzzer; null means "draw a fresh one". */
export interface DispatchGuide {
  parent(rng: Rng, gen: ParentGenOptions): ReadonlyArray<FuzzImsg> | null
  vm(rng: Rng): VmFuzzImsg | null
  sent(item: GuideItem): void
  /** After each round's checks, with nothing in flight. */
  roundEnd(): void
}

export type GuideItem = { readonly side: "parent"; readonly msgs: ReadonlyArray<FuzzImsg> } | { readonly side: "vm"; readonly msg: VmFuzzImsg }

const INNOCENT_BASE = 1
/** Far above the ids vm_register hands out for id 0 (1, 2, 3, ...), so that they never collide. */
const FUZZ_VM_BASE = 0x10000000
const CHECK_PEERID = 0x7ead0000

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true)
const i32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at, true)

/** The last log lines, for a failure report. */
const recent: Array<string> = []

/** Count what the vmm logged (and fail on a defect), then forget the lines. */
const drainLogs = (h: Harness, stats: DispatchStats) => {
  for (const line of h.logs) {
    recent.push(line)
    if (recent.length > 40) recent.shift()
    if (line.includes("internal error")) {
      stats.crashes++
      throw new FuzzFailure("vmm", `defect: ${line}`)
    }
    if (/expected \d+ bytes, got \d+|with \d+ bytes \(want|invalid disk id|invalid interface id/.test(line)) stats.decodeErrors++
    if (line.includes("got invalid imsg")) stats.invalidTypes++
    if (line.includes("terminating it")) stats.vmsEnded++
  }
  h.logs.length = 0
}

const sendParent = (h: Harness, m: FuzzImsg) =>
  h.send({ type: m.type, peerid: m.peerid, pid: m.pid, data: m.data, fd: m.withFd ? h.makeFd(`fuzz-parent-fd ${T.imsgTypeName(m.type)} peerid ${m.peerid >>> 0} len ${m.data.length}`) : null })

/** The child's end of a VM's socket, to write raw bytes as that VM. */
const vmSocketEnd = (h: Harness, pid: number) => {
  const sim = h.simByPid(pid)
  const at = sim.argv.indexOf("-V")
  const num = Number(sim.argv[at + 1])
  return h.table.endpoint(new Fd(num, h.table.backend, "probe"))
}

/** The live simulated VM process of a vmd id. */
const simByVmid = (h: Harness, vmid: number) => h.sims().find((s) => s.vmdVm?.vmid === vmid && s.end === null)

interface FuzzVm {
  readonly vmid: number
  readonly pid: number
  hostile: boolean
  why: string
}

export const fuzzInProcess = (
  rng: Rng,
  o: InProcessOptions,
  stats: DispatchStats
): Effect.Effect<void, FuzzFailure, Scope.Scope> =>
  Effect.gen(function* () {
    const h = yield* makeHarness({ firstPid: 2000 })
    const batch = o.batch ?? 400
    const innocentCount = o.innocents ?? 3
    yield* h.send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, fd: h.makeFd("/dev/vmm") })

    // innocent VMs
    const innocents: Array<{ vmid: number; name: string; pid: number }> = []
    for (let i = 0; i < innocentCount; i++) {
      const vmid = INNOCENT_BASE + i
      const name = `good-${vmid}`
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, data: createParams({ name }), fd: h.makeFd(`${name}.kernel`) })
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, fd: h.makeFd(`${name}.tty`) })
      yield* h.settle
      const sim = simByVmid(h, vmid)
      if (sim === undefined) return yield* Effect.fail(new FuzzFailure("setup", `innocent vm ${vmid} did not start`))
      innocents.push({ vmid, name, pid: sim.pid })
    }
    h.takeParent()
    drainLogs(h, stats)

    const fuzzIds = Array.from({ length: 8 }, (_, i) => 1000 + i)
    const gen: ParentGenOptions = {
      protectedIds: new Set(innocents.map((v) => v.vmid)),
      protectedNames: new Set(innocents.map((v) => v.name)),
      fuzzIds,
      allowStarts: true,
      fdRate: 0.15
    }

    // the fuzzing VMs: started like any VM, then hostile
    let nextFuzzVm = FUZZ_VM_BASE
    const fuzzVms: Array<FuzzVm> = []
    /** Start fuzzing VMs until there are `want`, all in one go. */
    const refill = (want: number) =>
      Effect.gen(function* () {
        const vmids: Array<number> = []
        for (let i = fuzzVms.length; i < want; i++) {
          const vmid = nextFuzzVm++
          vmids.push(vmid)
          yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, data: createParams({ name: `fz-${vmid}` }), fd: h.makeFd("fz.kernel") })
          yield* h.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, fd: h.makeFd("fz.tty") })
        }
        if (vmids.length === 0) return
        yield* h.settle
        for (const vmid of vmids) {
          const sim = simByVmid(h, vmid)
          if (sim === undefined) continue
          stats.fuzzVmsStarted++
          fuzzVms.push({ vmid, pid: sim.pid, hostile: false, why: "" })
        }
      })

    const checkRound = Effect.gen(function* () {
      yield* h.settle
      drainLogs(h, stats)
      // a hostile VM is gone and only it
      for (const v of fuzzVms) {
        if (!v.hostile) continue
        if ((yield* h.registry.byPid(v.pid)) !== null || h.simByPid(v.pid).end === null)
          return yield* Effect.fail(
            new FuzzFailure("dispatchVm", `vm ${v.vmid} sent garbage (${v.why}) and is still registered; last log lines:\n${recent.join("\n")}`)
          )
      }
      for (let i = fuzzVms.length - 1; i >= 0; i--) if ((fuzzVms[i] as FuzzVm).hostile) fuzzVms.splice(i, 1)
      // a fuzzing VM that is gone for another reason (the hostile parent may name it too): forget it
      for (let i = fuzzVms.length - 1; i >= 0; i--) {
        if ((yield* h.registry.byPid((fuzzVms[i] as FuzzVm).pid)) === null) fuzzVms.splice(i, 1)
      }
      h.takeParent()
      // every innocent VM is registered, its process alive, and it answers
      for (const v of innocents) {
        const vm = yield* h.registry.byVmid(v.vmid)
        const sim = h.simByPid(v.pid)
        if (vm === null || vm.pid !== v.pid || sim.end !== null)
          return yield* Effect.fail(new FuzzFailure("innocent", `vm ${v.vmid} is gone (${JSON.stringify(sim.end)})`))
      }
      const peerid = CHECK_PEERID + (stats.roundTrips & 0xffff)
      const target = innocents[stats.roundTrips % innocents.length]
      yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid })
      if (target !== undefined) {
        yield* h.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: target.vmid, data: vmopId(target.vmid) })
        yield* h.send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: target.vmid, data: vmopId(target.vmid) })
      }
      yield* h.settle
      const got = h.takeParent()
      const rows = got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA && m.peerid === peerid).map((m) => u32(m.data, 92))
      const end = got.find((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA && m.peerid === peerid)
      if (end === undefined || i32(end.data, 0) !== 0) return yield* Effect.fail(new FuzzFailure("innocent", "no GET_INFO_VM_END_DATA 0"))
      for (const v of innocents) if (!rows.includes(v.vmid)) return yield* Effect.fail(new FuzzFailure("innocent", `vm ${v.vmid} missing from info`))
      if (target !== undefined) {
        for (const type of [T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE]) {
          const r = got.find((m) => m.type === type && m.data.length === 28 && u32(m.data, 4) === target.vmid)
          if (r === undefined || i32(r.data, 0) !== 0)
            return yield* Effect.fail(new FuzzFailure("innocent", `vm ${target.vmid} did not answer ${T.imsgTypeName(type)}`))
        }
      }
      stats.roundTrips++
      drainLogs(h, stats)
    })

    let parentLeft = o.parentMessages
    let vmLeft = o.vmMessages
    while (parentLeft > 0 || vmLeft > 0) {
      if (vmLeft > 0) yield* refill(4)
      let n = 0
      while (n < batch && (parentLeft > 0 || vmLeft > 0)) {
        const parentTurn = vmLeft <= 0 || (parentLeft > 0 && rng.chance(parentLeft / (parentLeft + vmLeft)))
        if (parentTurn) {
          const msgs = o.guide?.parent(rng, gen) ?? (rng.chance(0.05) ? parentStartSequence(rng, gen) : [parentMessage(rng, gen)])
          o.guide?.sent({ side: "parent", msgs })
          for (const m of msgs) yield* sendParent(h, m)
          stats.parentMessages += msgs.length
          parentLeft -= msgs.length
          n += msgs.length
          continue
        }
        const live = fuzzVms.filter((v) => !v.hostile)
        const v = live.length === 0 ? undefined : rng.pick(live)
        if (v === undefined) break // all hostile this round: check, then start new ones
        n++
        vmLeft--
        stats.vmMessages++
        if (rng.chance(0.01)) {
          const g = rawGarbage(rng)
          const end = vmSocketEnd(h, v.pid)
          if (end === undefined) continue
          end.write(g.bytes, rng.chance(0.3) ? h.makeFd("fz-raw-fd") : null)
          stats.rawGarbage++
          if (g.kind === "truncated" || g.kind === "noise") {
            // half a frame: the vmm waits for the rest; the VM then exits, which ends it
            yield* h.vmCommand(v.pid, { _tag: "Exit", code: 0 })
          }
          v.hostile = true
          v.why = `raw ${g.kind} ${Buffer.from(g.bytes.subarray(0, 16)).toString("hex")}`
          continue
        }
        const m = o.guide?.vm(rng) ?? vmMessage(rng, 0.015)
        o.guide?.sent({ side: "vm", msg: m })
        yield* h.vmCommand(v.pid, { _tag: "Send", type: m.type, peerid: m.peerid, data: m.data, withFd: m.withFd })
        if (m.hostile) {
          v.hostile = true
          v.why = `type ${m.type} with ${m.data.length} bytes`
        }
      }
      yield* checkRound
      o.guide?.roundEnd()
    }

    const code = yield* h.closeParent
    yield* h.settle
    drainLogs(h, stats)
    if (code !== 0) return yield* Effect.fail(new FuzzFailure("vmm", `exited ${code} on parent EOF`))
    const running = h.sims().filter((s) => s.end === null)
    if (running.length > 0) return yield* Effect.fail(new FuzzFailure("vmm", `VM processes left: ${running.map((s) => `${s.pid} ${s.vmdVm?.name ?? "?"}/${s.vmdVm?.vmid ?? "?"} kid ${s.kernelId} term ${s.terminated} rcvd ${s.received.map((r) => r.type).join(",")}`).join("; ")}; last log lines:\n${recent.join("\n")}`))
    if ((yield* h.process.children).length > 0) return yield* Effect.fail(new FuzzFailure("vmm", "children left unreaped"))
    // A simulated VM that ended may still hold messages (and their fds) it had not read: exit(2) closes those.
    for (const sim of h.sims()) {
      for (const ev of yield* Queue.takeAll(sim.events)) if (ev._tag === "Msg") ev.imsg.fd?.closeSync()
    }
    // /dev/vmm (the device) and /dev/psp (RECEIVE_PSP_FD) are held until the vmm's scope ends, as in vmm.c until exit(2)
    const held = new Set([h.handle.context.state.pspFd?.num])
    const leaked = h.table.openFds().filter((f) => f.label !== "/dev/vmm" && !f.label.startsWith("parent[") && !held.has(f.num))
    if (leaked.length > 0)
      return yield* Effect.fail(new FuzzFailure("vmm", `fds left open: ${leaked.slice(0, 10).map((f) => `${f.num} ${f.label}`).join(", ")}${leaked.length > 10 ? ` and ${leaked.length - 10} more` : ""}`))
    if (h.table.doubleCloses !== 0 || h.proxyDoubleCloses() !== 0)
      return yield* Effect.fail(new FuzzFailure("vmm", `double closes: ${h.table.doubleCloses} + ${h.proxyDoubleCloses()}`))
  })

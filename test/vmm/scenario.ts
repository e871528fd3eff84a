/**
 * Running a scenario (commands.ts) against a whole vmm on the in-memory
 * layers and, step by step, against the independent model (model.ts):
 * each command is sent (or done by a simulated VM), the system settles,
 * and the invariants the property names are checked.
 */
import { Effect, Exit, Scope } from "effect"
import { expect } from "vitest"
import type { Fd } from "../../src/services/Fd.ts"
import { BAD_NAMES } from "./commands.ts"
import type { Cmd, Scenario } from "./commands.ts"
import type { HandshakePlan, Harness, ParentMsg } from "./harness.ts"
import { makeHarness } from "./harness.ts"
import type { Expected, HandshakeOutcome, Msg, VmmModel as Model } from "./model.ts"
import { VmmModel } from "./model.ts"
import { openLabels, show } from "./steps.ts"
import { CONFIG_VMS, createParams, E, int32, M, PEERID_NONE, readInfo, uint32, VMOP_FORCE, vmdConfig, vmopAddrResult, vmopId } from "./wire.ts"

export { propRuns, scenarioArb } from "./commands.ts"

// ---------------------------------------------------------------------------
// Running a scenario

/** What the scenarios exercised, for VMM_PROP_STATS=1 (printed by the property file). */
export const stats = {
  runs: 0,
  steps: 0,
  skipped: 0,
  vmsStarted: 0,
  events: 0,
  replies: new Map<string, number>()
}

const tally = (got: ReadonlyArray<ParentMsg>) => {
  for (const m of got) {
    const key = m.data.length === 28 ? `${show(m).type} ${new DataView(m.data.buffer, m.data.byteOffset).getInt32(0, true)}` : show(m).type
    stats.replies.set(key, (stats.replies.get(key) ?? 0) + 1)
    if (m.type === M.TERMINATE_VM_EVENT) stats.events++
  }
}

/** The invariants a property checks after every step. */
export type Invariant = "replies" | "agreement" | "events" | "fds"

const FIRST_PID = 1000
const UNKNOWN_VMID = 90_000

const json = (x: unknown) => JSON.stringify(x, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))

/** Expected parent messages in the form `show` gives actual ones. */
const normalize = (e: Expected) =>
  e.kind === "msg"
    ? { ...show(e.msg), hex: Buffer.from(e.msg.data).toString("hex") }
    : {
        type: "GET_INFO_VM_DATA",
        peerid: e.peerid >>> 0,
        pid: 1,
        payload: { ...e.info, used: 0n, ttyname: "", uid: 0, gid: 0n, state: 0 }
      }

const normalizeActual = (m: ParentMsg) =>
  m.type === M.GET_INFO_VM_DATA && m.data.length === 200
    ? { type: "GET_INFO_VM_DATA", peerid: m.peerid >>> 0, pid: m.pid, payload: readInfo(m.data), ...(m.fd ? { fd: true } : {}) }
    : { ...show(m), hex: Buffer.from(m.data).toString("hex") }

const msgView = (m: Msg | { type: number; peerid: number; pid: number; data: Uint8Array; fd?: boolean }) => ({
  ...show(m),
  hex: Buffer.from(m.data).toString("hex")
})

const planOf = (outcome: HandshakeOutcome, dieCode: number): HandshakePlan => {
  switch (outcome) {
    case "dieAfterStruct":
      return { _tag: "DieAfterStruct", code: dieCode }
    case "answerZero":
      return { _tag: "AnswerZero" }
    case "shortId":
      return { _tag: "ShortId" }
    case "exitAfterId":
      return { _tag: "ExitAfterId", code: dieCode }
    default:
      return { _tag: "Normal" }
  }
}

interface Runner {
  readonly h: Harness
  readonly model: Model
  nextVmid: number
  nextName: number
  fdSerial: number
  readonly used: Set<number>
  /** For each started pid: the prefix and verbosity it must have been started with. */
  readonly startedWith: Map<number, { readonly prefix: Uint8Array; readonly verbose: number }>
  /** Started VM processes whose TERMINATE_VM_EVENT has been seen. */
  readonly reported: Set<number>
}

/** A VM id to address: mostly a registered VM, sometimes one that is gone or never was. */
const known = (r: Runner, idx: number): number => {
  const live = r.model.vms.map((v) => v.vmid)
  if (live.length > 0 && idx % 5 !== 0) return live[idx % live.length] as number
  const ids = [...r.used]
  return idx % (ids.length + 1) === ids.length ? UNKNOWN_VMID : (ids[idx % (ids.length + 1)] as number)
}

const fd = (r: Runner, what: string): Fd => r.h.makeFd(`${what}#${++r.fdSerial}`)

/** Send one command; returns what the model expects the parent to get, or null if it did not apply. */
const step = (r: Runner, cmd: Cmd): Effect.Effect<Array<Expected> | null> =>
  Effect.gen(function* () {
    const { h, model } = r
    switch (cmd.t) {
      case "start": {
        const f = cmd.fault
        const gone = [...r.used].filter((id) => model.byVmid(id) === undefined)
        const vmid = cmd.reuse !== null && gone.length > 0 ? (gone[cmd.reuse % gone.length] as number) : r.nextVmid++
        r.used.add(vmid)
        const registered = model.vms.map((v) => v.name)
        const name =
          f === "badName"
            ? (BAD_NAMES[cmd.badName] as string)
            : cmd.dupName !== null && registered.length > 0
              ? (registered[cmd.dupName % registered.length] as string)
              : `vm${r.nextName++}`
        const noBoot = f === "noBoot"
        const ndisksField = f === "disks5" ? 5 : noBoot ? 0 : cmd.ndisks
        const nnicsField = f === "nics5" ? 5 : cmd.nnics
        const ndisks = Math.min(ndisksField, 4)
        const nnics = Math.min(nnicsField, 4)
        const ncpus = f === "cpus65" ? 65 : cmd.ncpus
        const cdromPath = cmd.cdromPath && !noBoot ? "/iso/install.iso" : ""
        const diskbase0 = f === "diskbase3" ? 3 : 0
        const flags = f === "flagsZero" ? 0 : 0x1f
        const msgs: Array<{ type: number; index?: number; fd: Fd | null; data: Uint8Array }> = []
        const params = createParams({ name, flags, ncpus, memory: cmd.memory, ndisks: ndisksField, nnics: nnicsField, cdrom: cdromPath, diskbases: [diskbase0] })
        const kernel = cmd.kernel && !noBoot
        msgs.push({ type: M.START_VM_REQUEST, fd: kernel ? fd(r, `vm${vmid}.kernel`) : null, data: f === "badSize" ? params.subarray(0, 8000) : params })
        if ((cmd.cdrom && !noBoot) || f === "cdromNoFd") {
          msgs.push({ type: M.START_VM_CDROM, fd: f === "cdromNoFd" ? null : fd(r, `vm${vmid}.cdrom`), data: new Uint8Array(0) })
        }
        let first = true
        for (let i = 0; i < ndisks; i++) {
          const layers = f === "layer5" && i === 0 ? 5 : (cmd.layers[i] ?? 1)
          for (let j = 0; j < layers; j++) {
            const withFd = !(first && f === "diskNoFd")
            first = false
            msgs.push({ type: M.START_VM_DISK, index: i, fd: withFd ? fd(r, `vm${vmid}.disk${i}.${j}`) : null, data: uint32(i) })
          }
        }
        if (f === "extraDisk") msgs.push({ type: M.START_VM_DISK, index: ndisksField, fd: fd(r, `vm${vmid}.diskX`), data: uint32(ndisksField) })
        for (let i = 0; i < nnics; i++) {
          msgs.push({ type: M.START_VM_IF, index: i, fd: i === 0 && f === "nicNoFd" ? null : fd(r, `vm${vmid}.if${i}`), data: uint32(i) })
        }
        if (f === "dupNic" && nnics > 0) msgs.push({ type: M.START_VM_IF, index: 0, fd: fd(r, `vm${vmid}.ifdup`), data: uint32(0) })
        if (!cmd.hold) msgs.push({ type: M.START_VM_END, fd: f === "notty" ? null : fd(r, `vm${vmid}.tty`), data: new Uint8Array(0) })

        const outcome: HandshakeOutcome =
          f === "dieAfterStruct" || f === "answerZero" || f === "shortId" || f === "spawnFail" || f === "exitAfterId" ? f : "normal"
        h.plan(name, planOf(outcome, cmd.dieCode), cmd.behaviour)
        model.outcomes.set(name, outcome)
        model.exitAfterIdCodes.set(name, cmd.dieCode)
        const failures = model.spawnFailures
        const expected = model.start(
          {
            vmid,
            name,
            flags,
            ncpus,
            memory: cmd.memory,
            ndisks: ndisksField,
            nnics: nnicsField,
            cdromPath,
            diskbases: [diskbase0],
            badSize: f === "badSize",
            outcome,
            behaviour: cmd.behaviour
          },
          msgs.map((m) => ({ type: m.type, ...(m.index === undefined ? {} : { index: m.index }), fd: m.fd?.label ?? "" }))
        )
        if (model.spawnFailures > failures) yield* h.control.failNextSpawn(E.EAGAIN)
        noteStarted(r)
        for (const m of msgs) yield* h.send({ type: m.type, peerid: vmid, data: m.data, fd: m.fd })
        return expected
      }
      case "end": {
        const pending = model.pending()
        let vmid = pending.length > 0 ? (pending[cmd.target % pending.length] as { vmid: number }).vmid : known(r, cmd.target)
        if (model.byVmid(vmid)?.started === true) vmid = UNKNOWN_VMID
        const tty = cmd.tty ? fd(r, `vm${vmid}.tty`) : null
        const failures = model.spawnFailures
        const expected = model.end(vmid, tty?.label ?? "")
        if (model.spawnFailures > failures) yield* h.control.failNextSpawn(E.EAGAIN)
        noteStarted(r)
        yield* h.send({ type: M.START_VM_END, peerid: vmid, fd: tty })
        return expected
      }
      case "stray": {
        const vmid = known(r, cmd.target)
        const type = cmd.kind === "cdrom" ? M.START_VM_CDROM : cmd.kind === "disk" ? M.START_VM_DISK : M.START_VM_IF
        const f = cmd.fd ? fd(r, `vm${vmid}.stray-${cmd.kind}`) : null
        const expected = model.stray(vmid, type, cmd.index, f?.label ?? "")
        yield* h.send({ type, peerid: vmid, data: type === M.START_VM_CDROM ? new Uint8Array(0) : uint32(cmd.index), fd: f })
        return expected
      }
      case "stop": {
        const vid = cmd.id0 ? 0 : known(r, cmd.target)
        const expected = model.stop(vid, cmd.force, cmd.peerid)
        yield* h.send({ type: M.TERMINATE_VM_REQUEST, peerid: cmd.peerid, data: vmopId(vid, cmd.force ? VMOP_FORCE : 0) })
        return expected
      }
      case "info":
        yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: cmd.peerid })
        return model.info(cmd.peerid)
      case "pause": {
        const vid = known(r, cmd.target)
        const type = cmd.unpause ? M.UNPAUSE_VM : M.PAUSE_VM
        const data = vmopId(vid)
        yield* h.send({ type, peerid: cmd.peerid, pid: cmd.pid, data, fd: cmd.withFd ? fd(r, "pause-fd") : null })
        return model.pause(vid, type, cmd.peerid, cmd.pid, data, cmd.withFd)
      }
      case "verbose":
        yield* h.send({ type: M.CTL_VERBOSE, peerid: PEERID_NONE, data: int32(cmd.level) })
        return model.setVerbose(cmd.level, 1)
      case "reset": {
        const mode = (cmd.vms ? CONFIG_VMS : 0) | cmd.other
        yield* h.send({ type: M.CTL_RESET, data: uint32(mode) })
        return model.reset(mode)
      }
      case "config": {
        const prefix = Uint8Array.from(cmd.prefix)
        yield* h.send({ type: M.CONFIG, data: vmdConfig(prefix) })
        return model.config(prefix)
      }
      case "addr": {
        const vid = known(r, cmd.target)
        const data = vmopAddrResult(vid, cmd.nic, [0xfe, 0xe1, 0xbb, 0xd1, cmd.nic, vid & 0xff])
        yield* h.send({ type: M.PRIV_GET_ADDR_RESPONSE, peerid: vid, pid: cmd.pid, data, fd: cmd.withFd ? fd(r, "addr-fd") : null })
        return model.addr(vid, cmd.pid, data, cmd.withFd)
      }
      case "junk":
        switch (cmd.kind) {
          case "type":
            yield* h.send({ type: 999, data: new Uint8Array(5), fd: fd(r, "junk") })
            return []
          case "verbose":
            yield* h.send({ type: M.CTL_VERBOSE, data: new Uint8Array(2) })
            return []
          case "reset":
            yield* h.send({ type: M.CTL_RESET, data: new Uint8Array(8).fill(0xff) })
            return []
          case "config":
            yield* h.send({ type: M.CONFIG, data: new Uint8Array(100) })
            return []
          case "pause":
            yield* h.send({ type: M.PAUSE_VM, peerid: 5, data: new Uint8Array(40) })
            return [{ kind: "msg", msg: { type: M.PAUSE_VM_RESPONSE, peerid: 5, pid: 1, data: resultBytes(E.EINVAL, 0) } }]
          case "stop":
            yield* h.send({ type: M.TERMINATE_VM_REQUEST, peerid: 6, data: new Uint8Array(75) })
            return [{ kind: "msg", msg: { type: M.TERMINATE_VM_RESPONSE, peerid: 6, pid: 1, data: resultBytes(E.EINVAL, 0) } }]
        }
        return []
      case "vmExit":
      case "vmKill":
      case "vmSend": {
        const running = model.running()
        if (running.length === 0) return null
        const v = running[cmd.target % running.length] as (typeof running)[number]
        if (cmd.t === "vmExit") {
          yield* h.vmCommand(v.pid, { _tag: "Exit", code: cmd.code })
          return model.vmExit(v, cmd.code)
        }
        if (cmd.t === "vmKill") {
          yield* h.kill(v.pid, cmd.sig)
          return model.vmSignal(v)
        }
        switch (cmd.what) {
          case "shutdown":
          case "reboot":
            yield* h.vmCommand(v.pid, { _tag: "Send", type: cmd.what === "shutdown" ? M.VM_SHUTDOWN : M.VM_REBOOT, withFd: cmd.withFd })
            return model.vmShutdown(v, cmd.what === "reboot")
          case "response": {
            const type = cmd.peerid % 2 === 0 ? M.PAUSE_VM_RESPONSE : M.UNPAUSE_VM_RESPONSE
            const data = Uint8Array.from(cmd.payload)
            yield* h.vmCommand(v.pid, { _tag: "Send", type, peerid: cmd.peerid, data, withFd: cmd.withFd })
            return model.vmResponse(type, cmd.peerid, data)
          }
          case "garbage":
            yield* h.vmCommand(v.pid, { _tag: "Send", type: 99, data: new Uint8Array(3), withFd: cmd.withFd })
            return model.vmMisbehaves(v)
          case "raw": {
            // a header whose len is below 16: the stream cannot be framed any more
            const bytes = new Uint8Array(16)
            new DataView(bytes.buffer).setUint32(4, (cmd.payload[0] ?? 0) % 16, true)
            yield* h.vmCommand(v.pid, { _tag: "Raw", bytes })
            return model.vmMisbehaves(v)
          }
          case "badResponse":
            yield* h.vmCommand(v.pid, { _tag: "Send", type: M.PAUSE_VM_RESPONSE, data: new Uint8Array(27), withFd: cmd.withFd })
            return model.vmMisbehaves(v)
        }
      }
    }
  })

const resultBytes = (res: number, id: number) => {
  const b = new Uint8Array(28)
  const v = new DataView(b.buffer)
  v.setInt32(0, res, true)
  v.setUint32(4, id, true)
  return b
}

/** Remember the prefix and verbosity each newly started VM must have read. */
const noteStarted = (r: Runner) => {
  for (const s of r.model.started) {
    if (!r.startedWith.has(s.pid)) r.startedWith.set(s.pid, { prefix: r.model.prefix.slice(), verbose: r.model.verbose })
  }
}

const verboseFlag = (v: number): Array<string> => (v === 1 ? ["-v"] : v > 1 ? ["-vv"] : [])

/** The checks after a step. */
const check = (r: Runner, invariants: ReadonlySet<Invariant>, expected: ReadonlyArray<Expected>, got: ReadonlyArray<ParentMsg>, where: string) =>
  Effect.gen(function* () {
    const { h, model } = r
    if (invariants.has("replies")) {
      expect(got.map(normalizeActual), `${where}: parent messages`).toEqual(expected.map(normalize))
      for (const [pid, inbox] of model.vmInbox) {
        const sim = h.sims().find((s) => s.pid === pid)
        expect(sim, `${where}: VM process ${pid} exists`).toBeDefined()
        expect(sim?.received.map(msgView), `${where}: messages VM ${pid} received`).toEqual(inbox.map(msgView))
        const start = r.startedWith.get(pid)
        if (start !== undefined && sim !== undefined) {
          expect(sim.prefix, `${where}: local prefix VM ${pid} read`).toEqual(start.prefix)
          expect(sim.argv.slice(6), `${where}: VM ${pid} argv verbosity`).toEqual(verboseFlag(start.verbose))
        }
      }
    }
    if (invariants.has("agreement")) {
      const registry = yield* h.registry.all
      const kernel = (yield* h.kernel.list).map((k) => k.id)
      expect(registry.map((v) => v.vmid), `${where}: registered VMs`).toEqual(model.vms.map((v) => v.vmid))
      const started = registry.filter((v) => v.vmmid !== 0).map((v) => v.vmmid)
      // Every started VM the vmm knows is in vmm(4), and vmm(4) has nothing else but what the vmm forgot without TERM.
      for (const id of started) expect(kernel, `${where}: vmm(4) has the vmm's VM ${id}`).toContain(id)
      const orphans = model.kernel.filter((k) => k.owner === null || !model.vms.includes(k.owner)).map((k) => k.id)
      expect(kernel.filter((id) => !started.includes(id)).sort(), `${where}: vmm(4) VMs the vmm does not know`).toEqual(orphans.sort())
      // ... and the VM processes alive are exactly the started VMs'.
      const alive = [...(yield* h.process.children)].sort()
      expect(alive, `${where}: live VM processes`).toEqual(model.running().map((v) => v.pid).sort())
    }
    if (invariants.has("events")) {
      const events = got.filter((m) => m.type === M.TERMINATE_VM_EVENT)
      const want = expected.filter((e) => e.kind === "msg" && e.msg.type === M.TERMINATE_VM_EVENT)
      expect(events.map(normalizeActual), `${where}: TERMINATE_VM_EVENTs`).toEqual(want.map(normalize))
      // Directly: each event is for a VM process that ended in this step, once; its result follows its end.
      const seen = new Set<number>()
      for (const ev of events) {
        const res = new DataView(ev.data.buffer, ev.data.byteOffset).getInt32(0, true)
        const vmid = new DataView(ev.data.buffer, ev.data.byteOffset).getUint32(4, true)
        const inst = model.started.filter((s) => s.vmid === vmid && model.departures.get(s.pid) === "event" && !r.reported.has(s.pid))
        expect(inst.length, `${where}: an ended VM ${vmid} to report`).toBeGreaterThan(0)
        const pid = (inst[0] as { pid: number }).pid
        expect(seen.has(pid), `${where}: one event for VM process ${pid}`).toBe(false)
        seen.add(pid)
        r.reported.add(pid)
        const end = h.simByPid(pid).end
        if (end?._tag === "Killed") expect(res, `${where}: killed → EIO`).toBe(E.EIO)
        else if (end?._tag === "Exited" && end.code !== E.EAGAIN) expect(res, `${where}: exit code`).toBe(end.code)
        else expect([0, E.EAGAIN], `${where}: EAGAIN → 0 or 35`).toContain(res)
      }
      for (const s of model.started) {
        const gone = model.departures.get(s.pid)
        if (gone === "event") expect(r.reported.has(s.pid), `${where}: VM process ${s.pid} (vm ${s.vmid}) reported`).toBe(true)
        if (gone === "removed") expect(r.reported.has(s.pid), `${where}: VM process ${s.pid} removed, not reported`).toBe(false)
      }
    }
    if (invariants.has("fds")) {
      expect(openLabels(h), `${where}: open fds`).toEqual(model.openFds())
      expect(h.table.doubleCloses, `${where}: double closes`).toBe(0)
      expect(h.proxyDoubleCloses(), `${where}: double closes of fork copies`).toBe(0)
    }
  })

/** Run a scenario on a fresh vmm; check the invariants after every step and at the end. */
export const runScenario = (scenario: Scenario, invariants: ReadonlySet<Invariant>) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const leftovers = Array.from({ length: scenario.leftovers }, (_, i) => `old${i + 1}`)
    const h = yield* Scope.extend(makeHarness({ kernelVms: leftovers, firstPid: FIRST_PID }), scope)
    const model = new VmmModel({ firstPid: FIRST_PID, preexistingKernelVms: scenario.leftovers, ownPid: process.pid })
    const r: Runner = { h, model, nextVmid: 1, nextName: 1, fdSerial: 0, used: new Set(), startedWith: new Map(), reported: new Set() }

    // vmd_configure: RECEIVE_VMM_FD, RECEIVE_PSP_FD, CONFIG.
    const dev = h.makeFd("/dev/vmm")
    yield* h.send({ type: M.RECEIVE_VMM_FD, fd: dev })
    model.receiveVmmFd(dev.label)
    if (scenario.psp) {
      const psp = h.makeFd("/dev/psp")
      yield* h.send({ type: M.RECEIVE_PSP_FD, fd: psp })
      model.receivePspFd(psp.label, true)
    }
    if (scenario.config !== null) {
      const prefix = Uint8Array.from(scenario.config)
      yield* h.send({ type: M.CONFIG, data: vmdConfig(prefix) })
      model.config(prefix)
    }
    yield* h.settle
    yield* check(r, invariants, [], h.takeParent(), "boot")

    stats.runs++
    for (const [i, cmd] of scenario.cmds.entries()) {
      const expected = yield* step(r, cmd)
      if (expected === null) {
        stats.skipped++
        continue
      }
      stats.steps++
      yield* h.settle
      const got = h.takeParent()
      tally(got)
      yield* check(r, invariants, expected, got, `step ${i} ${json(cmd)}`)
    }
    stats.vmsStarted += model.started.length

    // The parent goes away: every VM is ended; then the process exits.
    expect(yield* h.closeParent, "vmm exit code").toBe(0)
    yield* h.settle
    if (invariants.has("agreement")) {
      expect(yield* h.process.children, "live VM processes after exit").toEqual([])
      const orphans = model.kernel.filter((k) => k.owner === null || !model.vms.includes(k.owner)).map((k) => k.id)
      expect((yield* h.kernel.list).map((k) => k.id).sort(), "vmm(4) after exit: only what the vmm forgot").toEqual(orphans.sort())
    }
    if (invariants.has("replies")) expect(h.takeParent().map(normalizeActual), "messages after parent EOF").toEqual([])
    yield* Scope.close(scope, Exit.void)
    if (invariants.has("fds")) {
      expect(openLabels(h), "fds open after exit").toEqual([])
      expect(h.table.doubleCloses + h.proxyDoubleCloses(), "double closes").toBe(0)
    }
  })

/**
 * Fuzzing a real vmm process over real sockets: this process plays a
 * hostile vmd parent on fd 3, and every VM the vmm starts runs vmfuzz
 * (scripts/c/vmfuzz.c): "fz-*" VMs are hostile VM processes, the rest exec
 * the well-behaved C VM program. Innocent VMs ("good-*") run throughout.
 *
 * Rounds of: keep `fuzzVms` hostile VMs alive (start replacements as they
 * are ended), send a batch of hostile parent messages (with /dev/null fds
 * where the generator wants one), then check with nothing of ours in
 * flight: an info round trip that lists every innocent VM, a pause and an
 * unpause answered by one of them, every innocent VM process alive, the
 * vmm alive, and every hostile VM that sent its hostile message gone within
 * a few seconds. At the end the parent closes fd 3: the vmm must exit 0 and
 * leave no VM process behind.
 */
import { Effect, Either, Stream } from "effect"
import type { Scope } from "effect"
import { readFileSync, writeFileSync } from "node:fs"
import * as T from "../../../src/schema/imsgTypes.ts"
import { emptyVmdConfig, encodeVmdConfig } from "../../../src/schema/structs.ts"
import { ImsgChannel } from "../../../src/services/ImsgChannel.ts"
import type { OutgoingImsg } from "../../../src/services/ImsgChannel.ts"
import { createParams, vmopId } from "../../vmm/wire.ts"
import { parentMessage, parentStartSequence, type FuzzImsg, type ParentGenOptions } from "./gen.ts"
import { childrenOf, isAlive } from "./proc.ts"
import { FuzzFailure } from "./pure.ts"
import { devNull, startRealVmm, type LogCounts } from "./realVmm.ts"
import type { Rng } from "./rng.ts"
import type { VmmProgram } from "./build.ts"

export interface RealFuzzOptions {
  readonly program: VmmProgram
  readonly vmfuzz: string
  readonly vmprog: string
  /** Where vmfuzz appends its lines (truncated at the start). */
  readonly logPath: string
  readonly parentMessages: number
  /** Keep starting hostile VMs until they have sent at least this many messages. */
  readonly vmMessages: number
  readonly innocents?: number
  readonly fuzzVms?: number
  readonly batch?: number
  /** Most benign messages a hostile VM sends before its hostile one (vmfuzz's default 20000). */
  readonly benignMax?: number
  readonly seed: number
  /** Progress lines. */
  readonly progress?: (line: string) => void
}

export interface RealFuzzStats {
  parentMessages: number
  parentFds: number
  vmMessages: number
  vmFds: number
  hostileVms: number
  hostileKinds: Record<string, number>
  fuzzVmsStarted: number
  roundTrips: number
  vmm: LogCounts | null
  vmmExit: string
  crashes: number
}

export const emptyRealStats = (): RealFuzzStats => ({
  parentMessages: 0,
  parentFds: 0,
  vmMessages: 0,
  vmFds: 0,
  hostileVms: 0,
  hostileKinds: {},
  fuzzVmsStarted: 0,
  roundTrips: 0,
  vmm: null,
  vmmExit: "",
  crashes: 0
})

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true)
const i32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at, true)

const FUZZ_VM_BASE = 0x20000000
const CHECK_PEERID = 0x7eab0000
/** How long a hostile VM may outlive its hostile message. */
const END_WITHIN_MS = 5000
const REPLY_WITHIN_MS = 15_000

interface VmfuzzLine {
  readonly hostileAt: Map<number, { kind: string; at: number }>
  readonly exited: Map<number, { sent: number; fds: number; why: string }>
  offset: number
}

/** New lines of vmfuzz's log. */
const readVmfuzzLog = (path: string, st: VmfuzzLine, stats: RealFuzzStats) => {
  let text: string
  try {
    text = readFileSync(path, "latin1")
  } catch {
    return
  }
  const end = text.lastIndexOf("\n") + 1
  for (const line of text.slice(st.offset, end).split("\n")) {
    const f = line.split(" ")
    if (f[0] === "H") {
      st.hostileAt.set(Number(f[1]), { kind: f[3] ?? "?", at: Date.now() })
      stats.hostileVms++
      stats.hostileKinds[f[3] ?? "?"] = (stats.hostileKinds[f[3] ?? "?"] ?? 0) + 1
    } else if (f[0] === "X") {
      const pid = Number(f[1])
      const sent = Number(f[3])
      const fds = Number(f[4])
      st.exited.set(pid, { sent, fds, why: f[5] ?? "?" })
      stats.vmMessages += sent
      stats.vmFds += fds
    }
  }
  st.offset = end
}

export const fuzzRealVmm = (rng: Rng, o: RealFuzzOptions, stats: RealFuzzStats): Effect.Effect<void, FuzzFailure, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    writeFileSync(o.logPath, "")
    const vmm = yield* startRealVmm({
      program: o.program,
      vmExec: o.vmfuzz,
      env: {
        VMFUZZ_VMPROG: o.vmprog,
        VMFUZZ_LOG: o.logPath,
        VMFUZZ_SEED: String(o.seed),
        ...(o.benignMax === undefined ? {} : { VMFUZZ_BENIGN_MAX: String(o.benignMax) })
      }
    })
    stats.vmm = vmm.logs
    const fail = (target: string, why: string) =>
      Effect.fail(new FuzzFailure(target, `${why}\nlast vmm log lines:\n${vmm.recent.join("\n")}`))

    // --- what the parent hears ------------------------------------------------
    const starts = new Map<number, { res: number; pid: number }>()
    const infoRows = new Map<number, Array<number>>()
    const infoEnd = new Map<number, number>()
    const answered = new Map<string, number>()
    const ended = new Set<number>()
    let innocentIds = new Set<number>()
    let innocentEnded: string | null = null
    yield* vmm.channel.messages.pipe(
      Stream.runForEach((m) =>
        Effect.sync(() => {
          m.fd?.closeSync()
          switch (m.type) {
            case T.IMSG_VMDOP_START_VM_RESPONSE:
              if (m.data.length === 28) starts.set(m.peerid, { res: i32(m.data, 0), pid: i32(m.data, 8) })
              break
            case T.IMSG_VMDOP_GET_INFO_VM_DATA:
              if (m.data.length === 200) infoRows.set(m.peerid, [...(infoRows.get(m.peerid) ?? []), u32(m.data, 92)])
              break
            case T.IMSG_VMDOP_GET_INFO_VM_END_DATA:
              infoEnd.set(m.peerid, m.data.length === 4 ? i32(m.data, 0) : -1)
              break
            case T.IMSG_VMDOP_PAUSE_VM_RESPONSE:
            case T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE:
              if (m.data.length === 28 && innocentIds.has(u32(m.data, 4))) {
                const key = `${m.type}:${u32(m.data, 4)}`
                answered.set(key, (answered.get(key) ?? 0) + 1)
              }
              break
            case T.IMSG_VMDOP_TERMINATE_VM_EVENT:
              if (m.data.length === 28) {
                const id = u32(m.data, 4)
                ended.add(id)
                if (innocentIds.has(id)) innocentEnded = `innocent vm ${id} ended with ${i32(m.data, 0)}`
              }
              break
          }
        })
      ),
      Effect.ignore,
      Effect.forkScoped
    )

    const send = (m: OutgoingImsg) => Effect.orDie(vmm.channel.send(m))
    const waitFor = (what: string, pred: () => boolean, ms = REPLY_WITHIN_MS) =>
      Effect.gen(function* () {
        const end = Date.now() + ms
        while (!pred()) {
          if (Date.now() > end) return yield* fail("vmm", `no ${what} within ${ms} ms`)
          yield* Effect.sleep("2 millis")
        }
      })

    // vmd_configure: /dev/vmm first (its terminate sweep would end every VM later on, as vmm.c's
    // does for all VMs vmm(4) lists: a legitimate power of the parent, so it goes first), then CONFIG.
    yield* send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, pid: 1, fd: devNull("/dev/vmm") })
    const config = Either.getOrThrow(encodeVmdConfig(emptyVmdConfig()))
    yield* send({ type: T.IMSG_VMDOP_CONFIG, peerid: T.PEERID_NONE, pid: 1, data: config })

    /** config_setvm with a kernel and a tty on /dev/null; resolves with the response. */
    const startVm = (vmid: number, name: string) =>
      Effect.gen(function* () {
        starts.delete(vmid)
        yield* send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name }), fd: devNull("kernel") })
        yield* send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
      })

    // --- innocent VMs ------------------------------------------------------------
    const innocents: Array<{ vmid: number; name: string; pid: number }> = []
    for (let i = 0; i < (o.innocents ?? 3); i++) {
      const vmid = 1 + i
      const name = `good-${vmid}`
      yield* startVm(vmid, name)
      yield* waitFor(`START_VM_RESPONSE for ${name}`, () => starts.has(vmid))
      const r = starts.get(vmid)!
      if (r.res !== 0) return yield* fail("setup", `${name} did not start: ${r.res}`)
      innocents.push({ vmid, name, pid: r.pid })
    }
    innocentIds = new Set(innocents.map((v) => v.vmid))

    const gen: ParentGenOptions = {
      protectedIds: innocentIds,
      protectedNames: new Set(innocents.map((v) => v.name)),
      fuzzIds: Array.from({ length: 8 }, (_, i) => 1000 + i),
      allowStarts: true,
      fdRate: 0.1
    }

    // --- hostile VMs -----------------------------------------------------------
    const vmlog: VmfuzzLine = { hostileAt: new Map(), exited: new Map(), offset: 0 }
    const fuzzVms = new Map<number, number>() // vmid -> pid
    let nextFuzz = FUZZ_VM_BASE
    const refill = Effect.gen(function* () {
      for (const [vmid, pid] of fuzzVms) if (ended.has(vmid) || vmlog.exited.has(pid)) fuzzVms.delete(vmid)
      const want = (o.fuzzVms ?? 4) - fuzzVms.size
      if (want <= 0 || stats.vmMessages >= o.vmMessages) return
      const ids: Array<number> = []
      for (let i = 0; i < want; i++) {
        const vmid = nextFuzz++
        ids.push(vmid)
        yield* startVm(vmid, `fz-${vmid}`)
      }
      yield* waitFor("START_VM_RESPONSE for the hostile VMs", () => ids.every((id) => starts.has(id)))
      for (const vmid of ids) {
        const r = starts.get(vmid)!
        if (r.res === 0) {
          fuzzVms.set(vmid, r.pid)
          stats.fuzzVmsStarted++
        }
      }
    })

    const sendParent = (m: FuzzImsg) =>
      Effect.suspend(() => {
        stats.parentMessages++
        if (m.withFd) stats.parentFds++
        return send({ type: m.type, peerid: m.peerid, pid: m.pid, data: m.data, fd: m.withFd ? devNull("fuzz") : null })
      })

    const check = Effect.gen(function* () {
      if (!isAlive(vmm.pid)) return yield* fail("vmm", "the vmm process died")
      if (vmm.logs.crashes > 0) return yield* fail("vmm", "a defect or fatal error was logged")
      if (innocentEnded !== null) return yield* fail("innocent", innocentEnded)
      for (const v of innocents) if (!isAlive(v.pid)) return yield* fail("innocent", `${v.name} (pid ${v.pid}) is not running`)
      const peerid = (CHECK_PEERID + stats.roundTrips) >>> 0
      const target = innocents[stats.roundTrips % innocents.length]!
      const before = [T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE].map((t) => answered.get(`${t}:${target.vmid}`) ?? 0)
      yield* send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid, pid: 1 })
      yield* send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: target.vmid, pid: 1, data: vmopId(target.vmid) })
      yield* send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: target.vmid, pid: 1, data: vmopId(target.vmid) })
      yield* waitFor("GET_INFO_VM_END_DATA", () => infoEnd.has(peerid))
      if (infoEnd.get(peerid) !== 0) return yield* fail("innocent", `GET_INFO_VM_END_DATA ${infoEnd.get(peerid)}`)
      const rows = infoRows.get(peerid) ?? []
      for (const v of innocents) if (!rows.includes(v.vmid)) return yield* fail("innocent", `${v.name} missing from info (rows ${rows.join(",")})`)
      infoRows.delete(peerid)
      infoEnd.delete(peerid)
      yield* waitFor(`${target.name} answering PAUSE and UNPAUSE`, () =>
        [T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE].every((t, i) => (answered.get(`${t}:${target.vmid}`) ?? 0) > before[i]!)
      )
      stats.roundTrips++
      // each hostile VM is ended soon after its hostile message
      readVmfuzzLog(o.logPath, vmlog, stats)
      for (const [pid, h] of vmlog.hostileAt) {
        if (vmlog.exited.has(pid) || !isAlive(pid)) continue
        if (Date.now() - h.at > END_WITHIN_MS) return yield* fail("dispatchVm", `hostile VM ${pid} (${h.kind}) still running after ${END_WITHIN_MS} ms`)
      }
    })

    const batch = o.batch ?? 500
    let lastProgress = Date.now()
    while (stats.parentMessages < o.parentMessages || stats.vmMessages < o.vmMessages) {
      yield* refill
      for (let n = 0; n < batch && stats.parentMessages < o.parentMessages; ) {
        const msgs = rng.chance(0.05) ? parentStartSequence(rng, gen) : [parentMessage(rng, gen)]
        for (const m of msgs) yield* sendParent(m)
        // a verbose level above 1 only makes the vmm chattier: put it back
        if (msgs.some((m) => m.type === T.IMSG_CTL_VERBOSE)) {
          yield* send({ type: T.IMSG_CTL_VERBOSE, peerid: T.PEERID_NONE, pid: 1, data: new Uint8Array(4) })
        }
        n += msgs.length
      }
      yield* vmm.channel.flush
      yield* check
      if (o.progress !== undefined && Date.now() - lastProgress > 5000) {
        lastProgress = Date.now()
        o.progress(`  parent ${stats.parentMessages}/${o.parentMessages}, VM ${stats.vmMessages}/${o.vmMessages}, hostile VMs ${stats.hostileVms}`)
      }
      if (stats.parentMessages >= o.parentMessages && fuzzVms.size === 0 && stats.vmMessages < o.vmMessages) yield* Effect.sleep("20 millis")
    }

    // every hostile VM, those of the last round too, is ended by the vmm itself (not by the
    // shutdown below, which would end it anyway)
    for (;;) {
      readVmfuzzLog(o.logPath, vmlog, stats)
      const pending = [...vmlog.hostileAt].filter(([pid]) => !vmlog.exited.has(pid) && isAlive(pid))
      if (pending.length === 0) break
      const late = pending.find(([, h]) => Date.now() - h.at > END_WITHIN_MS)
      if (late !== undefined) return yield* fail("dispatchVm", `hostile VM ${late[0]} (${late[1].kind}) still running after ${END_WITHIN_MS} ms`)
      yield* Effect.sleep("20 millis")
    }

    // the end: fd 3 closes, the vmm ends every VM and exits 0
    const children = childrenOf(vmm.pid).map((c) => c.pid)
    yield* vmm.channel.close
    const status = yield* vmm.exit.pipe(Effect.timeout("20 seconds"), Effect.option)
    if (status._tag === "None") return yield* fail("vmm", "did not exit within 20 s of fd 3 closing")
    stats.vmmExit = status.value._tag === "Exited" ? `exit ${status.value.code}` : `signal ${status.value.signal}`
    if (status.value._tag !== "Exited" || status.value.code !== 0) return yield* fail("vmm", `ended with ${stats.vmmExit}`)
    yield* Effect.sleep("200 millis")
    readVmfuzzLog(o.logPath, vmlog, stats)
    const left = children.filter(isAlive)
    if (left.length > 0) return yield* fail("vmm", `VM processes left running: ${left.join(" ")}`)
    stats.crashes = vmm.logs.crashes
  })

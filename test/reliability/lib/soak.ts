/**
 * The soak: a real vmm process (process backend) with C VM programs, driven
 * by a lean parent over fd 3 (vmd's messages, /dev/null for the kernel and
 * tty: the C VM program only checks they are open), while procwatch
 * (scripts/c/procwatch.c) samples the vmm's fds, children, zombies and
 * resident memory every few milliseconds.
 *
 *  1. cycles: start a VM, end it, over and over on a few lanes at once;
 *     the ends rotate through graceful (TERMINATE_VM_REQUEST: VM_REBOOT
 *     with the stop pending, event 0), forced (FORCE: SIGTERM, event 0),
 *     crash (SIGKILL from outside: event EIO) and reboot (SIGHUP: the guest
 *     resets, event EAGAIN, the parent starts it again under the same id,
 *     then stops it gracefully);
 *  2. concurrent: `concurrent` VMs at once, an info listing all of them,
 *     a pause and unpause of some, then all ended with mixed ends.
 *
 * Goals: fd and child counts back to baseline, no zombie outlives 100 ms,
 * resident memory grows < 5% from warm-up to the end of the cycles (the
 * median over cycles 10-20% against the median over the last 10%).
 */
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { Deferred, Duration, Effect, Either, Stream } from "effect"
import type { Scope } from "effect"
import * as T from "../../../src/schema/imsgTypes.ts"
import { Errno } from "../../../src/schema/errno.ts"
import { emptyVmdConfig, encodeVmdConfig } from "../../../src/schema/structs.ts"
import type { ImsgChannel, OutgoingImsg } from "../../../src/services/ImsgChannel.ts"
import { createParams, vmopId } from "../../vmm/wire.ts"
import type { VmmProgram } from "./build.ts"
import { descendants, fdNumbers, rssBytes } from "./proc.ts"
import { devNull, startRealVmm, type RealVmm } from "./realVmm.ts"

export interface SoakOptions {
  readonly program: VmmProgram
  readonly vmprog: string
  readonly procwatch: string
  readonly cycles: number
  readonly concurrent: number
  /** Cycles in flight at once. */
  readonly lanes?: number
  readonly spawn?: "direct" | "spawner" | "node"
  readonly progress?: (line: string) => void
}

export type EndMode = "graceful" | "forced" | "crash" | "reboot"
const MODES: ReadonlyArray<EndMode> = ["graceful", "forced", "crash", "reboot"]

export interface Sample {
  readonly t: number
  readonly fds: number
  readonly children: number
  readonly zombies: number
  readonly rssKb: number
}

export interface SoakReport {
  readonly cycles: number
  readonly byMode: Record<EndMode, number>
  readonly concurrent: number
  readonly cyclesSeconds: number
  readonly cyclesPerSecond: number
  readonly concurrentSeconds: number
  readonly failures: ReadonlyArray<string>
  readonly samples: number
  /** The achieved sampling interval, ms. */
  readonly sampleMs: number
  readonly fds: { readonly baseline: number; readonly max: number; readonly end: number }
  readonly children: { readonly baseline: number; readonly max: number; readonly end: number }
  readonly zombies: {
    readonly seen: number
    readonly maxLifeMs: number
    readonly over100ms: number
    readonly long: ReadonlyArray<Zombie>
    /** Zombies whose reaper was seen asleep beside them in 2+ samples: blocked, not reaping (the C spawner blocked in a send did that). */
    readonly reaperBlocked: number
    /** Where those reapers slept. */
    readonly reaperWchans: string
  }
  readonly rss: { readonly startKb: number; readonly warmKb: number; readonly endCyclesKb: number; readonly peakKb: number; readonly endKb: number; readonly growthPct: number }
  readonly goals: ReadonlyArray<{ readonly goal: string; readonly pass: boolean; readonly detail: string }>
  readonly vmmExit: string
}

export interface Zombie {
  /** Upper bound of its life, ms. */
  readonly life: number
  /** When it was first seen, ms since the watch started. */
  readonly since: number
  readonly kind: string
  /** In how many samples beside it its reaper was asleep (blocked elsewhere), not running or runnable. */
  readonly asleep: number
  /** Where the reaper last slept beside it (/proc/PID/wchan), or "-". */
  readonly wchan: string
}

interface Watch {
  readonly startedAt: number
  readonly samples: Array<Sample>
  readonly zombieLives: Array<number>
  readonly zombies: Array<Zombie>
  end: { samples: number; maxZombieMs: number; zombies: number; maxFds: number; maxChildren: number } | null
  readonly done: Promise<void>
  readonly stop: () => void
}

const watch = (procwatch: string, pid: number): Watch => {
  const child = spawn(procwatch, ["-p", String(pid), "-i", "5", "-r", "100"], { stdio: ["ignore", "pipe", "ignore"] })
  const w: Watch = {
    startedAt: Date.now(),
    samples: [],
    zombieLives: [],
    zombies: [],
    end: null,
    // "close", not "exit": the last lines (the end summary) are read by then
    done: new Promise((resolve) => child.once("close", () => resolve())),
    stop: () => {
      if (child.exitCode === null) child.kill("SIGTERM")
    }
  }
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const f = line.split(" ")
    if (f[0] === "s") w.samples.push({ t: Number(f[1]), fds: Number(f[2]), children: Number(f[3]), zombies: Number(f[4]), rssKb: Number(f[5]) })
    else if (f[0] === "z") {
      w.zombieLives.push(Number(f[2]))
      w.zombies.push({ life: Number(f[2]), since: Number(f[3]), kind: f[4] ?? "?", asleep: Number(f[5] ?? 0), wchan: f[6] ?? "-" })
    }
    else if (f[0] === "end")
      w.end = { samples: Number(f[1]), maxZombieMs: Number(f[2]), zombies: Number(f[3]), maxFds: Number(f[4]), maxChildren: Number(f[5]) }
  })
  return w
}

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true)
const i32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at, true)
const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? 0 : (s[Math.floor(s.length / 2)] as number)
}

interface Result {
  readonly res: number
  readonly id: number
  readonly pid: number
}

/**
 * The parent's side: replies by key, awaited by whoever registered the key
 * first. A reply nobody waits for (an event reported twice, or for no
 * reason) is a failure, as vmd's parent would act on it.
 */
const makeParent = (vmm: RealVmm, fail: (why: string) => void) =>
  Effect.gen(function* () {
    const waiting = new Map<string, Deferred.Deferred<Result>>()
    const infoRows = new Map<number, Array<number>>()
    const expect = (key: string) =>
      Effect.gen(function* () {
        const d = yield* Deferred.make<Result>()
        waiting.set(key, d)
        return Deferred.await(d).pipe(
          Effect.timeoutFail({ duration: Duration.seconds(30), onTimeout: () => new Error(`no ${key} within 30 s`) }),
          Effect.ensuring(Effect.sync(() => waiting.get(key) === d && waiting.delete(key)))
        )
      })
    const resolve = (key: string, r: Result) => {
      const d = waiting.get(key)
      if (d === undefined) return fail(`${key} that nobody waited for (res ${r.res}, id ${r.id}): reported twice, or for no reason`)
      waiting.delete(key)
      Deferred.unsafeDone(d, Effect.succeed(r))
    }
    yield* vmm.channel.messages.pipe(
      Stream.runForEach((m) =>
        Effect.sync(() => {
          m.fd?.closeSync()
          const r: Result =
            m.data.length === 28 ? { res: i32(m.data, 0), id: u32(m.data, 4), pid: i32(m.data, 8) } : { res: m.data.length === 4 ? i32(m.data, 0) : -1, id: 0, pid: 0 }
          switch (m.type) {
            case T.IMSG_VMDOP_START_VM_RESPONSE:
              return resolve(`start:${m.peerid}`, r)
            case T.IMSG_VMDOP_TERMINATE_VM_RESPONSE:
              return resolve(`stop:${m.peerid}`, r)
            case T.IMSG_VMDOP_TERMINATE_VM_EVENT:
              return resolve(`event:${r.id}`, r)
            case T.IMSG_VMDOP_PAUSE_VM_RESPONSE:
              return resolve(`pause:${r.id}`, r)
            case T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE:
              return resolve(`unpause:${r.id}`, r)
            case T.IMSG_VMDOP_GET_INFO_VM_DATA:
              infoRows.set(m.peerid, [...(infoRows.get(m.peerid) ?? []), u32(m.data, 92)])
              return
            case T.IMSG_VMDOP_GET_INFO_VM_END_DATA:
              return resolve(`info:${m.peerid}`, r)
          }
        })
      ),
      Effect.ignore,
      Effect.forkScoped
    )
    const send = (m: OutgoingImsg) => Effect.orDie(vmm.channel.send(m))
    let nextPeer = 1
    return {
      expect,
      send,
      infoRows,
      peer: () => nextPeer++,
      /** config_setvm: REQUEST with a kernel, END with a tty. */
      start: (vmid: number) =>
        Effect.gen(function* () {
          const reply = yield* expect(`start:${vmid}`)
          yield* send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name: `soak-${vmid}` }), fd: devNull("kernel") })
          yield* send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
          return yield* reply
        })
    }
  })

/** "wchan ×count, ..." of the zombies' reapers. */
const wchans = (zs: ReadonlyArray<Zombie>): string => {
  const n = new Map<string, number>()
  for (const z of zs) if (z.asleep > 0) n.set(z.wchan, (n.get(z.wchan) ?? 0) + 1)
  return n.size === 0 ? "-" : [...n].map(([w, k]) => `${w} ×${k}`).join(", ")
}

export const runSoak = (o: SoakOptions): Effect.Effect<SoakReport, Error, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const failures: Array<string> = []
    const fail = (why: string) => {
      if (failures.length < 50) failures.push(why)
    }
    const vmm = yield* startRealVmm({ program: o.program, vmExec: o.vmprog, ...(o.spawn === undefined ? {} : { spawn: o.spawn }) })
    const w = watch(o.procwatch, vmm.pid)
    yield* Effect.addFinalizer(() => Effect.sync(() => w.stop()))
    const parent = yield* makeParent(vmm, fail)
    yield* parent.send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, pid: 1, fd: devNull("/dev/vmm") })
    yield* parent.send({ type: T.IMSG_VMDOP_CONFIG, peerid: T.PEERID_NONE, pid: 1, data: Either.getOrThrow(encodeVmdConfig(emptyVmdConfig())) })
    // an info round trip: the vmm is up and has read both
    const idle = yield* parent.expect(`info:${0x10000}`)
    yield* parent.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 0x10000, pid: 1 })
    yield* idle
    yield* Effect.sleep("200 millis")
    const baselineFds = fdNumbers(vmm.pid).length
    // the vmm's process tree at rest: nothing, or the C spawner helper (the VMs are its children)
    const baselineChildren = descendants(vmm.pid).length
    const startRss = rssBytes(vmm.pid) / 1024

    let nextVmid = 1
    const byMode: Record<EndMode, number> = { graceful: 0, forced: 0, crash: 0, reboot: 0 }
    const expectEvent = (what: string, r: Result, res: number) => {
      if (r.res !== res) fail(`${what}: TERMINATE_VM_EVENT result ${r.res}, want ${res}`)
    }

    const gracefulStop = (vmid: number, force: boolean) =>
      Effect.gen(function* () {
        const peer = parent.peer()
        const reply = yield* parent.expect(`stop:${peer}`)
        const event = yield* parent.expect(`event:${vmid}`)
        yield* parent.send({ type: T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid: peer, pid: 1, data: vmopId(vmid, force ? 0x01 : 0) })
        const r = yield* reply
        if (r.res !== 0) fail(`stop ${vmid}: TERMINATE_VM_RESPONSE ${r.res}`)
        expectEvent(`${force ? "forced" : "graceful"} stop of ${vmid}`, yield* event, 0)
      })

    const cycle = (n: number) =>
      Effect.gen(function* () {
        const vmid = nextVmid++
        const mode = MODES[n % MODES.length] as EndMode
        const s = yield* parent.start(vmid)
        if (s.res !== 0) return fail(`start ${vmid}: ${s.res}`)
        switch (mode) {
          case "graceful":
          case "forced":
            yield* gracefulStop(vmid, mode === "forced")
            break
          case "crash": {
            const event = yield* parent.expect(`event:${vmid}`)
            process.kill(s.pid, "SIGKILL")
            expectEvent(`crash of ${vmid}`, yield* event, Errno.EIO)
            break
          }
          case "reboot": {
            const event = yield* parent.expect(`event:${vmid}`)
            process.kill(s.pid, "SIGHUP")
            expectEvent(`reset of ${vmid}`, yield* event, Errno.EAGAIN)
            // vmd's parent starts a reset guest again, under the same id
            const again = yield* parent.start(vmid)
            if (again.res !== 0 || again.pid === s.pid) return fail(`restart ${vmid}: ${again.res}`)
            yield* gracefulStop(vmid, false)
            break
          }
        }
        byMode[mode]++
      })

    // --- 1. cycles -------------------------------------------------------------
    const lanes = o.lanes ?? 4
    const t0 = Date.now()
    let done = 0
    let warmT = -1
    let lastProgress = Date.now()
    const samplesAt = () => w.samples.length
    let warmSample = 0
    yield* Effect.forEach(
      Array.from({ length: lanes }, (_, lane) => lane),
      (lane) =>
        Effect.gen(function* () {
          for (let n = lane; n < o.cycles; n += lanes) {
            yield* cycle(n)
            done++
            if (warmT < 0 && done >= Math.max(1, Math.floor(o.cycles / 10))) {
              warmT = Date.now() - t0
              warmSample = samplesAt()
            }
            if (o.progress !== undefined && Date.now() - lastProgress > 10_000) {
              lastProgress = Date.now()
              const rate = done / ((Date.now() - t0) / 1000)
              o.progress(`  ${done}/${o.cycles} cycles, ${rate.toFixed(1)}/s, vmm fds ${fdNumbers(vmm.pid).length}, rss ${(rssBytes(vmm.pid) / 1048576).toFixed(1)} MiB`)
            }
          }
        }),
      { concurrency: lanes, discard: true }
    )
    const cyclesSeconds = (Date.now() - t0) / 1000
    const cyclesPhase = [t0 - w.startedAt, Date.now() - w.startedAt] as const
    yield* Effect.sleep("300 millis")
    const endCyclesSample = samplesAt()
    const cycleSamples = w.samples.slice(warmSample, endCyclesSample)
    // medians over a tenth of the cycles each (10-20% and 90-100%): one GC moves a single sample by more than 5%
    const tenth = Math.max(10, Math.floor(cycleSamples.length / 9))
    const warmKb = median(cycleSamples.slice(0, tenth).map((s) => s.rssKb))
    const endCyclesKb = median(cycleSamples.slice(-tenth).map((s) => s.rssKb))

    // --- 2. concurrent ----------------------------------------------------------
    const t1 = Date.now()
    const many: Array<{ vmid: number; pid: number }> = []
    const replies: Array<Effect.Effect<Result, Error>> = []
    const ids: Array<number> = []
    for (let i = 0; i < o.concurrent; i++) {
      const vmid = nextVmid++
      ids.push(vmid)
      replies.push(yield* parent.expect(`start:${vmid}`))
      yield* parent.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name: `many-${vmid}` }), fd: devNull("kernel") })
      yield* parent.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
    }
    for (const [i, reply] of replies.entries()) {
      const r = yield* reply
      if (r.res !== 0) fail(`concurrent start ${ids[i]}: ${r.res}`)
      else many.push({ vmid: ids[i] as number, pid: r.pid })
    }
    const children = descendants(vmm.pid).length - baselineChildren
    if (children !== many.length) fail(`${many.length} VMs running but the vmm has ${children} VM processes below it`)
    const infoPeer = 0x20000
    const info = yield* parent.expect(`info:${infoPeer}`)
    yield* parent.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: infoPeer, pid: 1 })
    const end = yield* info
    const rows = parent.infoRows.get(infoPeer) ?? []
    if (end.res !== 0 || rows.length !== many.length) fail(`info with ${many.length} VMs: END_DATA ${end.res}, ${rows.length} rows`)
    for (const v of many.slice(0, 16)) {
      for (const [type, key] of [[T.IMSG_VMDOP_PAUSE_VM, "pause"], [T.IMSG_VMDOP_UNPAUSE_VM, "unpause"]] as const) {
        const r = yield* parent.expect(`${key}:${v.vmid}`)
        yield* parent.send({ type, peerid: v.vmid, pid: 1, data: vmopId(v.vmid) })
        if ((yield* r).res !== 0) fail(`${key} ${v.vmid}`)
      }
    }
    yield* Effect.forEach(
      many,
      (v, i) =>
        Effect.gen(function* () {
          const mode = MODES[i % 3] as EndMode
          if (mode === "crash") {
            const event = yield* parent.expect(`event:${v.vmid}`)
            process.kill(v.pid, "SIGKILL")
            expectEvent(`crash of ${v.vmid}`, yield* event, Errno.EIO)
          } else yield* gracefulStop(v.vmid, mode === "forced")
        }),
      { concurrency: 32, discard: true }
    )
    const concurrentSeconds = (Date.now() - t1) / 1000
    const concurrentPhase = [t1 - w.startedAt, Date.now() - w.startedAt] as const

    // --- back to baseline? --------------------------------------------------------
    yield* Effect.sleep("500 millis")
    const endFds = fdNumbers(vmm.pid).length
    const endChildren = descendants(vmm.pid).length
    const endKb = rssBytes(vmm.pid) / 1024
    yield* vmm.channel.close
    const status = yield* vmm.exit.pipe(Effect.timeout("20 seconds"), Effect.option)
    const vmmExit = status._tag === "None" ? "did not exit" : status.value._tag === "Exited" ? `exit ${status.value.code}` : `signal ${status.value.signal}`
    yield* Effect.promise(() => w.done)
    if (vmm.logs.crashes > 0) fail(`the vmm logged a defect: ${vmm.recent.filter((l) => /internal error|fatal/.test(l)).join(" | ")}`)

    const maxZ = w.end?.maxZombieMs ?? Math.max(0, ...w.zombieLives)
    const over100 = w.zombieLives.filter((ms) => ms > 100).length
    const long = w.zombies.filter((z) => z.life > 100)
    const inPhase = (p: readonly [number, number]) => long.filter((z) => z.since >= p[0] && z.since <= p[1]).length
    const longKinds = [...new Set(long.map((z) => z.kind))].join("/")
    const growthPct = warmKb > 0 ? ((endCyclesKb - warmKb) / warmKb) * 100 : 0
    const total = byMode.graceful + byMode.forced + byMode.crash + byMode.reboot
    const goals = [
      { goal: "fd count back to baseline", pass: endFds === baselineFds, detail: `baseline ${baselineFds}, end ${endFds}, max ${w.end?.maxFds ?? "?"}` },
      { goal: "child count back to baseline", pass: endChildren === baselineChildren, detail: `baseline ${baselineChildren}, end ${endChildren}, max ${w.end?.maxChildren ?? "?"} (children and grandchildren)` },
      {
        goal: "no zombie outlives 100 ms",
        // and the watcher really sampled (with no sample, no zombie would be seen)
        pass: over100 === 0 && maxZ <= 100 && w.samples.length > 0,
        detail: `${w.zombieLives.length} zombies seen, longest ≤ ${maxZ.toFixed(1)} ms` +
          (long.length === 0 ? "" : `; over 100 ms: ${inPhase(cyclesPhase)} during the cycles, ${inPhase(concurrentPhase)} during the ${o.concurrent} at once (${longKinds}); ` +
            `of those, ${long.filter((z) => z.asleep >= 2).length} with the reaper asleep (blocked) in 2+ samples, the rest with it runnable (waiting for a CPU); ` +
            `where it slept: ${wchans(long)}`)
      },
      { goal: "memory growth < 5% after warm-up", pass: growthPct < 5, detail: `median ${(warmKb / 1024).toFixed(1)} MiB over cycles 10-20%, ${(endCyclesKb / 1024).toFixed(1)} MiB over the last 10% (${growthPct >= 0 ? "+" : ""}${growthPct.toFixed(1)}%)` },
      { goal: "every cycle ended as expected", pass: failures.length === 0 && total === o.cycles, detail: failures.length === 0 ? `${total} cycles` : `${failures.length} failures, first: ${failures[0]}` },
      { goal: "vmm exits 0 when fd 3 closes", pass: vmmExit === "exit 0", detail: vmmExit }
    ]
    return {
      cycles: total,
      byMode,
      concurrent: many.length,
      cyclesSeconds,
      cyclesPerSecond: total / cyclesSeconds,
      concurrentSeconds,
      failures,
      samples: w.end?.samples ?? w.samples.length,
      sampleMs: (w.samples[w.samples.length - 1]?.t ?? 0) / Math.max(1, w.end?.samples ?? w.samples.length),
      fds: { baseline: baselineFds, max: w.end?.maxFds ?? Math.max(...w.samples.map((s) => s.fds)), end: endFds },
      children: { baseline: baselineChildren, max: w.end?.maxChildren ?? Math.max(...w.samples.map((s) => s.children)), end: endChildren },
      zombies: { seen: w.zombieLives.length, maxLifeMs: maxZ, over100ms: over100, long, reaperBlocked: w.zombies.filter((z) => z.asleep >= 2).length, reaperWchans: wchans(w.zombies.filter((z) => z.asleep >= 2)) },
      rss: { startKb: startRss, warmKb, endCyclesKb, peakKb: Math.max(...w.samples.map((s) => s.rssKb)), endKb, growthPct },
      goals,
      vmmExit
    }
  })

export const formatSoak = (r: SoakReport): string =>
  [
    `cycles: ${r.cycles} (graceful ${r.byMode.graceful}, forced ${r.byMode.forced}, crash ${r.byMode.crash}, reboot ${r.byMode.reboot}) in ${r.cyclesSeconds.toFixed(1)} s, ${r.cyclesPerSecond.toFixed(1)} cycles/s`,
    `concurrent: ${r.concurrent} VMs started, listed, paused/unpaused (16), ended in ${r.concurrentSeconds.toFixed(1)} s`,
    `samples: ${r.samples} (asked every 5 ms; ${r.sampleMs.toFixed(1)} ms apart on average, scanning /proc for the VM processes)`,
    `fds: baseline ${r.fds.baseline}, max ${r.fds.max}, end ${r.fds.end}`,
    `processes below the vmm: baseline ${r.children.baseline}, max ${r.children.max}, end ${r.children.end}`,
    `zombies: ${r.zombies.seen} seen, longest ≤ ${r.zombies.maxLifeMs.toFixed(1)} ms, ${r.zombies.over100ms} over 100 ms, ${r.zombies.reaperBlocked} with the reaper asleep beside them in 2+ samples (blocked, not reaping; in ${r.zombies.reaperWchans})`,
    `rss: start ${(r.rss.startKb / 1024).toFixed(1)} MiB, after warm-up ${(r.rss.warmKb / 1024).toFixed(1)}, after cycles ${(r.rss.endCyclesKb / 1024).toFixed(1)} (${r.rss.growthPct >= 0 ? "+" : ""}${r.rss.growthPct.toFixed(1)}%), peak ${(r.rss.peakKb / 1024).toFixed(1)}, end ${(r.rss.endKb / 1024).toFixed(1)}`,
    ...r.goals.map((g) => `${g.pass ? "PASS" : "FAIL"}  ${g.goal}: ${g.detail}`)
  ].join("\n")

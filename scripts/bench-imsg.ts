/**
 * imsg throughput: ImsgChannelNative against a C peer, beside a C → C
 * reference doing the same over a socketpair (scripts/c/bench_imsg.c, built
 * here with gcc). Not a test. Run: npx tsx scripts/bench-imsg.ts [--quick]
 *
 * Each case moves n DATA messages one way after a READY handshake; the clock
 * runs from READY until the last message is known to have arrived (the
 * receiver's ACK, or the receiver's count). Best of 5 runs on each side,
 * ours and C's taking turns (so that both see the same changes of load on a
 * shared machine). MB/s counts wire bytes (16-byte header + payload). Our
 * receiver takes batches with Channel.receive (the batches the vmm's
 * Channel.listen hands over, one fiber wake-up each), reads the first
 * payload byte of each DATA message and then releases it (releaseImsg), as
 * the C receiver reads it and imsg_free()s it, so that the receive slab is
 * reused rather than replaced (src/imsg/parser.ts). The last column
 * is the CPU time (user + system, all threads) of our process per message in
 * its least costly run: a figure that the machine's other load disturbs less
 * than msg/s (and that counts what our GC and helper threads take from the
 * core the C peer needs).
 *
 * Options: --quick (a tenth of the messages, best of 2); --per-message (the
 * sender queues each message with its own `send` Effect instead of one
 * `sendAll` per batch); --only=LABEL|LABEL (only these cases, e.g. "100 B|16 KiB");
 * --dir=send|recv (only ours sending to C, or only C sending to ours);
 * --no-release (our receiver never calls releaseImsg: every payload stays
 * valid, a fresh receive slab per ~512 KiB, as a consumer that keeps views);
 * --vmm-flags (run under the V8 flags of bin/vmm's first line, e.g.
 * --max-semi-space-size=1 --optimize-for-size: the script runs itself again
 * with them).
 *
 * --idle-memory[=ROUNDS]: instead, what an idle open channel costs (the vmm
 * keeps one per VM): open 512 channels on socketpairs, each exchanging ROUNDS
 * (default 1) small messages each way with a raw peer, then compare RSS, JS
 * heap and ArrayBuffer memory after a full GC with before, per channel.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { Effect } from "effect"
import { ImsgChannelNative } from "../src/layers/ImsgChannelNative.ts"
import * as libc from "../src/native/libc.ts"
import { MAX_IMSG_PAYLOAD } from "../src/schema/imsgHeader.ts"
import type { Channel, Imsg } from "../src/services/ImsgChannel.ts"
import { ImsgChannel, releaseImsg } from "../src/services/ImsgChannel.ts"
import { binVmmV8Flags } from "./vmm-flags.mjs"

const here = dirname(fileURLToPath(import.meta.url))

if (process.argv.includes("--vmm-flags") && process.env["BENCH_IMSG_VMM_FLAGS"] === undefined) {
  const flags = binVmmV8Flags(join(here, "..", "bin", "vmm"))
  console.error(`(re-running under bin/vmm's flags: ${flags.join(" ")})`)
  const r = spawnSync(process.execPath, [...flags, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: "inherit",
    env: { ...process.env, BENCH_IMSG_VMM_FLAGS: flags.join(" ") }
  })
  process.exit(r.status ?? 1)
}

const T_READY = 1
const T_GO = 2
const T_ACK = 3
const T_DATA = 100

interface Case {
  readonly label: string
  readonly size: number
  readonly fd: boolean
  readonly n: number
  readonly goal: number
}

const quick = process.argv.includes("--quick")
const perMessage = process.argv.includes("--per-message")
const release = !process.argv.includes("--no-release")
const only = process.argv.find((a) => a.startsWith("--only="))?.slice("--only=".length)
/** --dir=send (ours sending to C) or --dir=recv (C sending to ours): one direction only. */
const onlyDir = process.argv.find((a) => a.startsWith("--dir="))?.slice("--dir=".length)
/** Best of RUNS on each side: the machine may be shared, and the best run is the least disturbed. */
const RUNS = quick ? 2 : 5
const scale = quick ? 0.1 : 1
const cases: ReadonlyArray<Case> = [
  { label: "100 B", size: 100, fd: false, n: 1_000_000, goal: 0.8 },
  { label: "16 KiB", size: MAX_IMSG_PAYLOAD, fd: false, n: 60_000, goal: 0.8 },
  { label: "100 B + fd", size: 100, fd: true, n: 100_000, goal: 0.5 },
  { label: "16 KiB + fd", size: MAX_IMSG_PAYLOAD, fd: true, n: 30_000, goal: 0.5 }
]
  .map((c) => ({ ...c, n: Math.round(c.n * scale) }))
  .filter((c) => only === undefined || only.split("|").includes(c.label))

type Direction = "TS → C" | "C → TS"

const buildDir = mkdtempSync(join(tmpdir(), "bench-imsg-"))
const bin = join(buildDir, "bench_imsg")
execFileSync("gcc", ["-O2", "-o", bin, join(here, "c", "bench_imsg.c")], { stdio: "inherit" })

const devNull = libc.open("/dev/null", libc.O_RDONLY)

/** What the receivers read of the payloads (kept so that the reads are not optimised away). */
let checksum = 0

/**
 * Take messages a batch at a time (Channel.receive), counting DATA and
 * reading the first payload byte of each as the C receiver does, until `stop`.
 */
const receiveUntil = (ch: Channel, stop: (m: Imsg, data: number) => boolean) =>
  Effect.gen(function* () {
    let data = 0
    let sum = 0
    for (;;) {
      const batch = yield* ch.receive
      if (batch === null) return yield* Effect.die(new Error("EOF from the C peer"))
      for (const m of batch) {
        if (m.type === T_DATA) {
          data++
          if (m.data.length > 0) sum += m.data[0] as number
          if (release) releaseImsg(m)
        }
        m.fd?.closeSync()
        if (stop(m, data)) {
          checksum += sum
          return data
        }
      }
    }
  })

/** Like the C sender: queue a batch of about 256 KiB (imsg_compose each), then flush it. */
const sendData = (ch: Channel, c: Case) =>
  Effect.gen(function* () {
    const payload = new Uint8Array(c.size)
    const batch = Math.max(1, Math.floor((256 * 1024) / (c.size + 16)))
    const indices = Array.from({ length: batch }, (_, i) => i)
    const message = () => ({
      type: T_DATA,
      peerid: 0,
      pid: 0,
      data: payload,
      fd: c.fd ? libc.nativeFd(libc.dup(devNull), "bench") : null
    })
    const compose = () => ch.send(message())
    for (let sent = 0; sent < c.n; sent += batch) {
      const k = Math.min(batch, c.n - sent)
      if (perMessage) yield* Effect.forEach(k === batch ? indices : indices.slice(0, k), compose, { discard: true })
      else {
        const msgs = new Array<ReturnType<typeof message>>(k)
        for (let i = 0; i < k; i++) msgs[i] = message()
        yield* ch.sendAll(msgs)
      }
      yield* ch.flush
    }
  })

/** Least CPU time (user + system, s) of our process over the runs of the current row. */
let oursCpu = Infinity

/** One run of ours: seconds. */
const ours = (dir: Direction, c: Case) =>
  Effect.scoped(
    Effect.gen(function* () {
      const svc = yield* ImsgChannel
      const [mine, theirs] = yield* svc.socketpair("bench")
      const args = dir === "TS → C" ? ["recv", String(c.n)] : ["send", String(c.n), String(c.size), c.fd ? "1" : "0"]
      const peer = spawn(bin, args, { stdio: ["ignore", "inherit", "inherit", theirs.num] })
      const exited = new Promise<number | null>((resolve) => peer.on("exit", resolve))
      theirs.closeSync()
      const ch = yield* svc.open(mine)
      yield* receiveUntil(ch, (m) => m.type === T_READY)
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      if (dir === "TS → C") {
        yield* sendData(ch, c)
        yield* receiveUntil(ch, (m) => m.type === T_ACK)
      } else {
        yield* ch.send({ type: T_GO, peerid: 0, pid: 0 })
        yield* receiveUntil(ch, (_, data) => data === c.n)
      }
      const t1 = performance.now()
      const cpu = process.cpuUsage(cpu0)
      oursCpu = Math.min(oursCpu, (cpu.user + cpu.system) / 1e6)
      yield* ch.close
      const code = yield* Effect.promise(() => exited)
      if (code !== 0) return yield* Effect.die(new Error(`C peer exited with ${code}`))
      return (t1 - t0) / 1000
    })
  )

/** One run of the C reference: seconds. */
const reference = (dir: Direction, c: Case): number => {
  const mode = dir === "TS → C" ? "pair-send" : "pair-recv"
  const out = execFileSync(bin, [mode, String(c.n), String(c.size), c.fd ? "1" : "0"], { encoding: "utf8" })
  return Number(out.trim()) / 1e9
}

/** Best of `runs` of each, taking turns: seconds of ours and of C's. */
const bestOfTurns = <E, R>(runs: number, ours: () => Effect.Effect<number, E, R>, theirs: () => number) =>
  Effect.gen(function* () {
    let a = Infinity
    let b = Infinity
    for (let i = 0; i < runs; i++) {
      a = Math.min(a, yield* ours())
      b = Math.min(b, theirs())
    }
    return [a, b] as const
  })

const fmt = (x: number, digits = 0) => x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

const main = Effect.gen(function* () {
  const rows: Array<ReadonlyArray<string>> = [
    ["case", "ours msg/s", "ours MB/s", "C msg/s", "C MB/s", "ratio", "goal", "met?", "ours CPU ns/msg"]
  ]
  for (const c of cases) {
    for (const dir of ["TS → C", "C → TS"] as const) {
      if (onlyDir !== undefined && onlyDir !== (dir === "TS → C" ? "send" : "recv")) continue
      oursCpu = Infinity
      const [oursS, cS] = yield* bestOfTurns(RUNS, () => ours(dir, c), () => reference(dir, c))
      const bytes = c.n * (c.size + 16)
      const ratio = cS / oursS
      const row = [
        `${c.label}, ${dir}`,
        fmt(c.n / oursS),
        fmt(bytes / oursS / 1e6),
        fmt(c.n / cS),
        fmt(bytes / cS / 1e6),
        fmt(ratio, 2),
        `≥ ${c.goal}`,
        ratio >= c.goal ? "yes" : "NO",
        fmt((oursCpu * 1e9) / c.n)
      ]
      rows.push(row)
      console.error(row.join("  "))
    }
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? []
  const line = (r: ReadonlyArray<string>) => `| ${r.map((s, i) => s.padEnd(widths[i] ?? 0)).join(" | ")} |`
  console.log(line(rows[0] ?? []))
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`)
  for (const r of rows.slice(1)) console.log(line(r))
  console.log(
    `\n(checksum ${checksum}) (n per case: ${cases.map((c) => `${c.label} ${c.n}`).join(", ")}; best of ${RUNS}; ${perMessage ? "send per message" : "sendAll per batch"}; ${release ? "received payloads released" : "no release"}; node ${process.version}${
      process.env["BENCH_IMSG_VMM_FLAGS"] !== undefined ? ` ${process.env["BENCH_IMSG_VMM_FLAGS"]}` : ""
    })`
  )
})

/** --idle-memory: per-channel cost of idle open channels. */
const idleMemory = (rounds: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const N = 512
      setFlagsFromString("--expose-gc")
      const gc = runInNewContext("gc") as () => void
      const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0) * 1024
      const snap = () => {
        gc()
        gc()
        const m = process.memoryUsage()
        return { rss: rss(), heap: m.heapUsed, arrayBuffers: m.arrayBuffers }
      }
      const svc = yield* ImsgChannel
      const raw = new libc.ScmBuffer()
      const frame = new Uint8Array(16 + 28)
      new DataView(frame.buffer).setUint32(0, 5, true)
      new DataView(frame.buffer).setUint32(4, frame.length, true)
      const sink = new Uint8Array(4096)
      const exchange = (ch: Channel, peer: number) =>
        Effect.gen(function* () {
          for (let r = 0; r < rounds; r++) {
            if (raw.send(peer, frame, -1) !== frame.length) return yield* Effect.die(new Error("raw send"))
            const got = yield* ch.receive
            if (got === null || got.length !== 1) return yield* Effect.die(new Error("no message"))
            yield* ch.send({ type: 7, peerid: 0, pid: 0, data: new Uint8Array(28) })
            yield* ch.flush
            raw.recv(peer, sink)
          }
        })
      const open = () =>
        Effect.gen(function* () {
          const [mine, theirs] = yield* svc.socketpair("idle")
          const ch = yield* svc.open(mine)
          yield* exchange(ch, theirs.num)
          return [ch, theirs] as const
        })
      // one channel through the same code first, so that compiled code is not counted
      const warm = yield* open()
      yield* warm[0].close
      warm[1].closeSync()
      const before = snap()
      const open512 = []
      for (let i = 0; i < N; i++) open512.push(yield* open())
      yield* Effect.sleep("50 millis")
      const after = snap()
      const per = (k: keyof typeof before) => `${((after[k] - before[k]) / N / 1024).toFixed(1)} KiB`
      console.log(
        `${N} idle channels after ${rounds} round trip(s) each: per channel RSS ${per("rss")}, JS heap ${per("heap")}, ` +
          `ArrayBuffers ${per("arrayBuffers")} (RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB)`
      )
      for (const [, theirs] of open512) theirs.closeSync()
      raw.free()
    })
  )

const idleArg = process.argv.find((a) => a.startsWith("--idle-memory"))
const program = idleArg !== undefined ? idleMemory(Number(idleArg.split("=")[1] ?? 1)) : main
Effect.runPromise(program.pipe(Effect.provide(ImsgChannelNative.layer)))
  .finally(() => {
    libc.close(devNull)
    rmSync(buildDir, { recursive: true, force: true })
  })
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })

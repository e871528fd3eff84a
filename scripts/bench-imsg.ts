/**
 * imsg throughput: ImsgChannelNative against a C peer, beside a C → C
 * reference doing the same over a socketpair (scripts/c/bench_imsg.c, built
 * here with gcc). Not a test. Run: npx tsx scripts/bench-imsg.ts [--quick]
 *
 * Each case moves n DATA messages one way after a READY handshake; the clock
 * runs from READY until the last message is known to have arrived (the
 * receiver's ACK, or the receiver's count). Best of 3 runs on each side.
 * MB/s counts wire bytes (16-byte header + payload).
 *
 * Options: --quick (a tenth of the messages, best of 2); --per-message (the
 * sender queues each message with its own `send` Effect instead of one
 * `sendAll` per batch); --only=LABEL|LABEL (only these cases, e.g. "100 B|16 KiB").
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Chunk, Effect, Option, Stream } from "effect"
import { ImsgChannelNative } from "../src/layers/ImsgChannelNative.ts"
import * as libc from "../src/native/libc.ts"
import { MAX_IMSG_PAYLOAD } from "../src/schema/imsgHeader.ts"
import type { Channel, Imsg } from "../src/services/ImsgChannel.ts"
import { ImsgChannel } from "../src/services/ImsgChannel.ts"

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
const only = process.argv.find((a) => a.startsWith("--only="))?.slice("--only=".length)
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

const here = dirname(fileURLToPath(import.meta.url))
const buildDir = mkdtempSync(join(tmpdir(), "bench-imsg-"))
const bin = join(buildDir, "bench_imsg")
execFileSync("gcc", ["-O2", "-o", bin, join(here, "c", "bench_imsg.c")], { stdio: "inherit" })

const devNull = libc.open("/dev/null", libc.O_RDONLY)

/** Pull messages, counting DATA, until one of type `type` (or `count` DATA messages) arrived. */
const receiveUntil = (
  pull: Effect.Effect<Chunk.Chunk<Imsg>, Option.Option<unknown>>,
  stop: (m: Imsg, data: number) => boolean
) =>
  Effect.gen(function* () {
    let data = 0
    for (;;) {
      const chunk = yield* pull
      for (const m of chunk) {
        if (m.type === T_DATA) data++
        m.fd?.closeSync()
        if (stop(m, data)) return data
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
      const pull = yield* Stream.toPull(ch.messages)
      yield* receiveUntil(pull, (m) => m.type === T_READY)
      const t0 = performance.now()
      if (dir === "TS → C") {
        yield* sendData(ch, c)
        yield* receiveUntil(pull, (m) => m.type === T_ACK)
      } else {
        yield* ch.send({ type: T_GO, peerid: 0, pid: 0 })
        yield* receiveUntil(pull, (_, data) => data === c.n)
      }
      const t1 = performance.now()
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

const best = <E, R>(runs: number, f: () => Effect.Effect<number, E, R>) =>
  Effect.gen(function* () {
    let b = Infinity
    for (let i = 0; i < runs; i++) b = Math.min(b, yield* f())
    return b
  })

const fmt = (x: number, digits = 0) => x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

const main = Effect.gen(function* () {
  const rows: Array<ReadonlyArray<string>> = [
    ["case", "ours msg/s", "ours MB/s", "C msg/s", "C MB/s", "ratio", "goal", "met?"]
  ]
  for (const c of cases) {
    for (const dir of ["TS → C", "C → TS"] as const) {
      const oursS = yield* best(RUNS, () => ours(dir, c))
      const cS = yield* best(RUNS, () => Effect.sync(() => reference(dir, c)))
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
        ratio >= c.goal ? "yes" : "NO"
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
    `\n(n per case: ${cases.map((c) => `${c.label} ${c.n}`).join(", ")}; best of ${RUNS}; ${perMessage ? "send per message" : "sendAll per batch"}; node ${process.version})`
  )
})

Effect.runPromise(main.pipe(Effect.provide(ImsgChannelNative.layer)))
  .finally(() => {
    libc.close(devNull)
    rmSync(buildDir, { recursive: true, force: true })
  })
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })

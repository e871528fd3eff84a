/**
 * Spawn latency: ProcessNode vs ProcessSpawner (waiting for the exec, and
 * early: back at the fork, as src/vmm/startVm.ts spawns VMs) vs
 * ProcessDirect (posix_spawn from this process, exits from pidfds; Linux)
 * vs a C reference (fork+exec and posix_spawn from a small C program, same run).
 *
 *   npx tsx scripts/bench-spawn.ts [ITERATIONS=300] [WARMUP=20]
 *
 * Every variant starts the same tiny child (scripts/c/spawn_ref.c) with what
 * vmm gives a VM (own session, 0-2 on /dev/null, one fd at its number) and
 * measures, per iteration:
 *   pid    request -> pid known to the caller
 *   byte   request -> first byte the child writes on a pipe
 *   shake  request -> handshake done: the parent writes 13 KB on a
 *          socketpair (vmm's struct vmd_vm + local prefix), the child reads
 *          them and answers 4 bytes (vmm_start_vm's START_VM_END ->
 *          START_VM_RESPONSE path; Node variants use ImsgChannelNative's
 *          writeRaw/readRaw, as src/vmm/startVm.ts does)
 * and prints p50 / p90 / mean in ms, and each variant's ratio to C
 * fork+exec. The variants take turns (ROUND iterations each), so that a
 * change in the machine's load hits them alike. Not a test: run it by hand.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Context, Effect, Layer } from "effect"
import { ImsgChannelNative } from "../src/layers/ImsgChannelNative.ts"
import * as ProcessDirect from "../src/layers/ProcessDirect.ts"
import * as ProcessNode from "../src/layers/ProcessNode.ts"
import * as ProcessSpawner from "../src/layers/ProcessSpawner.ts"
import * as libc from "../src/native/libc.ts"
import { Process } from "../src/services/Process.ts"
import type { ProcessService } from "../src/services/Process.ts"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const N = Number(process.argv[2] ?? 300)
const WARMUP = Number(process.argv[3] ?? 20)
const SHAKE = 13312

type Metric = "pid" | "byte" | "shake"
type Samples = Record<Metric, Array<number>>
const empty = (): Samples => ({ pid: [], byte: [], shake: [] })

const pipe2 = libc.self.func("int pipe2(_Out_ int *fds, int flags)")
const pipe = (): readonly [number, number] => {
  const fds = [-1, -1]
  if ((pipe2(fds, libc.O_CLOEXEC) as number) !== 0) throw new Error("pipe2")
  return [fds[0] ?? -1, fds[1] ?? -1]
}

const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-bench-"))
const ref = join(dir, "spawn_ref")
const spawner = join(dir, "spawner")

/** `n` iterations of each C method, after `warmup` dropped ones. */
const cReference = (n: number, warmup: number): Map<string, Samples> => {
  const out = execFileSync(ref, ["bench", String(n + warmup), ref], { encoding: "utf8", maxBuffer: 1 << 26 })
  const by = new Map<string, Samples>()
  const seen = new Map<string, number>()
  for (const line of out.trim().split("\n")) {
    const [method = "", pid = "", byte = "", shake = ""] = line.split(" ")
    const k = seen.get(method) ?? 0
    seen.set(method, k + 1)
    if (k < warmup) continue
    const s = by.get(method) ?? empty()
    by.set(method, s)
    s.pid.push(Number(pid))
    s.byte.push(Number(byte))
    s.shake.push(Number(shake))
  }
  return by
}

/** `n` iterations on one Process service, appended to `s` after `warmup` dropped ones. */
const nodeRound = (proc: ProcessService, early: boolean, s: Samples, n: number, warmup: number): Effect.Effect<void, unknown> =>
  Effect.gen(function* () {
    const imsg = ImsgChannelNative.service
    const msg = new Uint8Array(SHAKE).fill(0x5a)
    const one = new Uint8Array(1)
    for (let i = 0; i < n + warmup; i++) {
      const [r, w] = pipe()
      const wfd = libc.nativeFd(w, "pipe")
      const t0 = performance.now()
      const c = yield* proc.spawn({ command: ref, args: ["child", "byte", String(w)], fds: [wfd], stdio: "null", early })
      const t1 = performance.now()
      if (libc.read(r, one) !== 1) throw new Error("no byte")
      const t2 = performance.now()
      yield* c.exit
      libc.close(r)
      wfd.closeSync()

      const [ours, theirs] = yield* imsg.socketpair("bench")
      const t3 = performance.now()
      const c2 = yield* proc.spawn({
        command: ref,
        args: ["child", "shake", String(theirs.num)],
        fds: [theirs],
        stdio: "null",
        early
      })
      theirs.closeSync()
      yield* imsg.writeRaw(ours, msg, 5000)
      yield* imsg.readRaw(ours, 4, 5000)
      const t4 = performance.now()
      yield* c2.exit
      ours.closeSync()
      if (i >= warmup) {
        s.pid.push(t1 - t0)
        s.byte.push(t2 - t0)
        s.shake.push(t4 - t3)
      }
    }
  })

const pct = (xs: ReadonlyArray<number>, p: number): number => {
  const a = [...xs].sort((x, y) => x - y)
  return a[Math.min(a.length - 1, Math.floor(a.length * p))] ?? NaN
}
const mean = (xs: ReadonlyArray<number>): number => xs.reduce((x, y) => x + y, 0) / xs.length
const f = (x: number): string => x.toFixed(3)

/** Iterations per variant per round: the variants take turns, so load changes hit them alike. */
const ROUND = 10

const main = Effect.gen(function* () {
  execFileSync("cc", ["-O2", "-o", ref, join(root, "scripts", "c", "spawn_ref.c")])
  execFileSync(process.execPath, [join(root, "scripts", "build-spawner.mjs"), "--strict", "--out", spawner])
  const node: Array<readonly [string, Layer.Layer<Process, unknown>, boolean]> = [
    ["ProcessNode", ProcessNode.layer, false],
    ["ProcessSpawner", ProcessSpawner.layerWith({ binary: spawner }), false],
    ["ProcessSpawner (early)", ProcessSpawner.layerWith({ binary: spawner }), true],
    ...(ProcessDirect.directAvailable()
      ? [["ProcessDirect", ProcessDirect.layer, false] as const]
      : (console.log(`ProcessDirect skipped: ${ProcessDirect.directUnavailable() ?? ""}`), []))
  ]
  const services = yield* Effect.forEach(node, ([name, layer, early]) =>
    Layer.build(layer).pipe(Effect.map((ctx) => [name, Context.get(ctx, Process), early] as const))
  )
  const results = new Map<string, Samples>()
  const add = (name: string, s: Samples): void => {
    const to = results.get(name) ?? empty()
    results.set(name, to)
    for (const m of ["pid", "byte", "shake"] as const) to[m].push(...s[m])
  }
  for (let done = 0, round = 0; done < N; done += ROUND, round++) {
    const n = Math.min(ROUND, N - done)
    const warm = round === 0 ? WARMUP : 0
    const c = cReference(n, warm)
    add("C fork+exec", c.get("fork") ?? empty())
    add("C posix_spawn", c.get("posix_spawn") ?? empty())
    for (const [name, proc, early] of services) {
      const s = empty()
      yield* nodeRound(proc, early, s, n, warm)
      add(name, s)
    }
  }
  const order = ["C fork+exec", "C posix_spawn", ...services.map(([name]) => name)]
  const base = results.get("C fork+exec") ?? empty()
  const rss = Math.round(process.memoryUsage().rss / (1 << 20))
  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")
  console.log(`spawn latency, ms: ${N} iterations per variant after ${WARMUP} warm-up, in turns of ${ROUND}`)
  console.log(`node RSS ${rss} MB, load average ${load}`)
  console.log("")
  console.log("| variant | metric | p50 | p90 | mean | p50 / C fork | mean / C fork |")
  console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
  for (const name of order) {
    const s = results.get(name)
    if (s === undefined) continue
    for (const m of ["pid", "byte", "shake"] as const) {
      const xs = s[m]
      const p50 = (pct(xs, 0.5) / pct(base[m], 0.5)).toFixed(2)
      const avg = (mean(xs) / mean(base[m])).toFixed(2)
      console.log(`| ${name} | ${m} | ${f(pct(xs, 0.5))} | ${f(pct(xs, 0.9))} | ${f(mean(xs))} | ${p50} | ${avg} |`)
    }
  }
}).pipe(Effect.scoped)

Effect.runPromise(main)
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }))

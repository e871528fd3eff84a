/**
 * Microbenchmark of the wire struct codecs (src/schema/structs.ts): µs per
 * encode and per decode of every struct, warm, median of several timed runs.
 *
 *   npx tsx scripts/bench-codec.ts [--runs N] [--ms N] [--only vmd_vm,vmop_result] [--no-reference]
 *
 * Each struct is encoded from a deterministic sample value built from its
 * layout table (every number set, every string a typical length, every byte
 * array filled: the "full" rows), and decoded from that encoding. The two
 * big structs are also measured with what a VM start really carries (the
 * "typical VM" rows: one memory range, two disks, one nic, everything else
 * zero, as src/parent/spec.ts and src/vmm/vmdVm.ts build them). The int
 * readers (imsgIntRead, ...) are measured too. "alloc" is the floor every
 * encode pays: the fresh zeroed Uint8Array(sizeof) it returns (above 64
 * bytes V8 allocates it outside the JS heap, which costs about a microsecond
 * on this machine whatever the size). The
 * "ref" columns are the generic table interpreter the codecs replaced
 * (test/schema/reference/codec.ts), measured in the same run on the same
 * values, so the speed-up can be read off one table on a noisy machine. This is a pure CPU benchmark with no C
 * reference: compare figures across builds on the same machine, in the same
 * load (the load average is printed).
 */
import { cpus, loadavg } from "node:os"
import { performance } from "node:perf_hooks"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { Either } from "effect"
import type { Codec, SchemaError } from "../src/schema/codec.ts"
import { defineStruct, field, i32, u32 } from "../src/schema/layout.ts"
import type { AnyLayout, FieldType } from "../src/schema/layout.ts"
import * as S from "../src/schema/structs.ts"
import { referenceCodec } from "../test/schema/reference/codec.ts"

const argv = process.argv.slice(2)
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : undefined
}
const RUNS = Number(opt("--runs") ?? 11)
const RUN_MS = Number(opt("--ms") ?? 40)
const ONLY = opt("--only")?.split(",")
const REFERENCE = !argv.includes("--no-reference")

// A full GC before every timed run, so one case's garbage is not billed to the next.
setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

// ---------------------------------------------------------------------------
// Sample values

/** A small deterministic PRNG (mulberry32), so every run encodes the same values. */
const rng = (() => {
  let s = 0x9e3779b9
  return () => {
    s = (s + 0x6d2b79f5) | 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
})()
const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1))

/** A typical string: a path-like or name-like value, at most the field's capacity. */
const sampleString = (max: number): string => {
  const n = Math.min(max, int(4, 24))
  let s = ""
  for (let i = 0; i < n; i++) s += String.fromCharCode(int(0x61, 0x7a))
  return s
}

const sampleOf = (t: FieldType): unknown => {
  switch (t.kind) {
    case "u8":
      return int(0, 0xff)
    case "u32":
      return int(0, 0xffffffff)
    case "i32":
      return int(-0x80000000, 0x7fffffff)
    case "u64":
      return BigInt(int(0, 0xffffffff)) * 0x10000n + BigInt(int(0, 0xffff))
    case "i64":
      return BigInt(int(-0x7fffffff, 0x7fffffff)) * 0x10000n
    case "char":
      return sampleString(t.terminated ? t.size - 1 : t.size)
    case "bytes":
      return Uint8Array.from({ length: t.size }, () => int(0, 0xff))
    case "struct":
      return sampleStruct(t.layout)
    case "array":
      return Array.from({ length: t.count }, () => sampleOf(t.elem))
    case "opaque":
    case "pad":
      return undefined
  }
}

const sampleStruct = (l: AnyLayout): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const f of l.fields) if (f.type.kind !== "pad" && f.type.kind !== "opaque") out[f.name] = sampleOf(f.type)
  return out
}

// ---------------------------------------------------------------------------
// Timing

/**
 * µs per call of `f` over RUNS runs of about RUN_MS each, after a warm-up:
 * the median and the best run. Time is this process's CPU time (user + system, all threads, so
 * GC included), not wall time: on a shared machine the wall clock also counts
 * the time other jobs hold the CPU.
 */
const cpuMs = (): number => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}
interface Figure {
  readonly median: number
  readonly best: number
}
const measure = (f: () => unknown): Figure => {
  let sink = 0
  const call = (n: number): void => {
    for (let i = 0; i < n; i++) if (f() !== undefined) sink++
  }
  // Warm-up (lets the JIT optimise) and calibration: iterations per run.
  let n = 1
  for (;;) {
    const t0 = performance.now()
    call(n)
    const dt = performance.now() - t0
    if (dt >= RUN_MS / 4) {
      n = Math.max(1, Math.round((n * RUN_MS) / Math.max(dt, 0.001)))
      break
    }
    n *= 2
  }
  call(n)
  const samples: Array<number> = []
  for (let r = 0; r < RUNS; r++) {
    gc()
    const t0 = cpuMs()
    call(n)
    samples.push(((cpuMs() - t0) * 1000) / n)
  }
  if (sink < 0) console.log(sink)
  samples.sort((a, b) => a - b)
  return { median: samples[Math.floor(samples.length / 2)] ?? NaN, best: samples[0] ?? NaN }
}

// ---------------------------------------------------------------------------
// Cases

const CODECS = S.ALL_CODECS

const must = <A>(r: Either.Either<A, SchemaError>, what: string): A => {
  if (Either.isLeft(r)) throw new Error(`${what}: ${r.left.field}: ${r.left.message}`)
  return r.right
}

const rows: Array<ReadonlyArray<string | number>> = []
const num = (us: number): string => (us < 10 ? us.toFixed(3) : us < 100 ? us.toFixed(2) : us.toFixed(1))
/** "median (best)". */
const fmt = (x: Figure): string => `${num(x.median)} (${num(x.best)})`

console.log(`bench-codec: node ${process.version}, ${cpus().length} cpus, load ${loadavg().map((x) => x.toFixed(2)).join(" ")}`)
console.log(`CPU µs per call: median (best) of ${RUNS} runs of ~${RUN_MS} ms each\n`)

const allocFloor = new Map<number, string>()
const alloc = (size: number): string => {
  const known = allocFloor.get(size)
  if (known !== undefined) return known
  const us = fmt(measure(() => new Uint8Array(size)))
  allocFloor.set(size, us)
  return us
}

const run = <A>(label: string, codec: Codec<A>, value: A): void => {
  const bytes = must(codec.encode(value), `encode ${label}`)
  // The sample must round-trip, or the figures are for an error path.
  must(codec.decode(bytes), `decode ${label}`)
  const enc = measure(() => codec.encode(value))
  const dec = measure(() => codec.decode(bytes))
  const row = [label, codec.sizeof, fmt(enc), fmt(dec), alloc(codec.sizeof)]
  if (REFERENCE) {
    const ref = referenceCodec(codec.layout)
    row.push(fmt(measure(() => ref.encode(value as never))), fmt(measure(() => ref.decode(bytes))))
  }
  rows.push(row)
}

/** A VM start as the parent sends it (src/parent/spec.ts createParams): one memory range, two disks, one nic. */
const typicalParams = (): S.VmopCreateParams => {
  const e = S.emptyVmopCreateParams()
  return {
    ...e,
    vmc_id: 0,
    vmc_name: "web-01",
    vmc_owner: { uid: 0, gid: -1n },
    vmc_flags: 0x1f,
    vmc_ncpus: 1n,
    vmc_nmemranges: 0n,
    vmc_memranges: e.vmc_memranges.map((r, i) => (i === 0 ? { ...r, vmr_size: 512n * 1024n * 1024n } : r)),
    vmc_kernel: 5,
    vmc_ndisks: 2n,
    vmc_disks: ["/var/vm/web-01.qcow2", "/var/vm/data.img", "", ""],
    vmc_disktypes: [2, 1, 0, 0],
    vmc_diskbases: [1, 1, 0, 0],
    vmc_nnics: 1n,
    vmc_ifnames: ["tap0", "", "", ""],
    vmc_ifswitch: ["uplink", "", "", ""],
    vmc_macs: [Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34), new Uint8Array(6), new Uint8Array(6), new Uint8Array(6)],
    vmc_insowner: { uid: 0, gid: -1n }
  }
}

/** The struct vmd_vm src/vmm/vmdVm.ts builds for that VM. */
const typicalVmdVm = (): S.VmdVm => {
  const e = S.emptyVmdVm()
  return {
    ...e,
    vm_params: typicalParams(),
    vm_pid: 4242,
    vm_vmid: 1,
    vm_peerid: 0xffffffff,
    vm_kernel: 5,
    vm_cdrom: -1,
    vm_disks: [
      [6, -1, -1, -1],
      [7, -1, -1, -1],
      [-1, -1, -1, -1],
      [-1, -1, -1, -1]
    ],
    vm_ifs: e.vm_ifs.map((vif, i) => ({ ...vif, vif_fd: i === 0 ? 8 : -1 })),
    vm_tty: 9,
    vm_state: 1
  }
}

for (const codec of CODECS) {
  const name = codec.layout.name
  if (ONLY !== undefined && !ONLY.includes(name)) continue
  const big = name === "vmop_create_params" || name === "vmd_vm"
  run(big ? `${name} (full)` : name, codec, sampleStruct(codec.layout))
  if (name === "vmop_create_params") run(`${name} (typical VM)`, S.VmopCreateParamsCodec, typicalParams())
  if (name === "vmd_vm") run(`${name} (typical VM)`, S.VmdVmCodec, typicalVmdVm())
}

// The int readers; "ref" is what they were: the interpreted 4-byte struct, then .value.
const intRef = referenceCodec(defineStruct("int", 4, 4, [field("value", 0, i32)]))
const uintRef = referenceCodec(defineStruct("unsigned int", 4, 4, [field("value", 0, u32)]))
const four = Uint8Array.of(1, 2, 3, 0xff)
const ints: ReadonlyArray<readonly [string, () => unknown, () => unknown, () => unknown, () => unknown]> = [
  [
    "int (encodeImsgInt / imsgIntRead)",
    () => S.encodeImsgInt(-12345),
    () => S.imsgIntRead(four),
    () => intRef.encode({ value: -12345 }),
    () => Either.map(intRef.decode(four), (x) => x.value)
  ],
  [
    "unsigned int (encodeImsgUint / imsgUintRead)",
    () => S.encodeImsgUint(0xfffffff0),
    () => S.imsgUintRead(four),
    () => uintRef.encode({ value: 0xfffffff0 }),
    () => Either.map(uintRef.decode(four), (x) => x.value)
  ]
]
for (const [name, enc, dec, refEnc, refDec] of ints) {
  if (ONLY !== undefined && !ONLY.some((o) => name.startsWith(o))) continue
  for (const f of [enc, dec, refEnc, refDec]) if (!Either.isRight(f() as Either.Either<unknown, SchemaError>)) throw new Error(`${name}: sample failed`)
  rows.push([name, 4, fmt(measure(enc)), fmt(measure(dec)), alloc(4), ...(REFERENCE ? [fmt(measure(refEnc)), fmt(measure(refDec))] : [])])
}

const head = ["struct", "sizeof", "encode µs", "decode µs", "alloc µs", ...(REFERENCE ? ["ref encode µs", "ref decode µs"] : [])]
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
const line = (cells: ReadonlyArray<string | number>): string =>
  `| ${cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i] ?? 0) : String(c).padStart(widths[i] ?? 0))).join(" | ")} |`
console.log(line(head))
console.log(`|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`)
for (const r of rows) console.log(line(r))

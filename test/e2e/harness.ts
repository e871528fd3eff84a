/**
 * End-to-end tests: the vmd parent stand-in (src/parent), `bin/vmm -P vmm
 * --backend process` as built by `npm run build`, and real VM processes —
 * our Node one (bin/vmm -V), c/vmprog.c, or test/e2e/c/vmspy.c (an
 * instrumented C VM that reports what it was handed).
 *
 * Every test gets a token that goes into the environment of the vmm it
 * starts, and from there into every VM process. When the test is over, no
 * process may carry the token (alive or not yet reaped, wherever it was
 * reparented) and this test process may have no new descendant: `e2e`
 * asserts both after the test's scope has closed.
 *
 * /proc helpers are in proc.ts, the raw parent (single messages) in raw.ts.
 */
import { it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import type { Scope } from "effect"
import { execFile } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, expect } from "vitest"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import type { VmdParentOptions } from "../../src/parent/parent.ts"
import type { VmSpec } from "../../src/parent/spec.ts"
import type { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { buildDir, compileVmprog, repoRoot } from "../../src/vm/build.ts"
import { descendants, describeProc, TOKEN_VARIABLE, tokenProcesses } from "./proc.ts"

// ---------------------------------------------------------------------------
// The programs and the media, once per test file

export interface Fixture {
  readonly dir: string
  /** c/vmprog.c */
  readonly vmprog: string
  /** test/e2e/c/vmspy.c */
  readonly spy: string
  readonly kernel: string
  readonly cdrom: string
  /** Two disks: three layers and two layers, top image first. */
  readonly disks: ReadonlyArray<ReadonlyArray<string>>
}

/** bin/vmm runs dist/vmm.mjs: the tests exercise what `npm run build` made. */
export const binVmmPath = join(repoRoot, "bin", "vmm")

const compileSpy = async (dir: string): Promise<string> => {
  const out = join(dir, "vmspy")
  await promisify(execFile)("gcc", ["-O2", "-Wall", "-Wextra", "-o", out, join(repoRoot, "test/e2e/c/vmspy.c")])
  return out
}

/** Registers beforeAll/afterAll for a test file; the getter is valid inside tests. */
export const useFixture = (name: string): (() => Fixture) => {
  let fixture: Fixture | null = null
  beforeAll(async () => {
    if (!existsSync(join(repoRoot, "dist", "vmm.mjs"))) throw new Error("dist/vmm.mjs is missing: run `npm run build` first")
    const dir = buildDir(`e2e-${name}`)
    const [vmprog, spy] = await Promise.all([compileVmprog(dir), compileSpy(dir)])
    const file = (base: string, content: string) => {
      const path = join(dir, base)
      writeFileSync(path, content)
      return path
    }
    fixture = {
      dir,
      vmprog,
      spy,
      kernel: file("bsd", "kernel image\n"),
      cdrom: file("install.iso", "cdrom image\n"),
      disks: [
        [file("disk0.qcow2", "disk0 top"), file("disk0-base1.qcow2", "disk0 base 1"), file("disk0-base2.qcow2", "disk0 base 2")],
        [file("disk1.qcow2", "disk1 top"), file("disk1-base.qcow2", "disk1 base")]
      ]
    }
  })
  afterAll(() => {
    if (fixture !== null) rmSync(fixture.dir, { recursive: true, force: true })
  })
  return () => {
    if (fixture === null) throw new Error("fixture used outside a test")
    return fixture
  }
}

/** bin/vmm starting its VM processes with posix_spawn and pidfds, the C spawner helper (its default), or Node's spawn. */
export type SpawnMethod = "direct" | "spawner" | "node"
export const SPAWN_METHODS: ReadonlyArray<SpawnMethod> = ["direct", "spawner", "node"]
export const withSpawn = (method: SpawnMethod): Partial<VmdParentOptions> => ({
  command: { command: binVmmPath, args: ["--spawn", method] }
})

/** Everything vmd may give a VM: kernel, cdrom, two layered disks, two nics (and the pty the parent adds). */
export const fullSpec = (f: Fixture, name: string, more: Partial<VmSpec> = {}): VmSpec => ({
  name,
  kernel: f.kernel,
  cdrom: f.cdrom,
  disks: f.disks,
  nics: 2,
  ...more
})

/** The least a VM needs: a kernel (and the pty). */
export const smallSpec = (f: Fixture, name: string): VmSpec => ({ name, kernel: f.kernel })

// ---------------------------------------------------------------------------
// Waiting (real time)

export const eventually = (check: () => boolean, what: string, ms = 5000): Effect.Effect<void> =>
  Effect.gen(function* () {
    const until = Date.now() + ms
    while (!check()) {
      if (Date.now() > until) return yield* Effect.die(new Error(`never happened within ${ms} ms: ${what}`))
      yield* Effect.sleep("20 millis")
    }
  })

// ---------------------------------------------------------------------------
// A test run

export interface Run {
  readonly token: string
  /** Where vmspy writes its reports for this run. */
  readonly spyDir: string
  /** Environment for the vmm (and through it, every VM). */
  readonly env: Readonly<Record<string, string>>
  /** Stand-in options: bin/vmm, output ignored, the run's environment. */
  readonly options: (extra?: Partial<VmdParentOptions>) => VmdParentOptions
}

let runs = 0

const newRun = (f: Fixture): Run => {
  const token = `${process.pid}-${++runs}-${Math.random().toString(36).slice(2, 8)}`
  const spyDir = join(f.dir, `spy-${runs}`)
  mkdirSync(spyDir, { recursive: true })
  const env = { [TOKEN_VARIABLE]: token, VMM_E2E_SPY_DIR: spyDir }
  return {
    token,
    spyDir,
    env,
    options: (extra = {}) => ({
      output: "ignore",
      timeoutMs: 20_000,
      graceMs: 5_000,
      ...extra,
      env: { ...env, ...extra.env }
    })
  }
}

/** What is still around after a run: processes with the token, new descendants of this process. */
const leftovers = (token: string, before: ReadonlySet<number>): ReadonlyArray<string> => {
  const stray = new Set([...tokenProcesses(token), ...descendants().filter((pid) => !before.has(pid))])
  return [...stray].map(describeProc)
}

/**
 * An end-to-end test: `body` runs in its own scope with the native imsg
 * layer; once the scope has closed (which ends the vmm), nothing the test
 * started may remain. A failure of the body is reported first.
 */
export const e2e = (
  fixture: () => Fixture,
  name: string,
  body: (run: Run) => Effect.Effect<void, unknown, Scope.Scope | ImsgChannel>,
  timeoutMs = 60_000
) =>
  it.live(
    name,
    () =>
      Effect.gen(function* () {
        const run = newRun(fixture())
        const before = new Set(descendants())
        const result = yield* Effect.exit(Effect.scoped(body(run)).pipe(Effect.provide(ImsgChannelNative.layer)))
        let left = leftovers(run.token, before)
        for (let waited = 0; left.length > 0 && waited < 5000; waited += 50) {
          yield* Effect.sleep("50 millis")
          left = leftovers(run.token, before)
        }
        if (Exit.isFailure(result)) return yield* result
        expect(left, "processes left behind").toEqual([])
      }),
    timeoutMs
  )

// ---------------------------------------------------------------------------
// vmspy's reports

export interface SpyReport {
  readonly V: number
  readonly i: number
  readonly j: number
  readonly vmid: number
  readonly name: string
  /** struct vmd_vm's vm_pid: the VM process's own pid, as vmm.c writes it after its fork. */
  readonly vmpid: number
  readonly kernel: number
  readonly cdrom: number
  /** [disk, layer, fd] */
  readonly disks: ReadonlyArray<readonly [number, number, number]>
  /** [nic, fd] */
  readonly ifs: ReadonlyArray<readonly [number, number]>
  readonly tty: number
}

export const spyReport = (run: Run, pid: number): SpyReport => {
  const lines = readFileSync(join(run.spyDir, String(pid)), "latin1").trim().split("\n")
  const one = (key: string) => {
    const line = lines.find((l) => l.startsWith(`${key} `))
    if (line === undefined) throw new Error(`spy report of ${pid} has no ${key}`)
    return line.slice(key.length + 1)
  }
  const nums = (key: string) =>
    lines.filter((l) => l.startsWith(`${key} `)).map((l) => l.split(" ").slice(1).map(Number))
  return {
    V: Number(one("V")),
    i: Number(one("i")),
    j: Number(one("j")),
    vmid: Number(one("vmid")),
    name: one("name"),
    vmpid: Number(one("vmpid")),
    kernel: Number(one("kernel")),
    cdrom: Number(one("cdrom")),
    disks: nums("disk").map(([d, l, n]) => [d ?? -1, l ?? -1, n ?? -1] as const),
    ifs: nums("if").map(([i, n]) => [i ?? -1, n ?? -1] as const),
    tty: Number(one("tty"))
  }
}

/** The imsgs a spy received: [type, peerid, pid, len, int payload]. */
export const spyMessages = (run: Run, pid: number): ReadonlyArray<ReadonlyArray<number>> => {
  const path = join(run.spyDir, `${pid}.log`)
  if (!existsSync(path)) return []
  return readFileSync(path, "latin1")
    .trim()
    .split("\n")
    .filter((l) => l.startsWith("msg "))
    .map((l) => l.split(" ").slice(1).map(Number))
}

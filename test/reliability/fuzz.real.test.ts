/**
 * Fuzzing a real vmm process (the current sources, bundled as bin/vmm runs
 * them) over real sockets with the process backend: a hostile parent on
 * fd 3 and hostile VM processes (scripts/c/vmfuzz.c) beside innocent C VMs
 * (short run; the long one is scripts/fuzz.ts). FUZZ_SEED reproduces one.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { rmSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import { buildPrograms, bundledVmm, type Programs, type VmmProgram } from "./lib/build.ts"
import { emptyRealStats, fuzzRealVmm } from "./lib/real.ts"
import { Rng, seedFrom } from "./lib/rng.ts"

const seed = seedFrom(process.env)
let programs: Programs
let vmm: VmmProgram

beforeAll(async () => {
  programs = await buildPrograms("reliability-fuzz")
  vmm = await bundledVmm(programs.dir)
}, 60_000)
afterAll(() => rmSync(programs.dir, { recursive: true, force: true }))

describe(`a real vmm over real sockets (FUZZ_SEED=${seed})`, () => {
  it.scopedLive("hostile parent and VM processes: the vmm never dies, ends only the VMs that misbehave, innocent VMs keep answering, exits 0 with no VM left", () =>
    Effect.gen(function* () {
      const stats = emptyRealStats()
      yield* fuzzRealVmm(
        new Rng(seed),
        {
          program: vmm,
          vmfuzz: programs.vmfuzz,
          vmprog: programs.vmprog,
          logPath: join(programs.dir, "vmfuzz.log"),
          parentMessages: 5_000,
          vmMessages: 10_000,
          benignMax: 2_000,
          seed
        },
        stats
      )
      console.log(`real vmm fuzz: ${JSON.stringify(stats)}`)
      expect(stats.crashes).toBe(0)
      expect(stats.vmmExit).toBe("exit 0")
      expect(stats.parentMessages + stats.vmMessages).toBeGreaterThanOrEqual(15_000)
      expect(stats.hostileVms).toBeGreaterThan(0)
      expect(stats.vmm?.vmsEnded).toBeGreaterThan(0)
      expect(stats.roundTrips).toBeGreaterThan(5)
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  , 180_000)
})

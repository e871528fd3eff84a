/**
 * Fuzzing both dispatchers in process, on the in-memory layers: a hostile
 * parent and hostile VM processes beside innocent VMs (short run; the long
 * one is scripts/fuzz.ts). FUZZ_SEED reproduces a failure.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { emptyDispatchStats, fuzzInProcess } from "./lib/memory.ts"
import { Rng, seedFrom } from "./lib/rng.ts"

const seed = seedFrom(process.env)

describe(`dispatchers in process (FUZZ_SEED=${seed})`, () => {
  it.scoped("hostile parent and VM messages: the vmm never dies, ends only the VMs that misbehave, innocent VMs keep answering, nothing leaks", () =>
    Effect.gen(function* () {
      const stats = emptyDispatchStats()
      yield* fuzzInProcess(new Rng(seed), { parentMessages: 4_000, vmMessages: 2_500 }, stats)
      expect(stats.crashes).toBe(0)
      expect(stats.parentMessages + stats.vmMessages).toBeGreaterThanOrEqual(6_500)
      expect(stats.vmsEnded).toBeGreaterThan(0)
      expect(stats.decodeErrors).toBeGreaterThan(0)
      expect(stats.roundTrips).toBeGreaterThan(5)
      console.log(`in-process dispatch fuzz: ${JSON.stringify(stats)}`)
    })
  , 120_000)
})

/**
 * Fuzzing every decoder of src/schema and the imsg parser (short run; the
 * long one is scripts/fuzz.ts). FUZZ_SEED reproduces a failure.
 */
import { describe, expect, it } from "vitest"
import { fuzzDecoders, fuzzParser, type PureStats } from "./lib/pure.ts"
import { Rng, seedFrom } from "./lib/rng.ts"

const seed = seedFrom(process.env)

describe(`pure targets (FUZZ_SEED=${seed})`, () => {
  it("every decoder returns a value or a SchemaError for any bytes, accepts exactly sizeof bytes, and round-trips what it accepts", () => {
    const stats: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    fuzzDecoders(new Rng(seed), 20_000, stats)
    expect(stats.messages).toBe(20_000)
    expect(stats.decodeErrors).toBeGreaterThan(1000)
  })

  it("the parser returns every well-framed message of any split stream, refuses all after a bad length, and delivers or closes each fd exactly once", () => {
    const stats: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    fuzzParser(new Rng(seed ^ 0x5a5a), 20_000, stats)
    expect(stats.messages).toBeGreaterThanOrEqual(20_000)
    expect(stats.decodeErrors).toBeGreaterThan(0)
  })
})

/**
 * The coverage-guided fuzzer (lib/guided.ts, lib/coverage.ts), a few
 * seconds of it: the coverage feedback sees new code and only new code;
 * guided runs over the decoders, the parser and both dispatchers find
 * inputs that reach past their seeds (the corpus grows), draw from the
 * corpus, and crash nothing. The long run is scripts/fuzz.ts.
 * FUZZ_SEED reproduces a failure.
 */
import "./lib/exactCoverage.ts" // first: V8's optimising compiler off, so that coverage counts every call
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { logState } from "../../src/vmm/log.ts"
import { CoverageMap, CoverageSession } from "./lib/coverage.ts"
import { decoderSeeds, decoderTarget, emptyGuidedStats, makeDispatchGuide, runGuided, streamSeeds, streamTarget } from "./lib/guided.ts"
import { emptyDispatchStats, fuzzInProcess } from "./lib/memory.ts"
import { CODECS, runDecoderCase, type PureStats } from "./lib/pure.ts"
import { Rng, seedFrom } from "./lib/rng.ts"

const seed = seedFrom(process.env)
const session = new CoverageSession()
const fresh = (): PureStats => ({ messages: 0, decodeErrors: 0, crashes: 0 })

beforeAll(() => {
  session.start()
})
afterAll(() => {
  session.stop()
})

describe(`coverage-guided fuzzing (FUZZ_SEED=${seed})`, () => {
  it("the coverage feedback reports code not run before, and nothing once it has been", () => {
    const k = CODECS.findIndex(([name]) => name === "vmop_id")
    const sizeof = (CODECS[k] as (typeof CODECS)[number])[1].sizeof
    const map = new CoverageMap()
    session.take()
    runDecoderCase({ k, input: new Uint8Array(sizeof), size: 0n }, fresh())
    map.merge(session.take())
    // the same input again: nothing new
    runDecoderCase({ k, input: new Uint8Array(sizeof), size: 0n }, fresh())
    expect(map.novelty(session.take())).toEqual({ bytes: 0, functions: 0 })
    // a wrong size takes the decoder's refusal path: new blocks
    runDecoderCase({ k, input: new Uint8Array(sizeof + 1), size: 0n }, fresh())
    const t = session.take()
    expect(map.novelty(t).bytes).toBeGreaterThan(0)
    map.merge(t)
    const s = map.summary(session, (url) => url.includes("/src/schema/"))
    expect(s.blocks).toBeGreaterThan(0)
    expect(s.blocks).toBeLessThan(s.blocksTotal)
    expect(s.functions).toBeGreaterThan(0)
  })

  it("decoders: the corpus grows past the seeds, guided coverage exceeds the seeds', no crash", () => {
    const seedsOnly = new CoverageMap()
    const seeds = decoderSeeds()
    // Codecs are compiled on first use (src/schema/compile.ts): run the seeds once
    // unmeasured, so that neither side counts the one-time compilation.
    for (const c of seeds) runDecoderCase(c, fresh())
    session.take()
    for (const c of seeds) runDecoderCase(c, fresh())
    seedsOnly.merge(session.take())
    const map = new CoverageMap()
    const stats = fresh()
    const g = runGuided(new Rng(seed), decoderTarget, { inputs: 1_000_000, batch: 300, session, map, seeds, deadlineMs: 3000 }, stats)
    expect(g.inputs).toBeGreaterThanOrEqual(300)
    expect(g.corpus).toBeGreaterThan(seeds.length)
    expect(stats.decodeErrors).toBeGreaterThan(0)
    const only = (url: string) => url.includes("/src/schema/")
    expect(map.summary(session, only).blocks).toBeGreaterThan(seedsOnly.summary(session, only).blocks)
  }, 30_000)

  it("parser: the corpus grows past the seeds, no crash", () => {
    const map = new CoverageMap()
    const stats = fresh()
    const seeds = streamSeeds(new Rng(seed ^ 1))
    const g = runGuided(new Rng(seed ^ 2), streamTarget, { inputs: 1_000_000, batch: 40, session, map, seeds, deadlineMs: 3000 }, stats, emptyGuidedStats())
    expect(g.corpus).toBeGreaterThan(seeds.length)
    expect(stats.decodeErrors).toBeGreaterThan(0) // some stream was refused (a bad length)
  }, 30_000)

  it("both dispatchers: rounds that reach new code join the corpus, later messages are drawn from it, no defect, innocents unharmed", async () => {
    const map = new CoverageMap()
    const { guide, stats: g } = makeDispatchGuide(new Rng(seed ^ 3), { session, map })
    const s = emptyDispatchStats()
    const sink = logState.sink
    try {
      await Effect.runPromise(Effect.scoped(fuzzInProcess(new Rng(seed ^ 4), { parentMessages: 300, vmMessages: 200, batch: 25, guide }, s)))
    } finally {
      logState.sink = sink
    }
    expect(s.crashes).toBe(0)
    expect(s.parentMessages + s.vmMessages).toBeGreaterThanOrEqual(500)
    expect(g.rounds).toBeGreaterThan(5)
    expect(g.corpus).toBeGreaterThan(0)
    expect(g.fromCorpus).toBeGreaterThan(0)
    expect(map.summary(session).functions).toBeGreaterThan(0)
    console.log(`guided dispatchers: ${g.rounds} rounds, corpus ${g.corpus}, ${g.fromCorpus} messages from it; ${session.takes} takes, ${(session.takeMs / session.takes).toFixed(0)} ms each`)
  }, 60_000)
})

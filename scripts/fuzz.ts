/**
 * The fuzzer (issue 5): a million hostile messages by default, spread over
 *
 *   decoders   every struct codec of src/schema, the int readers, the INFO
 *              result array, the imsg header (random, truncated, oversized,
 *              wrongly sized, mutated well-formed bytes);
 *   parser     the incremental imsg parser on streams of frames split at
 *              random, with fds riding on random reads and garbage
 *              (bad lengths, cut frames, noise) after them;
 *   in-process both dispatchers of a whole vmm on the in-memory layers: a
 *              hostile parent and hostile VM processes beside innocent VMs;
 *   real vmm   a running `bin/vmm --backend process` over real sockets: this
 *              process as a hostile parent on fd 3, hostile C VM processes
 *              (scripts/c/vmfuzz.c) beside innocent C VMs.
 *
 * Throughout: no crash, no unhandled exception, each innocent VM running
 * and answering info and pause/unpause round trips after every batch, each
 * hostile VM ended, and at the end the vmm exits 0 with nothing left.
 *
 * The three in-process targets run twice, with the same number of inputs:
 * purely random (the generators), then coverage-guided (test/reliability/
 * lib/guided.ts: V8 block coverage of src/ through node:inspector, a corpus
 * of the inputs that reached new blocks, AFL-style mutations of it). Both
 * runs' coverage of src/ is measured the same way and printed side by side.
 *
 *   tsx scripts/fuzz.ts [--messages 1000000] [--seed N] [--fresh] [--no-real] [--batch 1000]
 *
 * --no-real skips the real vmm (the in-process targets then take its share).
 * --batch: decoder cases per coverage take in the guided run (parser streams
 * and dispatcher messages scale from it).
 *
 * FUZZ_SEED or --seed replays a run. --fresh runs the current sources
 * (bundled) instead of bin/vmm's dist/.
 */
import "../test/reliability/lib/exactCoverage.ts" // first: see there
import { Effect } from "effect"
import { rmSync } from "node:fs"
import { join } from "node:path"
import * as ImsgChannelNative from "../src/layers/ImsgChannelNative.ts"
import { buildPrograms } from "../test/reliability/lib/build.ts"
import { hasFlag, numberFlag, vmmProgram } from "../test/reliability/lib/cli.ts"
import { emptyDispatchStats, fuzzInProcess } from "../test/reliability/lib/memory.ts"
import { fuzzDecoders, fuzzParser, runDecoderCase, type PureStats } from "../test/reliability/lib/pure.ts"
import { emptyRealStats, fuzzRealVmm } from "../test/reliability/lib/real.ts"
import { Rng, seedFrom } from "../test/reliability/lib/rng.ts"
import { logState } from "../src/vmm/log.ts"
import { CoverageMap, CoverageSession, formatCoverage, functionsOnlyIn } from "../test/reliability/lib/coverage.ts"
import { decoderSeeds, decoderTarget, emptyGuidedStats, makeDispatchGuide, runGuided, runStreamCase, streamSeeds, streamTarget, type GuidedStats } from "../test/reliability/lib/guided.ts"

const argv = process.argv.slice(2)
const say = (s: string) => process.stdout.write(`${s}\n`)

/** Shares of --messages per target (the in-process ones split evenly between the random and the guided run). */
const SHARE_ALL = { decoders: 0.4, parser: 0.3, inProcessParent: 0.03, inProcessVm: 0.02, realParent: 0.1, realVm: 0.15 }
const SHARE_NO_REAL = { decoders: 0.5, parser: 0.4, inProcessParent: 0.06, inProcessVm: 0.04, realParent: 0, realVm: 0 }

interface Row {
  readonly target: string
  readonly messages: number
  readonly decodeErrors: number
  readonly vmsEnded: number | string
  readonly crashes: number
  readonly seconds: number
  readonly note: string
}

const timed = async <A>(f: () => Promise<A>): Promise<[A, number]> => {
  const t = Date.now()
  const a = await f()
  return [a, (Date.now() - t) / 1000]
}

const pad = (s: string | number, n: number) => String(s).padStart(n)

class SkipReal extends Error {}

/** Anything thrown past every handler, in this process (the in-process vmm and the fuzzers). */
let unhandled = 0
process.on("unhandledRejection", (e) => {
  unhandled++
  say(`UNHANDLED REJECTION: ${String(e)}`)
})
process.on("uncaughtException", (e) => {
  unhandled++
  say(`UNCAUGHT EXCEPTION: ${e.stack ?? e.message}`)
})

const main = async (): Promise<number> => {
  const total = numberFlag(argv, "messages", 1_000_000)
  const seed = numberFlag(argv, "seed", seedFrom(process.env)) >>> 0
  const rng = new Rng(seed)
  const noReal = hasFlag(argv, "no-real")
  const SHARE = noReal ? SHARE_NO_REAL : SHARE_ALL
  const share = (k: keyof typeof SHARE) => Math.max(1, Math.round(total * SHARE[k]))
  say(`fuzz: ${total} messages, seed ${seed} (replay with --seed ${seed})`)
  const rows: Array<Row> = []
  const started = Date.now()

  const cov = new CoverageSession().start()
  const coverageRows: Array<{ target: string; random: CoverageMap; guided: CoverageMap; g: string }> = []
  const batch = numberFlag(argv, "batch", 1000)
  // Warm-up, counted for neither run (seeds and a little random input per
  // target): what runs once per process (module initialisers, esbuild's
  // interop helpers, lazily compiled codecs) would otherwise count for
  // whichever run comes first.
  {
    const w: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    for (const c of decoderSeeds()) runDecoderCase(c, w)
    for (const c of streamSeeds(new Rng(1))) runStreamCase(c, w)
    fuzzDecoders(new Rng(1), 2000, w)
    fuzzParser(new Rng(1), 500, w)
    const sink = logState.sink
    await Effect.runPromise(Effect.scoped(fuzzInProcess(new Rng(1), { parentMessages: 20, vmMessages: 10, batch: 10 }, emptyDispatchStats())))
    logState.sink = sink
    cov.take()
  }

  // --- pure targets: random, then guided, the same number of inputs ---------------
  for (const [target, key] of [["decoders", "decoders"], ["parser", "parser"]] as const) {
    const n = Math.max(1, Math.round(share(key) / 2))
    const randomMap = new CoverageMap()
    const guidedMap = new CoverageMap()
    const sr: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    cov.take()
    const [, secR] = await timed(async () => (target === "decoders" ? fuzzDecoders(rng.fork(), n, sr) : fuzzParser(rng.fork(), n, sr)))
    randomMap.merge(cov.take())
    const sg: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    let g: GuidedStats = emptyGuidedStats()
    const [, secG] = await timed(async () => {
      g =
        target === "decoders"
          ? runGuided(rng.fork(), decoderTarget, { inputs: n, batch, session: cov, map: guidedMap, seeds: decoderSeeds() }, sg)
          : // streams hold many frames: as many frames as the random run, in batches of fewer streams
            runGuided(rng.fork(), streamTarget, { inputs: Number.MAX_SAFE_INTEGER, messages: sr.messages, batch: Math.max(1, Math.round(batch / 10)), session: cov, map: guidedMap, seeds: streamSeeds(rng.fork()) }, sg)
    })
    const label = target === "decoders" ? "decoders (src/schema)" : "imsg parser"
    const note = target === "decoders" ? "16 struct codecs, int readers, INFO array, header" : "frames split at random, fds on reads, garbage"
    rows.push({ target: `${label}, random`, messages: sr.messages, decodeErrors: sr.decodeErrors, vmsEnded: "-", crashes: 0, seconds: secR, note })
    rows.push({ target: `${label}, guided`, messages: sg.messages, decodeErrors: sg.decodeErrors, vmsEnded: "-", crashes: 0, seconds: secG, note: `corpus ${g.corpus} (${g.seeds} seeds), ${g.novelBatches}/${g.batches} batches new, ${g.takes} takes, ${g.rerunInputs} re-runs` })
    coverageRows.push({ target, random: randomMap, guided: guidedMap, g: `corpus ${g.corpus} from ${g.seeds} seeds (${g.fromMutation} by mutation)` })
    say(`  ${target}: random ${sr.messages} in ${secR.toFixed(1)} s, guided ${sg.messages} in ${secG.toFixed(1)} s`)
  }

  // --- both dispatchers in process: random, then guided ----------------------------
  for (const guided of [false, true]) {
    const s = emptyDispatchStats()
    const map = new CoverageMap()
    const sink = logState.sink
    const g = guided ? makeDispatchGuide(rng.fork(), { session: cov, map }) : null
    cov.take()
    const inProcessBatch = Math.max(20, Math.round(batch / 10))
    const [, sec] = await timed(() =>
      Effect.runPromise(
        Effect.scoped(
          fuzzInProcess(
            rng.fork(),
            {
              parentMessages: Math.max(1, Math.round(share("inProcessParent") / 2)),
              vmMessages: Math.max(1, Math.round(share("inProcessVm") / 2)),
              batch: inProcessBatch,
              ...(g === null ? {} : { guide: g.guide })
            },
            s
          )
        )
      )
    )
    map.merge(cov.take())
    logState.sink = sink
    rows.push({
      target: `dispatchers, ${guided ? "guided" : "random"}`,
      messages: s.parentMessages + s.vmMessages,
      decodeErrors: s.decodeErrors + s.invalidTypes,
      vmsEnded: s.vmsEnded,
      crashes: s.crashes,
      seconds: sec,
      note: `parent ${s.parentMessages}, VM ${s.vmMessages} (${s.rawGarbage} raw), ${s.roundTrips} round trips${g === null ? "" : `; corpus ${g.stats.corpus} rounds of ${g.stats.rounds}, ${g.stats.fromCorpus} messages from it`}`
    })
    if (!guided) coverageRows.push({ target: "dispatchers", random: map, guided: map, g: "" })
    else {
      const row = coverageRows[coverageRows.length - 1]
      if (row !== undefined) coverageRows[coverageRows.length - 1] = { ...row, guided: map, g: `corpus ${g?.stats.corpus ?? 0} rounds (of ${g?.stats.rounds ?? 0}), ${g?.stats.fromCorpus ?? 0} messages drawn from it` }
    }
    say(`  in process, ${guided ? "guided" : "random"}: ${s.parentMessages + s.vmMessages} in ${sec.toFixed(1)} s`)
  }
  cov.stop()

  // --- a real vmm over real sockets -----------------------------------------------
  const programs = await buildPrograms("fuzz")
  try {
    if (noReal) throw new SkipReal()
    const program = await vmmProgram(argv, programs.dir, say)
    const s = emptyRealStats()
    const [, sec] = await timed(() =>
      Effect.runPromise(
        fuzzRealVmm(
          rng.fork(),
          {
            program,
            vmfuzz: programs.vmfuzz,
            vmprog: programs.vmprog,
            logPath: join(programs.dir, "vmfuzz.log"),
            parentMessages: share("realParent"),
            vmMessages: share("realVm"),
            benignMax: 2000,
            seed,
            progress: say
          },
          s
        ).pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))
      )
    )
    rows.push({
      target: "real vmm, parent side",
      messages: s.parentMessages,
      decodeErrors: (s.vmm?.decodeErrors ?? 0) + (s.vmm?.invalidTypes ?? 0),
      vmsEnded: "-",
      crashes: s.crashes,
      seconds: sec,
      note: `${s.parentFds} with an fd, ${s.roundTrips} info+pause round trips, ${s.vmmExit}`
    })
    rows.push({
      target: "real vmm, VM side",
      messages: s.vmMessages,
      decodeErrors: s.hostileVms,
      vmsEnded: s.vmm?.vmsEnded ?? 0,
      crashes: s.crashes,
      seconds: sec,
      note: `${s.vmFds} with an fd, ${s.fuzzVmsStarted} hostile VMs (${Object.entries(s.hostileKinds).map(([k, v]) => `${k} ${v}`).join(", ")})`
    })
  } catch (e) {
    if (!(e instanceof SkipReal)) throw e
  } finally {
    rmSync(programs.dir, { recursive: true, force: true })
  }

  // --- the figures ----------------------------------------------------------------
  const sum = rows.reduce((n, r) => n + r.messages, 0)
  const crashes = rows.reduce((n, r) => n + r.crashes, 0)
  say("")
  say(`${"target".padEnd(26)} ${pad("messages", 9)} ${pad("refused", 8)} ${pad("VMs ended", 9)} ${pad("crashes", 7)} ${pad("s", 6)}  notes`)
  for (const r of rows) {
    say(`${r.target.padEnd(26)} ${pad(r.messages, 9)} ${pad(r.decodeErrors, 8)} ${pad(r.vmsEnded, 9)} ${pad(r.crashes, 7)} ${pad(r.seconds.toFixed(1), 6)}  ${r.note}`)
  }
  say(`${"total".padEnd(26)} ${pad(sum, 9)} ${pad("", 8)} ${pad("", 9)} ${pad(crashes, 7)} ${pad(((Date.now() - started) / 1000).toFixed(1), 6)}`)
  say("refused: decoders/parser: inputs refused with a SchemaError or a framing error; dispatchers: the vmm's log lines")
  say("for payloads of the wrong size, bad indexes and unknown types; real VM side: hostile messages sent.")
  say("VMs ended: by the vmm for breaking the protocol (a VM that cut a frame short and exited ends by itself).")
  say(`crashes: ${crashes}; unhandled exceptions: ${unhandled}; innocent VMs: running and answering after every batch`)
  say("")
  say(`coverage of src/ (V8 block coverage; a block is a range V8 reported in a src/ script; after a warm-up counted for neither; ${cov.takes} takes, ${(cov.takeMs / 1000).toFixed(1)} s in them)`)
  say(`${"target".padEnd(12)} ${"random".padEnd(36)} ${"guided".padEnd(36)} corpus`)
  for (const r of coverageRows) say(`${r.target.padEnd(12)} ${formatCoverage(r.random.summary(cov)).padEnd(36)} ${formatCoverage(r.guided.summary(cov)).padEnd(36)} ${r.g}`)
  say("(each run's blocks/functions of all the src/ code V8 has seen in this process; random and guided ran the same number of messages)")
  for (const r of coverageRows) {
    const onlyR = functionsOnlyIn(cov, r.random, r.guided)
    const onlyG = functionsOnlyIn(cov, r.guided, r.random)
    say(`${r.target}: functions only random reached: ${onlyR.length}${onlyR.length > 0 ? ` (${onlyR.slice(0, 6).join(", ")}${onlyR.length > 6 ? ", ..." : ""})` : ""}; only guided: ${onlyG.length}${onlyG.length > 0 ? ` (${onlyG.slice(0, 6).join(", ")}${onlyG.length > 6 ? ", ..." : ""})` : ""}`)
  }
  return crashes === 0 && unhandled === 0 ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`fuzz: FAILED (${e instanceof Error ? (e.stack ?? e.message) : String(e)})\n`)
    process.exit(1)
  }
)

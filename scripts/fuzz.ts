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
 *   tsx scripts/fuzz.ts [--messages 1000000] [--seed N] [--fresh]
 *
 * FUZZ_SEED or --seed replays a run. --fresh runs the current sources
 * (bundled) instead of bin/vmm's dist/.
 */
import { Effect } from "effect"
import { rmSync } from "node:fs"
import { join } from "node:path"
import * as ImsgChannelNative from "../src/layers/ImsgChannelNative.ts"
import { buildPrograms } from "../test/reliability/lib/build.ts"
import { numberFlag, vmmProgram } from "../test/reliability/lib/cli.ts"
import { emptyDispatchStats, fuzzInProcess } from "../test/reliability/lib/memory.ts"
import { fuzzDecoders, fuzzParser, type PureStats } from "../test/reliability/lib/pure.ts"
import { emptyRealStats, fuzzRealVmm } from "../test/reliability/lib/real.ts"
import { Rng, seedFrom } from "../test/reliability/lib/rng.ts"
import { logState } from "../src/vmm/log.ts"

const argv = process.argv.slice(2)
const say = (s: string) => process.stdout.write(`${s}\n`)

/** Shares of --messages per target. */
const SHARE = { decoders: 0.4, parser: 0.3, inProcessParent: 0.03, inProcessVm: 0.02, realParent: 0.1, realVm: 0.15 }

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
  const share = (k: keyof typeof SHARE) => Math.max(1, Math.round(total * SHARE[k]))
  say(`fuzz: ${total} messages, seed ${seed} (replay with --seed ${seed})`)
  const rows: Array<Row> = []
  const started = Date.now()

  // --- pure targets ------------------------------------------------------------
  {
    const s: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    const [, sec] = await timed(async () => fuzzDecoders(rng.fork(), share("decoders"), s))
    rows.push({ target: "decoders (src/schema)", messages: s.messages, decodeErrors: s.decodeErrors, vmsEnded: "-", crashes: 0, seconds: sec, note: "16 struct codecs, int readers, INFO array, header" })
    say(`  decoders: ${s.messages} in ${sec.toFixed(1)} s`)
  }
  {
    const s: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
    const [, sec] = await timed(async () => fuzzParser(rng.fork(), share("parser"), s))
    rows.push({ target: "imsg parser", messages: s.messages, decodeErrors: s.decodeErrors, vmsEnded: "-", crashes: 0, seconds: sec, note: "frames split at random, fds on reads, garbage" })
    say(`  parser: ${s.messages} in ${sec.toFixed(1)} s`)
  }

  // --- both dispatchers in process ----------------------------------------------
  {
    const s = emptyDispatchStats()
    const sink = logState.sink
    const [, sec] = await timed(() =>
      Effect.runPromise(
        Effect.scoped(fuzzInProcess(rng.fork(), { parentMessages: share("inProcessParent"), vmMessages: share("inProcessVm") }, s))
      )
    )
    logState.sink = sink
    rows.push({
      target: "dispatchers, in process",
      messages: s.parentMessages + s.vmMessages,
      decodeErrors: s.decodeErrors + s.invalidTypes,
      vmsEnded: s.vmsEnded,
      crashes: s.crashes,
      seconds: sec,
      note: `parent ${s.parentMessages}, VM ${s.vmMessages} (${s.rawGarbage} raw), ${s.roundTrips} round trips`
    })
    say(`  in process: ${s.parentMessages + s.vmMessages} in ${sec.toFixed(1)} s`)
  }

  // --- a real vmm over real sockets -----------------------------------------------
  const programs = await buildPrograms("fuzz")
  try {
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
  return crashes === 0 && unhandled === 0 ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`fuzz: FAILED (${e instanceof Error ? (e.stack ?? e.message) : String(e)})\n`)
    process.exit(1)
  }
)

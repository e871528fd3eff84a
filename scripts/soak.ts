/**
 * The soak (issue 5): start/stop cycles with every kind of end (graceful,
 * forced, crash, reboot) and then many VMs at once, against a running
 * `bin/vmm --backend process` with the C VM program, while the vmm's fds,
 * the processes below it, zombies and resident memory are sampled every
 * 5 ms (scripts/c/procwatch.c). Prints the samples' summary and PASS/FAIL
 * per goal; exits 1 if a goal fails.
 *
 *   tsx scripts/soak.ts [--cycles 10000] [--concurrent 256] [--lanes 4] [--spawn direct|spawner|node] [--fresh]
 *
 * --fresh runs the current sources (bundled) instead of bin/vmm's dist/.
 * Goals: fd and child counts back to baseline; no zombie outlives 100 ms;
 * resident memory grows < 5% from warm-up to the end of the cycles (the
 * median over cycles 10-20% against the median over the last 10%).
 */
import { Effect } from "effect"
import { rmSync } from "node:fs"
import * as ImsgChannelNative from "../src/layers/ImsgChannelNative.ts"
import { buildPrograms } from "../test/reliability/lib/build.ts"
import { numberFlag, vmmProgram } from "../test/reliability/lib/cli.ts"
import { formatSoak, runSoak } from "../test/reliability/lib/soak.ts"

const argv = process.argv.slice(2)
const say = (s: string) => process.stdout.write(`${s}\n`)

const main = async (): Promise<number> => {
  const cycles = numberFlag(argv, "cycles", 10_000)
  const concurrent = numberFlag(argv, "concurrent", 256)
  const lanes = numberFlag(argv, "lanes", 4)
  const spawnAt = argv.indexOf("--spawn")
  const spawnArg = spawnAt < 0 ? undefined : argv[spawnAt + 1]
  const spawn = spawnArg === "node" || spawnArg === "spawner" || spawnArg === "direct" ? spawnArg : undefined
  const programs = await buildPrograms("soak")
  try {
    const program = await vmmProgram(argv, programs.dir, say)
    say(`soak: ${cycles} cycles on ${lanes} lanes, then ${concurrent} VMs at once (C VM program, ${spawn ?? "default"} spawn)`)
    const report = await Effect.runPromise(
      runSoak({ program, vmprog: programs.vmprog, procwatch: programs.procwatch, cycles, concurrent, lanes, ...(spawn === undefined ? {} : { spawn }), progress: say }).pipe(
        Effect.scoped,
        Effect.provide(ImsgChannelNative.layer)
      )
    )
    say(formatSoak(report))
    if (report.failures.length > 1) say(`failures:\n  ${report.failures.join("\n  ")}`)
    if (report.zombies.long.length > 0)
      say(`zombies over 100 ms (life ms @ first seen ms, parent, samples with the reaper asleep): ${report.zombies.long.slice(0, 20).map((z) => `${z.life.toFixed(0)}@${z.since.toFixed(0)} ${z.kind}${z.asleep > 0 ? ` reaper asleep ×${z.asleep} in ${z.wchan}` : ""}`).join(", ")}`)
    return report.goals.every((g) => g.pass) ? 0 : 1
  } finally {
    rmSync(programs.dir, { recursive: true, force: true })
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`soak: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
    process.exit(1)
  }
)

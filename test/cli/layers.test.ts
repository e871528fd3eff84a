/**
 * bin/vmm's services (src/cli/layers.ts): `vmmServiceLayers`, built in one
 * scoped effect, gives what `vmmServiceLayersComposed` (Layer's combinators)
 * gives: the same kind of Process service for each spawn method (told apart
 * by what this process holds while a child lives: the spawner's pid, a
 * pidfd for the child, or neither), with the same fallbacks, a working
 * registry and device, and everything released when the scope ends (the
 * spawner process included).
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import type { Backend, SpawnMethod } from "../../src/cli/args.ts"
import { vmmServiceLayers, vmmServiceLayersComposed } from "../../src/cli/layers.ts"
import { Process } from "../../src/services/Process.ts"
import { VmmDevice } from "../../src/services/VmmDevice.ts"
import { VmRegistry } from "../../src/services/VmRegistry.ts"
import { pidfdTargets } from "../e2e/pidfd.ts"
import { procStat } from "../e2e/proc.ts"

const alive = (pid: number) => {
  const st = procStat(pid)
  return st !== null && st.state !== "Z"
}

/** Build a services layer in a scope of its own; what it holds; then close the scope. */
const probe = (layer: Layer.Layer<Process | VmRegistry | VmmDevice>) =>
  Effect.gen(function* () {
    const warnings: Array<string> = []
    const logger = Logger.make(({ message }) => warnings.push(String(message)))
    const scope = yield* Scope.make()
    const ctx = yield* Layer.buildWithScope(layer, scope).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    const proc = Context.get(ctx, Process)
    const spawnerPid = "spawnerPid" in proc ? (proc.spawnerPid as number) : null
    const child = yield* proc.spawn({ command: "/bin/sh", args: ["-c", "exit 7"], fds: [], stdio: "null" })
    const status = yield* child.exit
    // which backend: ProcessDirect holds a pidfd for each live child in this process; the others none
    const sleeper = yield* proc.spawn({ command: "/bin/sleep", args: ["30"], fds: [], stdio: "null" })
    const pidfds = pidfdTargets(process.pid).filter((pid) => pid === sleeper.pid).length
    yield* proc.kill(sleeper.pid, "SIGKILL")
    const sleeperStatus = yield* sleeper.exit
    const pidfdsAfter = pidfdTargets(process.pid).filter((pid) => pid === sleeper.pid).length
    // the mock kernel's device answers only once /dev/vmm's fd is attached: an error, the same for both
    const info = yield* Effect.either(Context.get(ctx, VmmDevice).info)
    const vms = yield* Context.get(ctx, VmRegistry).all
    const spawnerAliveBefore = spawnerPid !== null && alive(spawnerPid)
    yield* Scope.close(scope, Exit.void)
    return {
      kind: spawnerPid !== null ? "spawner" : pidfds === 1 ? "direct" : pidfds === 0 ? "node" : `${pidfds} pidfds`,
      pidfdsAfter,
      status,
      sleeperStatus,
      info: info._tag === "Right" ? info.right.length : `errno ${info.left.errno}`,
      vms: vms.length,
      spawnerAliveBefore,
      spawnerAliveAfter: spawnerPid !== null && alive(spawnerPid),
      warnings
    }
  })

const cases: ReadonlyArray<readonly [Backend, SpawnMethod]> = [
  ["process", "spawner"],
  ["process", "node"],
  ["process", "direct"],
  ["mock", "spawner"]
]

describe("bin/vmm's services", () => {
  for (const [backend, spawn] of cases) {
    it.live(`--backend ${backend} --spawn ${spawn}: one scoped effect gives what Layer's combinators give`, () =>
      Effect.gen(function* () {
        const one = yield* probe(vmmServiceLayers(backend, spawn))
        const composed = yield* probe(vmmServiceLayersComposed(backend, spawn))
        expect(one).toEqual(composed)
        expect(one.status).toEqual({ _tag: "Exited", code: 7 })
        expect(one.kind).toBe(spawn)
        expect(one.pidfdsAfter, "the child's pidfd is closed once it is reaped").toBe(0)
        expect(one.sleeperStatus).toEqual({ _tag: "Signaled", signal: 9 })
        if (spawn === "spawner") expect([one.spawnerAliveBefore, one.spawnerAliveAfter]).toEqual([true, false])
      })
    )
  }

  it.live("a spawner that cannot start: Node's spawn, with the same warning", () =>
    Effect.gen(function* () {
      const saved = process.env["VMD_VMM_SPAWNER"]
      process.env["VMD_VMM_SPAWNER"] = "/nonexistent/spawner"
      try {
        const one = yield* probe(vmmServiceLayers("process", "spawner"))
        const composed = yield* probe(vmmServiceLayersComposed("process", "spawner"))
        expect(one).toEqual(composed)
        expect(one.kind).toBe("node")
        expect(one.warnings).toHaveLength(1)
        expect(one.warnings[0]).toMatch(/process spawner unavailable .*; using Node's spawn/)
      } finally {
        if (saved === undefined) delete process.env["VMD_VMM_SPAWNER"]
        else process.env["VMD_VMM_SPAWNER"] = saved
      }
    })
  )
})

/**
 * Model-based properties: random sequences of parent requests and VM-side
 * events, run against a whole vmm on the in-memory layers and compared,
 * after every step, with an independent model of vmm.c (model.ts).
 *
 * Each property checks one invariant, named after it. Each run is an
 * Effect program with its own TestContext (TestClock); fast-check 4
 * generates and shrinks the scenarios.
 *
 * Runs per property: VMM_PROP_RUNS (default 12, for CI); scenario length:
 * VMM_PROP_STEPS (default 25 commands).
 */
import { afterAll, describe, it } from "@effect/vitest"
import { Effect, TestContext } from "effect"
import fc from "fast-check"
import { propRuns, runScenario, scenarioArb, stats } from "./scenario.ts"
import type { Invariant } from "./scenario.ts"

const RUNS = propRuns(12)
const STEPS = Number(process.env["VMM_PROP_STEPS"] ?? "") || 25

const property = (name: string, invariant: Invariant) =>
  it(
    name,
    () =>
      fc.assert(
        fc.asyncProperty(scenarioArb(STEPS), (scenario) =>
          Effect.runPromise(runScenario(scenario, new Set([invariant])).pipe(Effect.provide(TestContext.TestContext)))
        ),
        { numRuns: RUNS }
      ),
    600_000
  )

describe("vmm against its model", () => {
  if (process.env["VMM_PROP_STATS"] === "1") {
    afterAll(() => {
      const replies = [...stats.replies].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `  ${k}: ${n}`)
      console.log(
        [`runs ${stats.runs}, steps ${stats.steps} (+${stats.skipped} skipped), VMs started ${stats.vmsStarted}, events ${stats.events}`, ...replies].join("\n")
      )
    })
  }

  property("every request gets exactly the replies vmm.c gives, and every VM exactly the messages vmm forwards to it", "replies")
  property("the registry, the live VM processes and the mock kernel agree on which VMs exist after every step", "agreement")
  property("every started VM that ends yields exactly one TERMINATE_VM_EVENT: 0 for an EAGAIN exit while shutting down, EIO for a signal", "events")
  property("no fd is leaked or closed twice, at any step or after exit", "fds")
})

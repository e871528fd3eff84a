/**
 * withVmdLogger: Effect's own logging (Effect.log*, a layer's warning, a
 * forked fiber's) goes through vmd's sink and format, as VmdLoggerLayer
 * does, for the effect and the layers it builds.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { logState, withVmdLogger, type LogSink } from "../../src/vmm/log.ts"

const capture = <A>(run: () => Promise<A>) => async (): Promise<ReadonlyArray<string>> => {
  const lines: Array<string> = []
  const saved: LogSink = logState.sink
  const savedTitle = logState.title
  logState.sink = (level, line) => lines.push(`${level} ${line}`)
  logState.title = "vmm"
  try {
    await run()
  } finally {
    logState.sink = saved
    logState.title = savedTitle
  }
  return lines
}

class Thing extends Context.Tag("test/Thing")<Thing, number>() {}
const thingLayer = Layer.effect(Thing, Effect.as(Effect.logWarning("layer is falling back"), 1))

describe("withVmdLogger", () => {
  it("routes Effect's logs, a layer's while it is built and a forked fiber's, to vmd's sink", async () => {
    const program = Effect.gen(function* () {
      yield* Thing
      yield* Effect.logInfo("from the program")
      yield* Effect.fork(Effect.logError("from a fiber")).pipe(Effect.flatMap((f) => f.await))
    })
    const lines = await capture(() => Effect.runPromise(program.pipe(Effect.provide(thingLayer), withVmdLogger)))()
    expect(lines).toEqual(["warning vmm: layer is falling back", "info vmm: from the program", "warning vmm: from a fiber"])
  })

  it("without it, nothing reaches the sink (the default logger prints instead)", async () => {
    const lines = await capture(() =>
      Effect.runPromise(Effect.logInfo("from the program").pipe(Effect.provide(Layer.empty)))
    )()
    expect(lines).toEqual([])
  })
})

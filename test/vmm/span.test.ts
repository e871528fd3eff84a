import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { setSpans, span, spansEnabled } from "../../src/vmm/span.ts"

const currentSpanName = Effect.currentSpan.pipe(
  Effect.map((s) => s.name),
  Effect.option,
  Effect.map(Option.getOrNull)
)

describe("vmm spans", () => {
  it.effect("made only when turned on: the operation runs inside a span of that name, else inside none", () =>
    Effect.gen(function* () {
      const before = spansEnabled()
      try {
        setSpans(true)
        const on = yield* currentSpanName.pipe(span("get_info_vm", () => ({ type: "x" })))
        setSpans(false)
        const off = yield* currentSpanName.pipe(span("get_info_vm"))
        expect({ on, off }).toEqual({ on: "get_info_vm", off: null })
      } finally {
        setSpans(before)
      }
    })
  )
})

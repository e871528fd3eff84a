/**
 * Spans around the vmm's operations (vmm_start_vm, get_info_vm, ...), named
 * after vmm.c's functions, for whoever plugs an Effect Tracer in.
 *
 * An Effect span costs tens of microseconds (fiber-ref and context updates,
 * even with the tracer disabled), more than a whole info request is allowed
 * with nobody collecting them. So they are made only when asked for:
 * VMM_SPANS=1 in the environment, or `setSpans(true)` from a program that
 * provides a Tracer layer.
 */
import { Effect } from "effect"

let enabled = process.env["VMM_SPANS"] === "1"

/** Turn span creation on or off (for effects built from now on). */
export const setSpans = (on: boolean): void => {
  enabled = on
}

export const spansEnabled = (): boolean => enabled

/**
 * `Effect.withSpan(name)` when spans are on; the effect itself otherwise.
 * Attributes are computed only when a span is made.
 */
export const span =
  (name: string, attributes?: () => Record<string, unknown>) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    enabled ? Effect.withSpan(self, name, { captureStackTrace: false, ...(attributes ? { attributes: attributes() } : {}) }) : self

/**
 * What happened to the VMs, as the parent saw it, in order. Kept as a
 * history so that a caller can take a mark, act, and wait for what its
 * action caused without missing an event that came quickly.
 */
import { Effect, Either, Option, Stream, SubscriptionRef } from "effect"
import { Errno } from "../schema/errno.ts"
import { parentError, type ParentError, type ParentOp } from "./errors.ts"

export type ParentEvent =
  /** START_VM_RESPONSE with result 0 (restart: after a guest reset). */
  | { readonly _tag: "Started"; readonly id: number; readonly name: string; readonly pid: number; readonly restart: boolean }
  | { readonly _tag: "StartFailed"; readonly id: number; readonly name: string; readonly errno: number }
  /** TERMINATE_VM_EVENT as received: result 0, EAGAIN (35, reset), EIO (killed), ... */
  | { readonly _tag: "Terminated"; readonly id: number; readonly name: string; readonly result: number }
  | { readonly _tag: "Stopped"; readonly id: number; readonly name: string }
  | { readonly _tag: "Paused"; readonly id: number; readonly name: string }
  | { readonly _tag: "Unpaused"; readonly id: number; readonly name: string }
  /** The vmm closed its end of the channel (it exited). */
  | { readonly _tag: "VmmGone" }
  /** A message the parent does not expect from the vmm. */
  | { readonly _tag: "Unexpected"; readonly type: number; readonly peerid: number }

export interface EventLog {
  readonly publish: (e: ParentEvent) => Effect.Effect<void>
  /** The number of events so far: wait for events after this mark. */
  readonly mark: Effect.Effect<number>
  readonly history: Effect.Effect<ReadonlyArray<ParentEvent>>
  /** Events from now on. */
  readonly events: Stream.Stream<ParentEvent>
  /**
   * The first event after `mark` that satisfies `pred`; EPIPE once the vmm is
   * gone (a VmmGone in the log, which `pred` does not take: nothing more can
   * come); ETIMEDOUT after `timeoutMs`.
   */
  readonly waitFor: (
    op: ParentOp,
    pred: (e: ParentEvent) => boolean,
    mark: number,
    timeoutMs: number
  ) => Effect.Effect<ParentEvent, ParentError>
}

export const makeEventLog: Effect.Effect<EventLog> = Effect.gen(function* () {
  const ref = yield* SubscriptionRef.make<ReadonlyArray<ParentEvent>>([])
  return {
    publish: (e) => SubscriptionRef.update(ref, (h) => [...h, e]),
    mark: Effect.map(SubscriptionRef.get(ref), (h) => h.length),
    history: SubscriptionRef.get(ref),
    events: Stream.unwrap(
      Effect.map(SubscriptionRef.get(ref), (start) => {
        let seen = start.length
        return ref.changes.pipe(
          Stream.mapConcat((h) => {
            const fresh = h.slice(seen)
            seen = Math.max(seen, h.length)
            return fresh
          })
        )
      })
    ),
    waitFor: (op, pred, mark, timeoutMs) =>
      ref.changes.pipe(
        Stream.filterMap((h): Option.Option<Either.Either<ParentEvent, ParentError>> => {
          const hit = h.slice(mark).find(pred)
          if (hit !== undefined) return Option.some(Either.right(hit))
          return h.some((e) => e._tag === "VmmGone") ? Option.some(Either.left(parentError(op, Errno.EPIPE, "the vmm closed the channel"))) : Option.none()
        }),
        Stream.runHead,
        Effect.flatMap(Option.match({ onNone: () => Effect.never, onSome: (r) => r })),
        Effect.timeoutFail({
          duration: timeoutMs,
          onTimeout: () => parentError(op, Errno.ETIMEDOUT, "the expected event did not come")
        })
      )
  }
})

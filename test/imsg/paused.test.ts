/**
 * A channel opened paused (openOwned's option, for the start handshake:
 * the vmm makes the VM's channel while the child execs, reads the raw id
 * that is still due on the socket, then resumes the channel): it reads
 * nothing until `resume`, on real sockets and in memory alike.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { ImsgChannelMemory } from "../../src/layers/ImsgChannelMemory.ts"
import { ImsgChannelNative } from "../../src/layers/ImsgChannelNative.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { hex } from "./frames.ts"

const scenario = Effect.gen(function* () {
  const svc = yield* ImsgChannel
  const [a, b] = yield* svc.socketpair("paused")
  const ch = yield* svc.openOwned(a, { paused: true })
  const got: Array<number> = []
  yield* ch.listen({ messages: (ms) => got.push(...ms.map((m) => m.type)), end: () => got.push(-1) })
  // the peer, in one write: a raw 4-byte id, then an imsg (type 7, no payload)
  yield* svc.writeRaw(b, hex("2a 00 00 00 07 00 00 00 10 00 00 00 05 00 00 00 09 00 00 00"), 1000)
  // turns of the event loop, in which a reading channel would take every byte
  yield* Effect.sleep("30 millis")
  const before = [...got]
  const id = yield* svc.readRaw(a, 4, 1000)
  yield* ch.resume
  for (let i = 0; i < 200 && got.length === 0; i++) yield* Effect.sleep("5 millis")
  const after = [...got]
  yield* ch.resume // a no-op once reading
  yield* ch.close
  b.closeSync()
  return { before, id: [...id], after }
})

describe("openOwned({ paused: true })", () => {
  const layers = [
    ["real sockets", ImsgChannelNative.layer],
    ["in memory", ImsgChannelMemory.layer]
  ] as const
  for (const [name, layer] of layers) {
    it.live(`${name}: nothing is read until resume, so the raw bytes before the first imsg can be; then the imsgs are`, () =>
      Effect.gen(function* () {
        const r = yield* scenario.pipe(Effect.provide(layer as Layer.Layer<ImsgChannel>))
        expect(r).toEqual({ before: [], id: [0x2a, 0, 0, 0], after: [7] })
      })
    )
  }
})

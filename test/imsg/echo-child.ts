/**
 * A vmm-like child for native.test.ts: its parent channel is the inherited
 * fd 3 (blocking, not close-on-exec, as proc.c leaves it). Echoes every
 * message back with type + 1 and the same payload and fd; exits 0 on EOF.
 */
import { Effect, Stream } from "effect"
import { ImsgChannelNative } from "../../src/layers/ImsgChannelNative.ts"
import { F_GETFL, fcntl, nativeFd, O_NONBLOCK } from "../../src/native/libc.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"

const program = Effect.gen(function* () {
  const svc = yield* ImsgChannel
  const blockingBefore = (fcntl(3, F_GETFL) & O_NONBLOCK) === 0
  const ch = yield* svc.open(nativeFd(3, "parent"))
  const nonblockAfter = (fcntl(3, F_GETFL) & O_NONBLOCK) !== 0
  yield* ch.send({ type: 1, peerid: 0, pid: 0, data: Uint8Array.of(blockingBefore ? 1 : 0, nonblockAfter ? 1 : 0) })
  yield* ch.messages.pipe(
    Stream.runForEach((m) => ch.send({ type: m.type + 1, peerid: m.peerid, pid: 0, data: m.data, fd: m.fd }))
  )
  yield* ch.flush
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))).catch((e: unknown) => {
  console.error("echo-child:", e)
  process.exitCode = 1
})

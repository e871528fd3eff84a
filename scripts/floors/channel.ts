/**
 * Start-up floor (scripts/bench-vmm.ts): the answer made over the vmm's own
 * imsg channel (ImsgChannelNative on fd 3: koffi's libc, libuv's poll, the
 * parser and writer) by a fiber, through bin/vmm's loader: what Effect and
 * the channel add before any of the vmm's own services.
 */
import * as Effect from "effect/Effect"
import { ImsgChannelNative } from "../../src/layers/ImsgChannelNative.ts"
import { nativeFd } from "../../src/native/libc.ts"
import { IMSG_VMDOP_GET_INFO_VM_END_DATA, IMSG_VMDOP_GET_INFO_VM_REQUEST } from "../../src/schema/imsgTypes.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"

const answer = Effect.gen(function* () {
  const channel = yield* (yield* ImsgChannel).open(nativeFd(3, "parent"))
  for (;;) {
    const batch = yield* channel.receive
    if (batch === null) return
    for (const m of batch) {
      if (m.type === IMSG_VMDOP_GET_INFO_VM_REQUEST) channel.unsafeSendNow({ type: IMSG_VMDOP_GET_INFO_VM_END_DATA, peerid: m.peerid, pid: 0 })
    }
  }
})

Effect.runFork(Effect.scoped(answer).pipe(Effect.provide(ImsgChannelNative.layer), Effect.andThen(Effect.sync(() => process.exit(0)))))

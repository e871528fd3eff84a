/**
 * Start-up floor (scripts/bench-vmm.ts): the same answer (./answer.ts) made
 * by a fiber, through bin/vmm's loader: what Effect's runtime adds to
 * start-up before any service, layer or channel. effect/Effect directly, as
 * scripts/build.mjs makes src/'s imports of "effect".
 */
import * as Effect from "effect/Effect"
import { answerOnFd3 } from "./answer.ts"

Effect.runFork(Effect.async<void>((resume) => answerOnFd3(() => resume(Effect.void))).pipe(Effect.andThen(Effect.sync(() => process.exit(0)))))

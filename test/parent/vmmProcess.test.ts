/**
 * The parent stand-in's spawn of bin/vmm (src/parent/vmmProcess.ts): a spawn
 * that fails is a ParentError, also when the fiber yields right after the
 * spawn (Node emits the failure as an 'error' event from a nextTick).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as libc from "../../src/native/libc.ts"
import { spawnVmm } from "../../src/parent/vmmProcess.ts"
import { yieldingAfterSpawnError } from "../process/kit.ts"

describe("spawnVmm", () => {
  it.live("a program that cannot be run is a ParentError, even when the fiber yields right after spawning it", () =>
    Effect.gen(function* () {
      const fd3 = libc.nativeFd(libc.open("/dev/null", libc.O_RDONLY), "fd 3")
      const failed = yield* yieldingAfterSpawnError(
        Effect.scoped(Effect.flip(spawnVmm({ command: { command: "/nonexistent/vmm", args: [] } }, fd3)))
      ).pipe(Effect.ensuring(Effect.sync(() => fd3.closeSync())))
      expect(failed.message).toContain("ENOENT")
    })
  )
})

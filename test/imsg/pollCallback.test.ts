/**
 * uvpoll.ts's notion of "inside a poll callback", which the vmm's
 * dispatcher scheduler reads to run a woken fiber there and then: true in a
 * uv_poll callback and in `asPollCallback` (koffi's async completions, as
 * ProcessDirect's posix_spawn), false everywhere else, also after a throw.
 */
import { describe, expect, it } from "@effect/vitest"
import * as libc from "../../src/native/libc.ts"
import { asPollCallback, insidePollCallback, UV_READABLE, UvPoll } from "../../src/native/uvpoll.ts"

describe("insidePollCallback", () => {
  it("is true inside asPollCallback (nested too), false outside and after a throw", () => {
    expect(insidePollCallback()).toBe(false)
    const seen: Array<boolean> = []
    asPollCallback(() => {
      seen.push(insidePollCallback())
      asPollCallback(() => seen.push(insidePollCallback()))
      seen.push(insidePollCallback())
    })
    expect(seen).toEqual([true, true, true])
    expect(insidePollCallback()).toBe(false)
    expect(() =>
      asPollCallback(() => {
        throw new Error("boom")
      })
    ).toThrow("boom")
    expect(insidePollCallback()).toBe(false)
  })

  it("is true in a uv_poll callback on Node's loop, and false again after it", async () => {
    const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC)
    if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
    const [a, b] = pair
    const inside = await new Promise<boolean>((resolve) => {
      const poll = UvPoll.open(a, () => {
        resolve(insidePollCallback())
        if (typeof poll !== "number") poll.close()
      })
      if (typeof poll === "number") throw new Error(`uv_poll_init: ${poll}`)
      expect(poll.start(UV_READABLE)).toBe(0)
      libc.write(b, Uint8Array.of(1))
    })
    expect(inside).toBe(true)
    expect(insidePollCallback()).toBe(false)
    libc.close(a)
    libc.close(b)
  })
})

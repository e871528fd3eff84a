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

describe("UvPoll after POLLERR", () => {
  it("libuv has stopped the handle: events reads 0, and starting it again with the same events calls back again", async () => {
    const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC)
    if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
    const [a, b] = pair
    // the peer closes with a byte of ours unread: a's socket reports POLLERR (ECONNRESET)
    expect(libc.write(a, Uint8Array.of(1))).toBe(1)
    libc.close(b)
    const calls: Array<{ status: number; events: number }> = []
    let poll: UvPoll | number = -1
    const twice = new Promise<void>((resolve) => {
      poll = UvPoll.open(a, (status) => {
        const p = poll as UvPoll
        calls.push({ status, events: p.events })
        if (calls.length === 1) expect(p.start(UV_READABLE)).toBe(0)
        else resolve()
      })
    })
    if (typeof poll === "number") throw new Error(`uv_poll_init: ${poll}`)
    const p: UvPoll = poll
    expect(p.start(UV_READABLE)).toBe(0)
    const timeout = new Promise<void>((_, reject) => setTimeout(() => reject(new Error("no second callback")), 2000))
    try {
      await Promise.race([twice, timeout])
    } finally {
      await new Promise<void>((resolve) => p.close(resolve))
      libc.close(a)
    }
    expect(calls.map((c) => [c.status < 0, c.events])).toEqual([
      [true, 0],
      [true, 0]
    ])
  })
})

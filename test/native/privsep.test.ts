import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { applyPrivsep, privsepOrExit, type PrivsepDeps } from "../../src/native/privsep.ts"
import { openFdNumbers } from "../../src/native/sys.ts"
import { logState } from "../../src/vmm/log.ts"

/** OpenBSD as root where every call succeeds; the calls made are recorded. */
const fakeOpenBSD = (over: Partial<PrivsepDeps> = {}) => {
  const calls: Array<string> = []
  let uid = 0
  const deps: Partial<PrivsepDeps> = {
    platform: "openbsd",
    getuid: () => uid,
    setgroups: (g) => void calls.push(`setgroups ${g.join(",")}`),
    setgid: (id) => void calls.push(`setgid ${id}`),
    setuid: (id) => {
      calls.push(`setuid ${id}`)
      uid = 1000
    },
    unveil: (p, perm) => (calls.push(`unveil ${p} ${perm}`), 0),
    pledge: (p, e) => (calls.push(`pledge ${p} ${e}`), 0),
    errno: () => 1,
    ...over
  }
  return { calls, deps }
}

const captureWarnings = <A>(eff: Effect.Effect<A>): { value: A; lines: Array<string> } => {
  const lines: Array<string> = []
  const saved = logState.sink
  logState.sink = (level, line) => void (level === "warning" && lines.push(line))
  try {
    return { value: Effect.runSync(eff), lines }
  } finally {
    logState.sink = saved
  }
}

describe("applyPrivsep", () => {
  it("does nothing off OpenBSD", () => {
    const { calls, deps } = fakeOpenBSD({ platform: "linux" })
    expect(applyPrivsep("/x/vm", deps)).toMatchObject({ failed: false, dropped: false, pledged: false })
    expect(calls).toEqual([])
    expect(captureWarnings(privsepOrExit("/x/vm", deps)).value).toBeNull()
  })

  it("drops, unveils only the programs exec'd, and pledges on OpenBSD as root", () => {
    const { calls, deps } = fakeOpenBSD()
    expect(applyPrivsep(process.execPath, deps)).toMatchObject({ failed: false, dropped: true, pledged: true })
    expect(calls).toEqual([
      "setgroups _vmd",
      "setgid _vmd",
      "setuid _vmd",
      `unveil ${process.execPath} x`,
      "unveil null null",
      "pledge stdio rpath prot_exec vmm sendfd recvfd proc exec null"
    ])
    expect(calls.some((c) => c.includes("/usr/bin/env"))).toBe(false)
  })

  it("fails when setuid throws, before any unveil/pledge; the vmm exits 1 with a warning", () => {
    const { calls, deps } = fakeOpenBSD({
      setuid: () => {
        throw new Error("EPERM")
      }
    })
    const r = applyPrivsep("/x/vm", deps)
    expect(r).toMatchObject({ failed: true, dropped: false, pledged: false })
    expect(r.note).toContain("cannot drop privileges")
    expect(calls.some((c) => c.startsWith("unveil") || c.startsWith("pledge"))).toBe(false)
    const out = captureWarnings(privsepOrExit("/x/vm", deps))
    expect(out.value).toBe(1)
    expect(out.lines.join("\n")).toContain("cannot drop privileges")
  })

  it("fails when still root after setuid", () => {
    const { deps } = fakeOpenBSD({ setuid: () => {} })
    expect(applyPrivsep("/x/vm", deps)).toMatchObject({ failed: true, dropped: false })
    expect(captureWarnings(privsepOrExit("/x/vm", deps)).value).toBe(1)
  })

  it("fails when unveil returns -1", () => {
    const { calls, deps } = fakeOpenBSD({ unveil: () => -1 })
    const r = applyPrivsep("/x/vm", deps)
    expect(r).toMatchObject({ failed: true, dropped: true, pledged: false })
    expect(r.note).toContain("unveil /x/vm")
    expect(calls.some((c) => c.startsWith("pledge"))).toBe(false)
    const out = captureWarnings(privsepOrExit("/x/vm", deps))
    expect(out.value).toBe(1)
    expect(out.lines.join("\n")).toContain("unveil")
  })

  it("fails when pledge returns -1", () => {
    const { deps } = fakeOpenBSD({ pledge: () => -1 })
    const r = applyPrivsep("/x/vm", deps)
    expect(r).toMatchObject({ failed: true, dropped: true, pledged: false })
    expect(r.note).toContain("pledge")
    const out = captureWarnings(privsepOrExit("/x/vm", deps))
    expect(out.value).toBe(1)
    expect(out.lines.join("\n")).toContain("pledge")
  })
})

describe("openFdNumbers", () => {
  it("is null on OpenBSD (its /dev/fd is a fixed 0..63), a list here", () => {
    expect(openFdNumbers("openbsd")).toBeNull()
    expect(openFdNumbers("linux")).toContain(0)
  })
})

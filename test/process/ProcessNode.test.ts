import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Layer, Scope, Stream } from "effect"
import { execFileSync } from "node:child_process"
import { chmodSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import { childrenOf, clearCloexec, fsBackend, identity, parseReport, SIGKILL, SIGTERM, tempFdIn, untilWritten } from "./kit.ts"
import * as ProcessNode from "../../src/layers/ProcessNode.ts"
import { Errno, fromErrorCode } from "../../src/schema/errno.ts"
import { Fd } from "../../src/services/Fd.ts"
import { Process } from "../../src/services/Process.ts"
import type { ExitStatus } from "../../src/services/Process.ts"

let dir = ""
let child = ""

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "vmd-vmm-process-"))
  child = join(dir, "child")
  execFileSync("gcc", ["-O1", "-Wall", "-o", child, join(import.meta.dirname, "c", "child.c")])
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
  // Nothing left behind: no process (alive or zombie) has this test process as its parent.
  expect(childrenOfThisProcess()).toEqual([])
})

const childrenOfThisProcess = (): ReadonlyArray<number> => childrenOf(process.pid)

const tempFd = tempFdIn(() => dir)

const gone = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return false
  } catch (e) {
    return e instanceof Error && "code" in e && e.code === "ESRCH"
  }
}


describe("ProcessNode", () => {
  it.scopedLive("each fd lands at its own number, is the parent's file, and nothing else is open", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const a = yield* tempFd("a")
      const b = yield* tempFd("b")
      // An fd this process holds without close-on-exec must still not reach the child.
      const stray = yield* tempFd("stray")
      clearCloexec(stray.fd.num)
      const given = [out.fd, a.fd, b.fd]
      const nums = [0, 1, 2, a.fd.num, b.fd.num].map(String)
      const c = yield* proc.spawn({
        command: child,
        args: ["fdinfo", String(out.fd.num), ...nums],
        fds: given,
        stdio: "null"
      })
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
      const report = parseReport(readFileSync(out.path, "utf8"))
      expect(report.pid).toBe(c.pid)
      expect(report.sid).toBe(c.pid) // own session
      expect(report.fds.get(a.fd.num)).toBe(identity(a.fd.num))
      expect(report.fds.get(b.fd.num)).toBe(identity(b.fd.num))
      const devnull = statSync("/dev/null", { bigint: true })
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(`dev ${devnull.dev} ino ${devnull.ino}`)
      expect(report.open).toEqual([0, 1, 2, ...given.map((fd) => fd.num)].sort((x, y) => x - y))
      expect(report.open).not.toContain(stray.fd.num)
    }).pipe(Effect.provide(ProcessNode.layer))
  )

  it.scopedLive("stdio inherit gives the child this process's 0, 1, 2", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const c = yield* proc.spawn({
        command: child,
        args: ["fdinfo", String(out.fd.num), "0", "1", "2"],
        fds: [out.fd],
        stdio: "inherit"
      })
      yield* c.exit
      const report = parseReport(readFileSync(out.path, "utf8"))
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(identity(n))
    }).pipe(Effect.provide(ProcessNode.layer))
  )

  it.scopedLive("exit codes and signals reach exit and the exits stream, in order", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const seven = yield* proc.spawn({ command: child, args: ["exit", "7"], fds: [], stdio: "null" })
      expect(yield* seven.exit).toEqual({ _tag: "Exited", code: 7 })
      const sleeper = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      expect(yield* proc.isAlive(sleeper.pid)).toBe(true)
      expect(yield* proc.children).toEqual([sleeper.pid])
      yield* proc.kill(sleeper.pid, "SIGTERM")
      expect(yield* sleeper.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      const zero = yield* proc.spawn({ command: child, args: ["exit", "0"], fds: [], stdio: "null" })
      yield* zero.exit
      const exits = yield* proc.exits.pipe(Stream.take(3), Stream.runCollect)
      expect(Chunk.toReadonlyArray(exits)).toEqual([
        { pid: seven.pid, status: { _tag: "Exited", code: 7 } },
        { pid: sleeper.pid, status: { _tag: "Signaled", signal: SIGTERM } },
        { pid: zero.pid, status: { _tag: "Exited", code: 0 } }
      ])
      expect(yield* proc.isAlive(sleeper.pid)).toBe(false)
      expect(yield* proc.children).toEqual([])
    }).pipe(Effect.provide(ProcessNode.layer))
  )

  it.scopedLive("kill of a reaped or foreign pid is ESRCH and signals nothing", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn({ command: child, args: ["exit", "0"], fds: [], stdio: "null" })
      yield* c.exit
      const err = yield* Effect.flip(proc.kill(c.pid, "SIGKILL"))
      expect(err.errno).toBe(Errno.ESRCH)
      // Our own pid is not our child: never signalled.
      const self = yield* Effect.flip(proc.kill(process.pid, "SIGTERM"))
      expect(self.errno).toBe(Errno.ESRCH)
    }).pipe(Effect.provide(ProcessNode.layer))
  )

  it.scopedLive("spawn failures are SpawnError with the OpenBSD errno", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const missing = yield* Effect.flip(
        proc.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null" })
      )
      expect(missing).toMatchObject({ _tag: "SpawnError", reason: "NotFound", errno: Errno.ENOENT })
      const notExec = join(dir, "not-executable")
      writeFileSync(notExec, "#!/bin/sh\n")
      chmodSync(notExec, 0o644)
      const denied = yield* Effect.flip(proc.spawn({ command: notExec, args: [], fds: [], stdio: "null" }))
      expect(denied).toMatchObject({ reason: "Other", errno: Errno.EACCES })
      const f = yield* tempFd("closed")
      yield* f.fd.close
      const badf = yield* Effect.flip(proc.spawn({ command: child, args: ["exit", "0"], fds: [f.fd], stdio: "null" }))
      expect(badf.errno).toBe(Errno.EBADF)
      expect(yield* proc.children).toEqual([])
    }).pipe(Effect.provide(ProcessNode.layer))
  )

  it.live("the layer's end SIGKILLs and reaps every child still alive", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const ready = join(dir, "ready")
      const readyFd = new Fd(openSync(ready, "w+"), fsBackend, "ready")
      const context = yield* Layer.buildWithScope(ProcessNode.layer, scope)
      const { pids, statuses } = yield* Effect.gen(function* () {
        const proc = yield* Process
        const sleeper = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
        const stubborn = yield* proc.spawn({
          command: child,
          args: ["ignterm", String(readyFd.num)],
          fds: [readyFd],
          stdio: "null"
        })
        yield* untilWritten(ready)
        return { pids: [sleeper.pid, stubborn.pid], statuses: [sleeper.exit, stubborn.exit] }
      }).pipe(Effect.provide(context))
      readyFd.closeSync()
      for (const pid of pids) expect(gone(pid)).toBe(false)
      yield* Scope.close(scope, Exit.void)
      for (const pid of pids) expect(gone(pid)).toBe(true)
      const done: Array<ExitStatus> = yield* Effect.all(statuses)
      expect(done).toEqual([
        { _tag: "Signaled", signal: SIGKILL },
        { _tag: "Signaled", signal: SIGKILL }
      ])
    })
  )

  it.scopedLive("fds above holes keep their numbers", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const opened = yield* Effect.forEach(Array.from({ length: 6 }, (_, i) => i), (i) => tempFd(`f${i}`))
      // Close every other one to leave holes below the highest number.
      const kept = opened.filter((_, i) => i % 2 === 0)
      for (const [i, f] of opened.entries()) if (i % 2 === 1) f.fd.closeSync()
      const c = yield* proc.spawn({
        command: child,
        args: ["fdinfo", String(out.fd.num), ...kept.map((f) => String(f.fd.num))],
        fds: [out.fd, ...kept.map((f) => f.fd)],
        stdio: "null"
      })
      yield* c.exit
      const report = parseReport(readFileSync(out.path, "utf8"))
      for (const f of kept) expect(report.fds.get(f.fd.num)).toBe(identity(f.fd.num))
      expect(report.open).toEqual([0, 1, 2, out.fd.num, ...kept.map((f) => f.fd.num)].sort((x, y) => x - y))
    }).pipe(Effect.provide(ProcessNode.layer))
  )
})

describe("errno mapping", () => {
  it("spawn errnos are OpenBSD numbers with their reason", () => {
    expect(
      ["ENOENT", "EAGAIN", "ENOMEM", "EACCES", "ESRCH"].map((code) => {
        const errno = fromErrorCode(code)
        return [code, errno, ProcessNode.reasonOf(errno)]
      })
    ).toEqual([
      ["ENOENT", 2, "NotFound"],
      ["EAGAIN", 35, "Resources"],
      ["ENOMEM", 12, "Resources"],
      ["EACCES", 13, "Other"],
      ["ESRCH", 3, "NotFound"]
    ])
  })
})

describe("stdioFor", () => {
  it("fills every slot up to the highest fd", () => {
    const fd = (n: number) => new Fd(n, fsBackend, "")
    expect(ProcessNode.stdioFor({ command: "x", args: [], fds: [fd(5), fd(3)], stdio: "null" })).toEqual([
      "ignore",
      "ignore",
      "ignore",
      3,
      "ignore",
      5
    ])
    expect(ProcessNode.stdioFor({ command: "x", args: [], fds: [], stdio: "inherit" })).toEqual([
      "inherit",
      "inherit",
      "inherit"
    ])
  })
})

/**
 * The behaviours every real-process layer of the Process service must have
 * (ProcessSpawner and ProcessDirect register these in their own test files,
 * with their own layer, C child program and temp files): each fd at its own
 * number and the parent's file, nothing else open, own session, stdio null
 * and inherit, exits in order exactly once, kill of a reaped or foreign pid.
 */
import { expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Scope, Stream } from "effect"
import type { Layer } from "effect"
import { openSync, readdirSync, readFileSync, readlinkSync } from "node:fs"
import { join } from "node:path"
import { clearCloexec, devnullId, fsBackend, identity, parseReport, SIGKILL, SIGTERM, sorted, type tempFdIn, untilWritten } from "./kit.ts"
import { procStat } from "../e2e/proc.ts"
import { Errno } from "../../src/schema/errno.ts"
import { Fd } from "../../src/services/Fd.ts"
import { Process, type ExitStatus, type ProcessService } from "../../src/services/Process.ts"

export interface LayerUnderTest {
  readonly layer: Layer.Layer<Process, unknown>
  /** test/process/c/child.c, built. */
  readonly child: () => string
  readonly tempFd: ReturnType<typeof tempFdIn>
  /** Every pid spawned, for the file's final check that all are gone. */
  readonly spawned: Array<number>
  /** Checks of the layer's own, run while a child is alive, once all are reaped, and after kill's ESRCH cases. */
  readonly whileAlive?: Effect.Effect<void, unknown, Process | Scope.Scope>
  readonly whenReaped?: Effect.Effect<void, unknown, Process | Scope.Scope>
  readonly afterKill?: Effect.Effect<void, unknown, Process | Scope.Scope>
}

/** This process's fds open on `path`. */
const fdsOnPath = (path: string): Array<number> =>
  readdirSync("/proc/self/fd").flatMap((n) => {
    try {
      return readlinkSync(`/proc/self/fd/${n}`) === path ? [Number(n)] : []
    } catch {
      return []
    }
  })

export const sharedProcessTests = (t: LayerUnderTest): void => {
  const { layer, tempFd, spawned } = t

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
      const c = yield* proc.spawn({ command: t.child(), args: ["fdinfo", String(out.fd.num), ...nums], fds: given, stdio: "null" })
      spawned.push(c.pid)
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
      const report = parseReport(readFileSync(out.path, "utf8"))
      expect(report.pid).toBe(c.pid)
      expect(report.sid).toBe(c.pid) // own session
      expect(report.fds.get(a.fd.num)).toBe(identity(a.fd.num))
      expect(report.fds.get(b.fd.num)).toBe(identity(b.fd.num))
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(devnullId())
      expect(report.open).toEqual(sorted([0, 1, 2, ...given.map((fd) => fd.num)]))
      expect(report.open).not.toContain(stray.fd.num)
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("stdio inherit gives the child this process's 0, 1, 2", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const c = yield* proc.spawn({ command: t.child(), args: ["fdinfo", String(out.fd.num), "0", "1", "2"], fds: [out.fd], stdio: "inherit" })
      spawned.push(c.pid)
      yield* c.exit
      const report = parseReport(readFileSync(out.path, "utf8"))
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(identity(n))
      expect(report.open).toEqual(sorted([0, 1, 2, out.fd.num]))
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("exit codes and signals reach exit and the exits stream, in order", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const seven = yield* proc.spawn({ command: t.child(), args: ["exit", "7"], fds: [], stdio: "null" })
      expect(yield* seven.exit).toEqual({ _tag: "Exited", code: 7 })
      const sleeper = yield* proc.spawn({ command: t.child(), args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(seven.pid, sleeper.pid)
      expect(yield* proc.isAlive(sleeper.pid)).toBe(true)
      expect(yield* proc.children).toEqual([sleeper.pid])
      if (t.whileAlive !== undefined) yield* t.whileAlive
      yield* proc.kill(sleeper.pid, "SIGTERM")
      expect(yield* sleeper.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      const zero = yield* proc.spawn({ command: t.child(), args: ["exit", "0"], fds: [], stdio: "null" })
      spawned.push(zero.pid)
      yield* zero.exit
      const exits = yield* proc.exits.pipe(Stream.take(3), Stream.runCollect)
      expect(Chunk.toReadonlyArray(exits)).toEqual([
        { pid: seven.pid, status: { _tag: "Exited", code: 7 } },
        { pid: sleeper.pid, status: { _tag: "Signaled", signal: SIGTERM } },
        { pid: zero.pid, status: { _tag: "Exited", code: 0 } }
      ])
      expect(yield* proc.isAlive(sleeper.pid)).toBe(false)
      expect(yield* proc.children).toEqual([])
      if (t.whenReaped !== undefined) yield* t.whenReaped
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("kill of a reaped or foreign pid is ESRCH and signals nothing", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn({ command: t.child(), args: ["exit", "0"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      yield* c.exit
      const err = yield* Effect.flip(proc.kill(c.pid, "SIGKILL"))
      expect(err.errno).toBe(Errno.ESRCH)
      const self = yield* Effect.flip(proc.kill(process.pid, "SIGTERM"))
      expect(self.errno).toBe(Errno.ESRCH)
      if (t.afterKill !== undefined) yield* t.afterKill
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("fds above holes keep their numbers", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const opened = yield* Effect.forEach(Array.from({ length: 6 }, (_, i) => i), (i) => tempFd(`f${i}`))
      const kept = opened.filter((_, i) => i % 2 === 0)
      for (const [i, f] of opened.entries()) if (i % 2 === 1) f.fd.closeSync()
      const c = yield* proc.spawn({
        command: t.child(),
        args: ["fdinfo", String(out.fd.num), ...kept.map((f) => String(f.fd.num))],
        fds: [out.fd, ...kept.map((f) => f.fd)],
        stdio: "null"
      })
      spawned.push(c.pid)
      yield* c.exit
      const report = parseReport(readFileSync(out.path, "utf8"))
      for (const f of kept) expect(report.fds.get(f.fd.num)).toBe(identity(f.fd.num))
      expect(report.open).toEqual(sorted([0, 1, 2, out.fd.num, ...kept.map((f) => f.fd.num)]))
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("`at` puts each fd at the number asked for: packed from 3, swapped, above a hole", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const files = yield* Effect.forEach([0, 1, 2, 3], (i) => tempFd(`at${i}`))
      const [out, a, b, c] = files.map((f) => f.fd)
      if (!out || !a || !b || !c) return yield* Effect.die(new Error("files"))
      // a and b trade numbers (each one's source is the other's target); out goes to 3, c far above.
      const high = Math.max(out.num, a.num, b.num, c.num) + 7
      const before = files.map((f) => identity(f.fd.num))
      const at = [3, b.num, a.num, high]
      const k = yield* proc.spawn({
        command: t.child(),
        args: ["fdinfo", "3", "0", "1", "2", String(a.num), String(b.num), String(high)],
        fds: [out, a, b, c],
        at,
        stdio: "null"
      })
      spawned.push(k.pid)
      expect(yield* k.exit).toEqual({ _tag: "Exited", code: 0 })
      const report = parseReport(readFileSync(files[0]?.path ?? "", "utf8"))
      expect(report.fds.get(a.num)).toBe(identity(b.num))
      expect(report.fds.get(b.num)).toBe(identity(a.num))
      expect(report.fds.get(high)).toBe(identity(c.num))
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(devnullId())
      expect(report.open).toEqual(sorted([0, 1, 2, ...at]))
      // and this process holds each file once, at its own number (a source moved out of the way is closed)
      for (const f of files) expect(fdsOnPath(f.path), f.path).toEqual([f.fd.num])
      expect(files.map((f) => identity(f.fd.num))).toEqual(before)
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("`at` below 3, repeated, or not one per fd is EINVAL, and nothing is started", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const a = yield* tempFd("bad-at-a")
      const b = yield* tempFd("bad-at-b")
      const before = yield* proc.children
      for (const at of [[2, 4], [5, 5], [3]]) {
        const err = yield* Effect.flip(proc.spawn({ command: t.child(), args: ["exit", "0"], fds: [a.fd, b.fd], at, stdio: "null" }))
        expect(err.errno, `at ${at.join(" ")}`).toBe(Errno.EINVAL)
      }
      expect(yield* proc.children).toEqual(before)
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("a VM's worth of fds (24) all land, and nothing else", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("out")
      const many = yield* Effect.forEach(Array.from({ length: 23 }, (_, i) => i), (i) => tempFd(`vm${i}`))
      const c = yield* proc.spawn({
        command: t.child(),
        args: ["fdinfo", String(out.fd.num), ...many.map((f) => String(f.fd.num))],
        fds: [out.fd, ...many.map((f) => f.fd)],
        stdio: "null"
      })
      spawned.push(c.pid)
      yield* c.exit
      const report = parseReport(readFileSync(out.path, "utf8"))
      for (const f of many) expect(report.fds.get(f.fd.num)).toBe(identity(f.fd.num))
      expect(report.open).toEqual(sorted([0, 1, 2, out.fd.num, ...many.map((f) => f.fd.num)]))
    }).pipe(Effect.provide(layer))
  )
}

/** What `layerEndTest` needs of a layer: the service built in a scope, and the layer's own checks. */
export interface LayerEnd {
  /** The layer's test file's temporary directory. */
  readonly dir: () => string
  readonly child: () => string
  readonly spawned: Array<number>
  /** The service, built in `scope` (its end is the layer's end). */
  readonly build: (scope: Scope.Scope) => Effect.Effect<ProcessService, unknown>
  /** While both children live (a sleeper and one that ignores SIGTERM). */
  readonly whileAlive: (pids: ReadonlyArray<number>) => void
  /** Once the scope is closed and both are reaped. */
  readonly whenEnded: () => void
  /** Last, after a spawn on the closed service failed. */
  readonly last?: () => void
}

/** The layer's end SIGKILLs and reaps every child still alive (one ignores SIGTERM), reports their exits, and spawns no more. */
export const layerEndTest = (name: string, t: LayerEnd): void => {
  it.live(name, () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const ready = join(t.dir(), "ready")
      const readyFd = new Fd(openSync(ready, "w+"), fsBackend, "ready")
      const proc = yield* t.build(scope)
      const sleeper = yield* proc.spawn({ command: t.child(), args: ["sleep"], fds: [], stdio: "null" })
      const stubborn = yield* proc.spawn({ command: t.child(), args: ["ignterm", String(readyFd.num)], fds: [readyFd], stdio: "null" })
      const pids = [sleeper.pid, stubborn.pid]
      t.spawned.push(...pids)
      yield* untilWritten(ready)
      readyFd.closeSync()
      t.whileAlive(pids)
      yield* Scope.close(scope, Exit.void)
      for (const pid of pids) expect(procStat(pid)).toBe(null) // reaped, not zombies
      t.whenEnded()
      const done: Array<ExitStatus> = yield* Effect.all([sleeper.exit, stubborn.exit])
      expect(done).toEqual([
        { _tag: "Signaled", signal: SIGKILL },
        { _tag: "Signaled", signal: SIGKILL }
      ])
      const exits = yield* proc.exits.pipe(Stream.take(2), Stream.runCollect)
      expect(sorted(Chunk.toReadonlyArray(exits).map((e) => e.pid))).toEqual(sorted(pids))
      // Closed: no more spawns.
      const after = yield* Effect.flip(proc.spawn({ command: t.child(), args: ["exit", "0"], fds: [], stdio: "null" }))
      expect(after.errno).toBe(Errno.EIO)
      t.last?.()
    })
  )
}

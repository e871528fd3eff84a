/**
 * ProcessSpawner: the Process service on the C spawner (c/spawner.c).
 *
 * ProcessNode's tests, run against the spawner (fork, with the exec-error
 * pipe in its poll set: SPAWN is asynchronous), plus what only the spawner
 * has: early spawns, fds moved around its own numbers, the VM's full set of fds, 200 concurrent spawns,
 * an abandoned spawn, the spawner killed, and the vmm process killed.
 */
import { procStat } from "../e2e/proc.ts"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Fiber, Layer, Scope, Stream } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import {
  chmodSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import { childrenOf, devnullId, identity, parseReport, SIGKILL, SIGTERM, sorted, tempFdIn } from "./kit.ts"
import { layerEndTest, sharedProcessTests } from "./shared.ts"
import * as ProcessSpawner from "../../src/layers/ProcessSpawner.ts"
import { Errno } from "../../src/schema/errno.ts"
import { Process } from "../../src/services/Process.ts"
import type { ChildExit } from "../../src/services/Process.ts"

const root = join(import.meta.dirname, "..", "..")
const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-spawner-"))
const child = join(dir, "child")
const builds = [{ name: "fork", binary: join(dir, "spawner") }]
/** Every pid any test spawned: all must be gone at the end. */
const spawned: Array<number> = []

beforeAll(() => {
  execFileSync("gcc", ["-O1", "-Wall", "-o", child, join(import.meta.dirname, "c", "child.c")])
  for (const b of builds) {
    execFileSync(process.execPath, [join(root, "scripts", "build-spawner.mjs"), "--strict", "--out", b.binary])
  }
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
  expect(childrenOfThisProcess()).toEqual([])
  expect(spawned.filter((pid) => !gone(pid))).toEqual([])
})

const childrenOfThisProcess = (): ReadonlyArray<number> => childrenOf(process.pid)

/** Not running: no such process, or a zombie (a reaper other than us may be slow). */
const gone = (pid: number): boolean => {
  const st = procStat(pid)
  return st === null || st.state === "Z" || st.state === "X"
}

const untilGone = (pids: ReadonlyArray<number>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 400; i++) {
      if (pids.every(gone)) return
      yield* Effect.sleep("10 millis")
    }
    return yield* Effect.die(new Error(`still alive: ${pids.filter((p) => !gone(p)).join(" ")}`))
  })

const tempFd = tempFdIn(() => dir)


/** The service itself (with spawnAt and spawnerPid) on a given build. */
const spawnerOf = (binary: string) => ProcessSpawner.make({ binary })

describe.each(builds)("ProcessSpawner ($name)", ({ binary }) => {
  const layer = ProcessSpawner.layerWith({ binary })

  sharedProcessTests({
    layer,
    child: () => child,
    tempFd,
    spawned,
    // The spawner's own check, past ours: its pid is no child of its own.
    afterKill: Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const direct = yield* Effect.flip(s.kill(s.spawnerPid, "SIGTERM"))
      expect(direct.errno).toBe(Errno.ESRCH)
    })
  })

  it.scopedLive("spawn failures are SpawnError with the OpenBSD errno", () =>
    Effect.gen(function* () {
      const proc = yield* spawnerOf(binary)
      const missing = yield* Effect.flip(
        proc.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null" })
      )
      expect(missing).toMatchObject({ _tag: "SpawnError", reason: "NotFound", errno: Errno.ENOENT })
      const notInPath = yield* Effect.flip(
        proc.spawn({ command: "vmd-vmm-no-such-program", args: [], fds: [], stdio: "null" })
      )
      expect(notInPath).toMatchObject({ reason: "NotFound", errno: Errno.ENOENT })
      const notExec = join(dir, "not-executable")
      writeFileSync(notExec, "#!/bin/sh\n")
      chmodSync(notExec, 0o644)
      const denied = yield* Effect.flip(proc.spawn({ command: notExec, args: [], fds: [], stdio: "null" }))
      expect(denied).toMatchObject({ reason: "Other", errno: Errno.EACCES })
      const f = yield* tempFd("closed")
      yield* f.fd.close
      const badf = yield* Effect.flip(proc.spawn({ command: child, args: ["exit", "0"], fds: [f.fd], stdio: "null" }))
      expect(badf.errno).toBe(Errno.EBADF)
      const nul = yield* Effect.flip(proc.spawn({ command: child, args: ["a\0b"], fds: [], stdio: "null" }))
      expect(nul.errno).toBe(Errno.EINVAL)
      const huge = yield* Effect.flip(
        proc.spawn({ command: child, args: ["x".repeat(ProcessSpawner.MAX_REQUEST)], fds: [], stdio: "null" })
      )
      expect(huge.errno).toBe(Errno.E2BIG)
      // strings that fill the request to its last byte, then an empty one: no room for its NUL
      const fill = ProcessSpawner.MAX_REQUEST - ProcessSpawner.HDR_BYTES - (new TextEncoder().encode(child).length + 1) - 1
      const full = yield* Effect.flip(proc.spawn({ command: child, args: ["x".repeat(fill), ""], fds: [], stdio: "null" }))
      expect(full.errno).toBe(Errno.E2BIG)
      expect(yield* proc.children).toEqual([])
      // The spawner is still fine after all that.
      const ok = yield* proc.spawn({ command: child, args: ["exit", "3"], fds: [], stdio: "null" })
      spawned.push(ok.pid)
      expect(yield* ok.exit).toEqual({ _tag: "Exited", code: 3 })
      // Children whose exec failed were reaped by the spawner, never reported.
      expect(childrenOf(proc.spawnerPid)).toEqual([])
      const exits = yield* proc.exits.pipe(Stream.take(1), Stream.runCollect)
      expect(Chunk.toReadonlyArray(exits)).toEqual([{ pid: ok.pid, status: { _tag: "Exited", code: 3 } }])
    })
  )

  it.scopedLive("kill of a pid the spawner reaped before we heard of it is ESRCH from the spawner", () =>
    Effect.gen(function* () {
      const proc = yield* spawnerOf(binary)
      const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      // Behind the layer's back, and with this loop blocked until the spawner
      // has reaped it: its EXIT is not read yet.
      process.kill(c.pid, "SIGTERM")
      const until = Date.now() + 5000
      while (procStat(c.pid) !== null && Date.now() < until) {
        // spin
      }
      expect(procStat(c.pid)).toBe(null)
      expect(yield* proc.isAlive(c.pid)).toBe(true)
      const err = yield* Effect.flip(proc.kill(c.pid, "SIGTERM"))
      expect(err.errno).toBe(Errno.ESRCH)
      expect(yield* c.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
    })
  )

  it.scopedLive("requests the socket cannot take now are queued and sent in order", () =>
    Effect.gen(function* () {
      const proc = yield* spawnerOf(binary)
      const out = yield* tempFd("queued")
      const n = 600
      // Stopped, the spawner reads nothing: the socket fills and sends return EAGAIN.
      process.kill(proc.spawnerPid, "SIGSTOP")
      const fiber = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) =>
          proc.spawn({ command: child, args: ["exit", String(i % 50)], fds: [out.fd, out.fd, out.fd], stdio: "null" }),
        { concurrency: "unbounded" }
      ).pipe(Effect.fork)
      yield* Effect.sleep("50 millis")
      // The caller may close its fds while its request waits: the queue holds duplicates.
      out.fd.closeSync()
      process.kill(proc.spawnerPid, "SIGCONT")
      const kids = yield* Fiber.join(fiber)
      spawned.push(...kids.map((k) => k.pid))
      const statuses = yield* Effect.forEach(kids, (k) => k.exit)
      expect(statuses).toEqual(Array.from({ length: n }, (_, i) => ({ _tag: "Exited", code: i % 50 })))
      const exits = Chunk.toReadonlyArray(yield* proc.exits.pipe(Stream.take(n), Stream.runCollect))
      expect(new Set(exits.map((e) => e.pid)).size).toBe(n)
      // The order sent: the spawner forks each request as it reads it, so the pids
      // rise with the request's index (pids are handed out rising; the one place
      // they may fall is a wraparound at pid_max, and 600 forks wrap at most once).
      const falls = kids.flatMap((k, i) => (i > 0 && k.pid < (kids[i - 1]?.pid ?? 0) ? [i] : []))
      expect(falls.length).toBeLessThanOrEqual(1)
    })
  )

  it.scopedLive("early spawn of a program that exists runs it with each fd at its number (and at spawnAt's targets)", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const out = yield* tempFd("early-out")
      const a = yield* tempFd("early-a")
      const b = yield* tempFd("early-b")
      const given = [out.fd, a.fd, b.fd]
      const c = yield* s.spawn({
        command: child,
        args: ["fdinfo", String(out.fd.num), "0", "1", "2", String(a.fd.num), String(b.fd.num)],
        fds: given,
        stdio: "null",
        early: true
      })
      spawned.push(c.pid)
      expect(c.pid).toBeGreaterThan(0)
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
      const report = parseReport(readFileSync(out.path, "utf8"))
      expect(report.pid).toBe(c.pid)
      expect(report.sid).toBe(c.pid)
      expect(report.fds.get(a.fd.num)).toBe(identity(a.fd.num))
      expect(report.fds.get(b.fd.num)).toBe(identity(b.fd.num))
      for (const n of [0, 1, 2]) expect(report.fds.get(n)).toBe(devnullId())
      expect(report.open).toEqual(sorted([0, 1, 2, ...given.map((fd) => fd.num)]))
      // Moved: 3 and 4 are the spawner's own socket and /dev/null.
      const moved = yield* tempFd("early-moved")
      const k = yield* s.spawnAt(
        { command: child, args: ["fdinfo", "9", "3", "4"], fds: [moved.fd, a.fd, b.fd], stdio: "null", early: true },
        [9, 3, 4]
      )
      spawned.push(k.pid)
      expect(yield* k.exit).toEqual({ _tag: "Exited", code: 0 })
      const r2 = parseReport(readFileSync(moved.path, "utf8"))
      expect(r2.fds.get(3)).toBe(identity(a.fd.num))
      expect(r2.fds.get(4)).toBe(identity(b.fd.num))
      expect(r2.open).toEqual([0, 1, 2, 3, 4, 9])
      const exits = Chunk.toReadonlyArray(yield* s.exits.pipe(Stream.take(2), Stream.runCollect))
      expect(exits).toEqual([
        { pid: c.pid, status: { _tag: "Exited", code: 0 } },
        { pid: k.pid, status: { _tag: "Exited", code: 0 } }
      ])
    })
  )

  it.scopedLive("early spawn of a missing program: a pid, then Exited 127 exactly once, nothing left behind", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const notExec = join(dir, "early-not-executable")
      writeFileSync(notExec, "#!/bin/sh\n")
      chmodSync(notExec, 0o644)
      // By path, searched in PATH, and one that exec refuses (EACCES): none is a SpawnError.
      const commands = [join(dir, "no-such-program"), "vmd-vmm-no-such-program", notExec]
      const kids = yield* Effect.forEach(commands, (command) =>
        s.spawn({ command, args: [], fds: [], stdio: "null", early: true })
      )
      const pids = kids.map((k) => k.pid)
      spawned.push(...pids)
      for (const pid of pids) expect(pid).toBeGreaterThan(0)
      expect(new Set(pids).size).toBe(3)
      const statuses = yield* Effect.forEach(kids, (k) => k.exit.pipe(Effect.timeout("5 seconds")))
      expect(statuses).toEqual(pids.map(() => ({ _tag: "Exited", code: 127 })))
      // Through takeExits (the vmm's SIGCHLD handler's way).
      const exits: Array<ChildExit> = []
      while (exits.length < 3) exits.push(...(yield* s.takeExits.pipe(Effect.timeout("5 seconds"))))
      expect(exits.length).toBe(3)
      expect(sorted(exits.map((e) => e.pid))).toEqual(sorted(pids))
      for (const e of exits) expect(e.status).toEqual({ _tag: "Exited", code: 127 })
      // Exactly once: nothing more comes.
      const extra = yield* s.takeExits.pipe(Effect.timeout("100 millis"), Effect.option)
      expect(extra._tag).toBe("None")
      expect(yield* s.children).toEqual([])
      for (const pid of pids) expect(yield* s.isAlive(pid)).toBe(false)
      // Reaped by the spawner (no zombie), and gone for kill.
      expect(childrenOf(s.spawnerPid)).toEqual([])
      for (const pid of pids) expect(procStat(pid)).toBe(null)
      const esrch = yield* Effect.flip(s.kill(pids[0] ?? 0, "SIGTERM"))
      expect(esrch.errno).toBe(Errno.ESRCH)
    })
  )

  it.scopedLive("early spawns whose children exit at once: each SPAWNED before its EXIT, every exit once", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const n = 100
      const missing = join(dir, "no-such-program")
      // Even: exits at once after exec; odd: its exec fails, it _exits at once.
      const kids = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) =>
          s.spawn(
            i % 2 === 0
              ? { command: child, args: ["exit", String(i % 50)], fds: [], stdio: "null", early: true }
              : { command: missing, args: [], fds: [], stdio: "null", early: true }
          ),
        { concurrency: "unbounded" }
      )
      spawned.push(...kids.map((k) => k.pid))
      expect(new Set(kids.map((k) => k.pid)).size).toBe(n)
      // An EXIT ahead of its SPAWNED would find no child to complete: this would time out.
      const statuses = yield* Effect.forEach(kids, (k) => k.exit).pipe(Effect.timeout("20 seconds"))
      expect(statuses).toEqual(
        Array.from({ length: n }, (_, i) => ({ _tag: "Exited", code: i % 2 === 0 ? i % 50 : 127 }))
      )
      const exits = Chunk.toReadonlyArray(yield* s.exits.pipe(Stream.take(n), Stream.runCollect))
      expect(sorted(exits.map((e) => e.pid))).toEqual(sorted(kids.map((k) => k.pid)))
      const extra = yield* s.exits.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("100 millis"), Effect.option)
      expect(extra._tag).toBe("None")
      expect(yield* s.children).toEqual([])
      expect(childrenOf(s.spawnerPid)).toEqual([])
    })
  )

  it.scopedLive("without early, a missing program is still SpawnError NotFound and no exit is reported", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      for (const early of [undefined, false]) {
        const missing = yield* Effect.flip(
          s.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null", ...(early === undefined ? {} : { early }) })
        )
        expect(missing).toMatchObject({ _tag: "SpawnError", reason: "NotFound", errno: Errno.ENOENT })
      }
      expect(yield* s.children).toEqual([])
      const none = yield* s.takeExits.pipe(Effect.timeout("100 millis"), Effect.option)
      expect(none._tag).toBe("None")
      expect(childrenOf(s.spawnerPid)).toEqual([])
    })
  )

  it.scopedLive("PATH search and env: the whole environment when env is given", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const out = yield* tempFd("env")
      const c = yield* s.spawnAt(
        {
          command: "sh",
          args: ["-c", 'printf "%s|%s" "$VMD_VMM_TEST" "$HOME" >&5'],
          fds: [out.fd],
          stdio: "null",
          env: { VMD_VMM_TEST: "hello world" }
        },
        [5]
      )
      spawned.push(c.pid)
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
      expect(readFileSync(out.path, "utf8")).toBe(`hello world|${process.env["HOME"] ?? ""}`)
    })
  )

  {
    let spawnerPid = -1
    layerEndTest("the layer's end SIGKILLs and reaps every child still alive, and the spawner exits", {
      dir: () => dir,
      child: () => child,
      spawned,
      build: (scope) =>
        Effect.map(spawnerOf(binary).pipe(Scope.extend(scope)), (s) => {
          spawnerPid = s.spawnerPid
          spawned.push(s.spawnerPid)
          return s
        }),
      whileAlive: (pids) => {
        for (const pid of pids) expect(gone(pid)).toBe(false)
      },
      whenEnded: () => expect(procStat(spawnerPid)).toBe(null)
    })
  }

  it.scopedLive("targets on the spawner's own numbers, on 0-2, and swapped with each other", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const files3 = yield* Effect.forEach([0, 1, 2, 3, 4], (i) => tempFd(`t${i}`))
      const [out, a, b, c, d] = files3.map((f) => f.fd)
      if (!out || !a || !b || !c || !d) return yield* Effect.die(new Error("files"))
      // 3 is the spawner's socket, 4 its /dev/null; 1 replaces /dev/null on stdout;
      // c and d trade numbers (each target is the other's own number).
      const targets = [9, 3, 4, 1, d.num, c.num]
      const fds = [out, a, b, a, c, d]
      const k = yield* s.spawnAt(
        { command: child, args: ["fdinfo", "9", "0", "1", "2", "3", "4", String(c.num), String(d.num)], fds, stdio: "null" },
        targets
      )
      spawned.push(k.pid)
      expect(yield* k.exit).toEqual({ _tag: "Exited", code: 0 })
      const report = parseReport(readFileSync(files3[0]?.path ?? "", "utf8"))
      expect(report.fds.get(3)).toBe(identity(a.num))
      expect(report.fds.get(4)).toBe(identity(b.num))
      expect(report.fds.get(1)).toBe(identity(a.num))
      expect(report.fds.get(0)).toBe(devnullId())
      expect(report.fds.get(2)).toBe(devnullId())
      expect(report.fds.get(d.num)).toBe(identity(c.num))
      expect(report.fds.get(c.num)).toBe(identity(d.num))
      expect(report.open).toEqual(sorted([...new Set([0, 1, 2, ...targets])]))
    })
  )

  it.scopedLive("200 concurrent spawns: every exit reported exactly once", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const n = 200
      const out = yield* tempFd("shared")
      const kids = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) => proc.spawn({ command: child, args: ["exit", String(i % 100)], fds: [out.fd], stdio: "null" }),
        { concurrency: "unbounded" }
      )
      spawned.push(...kids.map((k) => k.pid))
      expect(new Set(kids.map((k) => k.pid)).size).toBe(n)
      const statuses = yield* Effect.forEach(kids, (k) => k.exit)
      expect(statuses).toEqual(Array.from({ length: n }, (_, i) => ({ _tag: "Exited", code: i % 100 })))
      const exits = Chunk.toReadonlyArray(yield* proc.exits.pipe(Stream.take(n), Stream.runCollect))
      expect(sorted(exits.map((e) => e.pid))).toEqual(sorted(kids.map((k) => k.pid)))
      const byPid = new Map(kids.map((k, i) => [k.pid, i % 100]))
      for (const e of exits) expect(e.status).toEqual({ _tag: "Exited", code: byPid.get(e.pid) })
      // Nothing more comes.
      const extra = yield* proc.exits.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("100 millis"), Effect.option)
      expect(extra._tag).toBe("None")
      expect(yield* proc.children).toEqual([])
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("an abandoned spawn does not leave its child running", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      // Interrupted while the request is in flight (the spawner stopped):
      // the child is killed when the reply comes.
      process.kill(s.spawnerPid, "SIGSTOP")
      const r = yield* s.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" }).pipe(
        Effect.timeout("20 millis"),
        Effect.either,
        Effect.ensuring(Effect.sync(() => process.kill(s.spawnerPid, "SIGCONT")))
      )
      expect(r._tag).toBe("Left")
      const [exit] = Chunk.toReadonlyArray(yield* s.exits.pipe(Stream.take(1), Stream.runCollect))
      expect(exit?.status).toEqual({ _tag: "Signaled", signal: SIGKILL })
      if (exit) spawned.push(exit.pid)
      expect(yield* s.children).toEqual([])
    })
  )

  it.scopedLive("the spawner killed by SIGKILL takes its children with it", () =>
    Effect.gen(function* () {
      const s = yield* spawnerOf(binary)
      const kids = yield* Effect.forEach([0, 1, 2], () =>
        s.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      )
      const pids = kids.map((k) => k.pid)
      spawned.push(...pids, s.spawnerPid)
      process.kill(s.spawnerPid, "SIGKILL")
      const statuses = yield* Effect.forEach(kids, (k) => k.exit)
      expect(statuses).toEqual(pids.map(() => ({ _tag: "Signaled", signal: SIGKILL })))
      yield* untilGone(pids)
      expect(yield* s.children).toEqual([])
      const after = yield* Effect.flip(s.spawn({ command: child, args: ["exit", "0"], fds: [], stdio: "null" }))
      expect(after.errno).toBe(Errno.EIO)
      const k = yield* Effect.flip(s.kill(pids[0] ?? 0, "SIGTERM"))
      expect(k.errno).toBe(Errno.ESRCH)
    })
  )

  it.live("the vmm process killed outright: the spawner kills its children and exits", () =>
    Effect.gen(function* () {
      const work = mkdtempSync(join(dir, "vmm-"))
      symlinkSync(join(root, "node_modules"), join(work, "node_modules"))
      const script = join(work, "vmm.mts")
      writeFileSync(
        script,
        [
          `import { Effect } from "effect"`,
          `import * as ProcessSpawner from ${JSON.stringify(join(root, "src/layers/ProcessSpawner.ts"))}`,
          `const main = Effect.gen(function* () {`,
          `  const s = yield* ProcessSpawner.make({ binary: ${JSON.stringify(binary)} })`,
          `  const pids: Array<number> = []`,
          `  for (const args of [["sleep"], ["sleep"], ["ignterm", "1"]]) {`,
          `    const c = yield* s.spawn({ command: ${JSON.stringify(child)}, args, fds: [], stdio: "null" })`,
          `    pids.push(c.pid)`,
          `  }`,
          `  yield* Effect.sleep("50 millis")`,
          `  process.stdout.write(JSON.stringify({ spawner: s.spawnerPid, pids }) + "\\n", () => process.kill(process.pid, "SIGKILL"))`,
          `  yield* Effect.never`,
          `})`,
          `Effect.runFork(Effect.scoped(main))`
        ].join("\n")
      )
      // The spawner inherits the pipe on stdout, so this returns once it has exited.
      const r = spawnSync(process.execPath, ["--import", "tsx", script], { cwd: root, encoding: "utf8", timeout: 50_000 })
      expect(r.signal).toBe("SIGKILL")
      const line = r.stdout.trim().split("\n").at(-1) ?? ""
      const { spawner, pids } = JSON.parse(line) as { spawner: number; pids: Array<number> }
      expect(pids.length).toBe(3)
      spawned.push(spawner, ...pids)
      yield* untilGone([spawner, ...pids])
    }),
    60_000 // a second Node with tsx starts slowly on a busy machine
  )
})

describe("availability", () => {
  it("spawnerAvailable is false for a missing binary", () => {
    expect(ProcessSpawner.spawnerAvailable(join(dir, "nope"))).toBe(false)
    expect(ProcessSpawner.spawnerAvailable(child)).toBe(true)
  })

  it.scopedLive("the layer fails without its binary; layerOrNode falls back to Node's spawn", () =>
    Effect.gen(function* () {
      const failed = yield* Effect.flip(
        Layer.build(ProcessSpawner.layerWith({ binary: join(dir, "nope") }))
      )
      expect(failed.errno).toBe(Errno.ENOENT)
      const saved = process.env["VMD_VMM_SPAWNER"]
      process.env["VMD_VMM_SPAWNER"] = join(dir, "nope")
      const ctx = yield* Layer.build(ProcessSpawner.layerOrNode).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            if (saved === undefined) delete process.env["VMD_VMM_SPAWNER"]
            else process.env["VMD_VMM_SPAWNER"] = saved
          })
        )
      )
      const proc = Context.get(ctx, Process)
      const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      expect(procStat(c.pid)?.ppid).toBe(process.pid) // Node's own child: ProcessNode
      yield* proc.kill(c.pid, "SIGKILL")
      yield* c.exit
      // And with the binary, the spawner's child.
      process.env["VMD_VMM_SPAWNER"] = builds[0]?.binary ?? ""
      const ctx2 = yield* Layer.build(ProcessSpawner.layerOrNode).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            if (saved === undefined) delete process.env["VMD_VMM_SPAWNER"]
            else process.env["VMD_VMM_SPAWNER"] = saved
          })
        )
      )
      const proc2 = Context.get(ctx2, Process)
      const c2 = yield* proc2.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c2.pid)
      expect(procStat(c2.pid)?.ppid).not.toBe(process.pid)
    })
  )
})

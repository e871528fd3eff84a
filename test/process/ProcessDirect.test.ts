/**
 * ProcessDirect: the Process service on posix_spawn from this process, exits
 * from pidfds on Node's loop (src/layers/ProcessDirect.ts).
 *
 * ProcessNode's and ProcessSpawner's tests, run against it, plus what only
 * it has to get right: signal dispositions and mask (the vfork child
 * starts from this process's), pidfds and poll handles released (none left
 * in /proc/self/fd), the fallback, and the CLI's --spawn direct.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Chunk, Context, Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import { execFileSync } from "node:child_process"
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { constants as osConstants, tmpdir } from "node:os"
import { join } from "node:path"
import koffi from "koffi"
import { afterAll, beforeAll, vi } from "vitest"
import { layerEndTest, sharedProcessTests } from "./shared.ts"
import { FAN_ALLOW, fanotifyWorks, holdExecs } from "./execGate.ts"
import {
  blockUntilZombie,
  childrenOf,
  clearCloexec,
  openPidfds,
  parseReport,
  SIGKILL,
  SIGTERM,
  signalMasks,
  sorted,
  tempFdIn
} from "./kit.ts"
import { procStat } from "../e2e/proc.ts"
import { Either } from "effect"
import { parseArgs } from "../../src/cli/args.ts"
import { processLayer } from "../../src/cli/layers.ts"
import * as ProcessDirect from "../../src/layers/ProcessDirect.ts"
import {
  FileActions,
  POSIX_SPAWN_SETSID,
  POSIX_SPAWN_SETSIGDEF,
  POSIX_SPAWN_SETSIGMASK,
  posixSpawnp,
  SpawnAttr,
  waitpid
} from "../../src/native/spawn.ts"
import { Errno } from "../../src/schema/errno.ts"
import { Process } from "../../src/services/Process.ts"
import type { ChildExit } from "../../src/services/Process.ts"

const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-direct-"))
const child = join(dir, "child")
/** The same program under another inode, for execGate's fanotify mark. */
const slowChild = join(dir, "slow-child")
/** Every pid any test spawned: all must be gone (reaped, not zombies) at the end. */
const spawned: Array<number> = []

beforeAll(() => {
  execFileSync("gcc", ["-O1", "-Wall", "-o", child, join(import.meta.dirname, "c", "child.c")])
  copyFileSync(child, slowChild)
  chmodSync(slowChild, 0o755)
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
  expect(childrenOf(process.pid)).toEqual([])
  expect(spawned.filter((pid) => procStat(pid) !== null)).toEqual([])
  expect(openPidfds()).toEqual([])
})

const tempFd = tempFdIn(() => dir)
const layer = ProcessDirect.layer

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const SIGPIPE = signals["SIGPIPE"] ?? 13
const SIGUSR2 = signals["SIGUSR2"] ?? 12
const bit = (signo: number): bigint => 1n << BigInt(signo - 1)

/** Until `n` pidfds are open; those open then. */
const untilPidfds = (n: number) =>
  Effect.gen(function* () {
    for (let i = 0; i < 400 && openPidfds().length > n; i++) yield* Effect.sleep("5 millis")
    return openPidfds()
  })
const untilNoPidfds = untilPidfds(0)

describe("ProcessDirect", () => {
  it("is available on this host (Linux, glibc >= 2.29, pidfd_open)", () => {
    expect(ProcessDirect.directUnavailable()).toBe(null)
  })

  sharedProcessTests({
    layer,
    child: () => child,
    tempFd,
    spawned,
    // one pidfd per live child, closed with its poll handle once it is reaped
    whileAlive: Effect.map(untilPidfds(1), (open) => expect(open.length).toBe(1)),
    whenReaped: Effect.map(untilNoPidfds, (open) => expect(open).toEqual([]))
  })

  it.scopedLive("an fd inherited without close-on-exec before the layer was built reaches no child, even below the child's highest fd", () =>
    Effect.gen(function* () {
      // Planted before the layer exists (as vmd's parent socket or a harness's pipe
      // is inherited): the layer seals it once when it is built. The child's own fds
      // are opened after it, so they are higher and the child's closefrom spares it.
      const stray = yield* tempFd("inherited")
      clearCloexec(stray.fd.num)
      yield* Effect.gen(function* () {
        const proc = yield* Process
        const out = yield* tempFd("out")
        const a = yield* tempFd("a")
        expect(a.fd.num).toBeGreaterThan(stray.fd.num)
        const c = yield* proc.spawn({ command: child, args: ["fdinfo", String(out.fd.num), String(a.fd.num)], fds: [out.fd, a.fd], stdio: "null" })
        spawned.push(c.pid)
        expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
        const report = parseReport(readFileSync(out.path, "utf8"))
        expect(report.open).toEqual(sorted([0, 1, 2, out.fd.num, a.fd.num]))
      }).pipe(Effect.provide(layer))
    })
  )

  it.scopedLive("the child starts with no signal blocked or ignored, though this process ignores SIGPIPE and blocks SIGUSR2", () =>
    Effect.gen(function* () {
      const libc = koffi.load(null)
      const pthreadSigmask = libc.func("int pthread_sigmask(int how, const void *set, void *old)")
      const sigemptyset = libc.func("int sigemptyset(void *set)")
      const sigaddset = libc.func("int sigaddset(void *set, int signo)")
      const getflags = libc.func("int posix_spawnattr_getflags(const void *attr, _Out_ int16_t *flags)")
      const getsigmask = libc.func("int posix_spawnattr_getsigmask(const void *attr, void *set)")
      // The layer's own attributes: the SpawnAttr it builds (and inits) when it is built.
      const init = vi.spyOn(SpawnAttr.prototype, "init")
      yield* Effect.addFinalizer(() => Effect.sync(() => init.mockRestore()))
      // What would leak without SETSIGDEF/SETSIGMASK: Node ignores SIGPIPE, and we block SIGUSR2 on this thread.
      expect(signalMasks(process.pid).ignored & bit(SIGPIPE)).toBe(bit(SIGPIPE))
      const set = Buffer.alloc(128)
      const old = Buffer.alloc(128)
      sigemptyset(set)
      sigaddset(set, SIGUSR2)
      expect(pthreadSigmask(0 /* SIG_BLOCK */, set, old)).toBe(0)
      yield* Effect.gen(function* () {
        const proc = yield* Process
        // posix_spawn runs on a pool thread, whose mask is not this thread's: this
        // observes SETSIGDEF (the SIGPIPE this process ignores), not SETSIGMASK.
        const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
        spawned.push(c.pid)
        const masks = signalMasks(c.pid)
        expect(masks.blocked).toBe(0n)
        expect(masks.ignored).toBe(0n) // SIGPIPE, and glibc's internal 32 and 33, at their defaults
        yield* proc.kill(c.pid, "SIGTERM")
        expect(yield* c.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })

        // The attributes the layer spawned with: SETSIGMASK with an empty set, SETSIGDEF, SETSID.
        expect(init.mock.contexts.length).toBe(1)
        const attr = init.mock.contexts[0] as SpawnAttr
        const flags = [0]
        expect(getflags(attr.buf, flags)).toBe(0)
        const want = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID
        expect((flags[0] ?? 0) & want).toBe(want)
        const mask = Buffer.alloc(128, 0xff)
        expect(getsigmask(attr.buf, mask)).toBe(0)
        expect(mask.every((byte) => byte === 0)).toBe(true)
        // And spawned with them from this thread, SIGUSR2 blocked here: the child has nothing blocked.
        const fa = new FileActions()
        expect(fa.init()).toBe(0)
        const pid = posixSpawnp(child, fa, attr, [child, "sleep"], null)
        fa.destroy()
        expect(pid).toBeGreaterThan(0)
        spawned.push(pid)
        try {
          expect(signalMasks(pid).blocked).toBe(0n)
          expect(signalMasks(pid).ignored).toBe(0n)
        } finally {
          process.kill(pid, "SIGKILL")
          expect(waitpid(pid, true)).toBe(pid)
        }
      }).pipe(
        Effect.provide(layer),
        Effect.ensuring(Effect.sync(() => pthreadSigmask(2 /* SIG_SETMASK */, old, null)))
      )
    })
  )

  it.scopedLive("PATH search, and the environment: this process's (as changed since start) with env laid over", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const out = yield* tempFd("env")
      process.env["VMD_VMM_DIRECT_RUNTIME"] = "set at run time"
      const script = `printf "%s|%s|%s\\n" "$VMD_VMM_TEST" "$HOME" "$VMD_VMM_DIRECT_RUNTIME" >> /dev/fd/${out.fd.num}`
      try {
        const plain = yield* proc.spawn({ command: "sh", args: ["-c", script], fds: [out.fd], stdio: "null" })
        spawned.push(plain.pid)
        expect(yield* plain.exit).toEqual({ _tag: "Exited", code: 0 })
        const withEnv = yield* proc.spawn({
          command: "sh",
          args: ["-c", script],
          fds: [out.fd],
          stdio: "null",
          env: { VMD_VMM_TEST: "hello world", HOME: "/elsewhere" }
        })
        spawned.push(withEnv.pid)
        expect(yield* withEnv.exit).toEqual({ _tag: "Exited", code: 0 })
      } finally {
        delete process.env["VMD_VMM_DIRECT_RUNTIME"]
      }
      expect(readFileSync(out.path, "utf8")).toBe(
        `|${process.env["HOME"] ?? ""}|set at run time\nhello world|/elsewhere|set at run time\n`
      )
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("a child's exit is reported first, then its pidfd closed, in the callback that reaped it", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn({ command: child, args: ["exit", "3"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      expect(openPidfds().length).toBe(1)
      // listenExits hands the exit over in the same callback that reaped it, before the
      // three native calls that release the watch (the vmm's TERMINATE_VM_EVENT goes out
      // sooner); the release follows in that callback, before anything else runs.
      const seen: Array<number> = []
      const later: Array<number> = []
      yield* proc.listenExits(() => {
        seen.push(openPidfds().length)
        queueMicrotask(() => later.push(openPidfds().length))
      })
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 3 })
      expect(seen).toEqual([1])
      expect(later).toEqual([0])
      expect(openPidfds()).toEqual([])
    }).pipe(Effect.provide(layer))
  )

  // Found by a review (session 12): a child reaped by something else in this process, whose pid
  // the next child then gets. Its pidfd stays readable; waitpid(pid) asks about the new child
  // (0: running), so its watch spun on every loop turn and its exit was never reported.
  // waitid(P_PIDFD) asks about the process the pidfd names: ECHILD, reported as lost.
  const lastPid = "/proc/sys/kernel/ns_last_pid"
  const canSetLastPid = (() => {
    try {
      writeFileSync(lastPid, readFileSync(lastPid, "utf8"))
      return true
    } catch {
      return false
    }
  })()
  /** SIGKILL and reap a child this test started itself, unless reaped already (its pid may be another's then). */
  const endOurs = (pid: number): void => {
    const i = spawned.indexOf(pid)
    if (i < 0) return
    try {
      process.kill(pid, "SIGKILL")
    } catch {
      // gone already (a zombie still takes it; reaped below either way)
    }
    waitpid(pid, true)
    spawned.splice(i, 1)
  }
  it.scopedLive.skipIf(!canSetLastPid)(
    "a child reaped elsewhere whose pid a new child got is reported once, as lost, and its watch stops",
    () =>
      Effect.gen(function* () {
        const proc = yield* Process
        let reused: { a: number; b: number; aExit: Effect.Effect<ChildExit["status"]> } | null = null
        // The pid is set for the next fork, which another process may take first: try again.
        for (let attempt = 0; attempt < 20 && reused === null; attempt++) {
          const a = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
          spawned.push(a.pid)
          // With this loop blocked from here on: kill it, reap it behind the layer's back, and
          // start a child of ours at its pid, before its watch can look.
          process.kill(a.pid, "SIGKILL")
          blockUntilZombie(a.pid)
          expect(waitpid(a.pid, true)).toBe(a.pid)
          spawned.splice(spawned.indexOf(a.pid), 1) // reaped: its pid is no longer ours to check
          // The pid counter goes back by a few for one fork, and then forward again to where
          // it was: pids other tests freed meanwhile are not handed out again at once.
          const before = Number(readFileSync(lastPid, "utf8"))
          writeFileSync(lastPid, String(a.pid - 1))
          const fa = new FileActions()
          expect(fa.init()).toBe(0)
          const attr = new SpawnAttr()
          expect(attr.init()).toBe(0)
          const b = posixSpawnp(child, fa, attr, [child, "sleep"], null)
          writeFileSync(lastPid, String(Math.max(before, Number(readFileSync(lastPid, "utf8")))))
          fa.destroy()
          attr.destroy()
          expect(b).toBeGreaterThan(0)
          spawned.push(b)
          // ended even if an expectation below fails (the layer's finalizer knows only its own)
          yield* Effect.addFinalizer(() => Effect.sync(() => endOurs(b)))
          if (b === a.pid) reused = { a: a.pid, b, aExit: a.exit }
          else {
            // no reuse this time: the first child is reported lost either way; end the other
            expect(yield* a.exit).toEqual({ _tag: "Exited", code: 255 })
            endOurs(b)
          }
        }
        expect(reused, "a new child got the reaped child's pid").not.toBeNull()
        const { b, aExit } = reused!
        // reported, once, as lost (its status is gone), in a few loop turns
        const status = yield* aExit.pipe(Effect.timeout("5 seconds"))
        expect(status).toEqual({ _tag: "Exited", code: 255 })
        const exits = yield* proc.takeExits
        expect(exits.filter((e) => e.pid === b)).toEqual([{ pid: b, status: { _tag: "Exited", code: 255 } }])
        // its watch is gone (no pidfd left, nothing polled), and the new child is untouched
        expect(openPidfds()).toEqual([])
        expect(procStat(b)?.state).not.toBe("Z")
        endOurs(b)
        expect(spawned).not.toContain(b)
      }).pipe(Effect.provide(layer))
  )

  it.scopedLive("a child that exited but is not reaped yet is still ours to signal (the pidfd, not the pid)", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      // Behind the layer's back, and with this loop blocked until it is a zombie: not reaped yet.
      process.kill(c.pid, "SIGTERM")
      blockUntilZombie(c.pid)
      expect(procStat(c.pid)?.state).toBe("Z")
      expect(yield* proc.isAlive(c.pid)).toBe(true)
      yield* proc.kill(c.pid, "SIGKILL") // a zombie takes a signal (as kill(2) on it would)
      expect(yield* c.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      const after = yield* Effect.flip(proc.kill(c.pid, "SIGKILL"))
      expect(after.errno).toBe(Errno.ESRCH)
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("16 spawns asked for at once (posix_spawn on the thread pool), each child with its own fds", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const outs = yield* Effect.forEach(Array.from({ length: 16 }, (_, i) => i), (i) => tempFd(`out${i}`))
      const children = yield* Effect.forEach(
        outs,
        (out) => proc.spawn({ command: child, args: ["fdinfo", String(out.fd.num)], fds: [out.fd], stdio: "null" }),
        { concurrency: "unbounded" }
      )
      for (const c of children) spawned.push(c.pid)
      for (const [i, c] of children.entries()) {
        expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
        expect(parseReport(readFileSync(outs[i]!.path, "utf8")).open).toEqual([0, 1, 2, outs[i]!.fd.num])
      }
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("a spawn interrupted while posix_spawn is on the pool: its child is SIGKILLed and reaped when it is back, never reported", () =>
    Effect.gen(function* () {
      // Each attempt on a layer of its own, whose end waits for a spawn still on the pool: once
      // it has ended, nothing it started may be left. The exits are heard here, past its end.
      const reported: Array<ChildExit> = []
      for (let attempt = 0; attempt < 20; attempt++) {
        const scope = yield* Scope.make()
        const proc = Context.get(yield* Layer.buildWithScope(layer, scope), Process)
        yield* proc.listenExits((e) => reported.push(e))
        const fiber = yield* Effect.fork(proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" }))
        yield* Effect.yieldNow()
        yield* Fiber.interrupt(fiber)
        const exit = yield* Fiber.await(fiber)
        // Time for posix_spawn to come back before the layer ends (a child put in the table
        // instead of killed would then be killed by the layer's end, and reported).
        yield* Effect.sleep("100 millis")
        yield* Scope.close(scope, Exit.void)
        expect(childrenOf(process.pid)).toEqual([])
        if (Exit.isInterrupted(exit)) {
          // The interrupt came while the spawn was in flight: its child went, unreported.
          expect(reported).toEqual([])
          return
        }
        // It was back before the interrupt: a child of the table, killed by the layer's end.
        if (Exit.isSuccess(exit)) spawned.push(exit.value.pid)
        reported.length = 0
      }
      expect.fail("no interrupt came while the spawn was in flight")
    })
  )

  // A child stuck in execve (a hung filesystem), held by fanotify (root only).
  it.skipIf(!fanotifyWorks)("an exec held in the kernel holds a pool thread, not this one: meanwhile a timer fires and another child is started, killed and reported", () =>
    Effect.runPromise(
      Effect.gen(function* () {
        const proc = yield* Process
        const gate = holdExecs(slowChild)
        yield* Effect.addFinalizer(() => Effect.sync(() => gate.release()))
        const heldFiber = yield* Effect.fork(proc.spawn({ command: slowChild, args: ["sleep"], fds: [], stdio: "null" }))
        // (posix_spawn on this thread would block it here, in the vfork wait, for good: this thread answers the gate)
        const [ev, heldPid] = yield* Effect.promise(() => gate.nextExec())
        yield* Effect.sleep("20 millis")
        const other = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
        spawned.push(other.pid)
        yield* proc.kill(other.pid, "SIGKILL")
        expect(yield* other.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
        expect(heldFiber.unsafePoll(), "the held spawn is not back").toBeNull()
        gate.answer(ev, FAN_ALLOW)
        const held = yield* Fiber.join(heldFiber)
        spawned.push(held.pid)
        expect(held.pid).toBe(heldPid)
        yield* proc.kill(held.pid, "SIGTERM")
        expect(yield* held.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      }).pipe(Effect.provide(layer), Effect.scoped)
    ), 30_000)

  it.skipIf(!fanotifyWorks)("the layer's end waits for an exec held in the kernel no longer than reapTimeout; let go after, its child is SIGKILLed and reaped", () =>
    Effect.runPromise(
      Effect.gen(function* () {
        const gate = holdExecs(slowChild)
        yield* Effect.addFinalizer(() => Effect.sync(() => gate.release()))
        const scope = yield* Scope.make()
        const proc = Context.get(yield* Layer.buildWithScope(ProcessDirect.layerWith({ reapTimeout: "200 millis" }), scope), Process)
        const fiber = yield* Effect.forkDaemon(proc.spawn({ command: slowChild, args: ["sleep"], fds: [], stdio: "null" }))
        const [ev, pid] = yield* Effect.promise(() => gate.nextExec())
        // Ends with the exec still held (it would wait for good without the bound).
        yield* Scope.close(scope, Exit.void)
        expect(procStat(pid), "still in execve").not.toBeNull()
        gate.answer(ev, FAN_ALLOW)
        const done = yield* Fiber.await(fiber)
        expect(Exit.isFailure(done) && Cause.failureOption(done.cause)).toMatchObject({ value: { _tag: "SpawnError", errno: Errno.EIO } })
        for (let i = 0; i < 400 && procStat(pid) !== null; i++) yield* Effect.sleep("5 millis")
        expect(procStat(pid), "SIGKILLed and reaped once back").toBeNull()
      }).pipe(Effect.scoped)
    ), 30_000)

  it.live("the layer's scope closing while a spawn is in flight waits for it: its child does not outlive the scope", () =>
    Effect.gen(function* () {
      for (let attempt = 0; attempt < 20; attempt++) {
        const scope = yield* Scope.make()
        const proc = Context.get(yield* Layer.buildWithScope(layer, scope), Process)
        // A daemon: only the layer's closing can end the spawn.
        const fiber = yield* Effect.forkDaemon(proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" }))
        yield* Effect.yieldNow()
        // The layer closes with the spawn (most likely) in flight: nothing of it is left once it has.
        yield* Scope.close(scope, Exit.void)
        expect(childrenOf(process.pid)).toEqual([])
        expect(openPidfds()).toEqual([])
        const done = yield* Fiber.await(fiber)
        if (Exit.isFailure(done)) {
          // It was in flight: it fails, EIO (its child SIGKILLed and reaped before the scope closed).
          expect(Cause.failureOption(done.cause)).toMatchObject({ value: { _tag: "SpawnError", errno: Errno.EIO } })
          return
        }
        spawned.push(done.value.pid)
      }
      expect.fail("no attempt closed the layer while its spawn was in flight")
    })
  )

  it.scopedLive("spawn failures are SpawnError with the OpenBSD errno, and leave nothing behind", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const missing = yield* Effect.flip(proc.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null" }))
      expect(missing).toMatchObject({ _tag: "SpawnError", reason: "NotFound", errno: Errno.ENOENT })
      const notInPath = yield* Effect.flip(proc.spawn({ command: "vmd-vmm-no-such-program", args: [], fds: [], stdio: "null" }))
      expect(notInPath).toMatchObject({ reason: "NotFound", errno: Errno.ENOENT })
      // early is ignored: the exec's failure is still the spawn's.
      const early = yield* Effect.flip(
        proc.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null", early: true })
      )
      expect(early).toMatchObject({ reason: "NotFound", errno: Errno.ENOENT })
      const notExec = join(dir, "not-executable")
      writeFileSync(notExec, "#!/bin/sh\n")
      chmodSync(notExec, 0o644)
      const denied = yield* Effect.flip(proc.spawn({ command: notExec, args: [], fds: [], stdio: "null" }))
      expect(denied).toMatchObject({ reason: "Other", errno: Errno.EACCES })
      const huge = yield* Effect.flip(proc.spawn({ command: child, args: ["x".repeat(256 * 1024)], fds: [], stdio: "null" }))
      expect(huge.errno).toBe(Errno.E2BIG) // execve's, through posix_spawn
      const f = yield* tempFd("closed")
      yield* f.fd.close
      const badf = yield* Effect.flip(proc.spawn({ command: child, args: ["exit", "0"], fds: [f.fd], stdio: "null" }))
      expect(badf.errno).toBe(Errno.EBADF)
      const nul = yield* Effect.flip(proc.spawn({ command: child, args: ["a\0b"], fds: [], stdio: "null" }))
      expect(nul.errno).toBe(Errno.EINVAL)
      expect(yield* proc.children).toEqual([])
      // The failed children were reaped by posix_spawn: no zombie, no pidfd, no exit reported.
      expect(childrenOf(process.pid)).toEqual([])
      expect(openPidfds()).toEqual([])
      const ok = yield* proc.spawn({ command: child, args: ["exit", "3"], fds: [], stdio: "null" })
      spawned.push(ok.pid)
      expect(yield* ok.exit).toEqual({ _tag: "Exited", code: 3 })
      const exits = yield* proc.takeExits
      expect(exits).toEqual([{ pid: ok.pid, status: { _tag: "Exited", code: 3 } }])
    }).pipe(Effect.provide(layer))
  )

  layerEndTest("the layer's end SIGKILLs and reaps every child still alive, and releases every pidfd", {
    dir: () => dir,
    child: () => child,
    spawned,
    build: (scope) => Effect.map(Layer.buildWithScope(layer, scope), (context) => Context.get(context, Process)),
    whileAlive: (pids) => {
      for (const pid of pids) expect(procStat(pid)?.state).not.toBe("Z")
      expect(openPidfds().length).toBe(2)
    },
    whenEnded: () => expect(openPidfds()).toEqual([]), // closed before the scope's end returned
    last: () => expect(childrenOf(process.pid)).toEqual([])
  })

  it.scopedLive("200 concurrent children: every exit reported exactly once, every pidfd released", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const n = 200
      const out = yield* tempFd("shared")
      // Half exit at once, half wait for SIGTERM: many pidfds open together, exits interleaved with spawns.
      const kids = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) =>
          proc.spawn({
            command: child,
            args: i % 2 === 0 ? ["exit", String(i % 100)] : ["sleep"],
            fds: [out.fd],
            stdio: "null"
          }),
        { concurrency: "unbounded" }
      )
      spawned.push(...kids.map((k) => k.pid))
      expect(new Set(kids.map((k) => k.pid)).size).toBe(n)
      const sleepers = kids.filter((_, i) => i % 2 === 1)
      yield* Effect.forEach(sleepers, (k) => proc.kill(k.pid, "SIGTERM"), { concurrency: "unbounded" })
      const statuses = yield* Effect.forEach(kids, (k) => k.exit)
      expect(statuses).toEqual(
        Array.from({ length: n }, (_, i) =>
          i % 2 === 0 ? { _tag: "Exited", code: i % 100 } : { _tag: "Signaled", signal: SIGTERM }
        )
      )
      const exits = Chunk.toReadonlyArray(yield* proc.exits.pipe(Stream.take(n), Stream.runCollect))
      expect(sorted(exits.map((e) => e.pid))).toEqual(sorted(kids.map((k) => k.pid)))
      const byPid = new Map(kids.map((k, i) => [k.pid, statuses[i]]))
      for (const e of exits) expect(e.status).toEqual(byPid.get(e.pid))
      const extra = yield* proc.exits.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("100 millis"), Effect.option)
      expect(extra._tag).toBe("None")
      expect(yield* proc.children).toEqual([])
      expect(childrenOf(process.pid)).toEqual([])
      expect(yield* untilNoPidfds).toEqual([])
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("listenExits gets each exit as it is reaped, those before it at once", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const first = yield* proc.spawn({ command: child, args: ["exit", "1"], fds: [], stdio: "null" })
      spawned.push(first.pid)
      yield* first.exit
      const heard: Array<ChildExit> = []
      yield* proc.listenExits((e) => heard.push(e))
      expect(heard).toEqual([{ pid: first.pid, status: { _tag: "Exited", code: 1 } }])
      const second = yield* proc.spawn({ command: child, args: ["exit", "2"], fds: [], stdio: "null" })
      spawned.push(second.pid)
      yield* second.exit
      expect(heard).toEqual([
        { pid: first.pid, status: { _tag: "Exited", code: 1 } },
        { pid: second.pid, status: { _tag: "Exited", code: 2 } }
      ])
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("unsafeReapNow reaps and reports an exited child at once, without its pidfd's turn; a running one is left alone", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const heard: Array<ChildExit> = []
      yield* proc.listenExits((e) => heard.push(e))
      const running = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      const done = yield* proc.spawn({ command: child, args: ["exit", "3"], fds: [], stdio: "null" })
      spawned.push(running.pid, done.pid)
      const report = yield* Effect.sync(() => {
        // a zombie now, without a turn of the loop (where its pidfd's callback would reap it)
        blockUntilZombie(done.pid)
        const zombie = procStat(done.pid)?.state
        proc.unsafeReapNow(running.pid)
        proc.unsafeReapNow(done.pid)
        return { zombie, heard: [...heard] }
      })
      expect(report.zombie).toBe("Z")
      expect(report.heard).toEqual([{ pid: done.pid, status: { _tag: "Exited", code: 3 } }])
      expect(yield* proc.isAlive(running.pid)).toBe(true)
      yield* proc.kill(running.pid, "SIGKILL")
      expect(yield* running.exit).toEqual({ _tag: "Signaled", signal: 9 })
      expect(heard.map((e) => e.pid)).toEqual([done.pid, running.pid])
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("spawns from many fibers while children exit: takeExits sees each exactly once", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const n = 120
      const seen: Array<ChildExit> = []
      const collector = yield* Effect.fork(
        Effect.gen(function* () {
          while (seen.length < n) seen.push(...(yield* proc.takeExits))
        })
      )
      const kids = yield* Effect.forEach(
        Array.from({ length: n }, (_, i) => i),
        (i) => proc.spawn({ command: child, args: ["exit", String(i % 7)], fds: [], stdio: "null" }),
        { concurrency: 8 }
      )
      spawned.push(...kids.map((k) => k.pid))
      yield* Fiber.join(collector)
      expect(seen.length).toBe(n)
      expect(sorted(seen.map((e) => e.pid))).toEqual(sorted(kids.map((k) => k.pid)))
      const extra = yield* proc.takeExits.pipe(Effect.timeout("100 millis"), Effect.option)
      expect(extra._tag).toBe("None")
    }).pipe(Effect.provide(layer))
  )
})

describe("availability and wiring", () => {
  it.scopedLive("unavailable: the layer fails with ENOSYS, layerOrNode falls back to Node's spawn", () =>
    Effect.gen(function* () {
      const failed = yield* Effect.flip(Layer.build(ProcessDirect.layerWith({ unavailable: "testing" })))
      expect(failed.errno).toBe(Errno.ENOSYS)
      expect(failed.message).toContain("testing")
      const ctx = yield* Layer.build(ProcessDirect.layerOrNodeWith({ unavailable: "testing" }))
      const proc = Context.get(ctx, Process)
      const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      // ProcessNode's child: libuv's, so no pidfd of ours watches it.
      expect(openPidfds()).toEqual([])
      yield* proc.kill(c.pid, "SIGKILL")
      expect(yield* c.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
    })
  )

  it.scopedLive("--spawn direct: bin/vmm's parser takes it and its Process layer is this one", () =>
    Effect.gen(function* () {
      const args = parseArgs(["-P", "vmm", "--spawn", "direct"])
      expect(Either.getOrThrow(args)).toMatchObject({ mode: "vmm", spawn: "direct" })
      expect(Either.isLeft(parseArgs(["-P", "vmm", "--spawn", "directly"]))).toBe(true)
      const proc = Context.get(yield* Layer.build(processLayer("direct")), Process)
      const c = yield* proc.spawn({ command: child, args: ["sleep"], fds: [], stdio: "null" })
      spawned.push(c.pid)
      expect(openPidfds().length).toBe(1) // watched by a pidfd: ProcessDirect
      yield* proc.kill(c.pid, "SIGKILL")
      yield* c.exit
    })
  )
})

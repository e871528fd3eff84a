import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Scope } from "effect"
import { execFileSync } from "node:child_process"
import { chmodSync, closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import { sharedProcessTests } from "./shared.ts"
import { childrenOf, fsBackend, identity, parseReport, SIGKILL, tempFdIn, untilWritten, yieldingAfterSpawnError } from "./kit.ts"
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
  expect(spawned.filter((pid) => !gone(pid))).toEqual([])
})

const childrenOfThisProcess = (): ReadonlyArray<number> => childrenOf(process.pid)

const tempFd = tempFdIn(() => dir)

/** Every pid the shared tests spawned: all must be gone at the end. */
const spawned: Array<number> = []

const gone = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return false
  } catch (e) {
    return e instanceof Error && "code" in e && e.code === "ESRCH"
  }
}


describe("ProcessNode", () => {
  sharedProcessTests({ layer: ProcessNode.layer, child: () => child, tempFd, spawned })

  it.scopedLive("a child's number that is free here (a hole below the packed targets) cannot catch libuv's exec-status pipe: a failed exec stays a SpawnError and writes nothing into the VM's file", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      // Two holes at the lowest free numbers, below the files a VM start holds, as when VMs end while its
      // messages are on their way.
      const holes = [openSync("/dev/null", "r"), openSync("/dev/null", "r")]
      const top = Math.max(...holes)
      const files = yield* Effect.forEach(Array.from({ length: top - 2 }, (_, i) => i), (i) => tempFd(`packed${i}`))
      const filler = [...holes, openSync("/dev/null", "r")]
      for (const h of holes) closeSync(h)
      try {
        // targets 3..top: the last file goes to `top`, a number free here, where libuv's pipe would land
        const fds = files.map((f) => f.fd)
        expect(fds.every((fd) => fd.num > top), "the files are above the holes").toBe(true)
        const at = fds.map((_, i) => 3 + i)
        const last = files[fds.length - 1]!
        const err = yield* Effect.flip(proc.spawn({ command: join(dir, "no-such-program"), args: [], fds, at, stdio: "null" }))
        expect(err).toMatchObject({ _tag: "SpawnError", errno: Errno.ENOENT })
        expect(readFileSync(last.path).length, "the file at the hole's number").toBe(0)
        // and a child that runs finds each file at its number, the one at the hole's too
        const out = yield* tempFd("report")
        const k = yield* proc.spawn({ command: child, args: ["fdinfo", String(top + 1), String(top)], fds: [...fds, out.fd], at: [...at, top + 1], stdio: "null" })
        expect(yield* k.exit).toEqual({ _tag: "Exited", code: 0 })
        expect(parseReport(readFileSync(out.path, "utf8")).fds.get(top)).toBe(identity(last.fd.num))
        expect(filler.slice(2).every((n) => fstatSync(n).isCharacterDevice()), "the fillers are still ours").toBe(true)
      } finally {
        for (const n of filler.slice(2)) closeSync(n)
      }
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

  it.live("a failed spawn is a SpawnError even when the fiber yields right after spawning (its 'error' is listened for at once)", () =>
    Effect.gen(function* () {
      // Heard too late (at the spawn's next effect, after a yield there), the 'error' is
      // thrown, uncaught, and ends the process.
      const failed = yield* yieldingAfterSpawnError(
        Effect.scoped(
          Effect.gen(function* () {
            const proc = yield* ProcessNode.make
            return yield* Effect.flip(proc.spawn({ command: join(dir, "no-such-program"), args: [], fds: [], stdio: "null" }))
          })
        )
      )
      expect(failed).toMatchObject({ _tag: "SpawnError", errno: Errno.ENOENT })
    })
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

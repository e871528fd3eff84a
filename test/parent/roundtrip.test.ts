/**
 * The parent stand-in against the real vmm process (src/cli/vmm.ts bundled
 * from the current sources, as bin/vmm runs it) with the process backend:
 * real VM processes, real files, taps and ptys. Each test's scope ends the
 * vmm (and with it every VM).
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Stream } from "effect"
import { closeSync, ftruncateSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll } from "vitest"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import { makeVmdParent, type VmdParentOptions } from "../../src/parent/parent.ts"
import type { VmSpec } from "../../src/parent/spec.ts"
import { vmStateName } from "../../src/parent/status.ts"
import { CONFIG_VMS } from "../../src/schema/constants.ts"
import { Errno } from "../../src/schema/errno.ts"
import { buildDir, bundleVmmProgram, compileVmprog } from "../../src/vm/build.ts"

const root = fileURLToPath(new URL("../../", import.meta.url))
let dir = ""
let vmm = ""
let vmprog = ""
let kernel = ""
let disk = ""

beforeAll(async () => {
  dir = buildDir("parent-test")
  ;[vmm, vmprog] = await Promise.all([bundleVmmProgram(dir), compileVmprog(dir)])
  kernel = join(dir, "bsd")
  writeFileSync(kernel, "kernel")
  disk = join(dir, "disk.img")
  const fd = openSync(disk, "w")
  ftruncateSync(fd, 1 << 30)
  closeSync(fd)
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const options = (extra: Partial<VmdParentOptions> = {}): VmdParentOptions => ({
  command: { command: process.execPath, args: [vmm] },
  output: "ignore",
  timeoutMs: 20_000,
  ...extra
})

const spec = (name: string, more: Partial<VmSpec> = {}): VmSpec => ({ name, kernel, disks: [[disk]], nics: 1, ...more })

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

const stateOf = (rows: ReadonlyArray<{ vir_name: string; vir_state: number }>, name: string) =>
  vmStateName(rows.find((r) => r.vir_name === name)?.vir_state ?? -1)

describe("parent stand-in with bin/vmm", () => {
  it.scopedLive("start, info, pause, unpause, graceful and forced stop, then closing fd 3 ends the vmm with 0", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options())
      const a = yield* parent.startVm(spec("alpha", { memory: 256n << 20n, vcpus: 2, cdrom: kernel }))
      const b = yield* parent.startVm(spec("beta"))
      expect(a.pid).toBeGreaterThan(0)
      expect(a.tty).toMatch(/^\/dev\/pts\/\d+$/)

      const rows = yield* parent.info
      const alpha = rows.find((r) => r.vir_name === "alpha")
      expect(alpha).toMatchObject({ vir_id: a.id, vir_creator_pid: a.pid, vir_ncpus: 2n, vir_memory_size: 256n << 20n, vir_ttyname: a.tty })
      expect(alpha?.vir_used_size).toBeGreaterThan(0n)
      expect(stateOf(rows, "beta")).toBe("running")

      yield* parent.pause(b.id)
      expect(stateOf(yield* parent.info, "beta")).toBe("paused")
      yield* parent.unpause(b.id)
      expect(stateOf(yield* parent.info, "beta")).toBe("running")

      yield* parent.stopVm(a.id, { wait: true })
      expect(alive(a.pid)).toBe(false)
      expect(stateOf(yield* parent.info, "alpha")).toBe("stopped")
      // a stop for a VM already stopped is refused by the parent, as vmd does
      const again = yield* Effect.flip(parent.stopVm(a.id))
      expect(again.errno).toBe(Errno.EINVAL)

      yield* parent.stopVm(b.id, { force: true, wait: true })
      expect(alive(b.pid)).toBe(false)

      const c = yield* parent.startVm(spec("gamma"))
      const exit = yield* parent.close
      expect(exit).toEqual({ _tag: "Exited", code: 0 })
      expect(alive(c.pid)).toBe(false)
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("a guest reset (exit 35) is restarted by the parent with a new pid and the same tty", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options())
      const vm = yield* parent.startVm(spec("resetme"))
      const mark = yield* parent.mark
      process.kill(vm.pid, "SIGHUP")
      const ev = yield* parent.waitFor((e) => e._tag === "Started" && e.restart, mark)
      const history = (yield* parent.vms).find((v) => v.id === vm.id)
      if (ev._tag !== "Started") throw new Error(`waitFor gave ${ev._tag}`)
      expect(ev.pid).toBeGreaterThan(0)
      expect(ev.pid).not.toBe(vm.pid)
      expect(history?.tty).toBe(vm.tty)
      expect(history?.state).toBe(1)
      const after = yield* parent.waitFor((e) => e._tag === "Terminated" && e.id === vm.id, mark)
      expect(after).toMatchObject({ result: Errno.EAGAIN })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("once the vmm is gone, a request fails at once with EPIPE, and so does a wait for an event that can no longer come", () =>
    Effect.gen(function* () {
      // a short timeout: without the EPIPE these would fail with ETIMEDOUT
      const parent = yield* makeVmdParent(options({ timeoutMs: 3_000 }))
      const vm = yield* parent.startVm(spec("orphaned"))
      const mark = yield* parent.mark
      process.kill(parent.vmmPid, "SIGKILL")
      yield* parent.waitFor((e) => e._tag === "VmmGone", mark)
      const paused = yield* Effect.flip(parent.pause(vm.id))
      expect(paused.errno).toBe(Errno.EPIPE)
      const info = yield* Effect.flip(parent.info)
      expect(info.errno).toBe(Errno.EPIPE)
      const waited = yield* Effect.flip(parent.waitFor((e) => e._tag === "Started" && e.restart, mark))
      expect(waited.errno).toBe(Errno.EPIPE)
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("a guest reset whose restart waits behind a CTL_RESET is not restarted: the reset took the VM (vmd's config_purge)", () =>
    Effect.gen(function* () {
      // VM processes through a wrapper: the second one hangs in its handshake, holding
      // the parent's lock in startVm(b) until the vmm gives up on it (after 500 ms)
      const counter = join(dir, "execs")
      writeFileSync(counter, "0")
      const wrapper = join(dir, "vm-wrapper.sh")
      writeFileSync(
        wrapper,
        `#!/bin/sh\nn=$(cat "$VM_EXECS")\necho $((n + 1)) > "$VM_EXECS"\n[ "$n" = 1 ] && export VMM_TEST_VM_MODE=hang\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(join(root, "bin/vmm"))} "$@"\n`,
        { mode: 0o755 }
      )
      const parent = yield* makeVmdParent(
        options({
          command: { command: process.execPath, args: ["--import", "tsx", join(root, "test/parent/fixtures/shortHandshakeVmm.ts")] },
          vmExec: wrapper,
          env: { VM_EXECS: counter }
        })
      )
      const a = yield* parent.startVm(spec("a"))
      const mark = yield* parent.mark
      const b = yield* Effect.fork(parent.startVm(spec("b")))
      yield* Effect.promise(async () => {
        for (let i = 0; i < 400 && readFileSync(counter, "utf8").trim() !== "2"; i++) await new Promise((r) => setTimeout(r, 10))
      })
      // the reset waits for the lock behind startVm(b); then a's guest resets
      const reset = yield* Effect.fork(parent.reset(CONFIG_VMS))
      yield* Effect.sleep("50 millis")
      process.kill(a.pid, "SIGHUP")
      expect((yield* Effect.flip(Fiber.join(b))).errno).toBe(Errno.ENOMEM)
      yield* Fiber.join(reset)
      // anything queued on the lock before this (the restart) has run by now
      yield* parent.reset(0)
      const reboot = yield* parent.waitFor((e) => e._tag === "Terminated" && e.id === a.id, mark)
      expect(reboot).toMatchObject({ result: Errno.EAGAIN })
      // not started again: stopped, with no VM process
      expect((yield* parent.vms).find((v) => v.id === a.id)).toMatchObject({ state: 0, pid: -1 })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  , 60_000)

  it.scopedLive("RECEIVE_VMM_FD with /dev/null is harmless to the process backend", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options({ vmmDevice: "/dev/null" }))
      const vm = yield* parent.startVm(spec("withfd"))
      expect((yield* parent.info).map((r) => r.vir_name)).toEqual(["withfd"])
      yield* parent.stopVm(vm.id, { wait: true })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("a VM that fails its handshake fails the start with the vmm's errno; the parent stays usable", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options({ env: { VMM_TEST_VM_MODE: "answer-zero" } }))
      const err = yield* Effect.flip(parent.startVm(spec("zero")))
      expect(err.errno).toBe(Errno.EINVAL) // id 0: the child failed
      expect(stateOf(yield* parent.info, "zero")).toBe("stopped")
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("CTL_RESET with CONFIG_VMS ends every VM", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options({ vmExec: vmprog }))
      const vms = yield* Effect.forEach(["r1", "r2", "r3"], (n) => parent.startVm(spec(n)))
      yield* parent.verbose(2)
      yield* parent.reset(CONFIG_VMS)
      yield* Effect.promise(async () => {
        for (let i = 0; i < 200 && vms.some((v) => alive(v.pid)); i++) await new Promise((r) => setTimeout(r, 25))
      })
      expect(vms.filter((v) => alive(v.pid))).toEqual([])
      const rows = yield* parent.info
      expect(rows.map((r) => stateOf(rows, r.vir_name))).toEqual(["stopped", "stopped", "stopped"])
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )

  it.scopedLive("the C VM program runs under the vmm like the Node one", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent(options({ vmExec: vmprog }))
      const events = yield* parent.events.pipe(Stream.take(5), Stream.runCollect, Effect.fork)
      yield* Effect.yieldNow()
      const vm = yield* parent.startVm(spec("tiny"))
      yield* parent.pause(vm.id)
      expect(stateOf(yield* parent.info, "tiny")).toBe("paused")
      yield* parent.unpause(vm.id)
      yield* parent.stopVm(vm.id, { wait: true })
      expect(alive(vm.pid)).toBe(false)
      // the VM exited 35 on VM_REBOOT; with the stop pending the vmm reports 0, and the parent does not restart it
      expect(Chunk.toReadonlyArray(yield* Fiber.join(events))).toEqual([
        { _tag: "Started", id: vm.id, name: "tiny", pid: vm.pid, restart: false },
        { _tag: "Paused", id: vm.id, name: "tiny" },
        { _tag: "Unpaused", id: vm.id, name: "tiny" },
        { _tag: "Terminated", id: vm.id, name: "tiny", result: 0 },
        { _tag: "Stopped", id: vm.id, name: "tiny" }
      ])
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  )
})

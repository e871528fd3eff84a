/**
 * The message flows of vmd.md §6 end to end: the parent stand-in drives
 * `bin/vmm -P vmm --backend process`, which runs our Node VM process
 * (bin/vmm -V) for each VM, with real files, socketpair taps and ptys.
 */
import { describe, expect } from "@effect/vitest"
import { Effect, Option } from "effect"
import { readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { makeVmdParent, type VmdParent } from "../../src/parent/parent.ts"
import type { ParentEvent } from "../../src/parent/events.ts"
import type { TrackedVm } from "../../src/parent/records.ts"
import type { VmSpec } from "../../src/parent/spec.ts"
import { CONFIG_SWITCHES, CONFIG_VMS, VM_DEFAULT_MEMORY, VM_STATE_PAUSED, VM_STATE_RUNNING } from "../../src/schema/constants.ts"
import { Errno } from "../../src/schema/errno.ts"
import type { VmopInfoResult } from "../../src/schema/structs.ts"
import { binVmmPath, e2e, eventually, fullSpec, smallSpec, useFixture } from "./harness.ts"
import { cmdline, fdLinks, fdsOpenOn, fileIdAt, isBelow, procStat, running } from "./proc.ts"

const fixture = useFixture("lifecycle")

const row = (rows: ReadonlyArray<VmopInfoResult>, name: string): VmopInfoResult => {
  const r = rows.find((x) => x.vir_name === name)
  if (r === undefined) throw new Error(`no info row for ${name}`)
  return r
}

/** Rows the vmm sent (the parent adds rows for stopped VMs with creator pid 0). */
const fromVmm = (rows: ReadonlyArray<VmopInfoResult>) => rows.filter((r) => r.vir_creator_pid > 0)

const waitEvent = (parent: VmdParent, mark: number, tag: ParentEvent["_tag"], id: number) =>
  parent.waitFor((e) => e._tag === tag && "id" in e && e.id === id, mark)

/** No such event after `mark` within `ms`. */
const noEvent = (parent: VmdParent, mark: number, pred: (e: ParentEvent) => boolean, ms = 300) =>
  parent.waitFor(pred, mark).pipe(
    Effect.timeout(`${ms} millis`),
    Effect.option,
    Effect.map(Option.getOrUndefined)
  )

/** The VM process holds each file of its spec exactly once, and one master of its pty. */
const holdsMedia = (vm: TrackedVm, spec: VmSpec) => {
  const paths = [spec.kernel, spec.cdrom, ...(spec.disks ?? []).flat()].filter((p) => p !== undefined)
  for (const path of paths) {
    const st = statSync(path, { bigint: true })
    expect(fdsOpenOn(vm.pid, { dev: st.dev, ino: st.ino }), `${vm.name} holds ${path}`).toHaveLength(1)
  }
  const ptyNumber = Number(/^\/dev\/pts\/(\d+)$/.exec(vm.tty)?.[1])
  const masters = [...fdLinks(vm.pid).keys()].filter((n) => fileIdAt(vm.pid, n).tty === ptyNumber)
  expect(masters, `${vm.name} holds the master of ${vm.tty}`).toHaveLength(1)
}

describe("end to end: the stand-in, bin/vmm and our VM process", () => {
  for (const spawn of ["direct", "node"] as const) {
    e2e(fixture, `--spawn ${spawn}: 140 VMs at once, each VM process at -V 3 (vm.c refuses a -V above 128, which the vmm's own numbers pass)`, (run) =>
      Effect.gen(function* () {
        const f = fixture()
        // vmprog refuses -V/-i above 128 as vm.c does; had the vmm passed its own numbers, the 54th VM
        // (posix_spawn: a socket and a pidfd per VM) or the 108th (Node's spawn) was refused (checked)
        const parent = yield* makeVmdParent(run.options({ vmExec: f.vmprog, vmmDevice: "/dev/null", command: { command: binVmmPath, args: ["--spawn", spawn] } }))
        const vms = yield* Effect.forEach(Array.from({ length: 140 }, (_, i) => `many${i}`), (n) => parent.startVm(smallSpec(f, n)))
        expect(vms.filter((vm) => !running(vm.pid))).toEqual([])
        const argvs = vms.map((vm) => cmdline(vm.pid))
        expect(new Set(argvs.map((a) => a.slice(a.indexOf("-V"), a.indexOf("-V") + 4).join(" ")))).toEqual(new Set(["-V 3 -i 4"]))
        expect(fromVmm(yield* parent.info).map((r) => r.vir_name).sort()).toEqual(vms.map((vm) => vm.name).sort())
        expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
        expect(vms.filter((vm) => running(vm.pid))).toEqual([])
      }),
      120_000
    )
  }

  e2e(fixture, "start with kernel, cdrom, layered disks, nics and a pty; info; pause, unpause; graceful and forced stop", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const parent = yield* makeVmdParent(run.options())
      const alphaSpec = fullSpec(f, "alpha", { memory: 256n << 20n, vcpus: 2 })
      const a = yield* parent.startVm(alphaSpec)
      const b = yield* parent.startVm(smallSpec(f, "beta"))

      for (const vm of [a, b]) {
        expect(running(vm.pid)).toBe(true)
        expect(isBelow(vm.pid, parent.vmmPid), "started by the vmm").toBe(true)
        expect(procStat(vm.pid)?.session, "in its own session").toBe(vm.pid)
        expect(vm.tty).toMatch(/^\/dev\/pts\/\d+$/)
      }
      holdsMedia(a, alphaSpec)

      // info: what the vmm reports per VM, completed by the parent
      const rows = yield* parent.info
      expect(rows.map((r) => r.vir_name)).toEqual(["alpha", "beta"])
      expect(row(rows, "alpha")).toMatchObject({
        vir_id: a.id,
        vir_creator_pid: a.pid,
        vir_memory_size: 256n << 20n,
        vir_ncpus: 2n,
        vir_ttyname: a.tty,
        vir_state: VM_STATE_RUNNING
      })
      expect(row(rows, "alpha").vir_used_size).toBeGreaterThan(0n)
      expect(row(rows, "beta")).toMatchObject({
        vir_id: b.id,
        vir_creator_pid: b.pid,
        vir_memory_size: VM_DEFAULT_MEMORY,
        vir_ncpus: 1n,
        vir_ttyname: b.tty
      })

      // pause and unpause: answered by the VM process, forwarded by the vmm
      yield* parent.pause(a.id)
      expect(row(yield* parent.info, "alpha").vir_state).toBe(VM_STATE_RUNNING | VM_STATE_PAUSED)
      yield* parent.unpause(a.id)
      expect(row(yield* parent.info, "alpha").vir_state).toBe(VM_STATE_RUNNING)

      // graceful: VM_REBOOT, the VM exits 35, reported as 0 because a stop is pending; not restarted
      const m1 = yield* parent.mark
      yield* parent.stopVm(a.id, { wait: true })
      expect(yield* waitEvent(parent, m1, "Terminated", a.id)).toMatchObject({ result: 0 })
      expect(running(a.pid)).toBe(false)
      expect(yield* noEvent(parent, m1, (e) => e._tag === "Started")).toBeUndefined()

      // forced: SIGTERM from the process backend, the VM exits 0
      const m2 = yield* parent.mark
      yield* parent.stopVm(b.id, { force: true, wait: true })
      expect(yield* waitEvent(parent, m2, "Terminated", b.id)).toMatchObject({ result: 0 })
      expect(running(b.pid)).toBe(false)

      const after = yield* parent.info
      expect(fromVmm(after)).toEqual([])
      expect(after.map((r) => [r.vir_name, r.vir_state])).toEqual([
        ["alpha", 0],
        ["beta", 0]
      ])
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
    })
  )

  e2e(fixture, "a guest reset (exit 35) is reported as EAGAIN and the stand-in restarts the VM with all its media and the same tty", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const parent = yield* makeVmdParent(run.options())
      const spec = fullSpec(f, "resetme")
      const vm = yield* parent.startVm(spec)
      const mark = yield* parent.mark
      process.kill(vm.pid, "SIGHUP") // our VM process's reset button
      expect(yield* waitEvent(parent, mark, "Terminated", vm.id)).toMatchObject({ result: Errno.EAGAIN })
      const started = yield* parent.waitFor((e) => e._tag === "Started" && e.restart, mark)
      const pid = started._tag === "Started" ? started.pid : -1
      expect(pid).not.toBe(vm.pid)
      expect(running(vm.pid)).toBe(false)
      expect(running(pid)).toBe(true)
      expect(procStat(pid)?.session).toBe(pid)

      const now = (yield* parent.vms).find((v) => v.id === vm.id)
      expect(now).toMatchObject({ pid, tty: vm.tty, state: VM_STATE_RUNNING })
      if (now !== undefined) holdsMedia(now, spec)
      expect(row(yield* parent.info, "resetme")).toMatchObject({ vir_id: vm.id, vir_creator_pid: pid, vir_ttyname: vm.tty })
      yield* parent.stopVm(vm.id, { wait: true })
    })
  )

  e2e(fixture, "a VM killed by SIGKILL is reported with EIO and not restarted; the others keep running", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const parent = yield* makeVmdParent(run.options())
      const victim = yield* parent.startVm(smallSpec(f, "victim"))
      const bystander = yield* parent.startVm(smallSpec(f, "bystander"))
      const mark = yield* parent.mark
      process.kill(victim.pid, "SIGKILL")
      expect(yield* waitEvent(parent, mark, "Terminated", victim.id)).toMatchObject({ result: Errno.EIO })
      yield* waitEvent(parent, mark, "Stopped", victim.id)
      expect(yield* noEvent(parent, mark, (e) => e._tag === "Started")).toBeUndefined()

      yield* parent.pause(bystander.id)
      yield* parent.unpause(bystander.id)
      const rows = yield* parent.info
      expect(fromVmm(rows).map((r) => [r.vir_name, r.vir_creator_pid])).toEqual([["bystander", bystander.pid]])
      expect(row(rows, "victim").vir_state).toBe(0)
      expect(running(bystander.pid)).toBe(true)
    })
  )

  e2e(fixture, "CTL_VERBOSE reaches the running VMs, and VMs started later get -vv", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const log = join(run.spyDir, "vmm.log")
      // -d: the vmm logs on stderr and its VMs share it; the wrapper sends stderr to a file
      const parent = yield* makeVmdParent(
        run.options({
          debug: true,
          command: { command: "/bin/sh", args: ["-c", 'exec "$0" "$@" 2>>"$VMM_E2E_LOG"', binVmmPath] },
          env: { VMM_E2E_LOG: log }
        })
      )
      const pausedLines = (name: string) =>
        readFileSync(log, "latin1")
          .split("\n")
          .filter((l) => new RegExp(`^vm/${name}: vm \\d+ paused$`).test(l)).length
      const pauseUnpause = (id: number) => Effect.zipRight(parent.pause(id), parent.unpause(id))

      const quiet = yield* parent.startVm(smallSpec(f, "quiet"))
      expect(cmdline(quiet.pid).filter((a) => a.startsWith("-v"))).toEqual([])
      yield* pauseUnpause(quiet.id)
      expect(pausedLines("quiet"), "log_debug is off at verbosity 0").toBe(0)

      yield* parent.verbose(2)
      yield* pauseUnpause(quiet.id)
      expect(pausedLines("quiet"), "the running VM logs at verbosity 2").toBe(1)

      const loud = yield* parent.startVm(smallSpec(f, "loud"))
      expect(cmdline(loud.pid)).toContain("-vv")
      expect(cmdline(loud.pid)).toContain("-d")
      yield* pauseUnpause(loud.id)
      expect(pausedLines("loud")).toBe(1)

      yield* parent.verbose(0)
      yield* pauseUnpause(quiet.id)
      yield* pauseUnpause(loud.id)
      expect([pausedLines("quiet"), pausedLines("loud")], "back to quiet").toEqual([1, 1])
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
    })
  )

  e2e(fixture, "CTL_RESET with CONFIG_VMS ends every VM without events; the vmm keeps serving", (run) =>
    Effect.gen(function* () {
      const f = fixture()
      const parent = yield* makeVmdParent(run.options())
      const vms = yield* Effect.forEach(["r1", "r2"], (n) => parent.startVm(smallSpec(f, n)))
      const mark = yield* parent.mark
      yield* parent.reset(CONFIG_VMS)
      yield* eventually(() => vms.every((vm) => !running(vm.pid)), "every VM process ended")
      expect(yield* noEvent(parent, mark, (e) => e._tag === "Terminated")).toBeUndefined()
      expect(fromVmm(yield* parent.info)).toEqual([])

      // still serving: a VM starts again, and a reset without CONFIG_VMS leaves it alone
      const again = yield* parent.startVm(smallSpec(f, "r1"))
      yield* parent.reset(CONFIG_SWITCHES)
      const rows = yield* parent.info
      expect(fromVmm(rows).map((r) => [r.vir_name, r.vir_creator_pid])).toEqual([["r1", again.pid]])
      expect(running(again.pid)).toBe(true)
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
      expect(running(again.pid)).toBe(false)
    })
  )
})

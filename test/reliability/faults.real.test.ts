/**
 * The same faults through the real layers: a real vmm (the current sources
 * bundled as bin/vmm runs them, process backend) whose VM program cannot be
 * executed or misbehaves in the handshake (c/vmprog.c's test modes, set
 * with VMM_TEST_VM_MODE), or after it. Each ends in vmm.c's reply, with no
 * VM process left below the vmm, and the fault repeated leaves the vmm's
 * fds as they were (nothing leaked per fault).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { rmSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import { Errno } from "../../src/schema/errno.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import type { Channel, Imsg } from "../../src/services/ImsgChannel.ts"
import { createParams, vmopId } from "../vmm/wire.ts"
import { buildPrograms, bundledVmm, type Programs, type VmmProgram } from "./lib/build.ts"
import { eventually } from "../e2e/harness.ts"
import { descendants, fdFlags, fdLinks } from "./lib/proc.ts"
import { devNull, startRealVmm } from "./lib/realVmm.ts"

let programs: Programs
let vmm: VmmProgram
let injected = 0

beforeAll(async () => {
  programs = await buildPrograms("reliability-faults")
  vmm = await bundledVmm(programs.dir)
}, 60_000)
afterAll(() => {
  rmSync(programs.dir, { recursive: true, force: true })
  console.log(`faults injected through the real layers: ${injected}`)
})

/** Every message the vmm sends on `channel`, collected as it comes (until the scope ends); callers may empty it. */
const heardOn = (channel: Channel) =>
  Effect.gen(function* () {
    const heard: Array<Imsg> = []
    yield* channel.messages.pipe(
      Stream.runForEach((m) => Effect.sync(() => heard.push(m))),
      Effect.ignore,
      Effect.forkScoped
    )
    return heard
  })

/** Multiset difference: what `a` has more of than `b`. */
const minus = (a: ReadonlyArray<string>, b: ReadonlyArray<string>): Array<string> => {
  const left = [...b]
  return a.filter((x) => {
    const i = left.indexOf(x)
    if (i < 0) return true
    left.splice(i, 1)
    return false
  })
}

/**
 * The vmm's fds as links, but for /dev/null opened read-only: libuv's reserve
 * for EMFILE (loop->emfile_fd), opened once, for good, when the first stream
 * is made, e.g. process.stderr as a pipe at the vmm's first log line, which
 * may come in any of the three starts. Every /dev/null of the test's (the
 * vmm device, kernels, ttys) is opened read-write (devNull).
 */
const vmmFds = (pid: number): Array<string> => {
  const flags = fdFlags(pid)
  return [...fdLinks(pid).entries()]
    .filter(([n, link]) => !(link === "/dev/null" && ((flags.get(n) ?? 0) & 3) === 0 && n > 2))
    .map(([, link]) => link)
}

const i32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at, true)

/**
 * On a fresh vmm with this VM program and environment, start a VM three
 * times (the fault each time); what the parent heard for each, and whether
 * the vmm's fds and the processes below it are the same after the third as
 * after the first (the first start may open something once, for good: the
 * spawner's /dev/null).
 */
const threeStarts = (vmExec: string, env: Readonly<Record<string, string>>) =>
  Effect.gen(function* () {
    const v = yield* startRealVmm({ program: vmm, vmExec, env })
    const heard = yield* heardOn(v.channel)
    yield* v.channel.send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, pid: 1, fd: devNull("/dev/vmm") })
    const vmsBelow = () => descendants(v.pid).filter((p) => p.comm !== "spawner").length
    const replies: Array<Array<{ type: string; res: number }>> = []
    let first: Array<string> = []
    for (let i = 0; i < 3; i++) {
      heard.length = 0
      const vmid = 9 + i
      yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name: `faulty${i}` }), fd: devNull("kernel") })
      yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
      injected++
      // the fault has played out: a reply, and (for a started VM) its end, and no VM process left
      yield* eventually(() => heard.some((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE) && vmsBelow() === 0, "a START_VM_RESPONSE and no VM process left", 10_000)
      yield* Effect.sleep("300 millis")
      replies.push(heard.map((m) => ({ type: T.imsgTypeName(m.type), res: i32(m.data, 0) })))
      if (i === 0) first = vmmFds(v.pid)
    }
    const now = vmmFds(v.pid)
    const state = { vmsBelow: vmsBelow(), fdsGained: minus(now, first), fdsLost: minus(first, now) }
    yield* v.channel.close
    const exit = yield* v.exit
    return { replies, state, exit, logs: v.recent }
  }).pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))

const clean = { vmsBelow: 0, fdsGained: [], fdsLost: [] }

describe("faults through the real layers", () => {
  it.live("the VM program cannot be executed (ENOENT): START_VM_RESPONSE EIO, or ENOMEM (EOF before the id)", () =>
    Effect.gen(function* () {
      const r = yield* threeStarts(join(programs.dir, "no-such-program"), {})
      // The spawn is early (back at the fork, as vmm.c's): the exec fails in the
      // child, which exits 127. Writing struct vmd_vm then fails (EPIPE: EIO) if
      // the child is gone already, else the id read meets EOF (ENOMEM, vmm.c's
      // answer to a failed exec); which comes first is the scheduler's choice.
      for (const rs of r.replies) {
        expect(rs.map((x) => x.type)).toEqual(["IMSG_VMDOP_START_VM_RESPONSE"])
        expect([Errno.EIO, Errno.ENOMEM]).toContain(rs[0]?.res)
      }
      expect(r.state).toEqual(clean)
      expect(r.exit).toEqual({ _tag: "Exited", code: 0 })
    })
  , 30_000)

  it.live("the VM dies after reading the struct: START_VM_RESPONSE ENOMEM (EOF before the id), or EIO if the prefix write already failed", () =>
    Effect.gen(function* () {
      const r = yield* threeStarts(programs.vmprog, { VMM_TEST_VM_MODE: "die-in-handshake" })
      for (const rs of r.replies) {
        expect(rs.map((x) => x.type)).toEqual(["IMSG_VMDOP_START_VM_RESPONSE"])
        expect([Errno.ENOMEM, Errno.EIO]).toContain(rs[0]?.res)
      }
      expect(r.state).toEqual(clean)
    })
  , 30_000)

  it.live("a VM that answers another VM's id in the handshake: START_VM_RESPONSE EINVAL, the other VM untouched", () =>
    Effect.gen(function* () {
      // scripts/c/vmfuzz.c runs c/vmprog.c (answers its own vmd id) except for "fz-id-N" (answers N).
      const v = yield* startRealVmm({ program: vmm, vmExec: programs.vmfuzz, env: { VMFUZZ_VMPROG: programs.vmprog } })
      const heard = yield* heardOn(v.channel)
      const start = (vmid: number, name: string) =>
        Effect.gen(function* () {
          yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name }), fd: devNull("kernel") })
          yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
          yield* eventually(() => heard.some((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE && m.peerid === vmid), `START_VM_RESPONSE for vm ${vmid}`, 10_000)
          const r = heard.find((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE && m.peerid === vmid)!
          return { res: i32(r.data, 0), id: i32(r.data, 4), pid: i32(r.data, 8) }
        })
      const good = yield* start(1, "good-1")
      expect(good.res).toBe(0)
      expect(good.id).toBe(1)
      injected++
      const impostor = yield* start(50, "fz-id-1")
      expect(impostor).toEqual({ res: Errno.EINVAL, id: 50, pid: 0 })
      // the impostor is killed; the good VM is the only one left below the vmm, and info lists it alone
      yield* eventually(() => descendants(v.pid).filter((p) => p.comm !== "spawner").length === 1, "the impostor killed, one VM process left", 10_000)
      heard.length = 0
      yield* v.channel.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 7, pid: 1 })
      yield* eventually(() => heard.some((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA), "GET_INFO_VM_END_DATA", 10_000)
      const data = heard.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA)
      expect(data.map((m) => [i32(m.data, 92), i32(m.data, 88)])).toEqual([[1, good.pid]])
      yield* v.channel.close
      expect(yield* v.exit).toEqual({ _tag: "Exited", code: 0 })
    }).pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))
  , 30_000)

  it.live("the VM answers id 0: START_VM_RESPONSE EINVAL", () =>
    Effect.gen(function* () {
      const r = yield* threeStarts(programs.vmprog, { VMM_TEST_VM_MODE: "answer-zero" })
      for (const rs of r.replies) expect(rs).toEqual([{ type: "IMSG_VMDOP_START_VM_RESPONSE", res: Errno.EINVAL }])
      expect(r.state).toEqual(clean)
    })
  , 30_000)

  it.live("the VM sends an invalid imsg after starting: started, then ended alone (vmm.c would fatalx)", () =>
    Effect.gen(function* () {
      const r = yield* threeStarts(programs.vmprog, { VMM_TEST_VM_MODE: "garbage" })
      for (const rs of r.replies)
        expect(rs).toEqual([
          { type: "IMSG_VMDOP_START_VM_RESPONSE", res: 0 },
          { type: "IMSG_VMDOP_TERMINATE_VM_EVENT", res: 0 }
        ])
      expect(r.logs.filter((l) => /got invalid imsg 99 .* terminating it/.test(l))).toHaveLength(3)
      expect(r.state).toEqual(clean)
      expect(r.exit).toEqual({ _tag: "Exited", code: 0 })
    })
  , 30_000)

  it.live("a guest reset while a message to the VM is unread: TERMINATE_VM_EVENT EAGAIN, not a misbehaving VM", () =>
    Effect.gen(function* () {
      const v = yield* startRealVmm({ program: vmm, vmExec: programs.vmprog })
      const heard = yield* heardOn(v.channel)
      yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: 4, pid: 1, data: createParams({ name: "resetter" }), fd: devNull("kernel") })
      yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: 4, pid: 1, fd: devNull("tty") })
      yield* eventually(() => heard.length > 0, "START_VM_RESPONSE", 10_000)
      const pid = i32(heard[0]!.data, 8)
      expect(i32(heard[0]!.data, 0)).toBe(0)
      // the VM stops reading; the vmm sends it something; then the guest resets (exit 35)
      process.kill(pid, "SIGSTOP")
      yield* v.channel.send({ type: T.IMSG_CTL_VERBOSE, peerid: T.PEERID_NONE, pid: 1, data: new Uint8Array(4) })
      yield* Effect.sleep("200 millis")
      injected++
      process.kill(pid, "SIGHUP")
      process.kill(pid, "SIGCONT")
      yield* eventually(() => heard.length > 1, "TERMINATE_VM_EVENT", 10_000)
      expect(heard.slice(1).map((m) => ({ type: T.imsgTypeName(m.type), res: i32(m.data, 0) }))).toEqual([
        { type: "IMSG_VMDOP_TERMINATE_VM_EVENT", res: Errno.EAGAIN }
      ])
      expect(v.recent.filter((l) => l.includes("terminating it"))).toEqual([])
    }).pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))
  , 30_000)

  it.live("out of file descriptors (ulimit -n 48): failed starts are answered and say why, info lists every VM, and once VMs end, starts succeed again", () =>
    Effect.gen(function* () {
      // sh sets soft and hard limits alike, so Node cannot raise its soft limit past it
      const limited = { command: "/bin/sh", args: ["-c", 'ulimit -n 48 && exec "$0" "$@"', vmm.command, ...vmm.args] }
      const v = yield* startRealVmm({ program: limited, vmExec: programs.vmprog })
      const heard = yield* heardOn(v.channel)
      const results = (vmid: number) => heard.filter((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE && m.peerid === vmid).map((m) => i32(m.data, 0))
      const start = (vmid: number) =>
        Effect.gen(function* () {
          yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name: `nofile${vmid}` }), fd: devNull("kernel") })
          yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, pid: 1, fd: devNull("tty") })
          yield* eventually(() => results(vmid).length > 0, `START_VM_RESPONSE for vm ${vmid}`, 10_000)
          yield* Effect.sleep("50 millis") // a failed REQUEST is answered, then its END too (ENOENT)
          return results(vmid)
        })
      const info = Effect.gen(function* () {
        heard.length = 0
        yield* v.channel.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 7, pid: 1 })
        yield* eventually(() => heard.some((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA), "GET_INFO_VM_END_DATA", 10_000)
        const end = heard.find((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA)!
        return { end: i32(end.data, 0), ids: heard.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA).map((m) => i32(m.data, 92)) }
      })
      const running: Array<number> = []
      let failedAt = 0
      for (let vmid = 1; vmid <= 40 && failedAt === 0; vmid++) {
        const rs = yield* start(vmid)
        if (rs[0] === 0) running.push(vmid)
        else failedAt = vmid
      }
      injected++
      expect(failedAt, "the limit was reached").toBeGreaterThan(0)
      expect(running.length, "VMs ran before it").toBeGreaterThanOrEqual(3)
      // the failure says why (the VM's socketpair: EMFILE)
      expect(v.recent.filter((l) => l.includes("EMFILE")), v.recent.join("\n")).not.toEqual([])
      // every running VM is still listed (statm it cannot open reads as 0 used), and the answer is 0
      const listed = yield* info
      expect(listed.end).toBe(0)
      expect([...listed.ids].sort((x, y) => x - y)).toEqual(running)
      // stop three; a start succeeds again
      heard.length = 0
      for (const vmid of running.slice(0, 3)) yield* v.channel.send({ type: T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid: 5, pid: 1, data: vmopId(vmid, 1) })
      yield* eventually(() => heard.filter((m) => m.type === T.IMSG_VMDOP_TERMINATE_VM_EVENT).length === 3, "three TERMINATE_VM_EVENTs", 10_000)
      expect((yield* start(100))[0]).toBe(0)
      // VMs registered and not started hold their kernel fds: at the limit, the kernel drops the fd
      // passed with the next START_VM_REQUEST (MSG_CTRUNC). That VM is refused (no kernel), and the log
      // says the fd never arrived, not only what its absence looked like.
      heard.length = 0
      let refused = 0
      for (let vmid = 200; vmid < 260 && refused === 0; vmid++) {
        yield* v.channel.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, pid: 1, data: createParams({ name: `held${vmid}` }), fd: devNull("kernel") })
        yield* Effect.sleep("10 millis")
        refused = heard.filter((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE).length
      }
      const refusals = () => heard.filter((m) => m.type === T.IMSG_VMDOP_START_VM_RESPONSE).map((m) => i32(m.data, 0))
      const missing = () => v.recent.filter((l) => /START_VM_REQUEST \(peerid \d+\) came without the fd its header announced/.test(l))
      // replies and log lines come through two pipes: wait until both tell of every refusal
      yield* eventually(() => refusals().length > 0 && missing().length === refusals().length, `a log line per refusal:\n${v.recent.join("\n")}`, 10_000)
      expect(refusals().every((r) => r === Errno.EINVAL), `refusals ${refusals().join(" ")}`).toBe(true)
      yield* v.channel.close
      expect(yield* v.exit).toEqual({ _tag: "Exited", code: 0 })
      expect(descendants(v.pid)).toEqual([])
    }).pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))
  , 60_000)
})

/**
 * Fault injection through the layers, on the in-memory vmm (the model
 * tests' harness): each fault ends in vmm.c's documented reply (or the
 * port's documented deviation), no fd is left open or closed twice in the
 * fd table, no VM process is left without a registered VM, and the vmm
 * goes on serving (or, where vmm.c ends, ends cleanly).
 *
 * Faults: spawn failing (ENOENT, EAGAIN, ENOMEM); the VM dying at each step
 * of the start handshake; the vmm's own socket operations failing; short
 * writes and reads on the raw handshake; EPIPE on a VM channel and on the
 * parent channel; vmm(4) ioctls failing; info racing VM creation and exit;
 * the parent vanishing mid-start. A summary of faults injected is printed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, TestClock } from "effect"
import { afterAll } from "vitest"
import * as T from "../../src/schema/imsgTypes.ts"
import { Errno } from "../../src/schema/errno.ts"
import { SIZEOF } from "../../src/schema/structs.ts"
import { Fd } from "../../src/services/Fd.ts"
import type { Harness, HarnessOptions, ParentMsg } from "../vmm/harness.ts"
import { makeHarness } from "../vmm/harness.ts"
import { createParams, vmopId } from "../vmm/wire.ts"

// ---------------------------------------------------------------------------
// bookkeeping

const injected = new Map<string, number>()
const inject = (what: string) => injected.set(what, (injected.get(what) ?? 0) + 1)
afterAll(() => {
  const total = [...injected.values()].reduce((a, b) => a + b, 0)
  console.log(`faults injected: ${total} (${[...injected].map(([k, v]) => `${k} ${v}`).join(", ")})`)
})

// ---------------------------------------------------------------------------
// helpers

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true)
const i32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at, true)

interface Reply {
  readonly type: string
  readonly peerid: number
  readonly res: number
  readonly id?: number
  readonly pid?: number
}

/** The parent's messages, decoded: vmop_result replies as {res, id, pid}, END_DATA as {res}. */
const decode = (msgs: ReadonlyArray<ParentMsg>): Array<Reply> =>
  msgs.map((m) =>
    m.data.length === 28
      ? { type: T.imsgTypeName(m.type), peerid: m.peerid >>> 0, res: i32(m.data, 0), id: u32(m.data, 4), pid: i32(m.data, 8) }
      : { type: T.imsgTypeName(m.type), peerid: m.peerid >>> 0, res: m.data.length === 4 ? i32(m.data, 0) : -1 }
  )

const START_RESPONSE = "IMSG_VMDOP_START_VM_RESPONSE"

const boot = (o: HarnessOptions = {}) =>
  Effect.gen(function* () {
    const h = yield* makeHarness({ firstPid: 3000, ...o })
    yield* h.send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, fd: h.makeFd("/dev/vmm") })
    yield* h.settle
    h.takeParent()
    return h
  })

/** config_setvm's two messages: REQUEST with a kernel, END with a tty. */
const start = (h: Harness, vmid: number, name = `vm${vmid}`) =>
  Effect.gen(function* () {
    yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: vmid, data: createParams({ name }), fd: h.makeFd(`${name}.kernel`) })
    yield* h.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: vmid, fd: h.makeFd(`${name}.tty`) })
    yield* h.settle
    return decode(h.takeParent())
  })

/** A VM started and running; its pid. */
const running = (h: Harness, vmid: number, name = `vm${vmid}`) =>
  Effect.gen(function* () {
    const r = yield* start(h, vmid, name)
    expect(r).toEqual([{ type: START_RESPONSE, peerid: vmid, res: 0, id: vmid, pid: expect.any(Number) }])
    return r[0]!.pid!
  })

const vmSocketLabels = (vmid: number) => [`vm ${vmid} channel[0]`, `vm ${vmid} channel[1]`]

/** Exactly the idle fds plus the channels of these running VMs are open; nothing closed twice; no stray child. */
const expectClean = (h: Harness, runningVmids: ReadonlyArray<number> = []) =>
  Effect.gen(function* () {
    const labels = h.table.openFds().map((f) => f.label).sort()
    const want = ["/dev/vmm", "parent[0]", "parent[1]", ...runningVmids.flatMap(vmSocketLabels)].sort()
    expect(labels).toEqual(want)
    expect(h.table.doubleCloses).toBe(0)
    expect(h.proxyDoubleCloses()).toBe(0)
    const registered = (yield* h.registry.all).map((vm) => vm.pid)
    const children = yield* h.process.children
    expect(children.filter((pid) => !registered.includes(pid))).toEqual([])
  })

/** The vmm still serves: an info round trip lists exactly these VMs. */
const expectServing = (h: Harness, vmids: ReadonlyArray<number>) =>
  Effect.gen(function* () {
    yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 77 })
    yield* h.settle
    const got = h.takeParent()
    expect(got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA).map((m) => u32(m.data, 92)).sort()).toEqual([...vmids].sort())
    expect(decode(got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA))).toEqual([
      { type: "IMSG_VMDOP_GET_INFO_VM_END_DATA", peerid: 77, res: 0 }
    ])
  })

/** The vmm's end of a running VM's channel, as an Fd of the table (for its fault hooks). */
const vmmEndOf = (h: Harness, vmid: number): Fd => {
  const f = h.table.openFds().find((x) => x.label === `vm ${vmid} channel[0]`)
  if (f === undefined) throw new Error(`vm ${vmid} has no channel`)
  return new Fd(f.num, h.table.backend, "probe")
}

// ---------------------------------------------------------------------------

describe("spawn failing", () => {
  for (const [name, errno] of [["ENOENT", Errno.ENOENT], ["EAGAIN", Errno.EAGAIN], ["ENOMEM", Errno.ENOMEM]] as const) {
    it.scoped(`spawn failing with ${name}: START_VM_RESPONSE EIO, the VM removed, its fds closed, the vmm serving`, () =>
      Effect.gen(function* () {
        const h = yield* boot()
        yield* running(h, 1)
        yield* h.control.failNextSpawn(errno)
        inject(`spawn ${name}`)
        expect(yield* start(h, 2)).toEqual([{ type: START_RESPONSE, peerid: 2, res: Errno.EIO, id: 2, pid: 0 }])
        expect(yield* h.registry.byVmid(2)).toBeNull()
        yield* expectClean(h, [1])
        yield* expectServing(h, [1])
        // and the next start works
        yield* running(h, 3)
      })
    )
  }
})

describe("the VM dying in the start handshake", () => {
  it.scoped("before reading the struct: the struct write fails, EIO", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      h.closeNextChildAtStart(1)
      inject("child gone before the struct")
      const r = yield* start(h, 1)
      expect(r).toEqual([{ type: START_RESPONSE, peerid: 1, res: Errno.EIO, id: 1, pid: expect.any(Number) }])
      yield* expectClean(h)
      yield* expectServing(h, [])
    })
  )

  const cases = [
    ["after the struct (EOF before the id)", { _tag: "DieAfterStruct", code: Errno.EIO } as const, Errno.ENOMEM],
    ["after the prefix with half an id", { _tag: "ShortId" } as const, Errno.ENOMEM],
    ["answering id 0 (VMM_IOC_CREATE failed)", { _tag: "AnswerZero" } as const, Errno.EINVAL]
  ] as const
  for (const [what, plan, errno] of cases) {
    it.scoped(`${what}: START_VM_RESPONSE ${errno}, nothing left behind`, () =>
      Effect.gen(function* () {
        const h = yield* boot()
        yield* running(h, 1)
        h.plan("victim", plan)
        inject(`handshake: ${plan._tag}`)
        const r = yield* start(h, 2, "victim")
        expect(r).toEqual([{ type: START_RESPONSE, peerid: 2, res: errno, id: 2, pid: expect.any(Number) }])
        expect(yield* h.registry.byVmid(2)).toBeNull()
        yield* expectClean(h, [1])
        yield* expectServing(h, [1])
      })
    )
  }

  it.scoped("hanging: after the handshake timeout ENOMEM, the child killed, the vmm serving", () =>
    Effect.gen(function* () {
      const h = yield* boot({ handshakeTimeoutMs: 5_000 })
      yield* running(h, 1)
      h.plan("sleeper", { _tag: "Hang" })
      inject("handshake: Hang")
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: 2, data: createParams({ name: "sleeper" }), fd: h.makeFd("k") })
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: 2, fd: h.makeFd("tty") })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      yield* TestClock.adjust("6 seconds")
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: START_RESPONSE, peerid: 2, res: Errno.ENOMEM, id: 2, pid: expect.any(Number) }])
      expect(h.sims().find((s) => s.vmdVm?.name === "sleeper")?.end).toEqual({ _tag: "Killed" })
      yield* expectClean(h, [1])
      yield* expectServing(h, [1])
    })
  )

  it.scoped("exiting right after its id: started, then TERMINATE_VM_EVENT with its exit code", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      h.plan("brief", { _tag: "ExitAfterId", code: 1 })
      inject("handshake: ExitAfterId")
      const r = yield* start(h, 4, "brief")
      expect(r[0]).toMatchObject({ type: START_RESPONSE, res: 0, id: 4 })
      const all = [...r.slice(1)]
      yield* h.settle
      all.push(...decode(h.takeParent()))
      expect(all).toEqual([{ type: "IMSG_VMDOP_TERMINATE_VM_EVENT", peerid: T.PEERID_NONE, res: 1, id: 4, pid: 0 }])
      yield* expectClean(h)
    })
  )
})

describe("the vmm's own socket operations failing", () => {
  for (const which of ["socketpair", "writeStruct", "writePrefix", "open"] as const) {
    it.scoped(`${which} failing: START_VM_RESPONSE EIO, no child or fd left`, () =>
      Effect.gen(function* () {
        const h = yield* boot()
        yield* running(h, 1)
        h.failNext(which)
        inject(`vmm ${which}`)
        const r = yield* start(h, 2)
        expect(r).toEqual([{ type: START_RESPONSE, peerid: 2, res: Errno.EIO, id: 2, pid: expect.any(Number) }])
        yield* h.settle
        expect(h.sims().filter((s) => s.end === null).map((s) => s.vmdVm?.vmid)).toEqual([1])
        yield* expectClean(h, [1])
        yield* expectServing(h, [1])
      })
    )
  }

  it.scoped("short writes and short reads on both ends of the raw handshake: the start still succeeds byte for byte", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      const original = h.table.socketpair.bind(h.table)
      h.table.socketpair = (label: string) => {
        const [a, b] = original(label)
        h.table.shortWrites(a, 7)
        h.table.shortReads(a, 1)
        h.table.shortWrites(b, 3)
        h.table.shortReads(b, 5)
        inject("short writes and reads")
        return [a, b] as const
      }
      const pid = yield* running(h, 1)
      const sim = h.simByPid(pid)
      expect(sim.vmdVm?.vmid).toBe(1)
      expect(sim.prefix?.length).toBe(40)
      // and the channel works over the same short reads and writes
      yield* h.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 1, data: vmopId(1) })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_PAUSE_VM_RESPONSE", peerid: T.PEERID_NONE, res: 0, id: 1, pid: 0 }])
    })
  )
})

describe("EPIPE", () => {
  it.scoped("on a VM channel: the message is lost, a later send with an fd closes the fd, the others are untouched", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      yield* running(h, 2)
      h.table.failNextWrite(vmmEndOf(h, 2))
      inject("EPIPE on a VM channel")
      yield* h.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 2, data: vmopId(2), fd: h.makeFd("passed-1") })
      yield* h.settle
      // the PAUSE never reached the VM: no answer (vmm.c: the handler is removed, nothing sent back)
      expect(decode(h.takeParent())).toEqual([])
      // later ones too: vmm.c's imsgbuf of the dead pipe still queues them, so no reply (not EINVAL,
      // which vmd's parent would take for "paused"), the fd closed here
      yield* h.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 2, data: vmopId(2), fd: h.makeFd("passed-2") })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([])
      expect(h.table.openFds().map((f) => f.label).filter((l) => l.startsWith("passed"))).toEqual([])
      // and a graceful stop is answered 0, as vmm.c's queued VM_REBOOT is (the VM is going away anyway)
      yield* h.send({ type: T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid: 31, data: vmopId(2) })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_TERMINATE_VM_RESPONSE", peerid: 31, res: 0, id: 2, pid: 0 }])
      // VM 1 still answers
      yield* h.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 1, data: vmopId(1) })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_PAUSE_VM_RESPONSE", peerid: T.PEERID_NONE, res: 0, id: 1, pid: 0 }])
      // VM 2's process is still ours and its exit is reported
      const vm2 = yield* h.registry.byVmid(2)
      yield* h.kill(vm2!.pid, "SIGKILL")
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_TERMINATE_VM_EVENT", peerid: T.PEERID_NONE, res: Errno.EIO, id: 2, pid: 0 }])
      yield* expectClean(h, [1])
    })
  )

  it.scoped("on the parent channel: the vmm ends its VMs and exits 0 (proc.c: event_loopexit on EPIPE)", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      yield* running(h, 2)
      const parentEnd = h.table.openFds().find((f) => f.label === "parent[0]")!
      h.table.failNextWrite(new Fd(parentEnd.num, h.table.backend, "probe"))
      inject("EPIPE on the parent channel")
      yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 5 })
      yield* h.settle
      const code = yield* h.handle.done
      expect(code).toBe(0)
      yield* h.settle
      expect(h.sims().filter((s) => s.end === null)).toEqual([])
      expect(yield* h.process.children).toEqual([])
      expect(yield* h.registry.all).toEqual([])
      expect(h.table.doubleCloses).toBe(0)
    })
  )
})

describe("vmm(4) ioctls failing", () => {
  for (const errno of [Errno.EIO, Errno.ENOMEM, Errno.EFAULT] as const) {
    it.scoped(`VMM_IOC_INFO failing with ${errno}: GET_INFO_VM_END_DATA ${errno}, no DATA`, () =>
      Effect.gen(function* () {
        const h = yield* boot()
        yield* running(h, 1)
        yield* h.kernel.failNext("INFO", errno)
        inject(`INFO ${errno}`)
        yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 9 })
        yield* h.settle
        expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_GET_INFO_VM_END_DATA", peerid: 9, res: errno }])
        yield* expectServing(h, [1])
      })
    )
  }

  it.scoped("VMM_IOC_INFO reporting entries on the size query: EIO", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      yield* h.kernel.injectInfoCount(2n)
      inject("INFO count on size query")
      yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 9 })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_GET_INFO_VM_END_DATA", peerid: 9, res: Errno.EIO }])
      yield* expectServing(h, [1])
    })
  )

  it.scoped("VMM_IOC_TERM failing on a forced stop: TERMINATE_VM_RESPONSE 0 (vmm.c ignores it), the VM runs on", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      yield* h.kernel.failNext("TERM", Errno.EBUSY)
      inject("TERM EBUSY")
      yield* h.send({ type: T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid: 40, data: vmopId(1, 0x01) })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([{ type: "IMSG_VMDOP_TERMINATE_VM_RESPONSE", peerid: 40, res: 0, id: 1, pid: 0 }])
      yield* expectServing(h, [1])
      // asking again now reaches vmm(4): the VM ends
      yield* h.send({ type: T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid: 41, data: vmopId(1, 0x01) })
      yield* h.settle
      expect(decode(h.takeParent())).toEqual([
        { type: "IMSG_VMDOP_TERMINATE_VM_RESPONSE", peerid: 41, res: 0, id: 1, pid: 0 },
        { type: "IMSG_VMDOP_TERMINATE_VM_EVENT", peerid: T.PEERID_NONE, res: 0, id: 1, pid: 0 }
      ])
      yield* expectClean(h)
    })
  )

  it.scoped("the RECEIVE_VMM_FD sweep with INFO or TERM failing: no reply, the vmm serving", () =>
    Effect.gen(function* () {
      const h = yield* makeHarness({ kernelVms: ["old1", "old2"] })
      yield* h.kernel.failNext("INFO", Errno.EIO)
      inject("sweep INFO EIO")
      yield* h.send({ type: T.IMSG_VMDOP_RECEIVE_VMM_FD, peerid: T.PEERID_NONE, fd: h.makeFd("/dev/vmm") })
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect((yield* h.kernel.list).length).toBe(2)
      yield* running(h, 1)
      yield* expectServing(h, [0, 0, 1])
    })
  )
})

describe("info racing VM creation and exit", () => {
  it.scoped("a VM created between the two INFO calls: END_DATA 0, and the next info is whole", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      yield* h.kernel.afterNextInfo(h.kernel.create({ name: "racer", ncpus: 1, memorySize: 1n << 20n, creatorPid: 1 }).pipe(Effect.asVoid))
      inject("info racing a create")
      yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 9 })
      yield* h.settle
      const got = h.takeParent()
      expect(decode(got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA))).toEqual([
        { type: "IMSG_VMDOP_GET_INFO_VM_END_DATA", peerid: 9, res: 0 }
      ])
      // vmm(4) copied nothing: the one row the size query asked room for is all zero
      // (vmm.c: "the caller can just try again"; its own buffer would be read past, ours is zeroed)
      const rows = got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA)
      expect(rows.map((m) => [m.data?.length, m.data?.every((b) => b === 0)])).toEqual([[SIZEOF.vmop_info_result, true]])
      yield* expectServing(h, [1, 0])
    })
  )

  it.scoped("a VM exiting between the two INFO calls: its row is zero, its exit is still reported", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      const pid1 = yield* running(h, 1)
      yield* running(h, 2)
      const sim = h.simByPid(pid1)
      yield* h.kernel.afterNextInfo(
        h.kernel.destroy(sim.kernelId).pipe(Effect.zipRight(h.vmCommand(pid1, { _tag: "Exit", code: 0 })))
      )
      inject("info racing an exit")
      yield* h.send({ type: T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid: 9 })
      yield* h.settle
      const got = h.takeParent()
      const rows = got.filter((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_DATA).map((m) => u32(m.data, 92))
      expect(rows.length).toBe(2)
      expect(rows).toContain(0)
      expect(decode(got.filter((m) => m.type !== T.IMSG_VMDOP_GET_INFO_VM_DATA))).toEqual([
        { type: "IMSG_VMDOP_GET_INFO_VM_END_DATA", peerid: 9, res: 0 },
        { type: "IMSG_VMDOP_TERMINATE_VM_EVENT", peerid: T.PEERID_NONE, res: 0, id: 1, pid: 0 }
      ])
      yield* expectClean(h, [2])
      yield* expectServing(h, [2])
    })
  )
})

describe("the parent vanishing", () => {
  it.scoped("mid-handshake: the vmm gives up on the child, ends every VM and exits 0, nothing left", () =>
    Effect.gen(function* () {
      const h = yield* boot({ handshakeTimeoutMs: 5_000 })
      yield* running(h, 1)
      h.plan("stuck", { _tag: "Hang" })
      inject("parent gone mid-start")
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: 2, data: createParams({ name: "stuck" }), fd: h.makeFd("k") })
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_END, peerid: 2, fd: h.makeFd("tty") })
      yield* h.settle
      const closing = yield* Effect.fork(h.closeParent)
      yield* h.settle
      yield* TestClock.adjust("6 seconds")
      expect(yield* Fiber.join(closing)).toBe(0)
      yield* h.settle
      expect(h.sims().filter((s) => s.end === null)).toEqual([])
      expect(yield* h.process.children).toEqual([])
      // what the vmm's scope holds until it ends (exit(2) for the real process): its end of fd 3 and /dev/vmm
      expect(h.table.openFds().map((f) => f.label).sort()).toEqual(["/dev/vmm", "parent[0]"])
      expect(h.table.doubleCloses).toBe(0)
    })
  )

  it.scoped("between START_VM_REQUEST and START_VM_END: the half-registered VM's fds are closed at exit", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      inject("parent gone between REQUEST and END")
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_REQUEST, peerid: 2, data: createParams({ name: "half", ndisks: 1 }), fd: h.makeFd("k") })
      yield* h.send({ type: T.IMSG_VMDOP_START_VM_DISK, peerid: 2, data: new Uint8Array(4), fd: h.makeFd("disk") })
      yield* h.settle
      expect(yield* h.closeParent).toBe(0)
      yield* h.settle
      expect(h.sims().filter((s) => s.end === null)).toEqual([])
      // what the vmm's scope holds until it ends (exit(2) for the real process): its end of fd 3 and /dev/vmm
      expect(h.table.openFds().map((f) => f.label).sort()).toEqual(["/dev/vmm", "parent[0]"])
      expect(h.table.doubleCloses).toBe(0)
    })
  )
})

describe("a parent that breaks the frame stream", () => {
  it.scoped("a header with a bad length from the parent ends the vmm with 1 and a clear message, every VM ended (DECISIONS.md)", () =>
    Effect.gen(function* () {
      const h = yield* boot()
      yield* running(h, 1)
      const parentEnd = h.table.openFds().find((f) => f.label === "parent[1]")!
      const end = h.table.endpoint(new Fd(parentEnd.num, h.table.backend, "probe"))!
      const bad = new Uint8Array(16)
      new DataView(bad.buffer).setUint32(4, 8, true) // len 8 < 16
      end.write(bad, h.makeFd("riding"))
      inject("parent framing error")
      yield* h.settle
      expect(yield* h.handle.done).toBe(1)
      yield* h.settle
      expect(h.logs.some((l) => /imsgbuf_read: imsg with bad length 8/.test(l))).toBe(true)
      expect(h.sims().filter((s) => s.end === null)).toEqual([])
      expect(h.table.openFds().map((f) => f.label).filter((l) => l === "riding")).toEqual([])
      expect(h.table.doubleCloses).toBe(0)
    })
  )
})

/**
 * The process backend (VmmDeviceProcess, vmm.c 1.143's terminate_vm): a
 * forced stop is SIGTERM, then SIGKILL 10 s later if the VM is still there.
 * Time is TestClock's: the kill comes at exactly 10 s, never before.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope, TestClock, TestContext } from "effect"
import fc from "fast-check"
import type { Harness, VmBehaviour } from "./harness.ts"
import { booted, idleFds, startRunning } from "./fixtures.ts"
import { propRuns } from "./scenario.ts"
import { expectOpen, expectParent, reply } from "./steps.ts"
import { CONFIG_VMS, E, int32, M, PEERID_NONE, readInfo, VMOP_FORCE, vmopId, vmopResult } from "./wire.ts"

const stop = (vmid: number, flags = 0) => ({ type: M.TERMINATE_VM_REQUEST, peerid: 77, data: vmopId(vmid, flags) })
const stopResponse = (vmid: number, res: number) => reply(M.TERMINATE_VM_RESPONSE, 77, vmopResult(res, vmid, 0))
const event = (vmid: number, res: number) => reply(M.TERMINATE_VM_EVENT, PEERID_NONE, vmopResult(res, vmid, 0))

const processBackend = (firstPid = 500) => booted({ backend: "process", firstPid })

const stubborn = (sigterm: VmBehaviour["sigterm"]) => ({ sigterm })

/**
 * 4 s after VM 1 (pid 500) was force-stopped and is gone, VM `vmid` ("next", planned to ignore
 * SIGTERM) starts under the same pid (a wrap of the pid space): it must live on past VM 1's
 * 10 s, with only VM 1's SIGTERM ever sent.
 */
const nextUnderTheSamePidLivesOn = (h: Harness, vmid = 2, sigterms = 1) =>
  Effect.gen(function* () {
    yield* TestClock.adjust("4 seconds")
    expect(yield* startRunning(h, vmid, { name: "next" })).toBe(500)
    yield* TestClock.adjust("1 minute")
    yield* h.settle
    expect(h.takeParent()).toEqual([])
    expect(yield* h.process.children).toEqual([500])
    // every signal went to the first process, before the next one was started (at 4 s)
    expect((yield* h.control.signalsSent).map((s) => [s.pid, s.signal, s.at])).toEqual(Array.from({ length: sigterms }, () => [500, "SIGTERM", 0]))
  })

/**
 * VM 1 (SIGTERM handled as `sigterm`) started as pid 500 and force-stopped; "next" planned
 * to ignore SIGTERM, and the next spawn gets pid 500 again.
 */
const forceStoppedAt500 = (sigterm: VmBehaviour["sigterm"]) =>
  Effect.gen(function* () {
    const h = yield* booted({ backend: "process", pids: [500, 500] })
    h.plan("first", { _tag: "Normal" }, stubborn(sigterm))
    h.plan("next", { _tag: "Normal" }, stubborn("ignore"))
    expect(yield* startRunning(h, 1, { name: "first" })).toBe(500)
    yield* h.send(stop(1, VMOP_FORCE))
    yield* h.settle
    return h
  })

describe("process backend: SIGTERM, then SIGKILL after 10 s", () => {
  it.scoped("a forced stop of a VM that ignores SIGTERM kills it at exactly 10 s, reported as EIO", () =>
    Effect.gen(function* () {
      const h = yield* processBackend()
      h.plan("stubborn", { _tag: "Normal" }, stubborn("ignore"))
      const pid = yield* startRunning(h, 1, { name: "stubborn" })
      yield* TestClock.adjust("3 seconds")
      yield* h.send(stop(1, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0)])
      yield* TestClock.adjust("9999 millis")
      yield* h.settle
      expect(h.takeParent()).toEqual([])
      expect(yield* h.process.children).toEqual([pid])
      yield* TestClock.adjust("1 millis")
      yield* h.settle
      expectParent(h.takeParent(), [event(1, E.EIO)])
      expect(yield* h.control.signalsSent).toEqual([
        { pid, signal: "SIGTERM", at: 3_000 },
        { pid, signal: "SIGKILL", at: 13_000 }
      ])
      expectOpen(h, idleFds)
    })
  )

  it.scoped("a VM that exits on SIGTERM is reported at once and never sent SIGKILL", () =>
    Effect.gen(function* () {
      const h = yield* processBackend()
      h.plan("polite", { _tag: "Normal" }, stubborn("exit0"))
      const pid = yield* startRunning(h, 1, { name: "polite" })
      yield* h.send(stop(1, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, 0)])
      yield* TestClock.adjust("1 minute")
      yield* h.settle
      expect((yield* h.control.signalsSent).map((s) => [s.pid, s.signal])).toEqual([[pid, "SIGTERM"]])
    })
  )

  it.scoped("a VM killed by the SIGTERM itself is reported as EIO", () =>
    Effect.gen(function* () {
      const h = yield* processBackend()
      yield* startRunning(h, 1, { name: "plain" })
      yield* h.send(stop(1, VMOP_FORCE))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, E.EIO)])
    })
  )

  it.scoped("the SIGKILL armed for a VM that ended is dropped: a VM started later under the same pid lives on", () =>
    Effect.gen(function* () {
      const h = yield* forceStoppedAt500("exit0")
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, 0)])
      yield* nextUnderTheSamePidLivesOn(h)
    })
  )

  it.scoped("a VM removed on CTL_RESET that ignores SIGTERM and its socket's EOF is still killed 10 s later (1.143's vmm_shutdown kills)", () =>
    Effect.gen(function* () {
      const h = yield* processBackend(600)
      h.plan("wedged", { _tag: "Normal" }, { sigterm: "ignore", eof: "ignore" })
      yield* startRunning(h, 1, { name: "wedged" })
      yield* h.send({ type: M.CTL_RESET, data: int32(CONFIG_VMS) })
      yield* h.settle
      yield* TestClock.adjust("9999 millis")
      yield* h.settle
      expect(yield* h.process.children).toEqual([600])
      yield* TestClock.adjust("1 millis")
      yield* h.settle
      expect(yield* h.process.children).toEqual([])
      expect((yield* h.control.signalsSent).map((s) => [s.pid, s.signal, s.at])).toEqual([
        [600, "SIGTERM", 0],
        [600, "SIGKILL", 10_000]
      ])
      // removed from the registry at the reset: its exit is no event
      expect(h.takeParent()).toEqual([])
    })
  )

  it.scoped.each([2, 1])(
    "the SIGKILL armed for a VM removed while running, which then ends on its socket's EOF, is dropped: VM %i, started later under the same pid, lives on",
    (nextVmid) =>
      Effect.gen(function* () {
        const h = yield* forceStoppedAt500("ignore")
        expectParent(h.takeParent(), [stopResponse(1, 0)])
        // A second START_VM_END for it: EALREADY, its VM terminated again (a second
        // SIGTERM, which it ignores) and removed (its exit is then ignored); it ends on
        // its socket's EOF. Then a VM under the same pid: another id, or the same one
        // (vmd starting VM 1 again, as after a reboot).
        yield* h.send({ type: M.START_VM_END, peerid: 1, fd: h.makeFd("vm1.tty again") })
        yield* h.settle
        expectParent(h.takeParent(), [reply(M.START_VM_RESPONSE, 1, vmopResult(E.EALREADY, 1, 0))])
        expect(yield* h.process.children).toEqual([])
        yield* nextUnderTheSamePidLivesOn(h, nextVmid, 2)
      })
  )

  it.scoped("a graceful stop sends VM_REBOOT and no signal", () =>
    Effect.gen(function* () {
      const h = yield* processBackend()
      h.plan("a", { _tag: "Normal" }, stubborn("ignore"))
      yield* startRunning(h, 1, { name: "a" })
      yield* h.send(stop(1))
      yield* h.settle
      expectParent(h.takeParent(), [stopResponse(1, 0), event(1, 0)])
      yield* TestClock.adjust("1 minute")
      expect(yield* h.control.signalsSent).toEqual([])
    })
  )

  it.scoped("GET_INFO_VM_REQUEST lists every running VM from the registry", () =>
    Effect.gen(function* () {
      const h = yield* processBackend(900)
      yield* startRunning(h, 4, { name: "a", ncpus: 2, memory: 1n << 30n })
      yield* startRunning(h, 5, { name: "b" })
      yield* h.send({ type: M.GET_INFO_VM_REQUEST, peerid: 3 })
      yield* h.settle
      const got = h.takeParent()
      expect(got.map((m) => m.type)).toEqual([M.GET_INFO_VM_DATA, M.GET_INFO_VM_DATA, M.GET_INFO_VM_END_DATA])
      expect(got.slice(0, 2).map((m) => readInfo(m.data)).map((i) => [i.id, i.name, i.creatorPid, i.memory, i.ncpus])).toEqual([
        [4, "a", 900, 1n << 30n, 2n],
        [5, "b", 901, 512n << 20n, 1n]
      ])
    })
  )

  it.effect("on parent EOF every VM gets SIGTERM; one that ignores it ends on its socket's EOF, with no SIGKILL", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const h = yield* Scope.extend(processBackend(), scope)
      h.plan("stubborn", { _tag: "Normal" }, { sigterm: "ignore" })
      const pid = yield* startRunning(h, 1, { name: "stubborn" })
      expect(yield* h.closeParent).toBe(0)
      yield* h.settle
      // Removed from the registry, its socket closed: it sees EOF and exits on its own.
      expect(h.simByPid(pid).end).toEqual({ _tag: "Exited", code: 0 })
      expect((yield* h.control.signalsSent).map((s) => s.signal)).toEqual(["SIGTERM"])
      yield* Scope.close(scope, Exit.void)
      expect(h.table.openFds()).toEqual([])
    })
  )
})

/** One step of the escalation property: let time pass, or force-stop VM n. */
type Tick = { readonly t: "wait"; readonly ms: number } | { readonly t: "force"; readonly vm: number }

const tickArb: fc.Arbitrary<Tick> = fc.oneof(
  fc.record({ t: fc.constant("wait" as const), ms: fc.oneof(fc.integer({ min: 0, max: 12_000 }), fc.constantFrom(1, 9_999, 10_000)) }),
  fc.record({ t: fc.constant("force" as const), vm: fc.nat(2) })
)

describe("process backend escalation, as a property", () => {
  it(
    "a VM that ignores SIGTERM is killed exactly 10 s after the last forced stop, never before, and reported once as EIO",
    () =>
      fc.assert(
        fc.asyncProperty(fc.array(tickArb, { minLength: 1, maxLength: 12 }), (ticks) =>
          Effect.runPromise(
            Effect.scoped(
              Effect.gen(function* () {
                const h = yield* processBackend(100)
                const pids: Array<number> = []
                for (const i of [0, 1, 2]) {
                  h.plan(`s${i}`, { _tag: "Normal" }, { sigterm: "ignore" })
                  pids.push(yield* startRunning(h, i + 1, { name: `s${i}` }))
                }
                // The model: per VM, when it must die (10 s after its last forced stop), and whether it has.
                const deadline: Array<number | null> = [null, null, null]
                const dead = [false, false, false]
                let now = 0
                for (const tick of ticks) {
                  if (tick.t === "wait") {
                    yield* TestClock.adjust(tick.ms)
                    now += tick.ms
                  } else {
                    const i = tick.vm
                    yield* h.send(stop(i + 1, VMOP_FORCE))
                    if (!dead[i]) deadline[i] = now + 10_000
                  }
                  yield* h.settle
                  const expected: Array<ReturnType<typeof reply>> = []
                  if (tick.t === "force") expected.push(stopResponse(tick.vm + 1, dead[tick.vm] === true ? E.VMD_VM_STOP_INVALID : 0))
                  for (const i of [0, 1, 2]) {
                    const d = deadline[i] ?? null
                    if (!dead[i] && d !== null && now >= d) {
                      dead[i] = true
                      expected.push(event(i + 1, E.EIO))
                    }
                  }
                  const got = h.takeParent()
                  // The events of one wait come in deadline order; compare as sets.
                  expect(new Set(got.map((m) => JSON.stringify([m.type, ...m.data])))).toEqual(
                    new Set(expected.map((m) => JSON.stringify([m.type, ...m.data])))
                  )
                  expect(got.length).toBe(expected.length)
                  const alive = pids.filter((_, i) => !dead[i])
                  expect([...(yield* h.process.children)].sort()).toEqual(alive.sort())
                }
                // Every SIGKILL at exactly its deadline; SIGTERM once per forced stop of a live VM.
                const kills = (yield* h.control.signalsSent).filter((s) => s.signal === "SIGKILL")
                expect(kills.map((k) => [k.pid, k.at]).sort()).toEqual(
                  pids.flatMap((pid, i) => (dead[i] ? [[pid, deadline[i]]] : [])).sort()
                )
              })
            ).pipe(Effect.provide(TestContext.TestContext))
          )
        ),
        { numRuns: propRuns(15) }
      ),
    600_000
  )
})

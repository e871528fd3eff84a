import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Layer, Scope } from "effect"
import fc from "fast-check"
import { MemorySocketTable } from "../../src/layers/ImsgChannelMemory.ts"
import * as VmmDeviceMock from "../../src/layers/VmmDeviceMock.ts"
import { VmmKernel } from "../../src/layers/VmmDeviceMock.ts"
import type { KernelVm, KernelVmSpec } from "../../src/layers/VmmDeviceMock.ts"
import { Errno } from "../../src/schema/errno.ts"
import { VMM_IOC_INFO, VMM_IOC_TERM } from "../../src/schema/ioctl.ts"
import { decodeVmInfoParams } from "../../src/schema/structs.ts"
import { VmmDevice } from "../../src/services/VmmDevice.ts"
import type { VmInfo } from "../../src/services/VmmDevice.ts"

const spec = (name: string, creatorPid = 4000): KernelVmSpec => ({
  name,
  ncpus: 2,
  memorySize: 512n * 1024n * 1024n,
  creatorPid,
  usedSize: 4096n * 100n
})

const ZERO: VmInfo = {
  vir_memory_size: 0n,
  vir_used_size: 0n,
  vir_ncpus: 0n,
  vir_vcpu_state: new Uint8Array(64),
  vir_creator_pid: 0,
  vir_id: 0,
  vir_name: ""
}

const expected = (vm: KernelVm): VmInfo => {
  const vcpus = new Uint8Array(64)
  vcpus.fill(1, 0, vm.ncpus)
  return {
    vir_memory_size: vm.memorySize,
    vir_used_size: vm.usedSize,
    vir_ncpus: BigInt(vm.ncpus),
    vir_vcpu_state: vcpus,
    vir_creator_pid: vm.creatorPid,
    vir_id: vm.id,
    vir_name: vm.name
  }
}

/** The device, attached to a /dev/vmm fd, on a fresh mock kernel. */
const attached = Effect.gen(function* () {
  const device = yield* VmmDevice
  yield* device.attach(new MemorySocketTable().makeFd("/dev/vmm"))
  return { device, kernel: yield* VmmKernel }
})

const params = (bytes: Uint8Array | null) => {
  if (bytes === null) return null
  return Either.getOrThrow(decodeVmInfoParams(bytes))
}

describe("VmmDeviceVmm on the mock kernel", () => {
  it("request numbers are the _IOWR/_IOW encodings of vmd.md §5", () => {
    expect(VMM_IOC_INFO).toBe(0xc0185603)
    expect(VMM_IOC_TERM).toBe(0x80045604)
  })

  it.effect("INFO is two calls: size 0 to learn the size, then into a buffer of that size", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      for (const name of ["alpha", "bravo", "charlie"]) yield* kernel.create(spec(name))
      const vms = yield* kernel.list
      expect(vms.map((vm) => vm.id)).toEqual([1, 2, 3])
      expect(yield* device.info).toEqual(vms.map(expected))
      const calls = yield* kernel.calls
      expect(calls.map((c) => c.request)).toEqual([VMM_IOC_INFO, VMM_IOC_INFO])
      const [first, second] = calls
      expect(params(first?.input ?? null)).toMatchObject({ vip_size: 0n })
      expect(params(first?.output ?? null)).toMatchObject({ vip_size: 480n, vip_info_ct: 0n })
      const fill = params(second?.input ?? null)
      expect(fill).toMatchObject({ vip_size: 480n, vip_info_ct: 0n })
      expect(fill?.vip_info).not.toBe(0n)
      expect(params(second?.output ?? null)).toMatchObject({ vip_size: 480n, vip_info_ct: 3n })
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("no VMs: both calls with size 0, no entries", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      expect(yield* device.info).toEqual([])
      expect((yield* kernel.calls).map((c) => params(c.output))).toEqual([
        { vip_size: 0n, vip_info_ct: 0n, vip_info: 0n },
        { vip_size: 0n, vip_info_ct: 0n, vip_info: 0n }
      ])
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("a size query that reports entries is EIO, and no second call is made", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      yield* kernel.create(spec("alpha"))
      yield* kernel.injectInfoCount(1n)
      const err = yield* Effect.flip(device.info)
      expect(err).toMatchObject({ _tag: "VmmError", errno: Errno.EIO })
      expect((yield* kernel.calls).length).toBe(1)
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("an ioctl error on either call is the result, with its errno", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      yield* kernel.create(spec("alpha"))
      yield* kernel.failNext("INFO", Errno.ENOMEM)
      expect((yield* Effect.flip(device.info)).errno).toBe(Errno.ENOMEM)
      yield* kernel.afterNextInfo(kernel.failNext("INFO", Errno.EFAULT))
      expect((yield* Effect.flip(device.info)).errno).toBe(Errno.EFAULT)
      expect(yield* device.info).toHaveLength(1)
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("a VM that vanishes between the calls leaves a zero entry with vir_id 0 at the tail", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      for (const name of ["alpha", "bravo", "charlie"]) yield* kernel.create(spec(name))
      const [a, , c] = yield* kernel.list
      yield* kernel.afterNextInfo(Effect.asVoid(kernel.destroy(2)))
      const entries = yield* device.info
      expect(entries).toEqual([a, c].map((vm) => expected(vm as KernelVm)).concat([ZERO]))
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("a VM created between the calls: the kernel copies nothing, entries are zero", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      yield* kernel.create(spec("alpha"))
      yield* kernel.create(spec("bravo"))
      yield* kernel.afterNextInfo(Effect.asVoid(kernel.create(spec("charlie"))))
      expect(yield* device.info).toEqual([ZERO, ZERO])
      const second = (yield* kernel.calls)[1]
      expect(params(second?.output ?? null)).toMatchObject({ vip_size: 480n, vip_info_ct: 0n })
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("TERM ends a VM; an unknown id or 0 is ENOENT; injected errors pass through", () =>
    Effect.gen(function* () {
      const { device, kernel } = yield* attached
      yield* kernel.create(spec("alpha"))
      yield* kernel.create(spec("bravo"))
      yield* device.terminate({ vmmId: 1, pid: 0 })
      expect((yield* kernel.list).map((vm) => vm.id)).toEqual([2])
      expect((yield* Effect.flip(device.terminate({ vmmId: 1, pid: 0 }))).errno).toBe(Errno.ENOENT)
      expect((yield* Effect.flip(device.terminate({ vmmId: 0, pid: 0 }))).errno).toBe(Errno.ENOENT)
      yield* kernel.failNext("TERM", Errno.EPERM)
      expect((yield* Effect.flip(device.terminate({ vmmId: 2, pid: 0 }))).errno).toBe(Errno.EPERM)
      const term = (yield* kernel.calls).filter((c) => c.request === VMM_IOC_TERM)
      expect(term.map((c) => [...c.input])).toEqual([
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
        [2, 0, 0, 0]
      ])
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("before attach, INFO and TERM are EBADF (ioctl on fd -1)", () =>
    Effect.gen(function* () {
      const device = yield* VmmDevice
      expect((yield* Effect.flip(device.info)).errno).toBe(Errno.EBADF)
      expect((yield* Effect.flip(device.terminate({ vmmId: 1, pid: 0 }))).errno).toBe(Errno.EBADF)
    }).pipe(Effect.provide(VmmDeviceMock.layer))
  )

  it.effect("the device fd is closed once, at the layer's end; a second attach closes the first", () =>
    Effect.gen(function* () {
      const table = new MemorySocketTable()
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(VmmDeviceMock.layer, scope)
      const first = table.makeFd("/dev/vmm")
      const second = table.makeFd("/dev/vmm again")
      yield* Effect.gen(function* () {
        const device = yield* VmmDevice
        yield* device.attach(first)
        yield* device.attach(second)
      }).pipe(Effect.provide(context))
      expect(table.openFds().map((f) => f.label)).toEqual(["/dev/vmm again"])
      yield* Scope.close(scope, Exit.void)
      expect(table.openFds()).toEqual([])
      expect(table.doubleCloses).toBe(0)
    })
  )
})

describe("VmmDeviceVmm properties", () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9._-]{0,20}$/)
  const vm = fc.record({
    name,
    ncpus: fc.integer({ min: 1, max: 64 }),
    memorySize: fc.bigInt({ min: 1n, max: 1n << 40n }),
    creatorPid: fc.integer({ min: 1, max: 99999 }),
    usedSize: fc.bigInt({ min: 0n, max: 1n << 40n })
  })
  const between = fc.oneof(
    fc.constant({ kind: "none" as const }),
    fc.record({ kind: fc.constant("vanish" as const), picks: fc.array(fc.nat(), { maxLength: 4 }) }),
    fc.record({ kind: fc.constant("create" as const), count: fc.integer({ min: 1, max: 3 }) })
  )

  const run = <A, E>(effect: Effect.Effect<A, E, VmmDevice | VmmKernel>) =>
    Effect.runPromise(Effect.provide(effect, VmmDeviceMock.layer))

  it("info has vip_size/160 entries from the first call: the kernel's VMs when they fit, zero entries after", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(vm, { maxLength: 10 }), between, async (specs, change) => {
        const { entries, before, after } = await run(
          Effect.gen(function* () {
            const { device, kernel } = yield* attached
            for (const s of specs) yield* kernel.create(s)
            const before = yield* kernel.list
            const act =
              change.kind === "vanish"
                ? Effect.forEach(change.picks, (p) => kernel.destroy(before[p % Math.max(1, before.length)]?.id ?? 0), {
                    discard: true
                  })
                : change.kind === "create"
                  ? Effect.forEach(Array.from({ length: change.count }), () => kernel.create(specs[0] ?? spec("late")), {
                      discard: true
                    })
                  : Effect.void
            yield* kernel.afterNextInfo(act)
            const entries = yield* device.info
            return { entries, before, after: yield* kernel.list }
          })
        )
        expect(entries).toHaveLength(before.length)
        const fits = after.length <= before.length
        const want = fits ? after.map(expected) : []
        while (want.length < before.length) want.push(ZERO)
        expect(entries).toEqual(want)
      }),
      { numRuns: 60 }
    )
  })

  // The device's half of the RECEIVE_VMM_FD sweep; dispatchParent's sweep itself is tested through
  // the harness (test/vmm/messages.test.ts, test/reliability/faults.test.ts).
  it("info, then TERM of every vir_id it lists (what the RECEIVE_VMM_FD sweep does), leaves the kernel empty", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(vm, { maxLength: 10 }), async (specs) => {
        const left = await run(
          Effect.gen(function* () {
            const { device, kernel } = yield* attached
            for (const s of specs) yield* kernel.create(s)
            for (const entry of yield* device.info) yield* device.terminate({ vmmId: entry.vir_id, pid: 0 })
            return yield* kernel.list
          })
        )
        expect(left).toEqual([])
      }),
      { numRuns: 30 }
    )
  })
})

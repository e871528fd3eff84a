/**
 * VmRegistry (src/layers/VmRegistryLive.ts) on its own: vmd.c's vm_register,
 * vm_getby*, vm_remove and config_purge's VM part, as vmd.md §(b) and the
 * helper table describe them. Every expected number is typed in here (errno
 * values, 512 MiB, MAC bytes), not taken from the code's constants.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { makeVmRegistry } from "../../src/layers/VmRegistryLive.ts"
import { logState, type LogSink } from "../../src/vmm/log.ts"
import { Fd, type FdBackend } from "../../src/services/Fd.ts"
import type { Vm, VmRegistryService } from "../../src/services/VmRegistry.ts"
import * as S from "../../src/schema/structs.ts"

// OpenBSD errno values and vmd's own code (sys/errno.h, vmd.h).
const EINVAL = 22
const EALREADY = 37
const VMD_DISK_MISSING = 1002
const MiB512 = 536870912n

/** A VM that passes every check: a kernel fd, one cpu, a name, create flags set. */
const params = (over: Partial<S.VmopCreateParams> = {}): S.VmopCreateParams => ({
  ...S.emptyVmopCreateParams(),
  vmc_name: "vm",
  vmc_flags: 0x1,
  vmc_kernel: 5,
  vmc_ncpus: 1n,
  ...over
})

/** A random() that hands out the given words in order and counts the calls. */
const words = (...ws: ReadonlyArray<number>) => {
  const state = { calls: 0 }
  const random = () => {
    const w = ws[state.calls++]
    if (w === undefined) throw new Error("random() called more often than the test expected")
    return w
  }
  return { random, state }
}

const make = (random: () => number = () => 0): Effect.Effect<VmRegistryService> => makeVmRegistry({ random })

/** Fds whose closes are recorded (by label). */
const fdKit = () => {
  const closed: Array<string> = []
  const labels = new Map<number, string>()
  let doubles = 0
  const backend: FdBackend = {
    name: "test",
    closeNumber: (num) => {
      closed.push(labels.get(num) ?? `fd ${num}`)
      return 0
    },
    onDoubleClose: () => {
      doubles++
    }
  }
  let next = 100
  return {
    closed,
    doubles: () => doubles,
    fd: (label: string) => {
      labels.set(next, label)
      return new Fd(next++, backend, label)
    }
  }
}

let warnings: Array<string> = []
let savedSink: LogSink
let savedVerbose = 0
beforeEach(() => {
  warnings = []
  savedSink = logState.sink
  savedVerbose = logState.verbose
  logState.verbose = 0
  logState.sink = (level, line) => {
    if (level === "warning") warnings.push(line)
  }
})
afterEach(() => {
  logState.sink = savedSink
  logState.verbose = savedVerbose
})

describe("register", () => {
  it.effect("a new VM: its fields start as vm_register sets them, and it is in the list", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const vm = yield* reg.register(params({ vmc_name: "alpha" }), 7, 1000)
      expect(vm.vmid).toBe(7)
      expect(vm.uid).toBe(1000)
      expect(vm.pid).toBe(-1)
      expect(vm.vmmid).toBe(0)
      expect(vm.peerid).toBe(0)
      expect(vm.state).toBe(0)
      expect(vm.fromConfig).toBe(false)
      expect([vm.kernel, vm.cdrom, vm.tty, vm.channel, vm.closeChannel]).toEqual([null, null, null, null, null])
      expect(vm.disks).toEqual([
        [null, null, null, null],
        [null, null, null, null],
        [null, null, null, null],
        [null, null, null, null]
      ])
      expect(vm.ifs).toEqual([null, null, null, null])
      expect(vm.params.vmc_name).toBe("alpha")
      expect(vm.params.vmc_kernel).toBe(5)
      expect(yield* reg.all).toEqual([vm])
      expect(warnings).toEqual([])
    })
  )

  it.effect("id 0 takes the next counter value (1, 2, 3); a non-zero id is used as given", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const a = yield* reg.register(params({ vmc_name: "a" }), 0, 0)
      const b = yield* reg.register(params({ vmc_name: "b" }), 0, 0)
      const c = yield* reg.register(params({ vmc_name: "c" }), 0, 0)
      const d = yield* reg.register(params({ vmc_name: "d" }), 0x7fff0001, 0)
      expect([a.vmid, b.vmid, c.vmid, d.vmid]).toEqual([1, 2, 3, 0x7fff0001])
    })
  )

  it.effect("a non-zero id does not advance the counter (vm_claimid runs only for id 0)", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      yield* reg.register(params({ vmc_name: "given" }), 42, 0)
      const next = yield* reg.register(params({ vmc_name: "claimed" }), 0, 0)
      expect(next.vmid).toBe(1)
    })
  )

  it.effect("id 0: a name and uid registered before get their old id back (vmd_known); another uid a new one", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const a = yield* reg.register(params({ vmc_name: "a" }), 0, 1000)
      yield* reg.register(params({ vmc_name: "b" }), 0, 1000)
      yield* reg.remove(a, "test")
      const again = yield* reg.register(params({ vmc_name: "a" }), 0, 1000)
      expect(again.vmid).toBe(1)
      yield* reg.remove(again, "test")
      const otherUid = yield* reg.register(params({ vmc_name: "a" }), 0, 1001)
      expect(otherUid.vmid).toBe(3)
      // purge forgets the names as it zeroes the counter (config_purge, vmd.md §(b))
      yield* reg.purge
      const fresh = yield* reg.register(params({ vmc_name: "b" }), 0, 1000)
      expect(fresh.vmid).toBe(1)
    })
  )

  it.effect("a refused registration (no flags, invalid) does not use up an id", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      yield* Effect.flip(reg.register(params({ vmc_name: "x", vmc_flags: 0 }), 0, 0))
      yield* Effect.flip(reg.register(params({ vmc_name: "-x" }), 0, 0))
      const vm = yield* reg.register(params({ vmc_name: "x" }), 0, 0)
      expect(vm.vmid).toBe(1)
    })
  )

  it.effect("vmc_flags 0 is VMD_DISK_MISSING (1002), nothing registered", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const err = yield* Effect.flip(reg.register(params({ vmc_flags: 0 }), 3, 0))
      expect(err).toMatchObject({ _tag: "RegisterError", errno: VMD_DISK_MISSING, existing: null })
      expect(yield* reg.all).toEqual([])
      expect(yield* reg.byVmid(3)).toBeNull()
    })
  )

  it.effect("the same name again is EALREADY with the registered VM, which stays as it was", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const first = yield* reg.register(params({ vmc_name: "web" }), 4, 0)
      // Even a request that would fail later (no flags, 99 cpus) is EALREADY: the lookup comes first.
      for (const again of [params({ vmc_name: "web" }), params({ vmc_name: "web", vmc_flags: 0, vmc_ncpus: 99n })]) {
        const err = yield* Effect.flip(reg.register(again, 5, 0))
        expect(err.errno).toBe(EALREADY)
        expect(err.existing).toBe(first)
      }
      expect(yield* reg.all).toEqual([first])
      expect(yield* reg.byVmid(5)).toBeNull()
      // Names compare exactly (strcmp): another case is another VM.
      const other = yield* reg.register(params({ vmc_name: "Web" }), 5, 0)
      expect(yield* reg.all).toEqual([first, other])
    })
  )

  it.effect("a vmc_id that is a registered VM's vmid is EALREADY with that VM; vmc_id 0 matches nothing", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const first = yield* reg.register(params({ vmc_name: "one" }), 9, 0)
      const err = yield* Effect.flip(reg.register(params({ vmc_name: "two", vmc_id: 9 }), 10, 0))
      expect(err.errno).toBe(EALREADY)
      expect(err.existing).toBe(first)
      // A vmc_id nobody has, and vmc_id 0, are not duplicates.
      const two = yield* reg.register(params({ vmc_name: "two", vmc_id: 10 }), 10, 0)
      const three = yield* reg.register(params({ vmc_name: "three", vmc_id: 0 }), 11, 0)
      expect(yield* reg.all).toEqual([first, two, three])
    })
  )
})

describe("defaults (vm_register)", () => {
  it.effect("ncpus 0 becomes 1 and memranges[0] size 0 becomes 512 MiB; set values are kept", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const e = S.emptyVmopCreateParams()
      const zero = yield* reg.register(params({ vmc_name: "z", vmc_ncpus: 0n }), 1, 0)
      expect(zero.params.vmc_ncpus).toBe(1n)
      expect(zero.params.vmc_memranges[0]?.vmr_size).toBe(MiB512)
      // Only range 0 gets the default.
      expect(zero.params.vmc_memranges[1]?.vmr_size).toBe(0n)
      const set = yield* reg.register(
        params({
          vmc_name: "s",
          vmc_ncpus: 3n,
          vmc_memranges: e.vmc_memranges.map((r, i) => (i === 0 ? { ...r, vmr_size: 1048576n } : r))
        }),
        2,
        0
      )
      expect(set.params.vmc_ncpus).toBe(3n)
      expect(set.params.vmc_memranges[0]?.vmr_size).toBe(1048576n)
    })
  )

  it.effect("an all-zero MAC of nic i < nnics becomes fe:e1:bb:d<i+1>:r0:r1 from one random word; others are kept", () =>
    Effect.gen(function* () {
      const { random, state } = words(0x12345678, 0x9abcdef0, 0x0000beef)
      const reg = yield* make(random)
      const given = Uint8Array.of(0x02, 0x00, 0x5e, 0x10, 0x20, 0x30)
      const input = params({
        vmc_name: "net",
        vmc_nnics: 4n,
        vmc_macs: [new Uint8Array(6), given, new Uint8Array(6), new Uint8Array(6)]
      })
      const vm = yield* reg.register(input, 1, 0)
      expect(vm.params.vmc_macs).toEqual([
        Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd1, 0x78, 0x56),
        Uint8Array.of(0x02, 0x00, 0x5e, 0x10, 0x20, 0x30),
        Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd3, 0xf0, 0xde),
        Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd4, 0xef, 0xbe)
      ])
      // One word per generated address; the given one takes none.
      expect(state.calls).toBe(3)
      // The caller's params are not written to.
      expect(input.vmc_macs[0]).toEqual(new Uint8Array(6))
    })
  )

  it.effect("a refused registration draws no random word (the MACs are made after the checks)", () =>
    Effect.gen(function* () {
      const { random, state } = words(0x12345678)
      const reg = yield* make(random)
      const nic = { vmc_nnics: 1n }
      yield* Effect.flip(reg.register(params({ vmc_name: "-bad", ...nic }), 0, 0))
      expect(state.calls).toBe(0)
      const vm = yield* reg.register(params({ vmc_name: "good", ...nic }), 0, 0)
      expect(Array.from(vm.params.vmc_macs[0] ?? [])).toEqual([0xfe, 0xe1, 0xbb, 0xd1, 0x78, 0x56])
    })
  )

  it.effect("nics at or past vmc_nnics keep their zero MAC and take no random word", () =>
    Effect.gen(function* () {
      const { random, state } = words(0xffffffff)
      const reg = yield* make(random)
      const vm = yield* reg.register(params({ vmc_name: "one-nic", vmc_nnics: 1n }), 1, 0)
      expect(vm.params.vmc_macs).toEqual([
        Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd1, 0xff, 0xff),
        new Uint8Array(6),
        new Uint8Array(6),
        new Uint8Array(6)
      ])
      expect(state.calls).toBe(1)
      const none = yield* reg.register(params({ vmc_name: "no-nic", vmc_nnics: 0n }), 2, 0)
      expect(none.params.vmc_macs).toEqual([new Uint8Array(6), new Uint8Array(6), new Uint8Array(6), new Uint8Array(6)])
      expect(state.calls).toBe(1)
    })
  )

  it.effect("a MAC with any non-zero byte (even only the last) is not replaced", () =>
    Effect.gen(function* () {
      const { random, state } = words()
      const reg = yield* make(random)
      const mac = Uint8Array.of(0, 0, 0, 0, 0, 1)
      const vm = yield* reg.register(params({ vmc_name: "m", vmc_nnics: 1n, vmc_macs: [mac] }), 1, 0)
      expect(vm.params.vmc_macs[0]).toEqual(Uint8Array.of(0, 0, 0, 0, 0, 1))
      expect(state.calls).toBe(0)
    })
  )
})

describe("validation: EINVAL with vmd's warning, nothing registered", () => {
  const refused: ReadonlyArray<readonly [string, Partial<S.VmopCreateParams>, string]> = [
    ["65 cpus", { vmc_ncpus: 65n }, "invalid number of CPUs"],
    ["5 disks", { vmc_ndisks: 5n }, "invalid number of disks"],
    ["5 nics", { vmc_nnics: 5n }, "invalid number of interfaces"],
    ["no kernel, disk or cdrom", { vmc_kernel: -1, vmc_ndisks: 0n, vmc_cdrom: "" }, "no kernel or disk/cdrom specified"],
    ["an empty name", { vmc_name: "" }, "invalid VM name"],
    ["a name starting with -", { vmc_name: "-vm" }, "invalid VM name"],
    ["a name starting with .", { vmc_name: ".vm" }, "invalid VM name"],
    ["a name starting with _", { vmc_name: "_vm" }, "invalid VM name"],
    ["a space in the name", { vmc_name: "my vm" }, "invalid VM name"],
    ["a slash in the name", { vmc_name: "a/b" }, "invalid VM name"],
    ["a latin1 letter in the name", { vmc_name: "caf\u00e9" }, "invalid VM name"],
    // The cpu check comes first.
    ["65 cpus and a bad name", { vmc_ncpus: 65n, vmc_name: "-" }, "invalid number of CPUs"]
  ]
  for (const [what, over, message] of refused) {
    it.effect(what, () =>
      Effect.gen(function* () {
        const reg = yield* make(() => 0x1234)
        const err = yield* Effect.flip(reg.register(params(over), 1, 0))
        expect(err).toMatchObject({ _tag: "RegisterError", errno: EINVAL, message, existing: null })
        expect(warnings).toEqual([`vmm: ${message}`])
        expect(yield* reg.all).toEqual([])
      })
    )
  }

  const accepted: ReadonlyArray<readonly [string, Partial<S.VmopCreateParams>]> = [
    ["64 cpus", { vmc_ncpus: 64n }],
    ["4 disks", { vmc_ndisks: 4n }],
    ["4 nics", { vmc_nnics: 4n }],
    ["no kernel but a disk", { vmc_kernel: -1, vmc_ndisks: 1n }],
    ["no kernel but a cdrom", { vmc_kernel: -1, vmc_cdrom: "/iso" }],
    ["kernel fd 0", { vmc_kernel: 0 }],
    ["every allowed name char", { vmc_name: "Az09.-_x" }],
    ["a one-digit name", { vmc_name: "7" }]
  ]
  for (const [what, over] of accepted) {
    it.effect(`accepted: ${what}`, () =>
      Effect.gen(function* () {
        const reg = yield* make(() => 0x1234)
        const vm = yield* reg.register(params(over), 1, 0)
        expect(yield* reg.all).toEqual([vm])
        expect(warnings).toEqual([])
      })
    )
  }
})

describe("lookups", () => {
  const three = (reg: VmRegistryService) =>
    Effect.gen(function* () {
      const a = yield* reg.register(params({ vmc_name: "a" }), 11, 0)
      const b = yield* reg.register(params({ vmc_name: "b" }), 22, 0)
      const c = yield* reg.register(params({ vmc_name: "c" }), 33, 0)
      return [a, b, c] as const
    })

  it.effect("all is registration order; an earlier snapshot does not change", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const before = yield* reg.all
      const [a, b, c] = yield* three(reg)
      expect(before).toEqual([])
      expect(yield* reg.all).toEqual([a, b, c])
    })
  )

  it.effect("byVmid finds the VM; unknown ones and vmid 0 are null", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const [a, b, c] = yield* three(reg)
      expect(yield* reg.byVmid(22)).toBe(b)
      expect(yield* reg.byVmid(33)).toBe(c)
      expect(yield* reg.byVmid(0)).toBeNull()
      expect(yield* reg.byVmid(44)).toBeNull()
      expect(yield* reg.byVmid(11)).toBe(a)
    })
  )

  it.effect("byVmmid: 0 never matches (every VM has vmm id 0 until started); id2vmid / vmid2id map both ways, 0 if unknown", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const [, b] = yield* three(reg)
      expect(yield* reg.byVmmid(0)).toBeNull()
      expect(yield* reg.id2vmid(0)).toBe(0)
      b.vmmid = 5
      expect(yield* reg.byVmmid(5)).toBe(b)
      expect(yield* reg.byVmmid(6)).toBeNull()
      expect(yield* reg.id2vmid(5)).toBe(22)
      expect(yield* reg.id2vmid(6)).toBe(0)
      expect(yield* reg.vmid2id(22)).toBe(5)
      expect(yield* reg.vmid2id(11)).toBe(0)
      expect(yield* reg.vmid2id(99)).toBe(0)
    })
  )

  it.effect("byPid / unsafeByPid: the first VM with that pid (no special case, as vm_getbypid)", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const [a, b, c] = yield* three(reg)
      b.pid = 4242
      c.pid = 4242
      expect(reg.unsafeByPid(4242)).toBe(b)
      expect(yield* reg.byPid(4242)).toBe(b)
      expect(reg.unsafeByPid(4243)).toBeNull()
      expect(yield* reg.byPid(4243)).toBeNull()
      // Not started yet: pid -1, and the first such VM is found.
      expect(reg.unsafeByPid(-1)).toBe(a)
    })
  )
})

describe("remove and purge", () => {
  /** A VM holding one of every fd, a channel, RUNNING|SHUTDOWN|PAUSED. */
  const loaded = (vm: Vm, kit: ReturnType<typeof fdKit>, name: string) => {
    let channelCloses = 0
    vm.kernel = kit.fd(`${name} kernel`)
    vm.cdrom = kit.fd(`${name} cdrom`)
    vm.tty = kit.fd(`${name} tty`)
    vm.disks[0]![0] = kit.fd(`${name} disk0.0`)
    vm.disks[0]![1] = kit.fd(`${name} disk0.1`)
    vm.disks[3]![3] = kit.fd(`${name} disk3.3`)
    vm.ifs[2] = kit.fd(`${name} if2`)
    vm.closeChannel = () => {
      channelCloses++
    }
    vm.state = 0x01 | 0x04 | 0x10
    vm.pid = 777
    return { channelCloses: () => channelCloses }
  }
  const allFds = (name: string) =>
    [`${name} kernel`, `${name} cdrom`, `${name} tty`, `${name} disk0.0`, `${name} disk0.1`, `${name} disk3.3`, `${name} if2`].sort()

  it.effect("remove unlinks the VM, closes every fd it holds and its channel, clears RUNNING and SHUTDOWN, uid 0", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const kit = fdKit()
      const a = yield* reg.register(params({ vmc_name: "a" }), 1, 1000)
      const b = yield* reg.register(params({ vmc_name: "b" }), 2, 1000)
      const held = loaded(a, kit, "a")
      const other = loaded(b, kit, "b")
      yield* reg.remove(a, "test")
      expect(yield* reg.all).toEqual([b])
      expect(yield* reg.byVmid(1)).toBeNull()
      expect(reg.unsafeByPid(777)).toBe(b)
      expect([...kit.closed].sort()).toEqual(allFds("a"))
      expect(held.channelCloses()).toBe(1)
      expect(other.channelCloses()).toBe(0)
      expect([a.kernel, a.cdrom, a.tty, a.closeChannel, a.channel]).toEqual([null, null, null, null, null])
      expect(a.disks.flat().every((fd) => fd === null)).toBe(true)
      expect(a.ifs.every((fd) => fd === null)).toBe(true)
      expect(a.state).toBe(0x10)
      expect(a.uid).toBe(0)
      expect(b.uid).toBe(1000)

      // Removing it again, or through unsafeRemove, does nothing: no double close, no second channel close.
      yield* reg.remove(a, "test")
      reg.unsafeRemove(a, "test")
      expect(kit.doubles()).toBe(0)
      expect(held.channelCloses()).toBe(1)
      expect(yield* reg.all).toEqual([b])

      // The name and vmid are free again.
      const again = yield* reg.register(params({ vmc_name: "a" }), 1, 0)
      expect(yield* reg.all).toEqual([b, again])
    })
  )

  it.effect("unsafeRemove does the same at once", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const kit = fdKit()
      const a = yield* reg.register(params({ vmc_name: "a" }), 1, 0)
      const held = loaded(a, kit, "a")
      reg.unsafeRemove(a, "vmm_sighdlr")
      expect(yield* reg.all).toEqual([])
      expect([...kit.closed].sort()).toEqual(allFds("a"))
      expect(held.channelCloses()).toBe(1)
    })
  )

  it.effect("removing a VM that is not in this registry touches nothing", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const elsewhere = yield* make()
      const kit = fdKit()
      const mine = yield* reg.register(params({ vmc_name: "same" }), 1, 0)
      const theirs = yield* elsewhere.register(params({ vmc_name: "same" }), 1, 500)
      const held = loaded(theirs, kit, "x")
      yield* reg.remove(theirs, "test")
      expect(yield* reg.all).toEqual([mine])
      expect(kit.closed).toEqual([])
      expect(held.channelCloses()).toBe(0)
      expect(theirs.uid).toBe(500)
      expect(theirs.state).toBe(0x15)
    })
  )

  it.effect("purge removes every VM (closing what each holds) and restarts the id counter", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const kit = fdKit()
      const a = yield* reg.register(params({ vmc_name: "a" }), 0, 0)
      const b = yield* reg.register(params({ vmc_name: "b" }), 0, 0)
      expect([a.vmid, b.vmid]).toEqual([1, 2])
      const ha = loaded(a, kit, "a")
      const hb = loaded(b, kit, "b")
      yield* reg.purge
      expect(yield* reg.all).toEqual([])
      expect([...kit.closed].sort()).toEqual([...allFds("a"), ...allFds("b")].sort())
      expect([ha.channelCloses(), hb.channelCloses()]).toEqual([1, 1])
      const c = yield* reg.register(params({ vmc_name: "c" }), 0, 0)
      expect(c.vmid).toBe(1)
      // Purging an empty registry is fine.
      yield* reg.purge
      yield* reg.purge
      expect(yield* reg.all).toEqual([])
    })
  )

  it.effect("without a purge, removing VMs does not give their ids back", () =>
    Effect.gen(function* () {
      const reg = yield* make()
      const a = yield* reg.register(params({ vmc_name: "a" }), 0, 0)
      yield* reg.remove(a, "test")
      const b = yield* reg.register(params({ vmc_name: "b" }), 0, 0)
      expect(b.vmid).toBe(2)
    })
  )
})

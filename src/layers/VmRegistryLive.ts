/**
 * VmRegistry: vmd.c's vm_register / vm_getby* / vm_remove for the vmm
 * process. State is a plain list in the layer's closure, read and written
 * in Effect.sync steps; entries are mutable records, written only by the
 * vmm dispatcher (as the C process is single-threaded: its fiber, or the
 * exit path in one synchronous step while that fiber is idle). No Ref: the
 * list is never shared between fibers that run at once, and each Ref step
 * is one more cold Effect operation on the exit path (vm_remove).
 */
import { Effect, Layer } from "effect"
import { Errno, VmdError } from "../schema/errno.ts"
import {
  VM_DEFAULT_MEMORY,
  VM_MAX_BASE_PER_DISK,
  VM_MAX_DISKS_PER_VM,
  VM_MAX_NICS_PER_VM,
  VM_STATE_RUNNING,
  VM_STATE_SHUTDOWN
} from "../schema/constants.ts"
import { overVmmLimit, type OverLimit } from "../schema/limits.ts"
import type { VmopCreateParams } from "../schema/structs.ts"
import { emitLog, logDebug, logWarnx } from "../vmm/log.ts"
import { RegisterError, type Vm, VmRegistry } from "../services/VmRegistry.ts"
import type { Fd } from "../services/Fd.ts"

const VALID_NAME = /^[A-Za-z0-9._-]+$/

/** vm_register's warning for each count over vmm(4)'s limit. */
const LIMIT_WARNING: Record<OverLimit["field"], string> = {
  vmc_ncpus: "invalid number of CPUs",
  vmc_ndisks: "invalid number of disks",
  vmc_nnics: "invalid number of interfaces"
}

/** Why vm_register refuses a VM, or null. Mirrors the order of checks in vmd.c. */
const validate = (p: VmopCreateParams): string | null => {
  const over = overVmmLimit(p)
  if (over !== null) return LIMIT_WARNING[over.field]
  if (p.vmc_kernel === -1 && p.vmc_ndisks === 0n && p.vmc_cdrom.length === 0)
    return "no kernel or disk/cdrom specified"
  if (p.vmc_name.length === 0) return "invalid VM name"
  const first = p.vmc_name[0]
  if (first === "-" || first === "." || first === "_") return "invalid VM name"
  if (!VALID_NAME.test(p.vmc_name)) return "invalid VM name"
  return null
}

/** vm_register's defaults before its checks: 1 vcpu, 512 MiB. */
const applyDefaults = (p: VmopCreateParams): VmopCreateParams => ({
  ...p,
  vmc_ncpus: p.vmc_ncpus === 0n ? 1n : p.vmc_ncpus,
  vmc_memranges: p.vmc_memranges.map((r, i) =>
    i === 0 && r.vmr_size === 0n ? { ...r, vmr_size: BigInt(VM_DEFAULT_MEMORY) } : r
  )
})

/** vm_register's MACs, after its checks (so a refused VM draws no random words): a random locally administered one for each zero one. */
const applyMacs = (p: VmopCreateParams, random: () => number): VmopCreateParams => ({
  ...p,
  vmc_macs: p.vmc_macs.map((mac, i) => {
    if (BigInt(i) >= p.vmc_nnics || mac.some((b) => b !== 0)) return mac
    // ether_fakeaddr() plus one, as vmd does: fe:e1:bb:d<i+1>:rr:rr
    const rng = random()
    return Uint8Array.of(0xfe, 0xe1, 0xbb, 0xd0 | ((i + 1) & 0xf), rng & 0xff, (rng >>> 8) & 0xff)
  })
})

const newVm = (params: VmopCreateParams, vmid: number, uid: number): Vm => ({
  params,
  pid: -1,
  uid,
  vmid,
  vmmid: 0,
  peerid: 0,
  state: 0,
  kernel: null,
  cdrom: null,
  disks: Array.from({ length: VM_MAX_DISKS_PER_VM }, () =>
    Array.from({ length: VM_MAX_BASE_PER_DISK }, () => null as Fd | null)
  ),
  ifs: Array.from({ length: VM_MAX_NICS_PER_VM }, () => null as Fd | null),
  tty: null,
  fromConfig: false,
  channel: null,
  closeChannel: null
})

/** Every fd a VM holds, for vm_stop. */
export const heldFds = (vm: Vm): Array<Fd> => {
  const fds: Array<Fd | null> = [vm.kernel, vm.cdrom, vm.tty, ...vm.disks.flat(), ...vm.ifs]
  return fds.filter((fd): fd is Fd => fd !== null)
}

/** Close every fd the VM holds and clear its slots (vm_stop; and vmm_start_vm once the child has them). */
export const closeHeldFds = (vm: Vm): void => {
  for (const fd of heldFds(vm)) fd.closeSync()
  vm.kernel = null
  vm.cdrom = null
  vm.tty = null
  for (const layers of vm.disks) layers.fill(null)
  vm.ifs.fill(null)
}

/** Close the VM's imsg channel, if it has one, and forget it. */
export const closeVmChannel = (vm: Vm): void => {
  const close = vm.closeChannel
  vm.closeChannel = null
  vm.channel = null
  close?.()
}

/** vm_stop(vm, 0): clear RUNNING and SHUTDOWN, close the channel and every fd. */
const stopVm = (vm: Vm): void => {
  emitLog("debug", `vm_stop: stopping vm ${vm.vmid}`)
  vm.state &= ~(VM_STATE_RUNNING | VM_STATE_SHUTDOWN)
  // vm_closetty also fchown/fchmods the tty back to root; the vmm process
  // is not root and the parent owns the tty's mode, so we only close it.
  closeHeldFds(vm)
  vm.uid = 0
  closeVmChannel(vm)
}

export interface RegistryOptions {
  /** arc4random() stand-in, injectable for deterministic tests. */
  readonly random?: () => number
}

export const makeVmRegistry = (options: RegistryOptions = {}) =>
  Effect.sync(() => {
    const random = options.random ?? (() => Math.floor(Math.random() * 0x1_0000_0000))
    let vms: ReadonlyArray<Vm> = []
    /** env->vmd_nvm: the id counter for VMs registered without an id. */
    let nvm = 0
    /** env->vmd_known: the id once given to each name and uid registered without an id (vm_claimid). */
    let known = new Map<string, number>()

    const find = (pred: (vm: Vm) => boolean) => Effect.sync(() => vms.find(pred) ?? null)
    const unsafeByPid = (pid: number): Vm | null => vms.find((vm) => vm.pid === pid) ?? null
    const byVmid = (vmid: number) => (vmid === 0 ? Effect.succeed(null) : find((vm) => vm.vmid === vmid))
    const byVmmid = (vmmid: number) => (vmmid === 0 ? Effect.succeed(null) : find((vm) => vm.vmmid === vmmid))
    const byName = (name: string) => find((vm) => vm.params.vmc_name === name)

    const fail = (errno: number, message: string, existing: Vm | null = null) =>
      Effect.fail(new RegisterError({ errno, message, existing }))

    const register = (params: VmopCreateParams, id: number, uid: number) =>
      Effect.gen(function* () {
        const existing = (yield* byName(params.vmc_name)) ?? (yield* byVmid(params.vmc_id))
        if (existing !== null) {
          return yield* fail(Errno.EALREADY, `vm ${params.vmc_name} already registered`, existing)
        }
        if (params.vmc_flags === 0) return yield* fail(VmdError.VMD_DISK_MISSING, "no create flags")
        const checked = applyDefaults(params)
        const invalid = validate(checked)
        if (invalid !== null) {
          yield* logWarnx(invalid)
          return yield* fail(Errno.EINVAL, invalid)
        }
        const p = applyMacs(checked, random)
        let vmid = id
        if (vmid === 0) {
          // vm_claimid: the id this name and uid had before, else the next one
          const key = `${uid}:${p.vmc_name}`
          const before = known.get(key)
          if (before !== undefined) vmid = before
          else {
            if (nvm === 0xffffffff) {
              yield* logWarnx("too many vms")
              return yield* fail(Errno.ENOMEM, "too many vms")
            }
            vmid = ++nvm
            known.set(key, vmid)
          }
        }
        const vm = newVm(p, vmid, uid)
        yield* logDebug(`vm_register: registering vm ${vm.vmid}`)
        vms = [...vms, vm]
        return vm
      })

    const unsafeRemove = (vm: Vm, caller: string): void => {
      if (!vms.includes(vm)) return
      emitLog("debug", `${caller}: removing vm id ${vm.vmid} from running config`)
      vms = vms.filter((v) => v !== vm)
      stopVm(vm)
    }
    const remove = (vm: Vm, caller: string) => Effect.sync(() => unsafeRemove(vm, caller))

    return VmRegistry.of({
      register,
      byVmid,
      byVmmid,
      byPid: (pid) => Effect.sync(() => unsafeByPid(pid)),
      id2vmid: (vmmid) => Effect.map(byVmmid(vmmid), (vm) => vm?.vmid ?? 0),
      vmid2id: (vmid) => Effect.map(byVmid(vmid), (vm) => vm?.vmmid ?? 0),
      all: Effect.sync(() => vms),
      remove,
      purge: Effect.gen(function* () {
        for (const vm of vms) yield* remove(vm, "config_purge")
        nvm = 0
        known = new Map()
      }),
      unsafeByPid,
      unsafeRemove
    })
  })

export const VmRegistryLive = {
  layer: Layer.effect(VmRegistry, makeVmRegistry()),
  layerWith: (options: RegistryOptions) => Layer.effect(VmRegistry, makeVmRegistry(options))
}

/**
 * The vmm process's list of VMs (vmd's env->vmd_vms) and the helpers of
 * vmd.c that work on it: vm_register, vm_getbyvmid / vm_getbyid /
 * vm_getbypid, vm_id2vmid / vm_vmid2id, vm_remove (which closes every fd
 * the VM held and its imsg channel).
 */
import { Context, Data, Effect } from "effect"
import type { VmopCreateParams } from "../schema/structs.ts"
import type { Channel } from "./ImsgChannel.ts"
import type { Fd } from "./Fd.ts"

/** struct vmd_vm, as the vmm process keeps it. Mutable like the C struct; only the dispatcher writes it (its fiber, or the exit path while that fiber is idle). */
export interface Vm {
  params: VmopCreateParams
  /** vm_pid: -1 until the VM process is started. */
  pid: number
  uid: number
  /** vm_vmid: vmd's id (the parent's peerid). */
  readonly vmid: number
  /** vm_vmmid: the id vmm(4) gave the VM (from the start handshake), 0 until then. */
  vmmid: number
  peerid: number
  /** VM_STATE_* bits. */
  state: number
  kernel: Fd | null
  cdrom: Fd | null
  /** vm_disks[disk][layer] */
  readonly disks: Array<Array<Fd | null>>
  /** vm_ifs[nic].vif_fd */
  readonly ifs: Array<Fd | null>
  tty: Fd | null
  readonly fromConfig: boolean
  /** vm_iev: the imsg channel to the VM process, once started. */
  channel: Channel | null
  /** Closes the channel and stops its reader, now (set with the channel). */
  closeChannel: (() => void) | null
}

export class RegisterError extends Data.TaggedError("RegisterError")<{
  /** OpenBSD errno or vmd code (EINVAL, EALREADY, 1002 VMD_DISK_MISSING, ...). */
  readonly errno: number
  readonly message: string
  /** For EALREADY: the VM already registered under that name or id. */
  readonly existing: Vm | null
}> {}

export interface VmRegistryService {
  /** vm_register(ps, vmc, &vm, id, uid): validate, apply defaults, add. */
  readonly register: (params: VmopCreateParams, id: number, uid: number) => Effect.Effect<Vm, RegisterError>
  /** vm_getbyvmid: 0 never matches. */
  readonly byVmid: (vmid: number) => Effect.Effect<Vm | null>
  /** vm_getbyid: by vmm(4) id; 0 never matches. */
  readonly byVmmid: (vmmid: number) => Effect.Effect<Vm | null>
  /** vm_getbypid */
  readonly byPid: (pid: number) => Effect.Effect<Vm | null>
  /** vm_id2vmid(id, NULL): kernel id -> vmd id, 0 if unknown. */
  readonly id2vmid: (vmmid: number) => Effect.Effect<number>
  /** vm_vmid2id(vmid, NULL): vmd id -> kernel id, 0 if unknown. */
  readonly vmid2id: (vmid: number) => Effect.Effect<number>
  /** Every VM, in registration order (TAILQ order). */
  readonly all: Effect.Effect<ReadonlyArray<Vm>>
  /** vm_remove: unlink, close the channel and every fd (tty included). No-op for a VM not in the list. */
  readonly remove: (vm: Vm, caller: string) => Effect.Effect<void>
  /** Remove every VM and forget the name -> id cache (config_purge with CONFIG_VMS). */
  readonly purge: Effect.Effect<void>
  /**
   * byPid and remove done now, outside an effect, for code that is already
   * one synchronous step (the vmm's exit path, vmm_sighdlr), and only from
   * the fiber or callback that owns the registry while nothing else runs.
   */
  readonly unsafeByPid: (pid: number) => Vm | null
  readonly unsafeRemove: (vm: Vm, caller: string) => void
}

export class VmRegistry extends Context.Tag("vmd-vmm/VmRegistry")<VmRegistry, VmRegistryService>() {}

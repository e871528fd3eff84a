/**
 * The parent's list of VMs (vmd's env->vmd_vms as the parent keeps it):
 * by vmd id, with the state bits, the pid of the VM process and the tty.
 * A VM that stops stays listed as stopped, as a VM from vm.conf does.
 */
import { VM_STATE_RUNNING } from "../schema/constants.ts"
import { emptyVmopInfoResult, type VmopCreateParams, type VmopInfoResult } from "../schema/structs.ts"
import type { Fd } from "../services/Fd.ts"
import type { Pty } from "./pty.ts"
import type { VmSpec } from "./spec.ts"

export interface VmRecord {
  /** vm_vmid: the id the parent gives the VM; peerid of the start sequence. */
  readonly id: number
  spec: VmSpec
  params: VmopCreateParams
  /** vm_pid: the VM process, -1 when not running. */
  pid: number
  /** VM_STATE_* bits. */
  state: number
  /** vm_tty / vm_ttyname: kept across guest resets, closed when the VM stops. */
  tty: Pty | null
  /** The host ends of the VM's taps. */
  hostTaps: ReadonlyArray<Fd>
  /** vm_start_tv (ms, monotonic) and vm_start_limit: the restart rate limit of config_setvm. */
  startedAt: number
  fastRestarts: number
}

/** A snapshot of a VM for callers. */
export interface TrackedVm {
  readonly id: number
  readonly name: string
  readonly pid: number
  readonly state: number
  /** "/dev/pts/3", or "" when stopped. */
  readonly tty: string
}

export const snapshot = (vm: VmRecord): TrackedVm => ({
  id: vm.id,
  name: vm.spec.name,
  pid: vm.pid,
  state: vm.state,
  tty: vm.tty?.name ?? ""
})

export const isRunning = (vm: VmRecord): boolean => (vm.state & VM_STATE_RUNNING) !== 0

/** vm_stop(vm, keeptty): no process, no state; the taps close, and the tty unless kept for a restart. */
export const stopRecord = (vm: VmRecord, keepTty: boolean): void => {
  vm.pid = -1
  vm.state = 0
  for (const fd of vm.hostTaps) fd.closeSync()
  vm.hostTaps = []
  if (!keepTty) {
    vm.tty?.master.closeSync()
    vm.tty = null
  }
}

/**
 * vmd's parent on GET_INFO_VM_DATA and END_DATA: each row of a VM it knows
 * gets the tty, the state and the owner (root, no group); then a row for
 * every VM that is not running (pid 0: vmctl prints dashes).
 */
export const completeInfo = (
  rows: ReadonlyArray<VmopInfoResult>,
  records: Iterable<VmRecord>
): ReadonlyArray<VmopInfoResult> => {
  const byId = new Map([...records].map((vm) => [vm.id, vm]))
  return [
    ...rows.map((vir) => {
      const vm = byId.get(vir.vir_id)
      return vm === undefined ? vir : { ...vir, vir_ttyname: vm.tty?.name ?? "", vir_state: vm.state, vir_uid: 0, vir_gid: -1n }
    }),
    ...[...byId.values()]
      .filter((vm) => !isRunning(vm))
      .map((vm) => ({
        ...emptyVmopInfoResult(),
        vir_id: vm.id,
        vir_name: vm.spec.name,
        vir_memory_size: vm.params.vmc_memranges[0]?.vmr_size ?? 0n,
        vir_ncpus: vm.params.vmc_ncpus,
        vir_uid: 0,
        vir_gid: -1n,
        vir_state: vm.state
      }))
  ]
}

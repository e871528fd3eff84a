/**
 * The struct vmd_vm that vmm_start_vm writes raw to the VM child (vmd.md
 * §4.5): vm_params as registered (vmc_kernel = the kernel fd number,
 * vmc_diskbases = layers received per disk), the child's pid, each fd's
 * number in the child (`num`: the vmm packs them from 3 up; -1 where
 * absent: the child finds each at that number), vm_state, and zeros for
 * everything that only means something in the vmm process.
 */
import { Either } from "effect"
import { emptyVmdVm, encodeVmdVm, type VmdVm } from "../schema/structs.ts"
import type { Vm } from "../services/VmRegistry.ts"
import type { Fd } from "../services/Fd.ts"

/** An fd's number in the child, or -1 for none. */
export type ChildNumber = (fd: Fd | null) => number

/** The zero struct, decoded once (decoding 13352 zero bytes per start cost ~0.1 ms); only read, never changed. */
let zero: VmdVm | null = null

export const buildVmdVm = (vm: Vm, num: ChildNumber): VmdVm => {
  const base = (zero ??= emptyVmdVm())
  return {
    ...base,
    vm_params: vm.kernel === null ? vm.params : { ...vm.params, vmc_kernel: num(vm.kernel) },
    vm_pid: vm.pid,
    vm_uid: vm.uid,
    vm_vmid: vm.vmid,
    vm_vmmid: vm.vmmid,
    vm_peerid: vm.peerid,
    vm_kernel: num(vm.kernel),
    vm_cdrom: num(vm.cdrom),
    vm_disks: vm.disks.map((layers) => layers.map(num)),
    vm_ifs: base.vm_ifs.map((vif, i) => ({ ...vif, vif_fd: num(vm.ifs[i] ?? null) })),
    vm_tty: num(vm.tty),
    vm_from_config: vm.fromConfig ? 1 : 0,
    vm_state: vm.state
  }
}

/** The bytes; a value that does not encode (a bug, not input) is a defect. */
export const vmdVmBytes = (vm: Vm, num: ChildNumber): Uint8Array =>
  Either.getOrThrowWith(encodeVmdVm(buildVmdVm(vm, num)), (e) => new Error(`encode vmd_vm: ${e.message}`))

/**
 * What the VM process reads from the struct vmd_vm the vmm sent it
 * (vmd.md §4.5, §7): the fds it was given and whether it has something to
 * boot. Pure.
 */
import type { VmdVm } from "../schema/structs.ts"

export interface NamedFd {
  /** The C member designator, for messages ("vm_disks[0][1]"). */
  readonly label: string
  readonly num: number
}

/**
 * Every fd the struct names, at the number the child must find it:
 * vm_kernel, vm_cdrom, each vm_disks[i][j] and vm_ifs[i].vif_fd that is not
 * -1, and vm_tty, which is always required (vmm_start_vm refuses a VM
 * without one; vm.c fails setting up the console on -1).
 */
export const namedFds = (vm: VmdVm): ReadonlyArray<NamedFd> => {
  const fds: Array<NamedFd> = [
    { label: "vm_kernel", num: vm.vm_kernel },
    { label: "vm_cdrom", num: vm.vm_cdrom },
    ...vm.vm_disks.flatMap((layers, i) => layers.map((num, j) => ({ label: `vm_disks[${i}][${j}]`, num }))),
    ...vm.vm_ifs.map((vif, i) => ({ label: `vm_ifs[${i}].vif_fd`, num: vif.vif_fd }))
  ]
  return [...fds.filter((fd) => fd.num !== -1), { label: "vm_tty", num: vm.vm_tty }]
}

/** vm_main: a kernel (vmd always sends the BIOS as one), or at least a disk or cdrom to boot from. */
export const hasBootMedia = (vm: VmdVm): boolean =>
  vm.vm_kernel !== -1 || vm.vm_params.vmc_ndisks > 0n || vm.vm_params.vmc_cdrom.length > 0

/**
 * vmm(4)'s limits on a VM's counts, which vmd.c's vm_register (in the vmm)
 * and vm.c's vmm_create_vm (in the VM process) both check, in this order.
 */
import { VM_MAX_DISKS_PER_VM, VM_MAX_NICS_PER_VM, VMM_MAX_VCPUS_PER_VM } from "./constants.ts"
import type { VmopCreateParams } from "./structs.ts"

export interface OverLimit {
  readonly field: "vmc_ncpus" | "vmc_ndisks" | "vmc_nnics"
  readonly value: bigint
  readonly max: number
}

/** The first count of `p` over its limit, or null. */
export const overVmmLimit = (p: VmopCreateParams): OverLimit | null => {
  if (p.vmc_ncpus > BigInt(VMM_MAX_VCPUS_PER_VM)) return { field: "vmc_ncpus", value: p.vmc_ncpus, max: VMM_MAX_VCPUS_PER_VM }
  if (p.vmc_ndisks > BigInt(VM_MAX_DISKS_PER_VM)) return { field: "vmc_ndisks", value: p.vmc_ndisks, max: VM_MAX_DISKS_PER_VM }
  if (p.vmc_nnics > BigInt(VM_MAX_NICS_PER_VM)) return { field: "vmc_nnics", value: p.vmc_nnics, max: VM_MAX_NICS_PER_VM }
  return null
}

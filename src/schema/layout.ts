/**
 * Field kinds and the layout tables of every struct the vmm process reads or
 * writes (amd64 LP64, little-endian), exactly as vmd.md §4.1, §4.2, §4.4–§4.6
 * give them. This is the one module that pins the struct ABI (DECISIONS.md);
 * `codec.ts` encodes and decodes any table, `structs.ts` names the results.
 *
 * The tables live in `layouts/`, by topic, and are all re-exported here:
 *   layouts/kinds.ts   field kinds, constructors, checkLayout/defineStruct/resolvePath
 *   layouts/vmop.ts    vmop_result, vmop_id, vmop_addr_*, vmop_owner, vmop_info_result
 *   layouts/vm.ts      vmop_create_params, vmd_if, vmd_vm
 *   layouts/config.ts  timeval, local_prefix, vmd_agentx, vmd_config
 *   layouts/kernel.ts  vm_mem_range, vm_info_result, vm_info_params, vm_terminate_params, vm_create_params
 *
 * Every table lists its padding explicitly, so `defineStruct` can check at
 * module load that the fields are contiguous, aligned and end at the
 * documented sizeof; a wrong offset in a table stops the program at import.
 * test/schema/c/layout.c checks the same numbers against gcc.
 */
import type { AnyLayout } from "./layouts/kinds.ts"
import { LOCAL_PREFIX, TIMEVAL, VMD_AGENTX, VMD_CONFIG } from "./layouts/config.ts"
import { VM_CREATE_PARAMS, VM_INFO_PARAMS, VM_INFO_RESULT, VM_MEM_RANGE, VM_TERMINATE_PARAMS } from "./layouts/kernel.ts"
import { VMD_IF, VMD_VM, VMOP_CREATE_PARAMS } from "./layouts/vm.ts"
import { VMOP_ADDR_REQ, VMOP_ADDR_RESULT, VMOP_ID, VMOP_INFO_RESULT, VMOP_OWNER, VMOP_RESULT } from "./layouts/vmop.ts"

export * from "./layouts/kinds.ts"
export * from "./layouts/config.ts"
export * from "./layouts/kernel.ts"
export * from "./layouts/vm.ts"
export * from "./layouts/vmop.ts"

/** Every table, for the layout checks. */
export const ALL_LAYOUTS: ReadonlyArray<AnyLayout> = [
  TIMEVAL,
  VM_MEM_RANGE,
  VMOP_RESULT,
  VMOP_ID,
  VMOP_ADDR_REQ,
  VMOP_ADDR_RESULT,
  VMOP_OWNER,
  LOCAL_PREFIX,
  VMD_AGENTX,
  VMD_CONFIG,
  VMOP_INFO_RESULT,
  VM_INFO_RESULT,
  VM_INFO_PARAMS,
  VM_TERMINATE_PARAMS,
  VM_CREATE_PARAMS,
  VMOP_CREATE_PARAMS,
  VMD_IF,
  VMD_VM
]

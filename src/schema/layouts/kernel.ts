/**
 * Kernel structs (vmd.md §4.6, K11): what vmm(4) ioctls take and give back,
 * and vm_mem_range, which the vmd structs embed.
 */
import {
  VMM_MAX_MEM_RANGES,
  VMM_MAX_NAME_LEN,
  VMM_MAX_VCPUS,
  VMM_MAX_VCPUS_PER_VM
} from "../constants.ts"
import { array, bytes, char, defineStruct, field, i32, pad, struct, u32, u64 } from "./kinds.ts"

// Offsets are written out (not computed) so each line can be read against
// vmd.md; `defineStruct` proves they are consistent at module load.

/** struct vm_mem_range (32, 8), K11. */
export const VM_MEM_RANGE = defineStruct("vm_mem_range", 32, 8, [
  field("vmr_gpa", 0, u64),
  field("vmr_va", 8, u64),
  field("vmr_size", 16, u64),
  field("vmr_type", 24, i32),
  pad(28, 4)
])

/**
 * struct vm_info_result (160, 8), kernel, §4.6. vmm.c memcpy()s vir_name; the
 * kernel fills it with strlcpy, so it is treated as terminated.
 */
export const VM_INFO_RESULT = defineStruct("vm_info_result", 160, 8, [
  field("vir_memory_size", 0, u64),
  field("vir_used_size", 8, u64),
  field("vir_ncpus", 16, u64),
  field("vir_vcpu_state", 24, bytes(VMM_MAX_VCPUS_PER_VM)),
  field("vir_creator_pid", 88, i32),
  field("vir_id", 92, u32),
  field("vir_name", 96, char(VMM_MAX_NAME_LEN, "terminated"))
])

/** struct vm_info_params (24, 8), kernel, §4.6; vip_info is a user address. */
export const VM_INFO_PARAMS = defineStruct("vm_info_params", 24, 8, [
  field("vip_size", 0, u64),
  field("vip_info_ct", 8, u64),
  field("vip_info", 16, u64)
])

/** struct vm_terminate_params (4, 4), kernel, §4.6. */
export const VM_TERMINATE_PARAMS = defineStruct("vm_terminate_params", 4, 4, [
  field("vtp_vm_id", 0, u32)
])

/** struct vm_create_params (2656, 8), kernel, §4.6: only its size is used (VMM_IOC_CREATE). */
export const VM_CREATE_PARAMS = defineStruct("vm_create_params", 2656, 8, [
  field("vcp_nmemranges", 0, u64, { countOf: "vcp_memranges" }),
  field("vcp_ncpus", 8, u64),
  field("vcp_memranges", 16, array(VMM_MAX_MEM_RANGES, struct(VM_MEM_RANGE))),
  field("vcp_name", 528, char(VMM_MAX_NAME_LEN, "raw")),
  field("vcp_sev", 592, i32),
  field("vcp_seves", 596, i32),
  field("vcp_id", 600, u32),
  field("vcp_poscbit", 604, u32),
  field("vcp_asid", 608, array(VMM_MAX_VCPUS, u32))
])

/**
 * The small vmop_* messages between vmd's parent and the vmm process
 * (vmd.md §4.1): results, ids, addresses, owners, and the info result.
 */
import { ETHER_ADDR_LEN, VMM_MAX_NAME_LEN, VM_TTYNAME_MAX } from "../constants.ts"
import { bytes, char, defineStruct, field, i32, i64, pad, u32 } from "./kinds.ts"
import { VM_INFO_RESULT } from "./kernel.ts"

// Offsets are written out (not computed) so each line can be read against
// vmd.md; `defineStruct` proves they are consistent at module load.

/** struct vmop_result (28, 4), §4.1. */
export const VMOP_RESULT = defineStruct("vmop_result", 28, 4, [
  field("vmr_result", 0, i32),
  field("vmr_id", 4, u32),
  field("vmr_pid", 8, i32),
  field("vmr_ttyname", 12, char(VM_TTYNAME_MAX, "terminated"))
])

/** struct vmop_id (76, 4), §4.1. */
export const VMOP_ID = defineStruct("vmop_id", 76, 4, [
  field("vid_id", 0, u32),
  field("vid_name", 4, char(VMM_MAX_NAME_LEN, "terminated")),
  field("vid_uid", 68, u32),
  field("vid_flags", 72, u32)
])

/** struct vmop_addr_req (8, 4), §4.1. */
export const VMOP_ADDR_REQ = defineStruct("vmop_addr_req", 8, 4, [
  field("var_vmid", 0, u32),
  field("var_nic_idx", 4, u32)
])

/** struct vmop_addr_result (16, 4), §4.1; the 2 tail bytes are uninitialised in priv.c. */
export const VMOP_ADDR_RESULT = defineStruct("vmop_addr_result", 16, 4, [
  field("var_vmid", 0, u32),
  field("var_nic_idx", 4, u32),
  field("var_addr", 8, bytes(ETHER_ADDR_LEN)),
  pad(14, 2)
])

/** struct vmop_owner (16, 8), §4.1. */
export const VMOP_OWNER = defineStruct("vmop_owner", 16, 8, [
  field("uid", 0, u32),
  pad(4, 4),
  field("gid", 8, i64)
])

/**
 * struct vmop_info_result (200, 8), §4.1: H144 flattened the kernel result
 * into it, so its first 160 bytes are struct vm_info_result's fields.
 */
export const VMOP_INFO_RESULT = defineStruct("vmop_info_result", 200, 8, [
  ...VM_INFO_RESULT.fields,
  field("vir_ttyname", 160, char(VM_TTYNAME_MAX, "terminated")),
  field("vir_uid", 176, u32),
  pad(180, 4),
  field("vir_gid", 184, i64),
  field("vir_state", 192, u32),
  pad(196, 4)
])

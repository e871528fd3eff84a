/**
 * A VM's parameters and the struct the vmm process writes to its child
 * (vmd.md §4.2–§4.5): vmop_create_params (START_VM_REQUEST), vmd_if and
 * struct vmd_vm.
 */
import {
  ETHER_ADDR_LEN,
  IF_NAMESIZE,
  PATH_MAX,
  VMM_MAX_MEM_RANGES,
  VMM_MAX_NAME_LEN,
  VMM_MAX_VCPUS,
  VMM_MAX_VCPUS_PER_VM,
  VM_MAX_BASE_PER_DISK,
  VM_MAX_DISKS_PER_VM,
  VM_MAX_NICS_PER_VM,
  VM_NAME_MAX,
  VM_SEV_NSEGMENTS,
  VM_TTYNAME_MAX
} from "../constants.ts"
import { array, bytes, char, defineStruct, field, i32, opaque, pad, pointer, struct, tailqEntry, u32, u64 } from "./kinds.ts"
import { TIMEVAL } from "./config.ts"
import { VM_MEM_RANGE } from "./kernel.ts"
import { VMOP_OWNER } from "./vmop.ts"

// Offsets are written out (not computed) so each line can be read against
// vmd.md; `defineStruct` proves they are consistent at module load.

/** struct vmop_create_params (8392, 8), §4.2. vmc_nnics bounds all six vmc_if* / vmc_macs arrays (4 each). */
export const VMOP_CREATE_PARAMS = defineStruct("vmop_create_params", 8392, 8, [
  field("vmc_id", 0, u32),
  field("vmc_name", 4, char(VMM_MAX_NAME_LEN, "terminated")),
  pad(68, 4),
  field("vmc_owner", 72, struct(VMOP_OWNER)),
  field("vmc_flags", 88, u32),
  field("vmc_checkaccess", 92, u32),
  field("vmc_ncpus", 96, u64),
  field("vmc_asid", 104, array(VMM_MAX_VCPUS, u32)),
  field("vmc_poscbit", 2152, u32),
  field("vmc_sev", 2156, i32),
  field("vmc_seves", 2160, i32),
  pad(2164, 4),
  field("vmc_nmemranges", 2168, u64, { countOf: "vmc_memranges" }),
  field("vmc_memranges", 2176, array(VMM_MAX_MEM_RANGES, struct(VM_MEM_RANGE))),
  field("vmc_kernel", 2688, i32),
  field("vmc_bootdevice", 2692, u32),
  field("vmc_ndisks", 2696, u64, { countOf: "vmc_disks" }),
  field("vmc_disks", 2704, array(VM_MAX_DISKS_PER_VM, char(PATH_MAX, "terminated"))),
  field("vmc_disktypes", 6800, array(VM_MAX_DISKS_PER_VM, u32)),
  field("vmc_diskbases", 6816, array(VM_MAX_DISKS_PER_VM, u32)),
  field("vmc_cdrom", 6832, char(PATH_MAX, "raw")),
  field("vmc_nnics", 7856, u64, { countOf: "vmc_ifnames" }),
  field("vmc_ifnames", 7864, array(VM_MAX_NICS_PER_VM, char(IF_NAMESIZE, "terminated"))),
  field("vmc_ifswitch", 7928, array(VM_MAX_NICS_PER_VM, char(VM_NAME_MAX, "terminated"))),
  field("vmc_ifgroup", 8184, array(VM_MAX_NICS_PER_VM, char(IF_NAMESIZE, "terminated"))),
  field("vmc_ifrdomain", 8248, array(VM_MAX_NICS_PER_VM, u32)),
  field("vmc_macs", 8264, array(VM_MAX_NICS_PER_VM, bytes(ETHER_ADDR_LEN))),
  field("vmc_ifflags", 8288, array(VM_MAX_NICS_PER_VM, u32)),
  field("vmc_instance", 8304, char(VMM_MAX_NAME_LEN, "terminated")),
  field("vmc_insowner", 8368, struct(VMOP_OWNER)),
  field("vmc_insflags", 8384, u32),
  pad(8388, 4)
])

/** struct vmd_if (56, 8), §4.3: the name pointers are never sent (zero). */
export const VMD_IF = defineStruct("vmd_if", 56, 8, [
  field("vif_name", 0, pointer("char *")),
  field("vif_switch", 8, pointer("char *")),
  field("vif_group", 16, pointer("char *")),
  field("vif_fd", 24, i32),
  field("vif_rdomain", 28, u32),
  field("vif_flags", 32, u32),
  pad(36, 4),
  field("vif_entry", 40, tailqEntry)
])

/** struct imsgev (184, 8), §4.4: opaque, but vm_stop() in the child looks at ibuf.fd, so it must be -1. */
const IMSGEV = opaque("struct imsgev", 184, 8, [{ path: "ibuf.fd", offset: 16, value: -1 }])

/**
 * struct vmd_vm (13352, 8), §4.5: the bytes vmm writes raw to the VM child.
 * Pointers, TAILQ entries and vm_iev are zeros (except vm_iev.ibuf.fd = -1).
 */
export const VMD_VM = defineStruct("vmd_vm", 13352, 8, [
  field("vm_params", 0, struct(VMOP_CREATE_PARAMS)),
  field("vm_pid", 8392, i32),
  field("vm_uid", 8396, u32),
  field("vm_vmid", 8400, u32),
  field("vm_vmmid", 8404, u32),
  field("vm_peerid", 8408, u32),
  field("vm_sev_handle", 8412, u32),
  field("vm_sev_asid", 8416, array(VMM_MAX_VCPUS_PER_VM, u32)),
  field("vm_poscbit", 8672, u32),
  pad(8676, 4),
  field("vm_sev_nmemsegments", 8680, u64, { countOf: "vm_sev_memsegments" }),
  field("vm_sev_memsegments", 8688, array(VM_SEV_NSEGMENTS, struct(VM_MEM_RANGE))),
  field("vm_kernel", 12784, i32),
  pad(12788, 4),
  field("vm_kernel_path", 12792, pointer("char *")),
  field("vm_cdrom", 12800, i32),
  field("vm_disks", 12804, array(VM_MAX_DISKS_PER_VM, array(VM_MAX_BASE_PER_DISK, i32))),
  pad(12868, 4),
  field("vm_ifs", 12872, array(VM_MAX_NICS_PER_VM, struct(VMD_IF))),
  field("vm_ttyname", 13096, char(VM_TTYNAME_MAX, "raw")),
  field("vm_tty", 13112, i32),
  field("vm_from_config", 13116, i32),
  field("vm_iev", 13120, IMSGEV),
  field("vm_state", 13304, u32),
  pad(13308, 4),
  field("vm_start_tv", 13312, struct(TIMEVAL)),
  field("vm_start_limit", 13328, i32),
  pad(13332, 4),
  field("vm_entry", 13336, tailqEntry)
])

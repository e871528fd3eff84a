/**
 * Constants of vmd.md §3 (sys/dev/vmm/vmm.h 1.11 "K11", usr.sbin/vmd/vmd.h
 * 1.144 "H144"). Message numbers live in imsgTypes.ts, errno and the
 * VMD_* result codes in errno.ts.
 */

/** §3 lists these too; they are defined once, in imsgTypes.ts. */
export { CONFIG_ALL, CONFIG_RELOAD, CONFIG_SWITCHES, CONFIG_VMS, IMSG_AGENTX_PEERID } from "./imsgTypes.ts"

// sys/dev/vmm/vmm.h (K11)
export const VMM_MAX_NAME_LEN = 64
export const VMM_MAX_VCPUS = 512
export const VMM_MAX_VCPUS_PER_VM = 64
export const VMM_MAX_MEM_RANGES = 16
export const VMM_MAX_DISKS_PER_VM = 4
export const VMM_MAX_NICS_PER_VM = 4
/** 128 GiB. */
export const VMM_MAX_VM_MEM_SIZE = 128n * 1024n * 1024n * 1024n

/** vm_mem_range.vmr_type */
export const VM_MEM_RAM = 0
export const VM_MEM_RESERVED = 1
export const VM_MEM_MMIO = 2

/** vm_info_result.vir_vcpu_state[i] */
export const VCPU_STATE_STOPPED = 0
export const VCPU_STATE_RUNNING = 1
export const VCPU_STATE_REQTERM = 2
export const VCPU_STATE_TERMINATED = 3
export const VCPU_STATE_UNKNOWN = 4

// usr.sbin/vmd/vmd.h (H144)
export const VM_MAX_DISKS_PER_VM = 4
export const VM_MAX_BASE_PER_DISK = 4
export const VM_MAX_NICS_PER_VM = 4
export const VM_TTYNAME_MAX = 16
export const VM_NAME_MAX = 64
export const VM_SEV_NSEGMENTS = 128
export const MAX_TAP = 256
/** 512 MiB, the memory vm_register gives a VM with vmc_memranges[0].vmr_size 0. */
export const VM_DEFAULT_MEMORY = 512n * 1024n * 1024n
export const VM_START_RATE_SEC = 6
export const VM_START_RATE_LIMIT = 3
export const VMD_LAUNCH_VM = 1
export const VMD_LAUNCH_DEV = 2

/** vmop_id.vid_flags */
export const VMOP_FORCE = 0x01
export const VMOP_WAIT = 0x02

/** vmop_create_params.vmc_flags / vmc_checkaccess */
export const VMOP_CREATE_CPU = 0x01
export const VMOP_CREATE_KERNEL = 0x02
export const VMOP_CREATE_MEMORY = 0x04
export const VMOP_CREATE_NETWORK = 0x08
export const VMOP_CREATE_DISK = 0x10
export const VMOP_CREATE_CDROM = 0x20
export const VMOP_CREATE_INSTANCE = 0x40

/** vmop_create_params.vmc_bootdevice */
export const VMBOOTDEV_AUTO = 0
export const VMBOOTDEV_DISK = 1
export const VMBOOTDEV_CDROM = 2
export const VMBOOTDEV_NET = 3

/** vmop_create_params.vmc_ifflags[i] */
export const VMIFF_UP = 0x01
export const VMIFF_LOCKED = 0x02
export const VMIFF_LOCAL = 0x04
export const VMIFF_RDOMAIN = 0x08
export const VMIFF_OPTMASK = VMIFF_LOCKED | VMIFF_LOCAL | VMIFF_RDOMAIN

/**
 * vmc_disktypes[i]: H148/H153 enum vm_disk_fmt. (H144 had VMDF_RAW 0x01,
 * VMDF_QCOW2 0x02; the vmm process only copies these values.)
 */
export const VMDF_INVALID = 0
export const VMDF_AUTO = 1
export const VMDF_RAW = 2
export const VMDF_QCOW2 = 3

/** vmd_vm.vm_state / vmop_info_result.vir_state */
export const VM_STATE_RUNNING = 0x01
export const VM_STATE_DISABLED = 0x02
export const VM_STATE_SHUTDOWN = 0x04
export const VM_STATE_PAUSED = 0x10
export const VM_STATE_WAITING = 0x20

/** vmd_config.cfg_flags (vmd.h; the vmm process only stores them). */
export const VMD_CFG_INET6 = 0x01
export const VMD_CFG_AUTOINET6 = 0x02
export const VMD_CFG_STAGGERED_START = 0x04

// Sizes the struct tables use (vmd.md §4 primitives).
export const PATH_MAX = 1024
export const IF_NAMESIZE = 16
export const ETHER_ADDR_LEN = 6
/** sizeof(((struct sockaddr_un *)0)->sun_path) */
export const SUN_PATH_LEN = 104

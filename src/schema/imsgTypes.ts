/**
 * Message type numbers (vmd.md §2, DECISIONS.md). Every number derives from
 * IMSG_PROC_MAX, kept in this one constant: 1.136's proc.h has IMSG_NONE = 0
 * ahead of the generic types, so IMSG_PROC_MAX = 5. Changing the base is a
 * one-line change here (plus golden tests).
 */
export const IMSG_PROC_MAX = 5

/** Generic privsep types (proc.h), IMSG_NONE first. */
export const IMSG_NONE = 0
export const IMSG_CTL_OK = 1
export const IMSG_CTL_FAIL = 2
export const IMSG_CTL_VERBOSE = IMSG_PROC_MAX - 2
export const IMSG_CTL_RESET = IMSG_PROC_MAX - 1

/** vmd types (vmd.h), in enum order from IMSG_PROC_MAX. */
const VMD_TYPES = [
  "IMSG_VMDOP_START_VM_REQUEST",
  "IMSG_VMDOP_START_VM_CDROM",
  "IMSG_VMDOP_START_VM_DISK",
  "IMSG_VMDOP_START_VM_IF",
  "IMSG_VMDOP_START_VM_END",
  "IMSG_VMDOP_START_VM_RESPONSE",
  "IMSG_VMDOP_PAUSE_VM",
  "IMSG_VMDOP_PAUSE_VM_RESPONSE",
  "IMSG_VMDOP_UNPAUSE_VM",
  "IMSG_VMDOP_UNPAUSE_VM_RESPONSE",
  "IMSG_VMDOP_WAIT_VM_REQUEST",
  "IMSG_VMDOP_TERMINATE_VM_REQUEST",
  "IMSG_VMDOP_TERMINATE_VM_RESPONSE",
  "IMSG_VMDOP_TERMINATE_VM_EVENT",
  "IMSG_VMDOP_GET_INFO_VM_REQUEST",
  "IMSG_VMDOP_GET_INFO_VM_DATA",
  "IMSG_VMDOP_GET_INFO_VM_END_DATA",
  "IMSG_VMDOP_LOAD",
  "IMSG_VMDOP_RECEIVE_VMM_FD",
  "IMSG_VMDOP_RECEIVE_PSP_FD",
  "IMSG_VMDOP_RELOAD",
  "IMSG_VMDOP_PRIV_IFDESCR",
  "IMSG_VMDOP_PRIV_IFADD",
  "IMSG_VMDOP_PRIV_IFEXISTS",
  "IMSG_VMDOP_PRIV_IFUP",
  "IMSG_VMDOP_PRIV_IFDOWN",
  "IMSG_VMDOP_PRIV_IFGROUP",
  "IMSG_VMDOP_PRIV_IFADDR",
  "IMSG_VMDOP_PRIV_IFADDR6",
  "IMSG_VMDOP_PRIV_IFRDOMAIN",
  "IMSG_VMDOP_PRIV_GET_ADDR",
  "IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE",
  "IMSG_VMDOP_VM_SHUTDOWN",
  "IMSG_VMDOP_VM_REBOOT",
  "IMSG_VMDOP_CONFIG",
  "IMSG_VMDOP_DONE",
  "IMSG_DEVOP_HOSTMAC",
  "IMSG_DEVOP_MSG",
  "IMSG_DEVOP_VIONET_MSG"
] as const

export type VmdTypeName = (typeof VMD_TYPES)[number]

const vmd = (name: VmdTypeName): number => IMSG_PROC_MAX + VMD_TYPES.indexOf(name)

export const IMSG_VMDOP_START_VM_REQUEST = vmd("IMSG_VMDOP_START_VM_REQUEST")
export const IMSG_VMDOP_START_VM_CDROM = vmd("IMSG_VMDOP_START_VM_CDROM")
export const IMSG_VMDOP_START_VM_DISK = vmd("IMSG_VMDOP_START_VM_DISK")
export const IMSG_VMDOP_START_VM_IF = vmd("IMSG_VMDOP_START_VM_IF")
export const IMSG_VMDOP_START_VM_END = vmd("IMSG_VMDOP_START_VM_END")
export const IMSG_VMDOP_START_VM_RESPONSE = vmd("IMSG_VMDOP_START_VM_RESPONSE")
export const IMSG_VMDOP_PAUSE_VM = vmd("IMSG_VMDOP_PAUSE_VM")
export const IMSG_VMDOP_PAUSE_VM_RESPONSE = vmd("IMSG_VMDOP_PAUSE_VM_RESPONSE")
export const IMSG_VMDOP_UNPAUSE_VM = vmd("IMSG_VMDOP_UNPAUSE_VM")
export const IMSG_VMDOP_UNPAUSE_VM_RESPONSE = vmd("IMSG_VMDOP_UNPAUSE_VM_RESPONSE")
export const IMSG_VMDOP_WAIT_VM_REQUEST = vmd("IMSG_VMDOP_WAIT_VM_REQUEST")
export const IMSG_VMDOP_TERMINATE_VM_REQUEST = vmd("IMSG_VMDOP_TERMINATE_VM_REQUEST")
export const IMSG_VMDOP_TERMINATE_VM_RESPONSE = vmd("IMSG_VMDOP_TERMINATE_VM_RESPONSE")
export const IMSG_VMDOP_TERMINATE_VM_EVENT = vmd("IMSG_VMDOP_TERMINATE_VM_EVENT")
export const IMSG_VMDOP_GET_INFO_VM_REQUEST = vmd("IMSG_VMDOP_GET_INFO_VM_REQUEST")
export const IMSG_VMDOP_GET_INFO_VM_DATA = vmd("IMSG_VMDOP_GET_INFO_VM_DATA")
export const IMSG_VMDOP_GET_INFO_VM_END_DATA = vmd("IMSG_VMDOP_GET_INFO_VM_END_DATA")
export const IMSG_VMDOP_RECEIVE_VMM_FD = vmd("IMSG_VMDOP_RECEIVE_VMM_FD")
export const IMSG_VMDOP_RECEIVE_PSP_FD = vmd("IMSG_VMDOP_RECEIVE_PSP_FD")
export const IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE = vmd("IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE")
export const IMSG_VMDOP_VM_SHUTDOWN = vmd("IMSG_VMDOP_VM_SHUTDOWN")
export const IMSG_VMDOP_VM_REBOOT = vmd("IMSG_VMDOP_VM_REBOOT")
export const IMSG_VMDOP_CONFIG = vmd("IMSG_VMDOP_CONFIG")

const GENERIC: ReadonlyArray<readonly [number, string]> = [
  [IMSG_NONE, "IMSG_NONE"],
  [IMSG_CTL_OK, "IMSG_CTL_OK"],
  [IMSG_CTL_FAIL, "IMSG_CTL_FAIL"],
  [IMSG_CTL_VERBOSE, "IMSG_CTL_VERBOSE"],
  [IMSG_CTL_RESET, "IMSG_CTL_RESET"]
]

const NAMES = new Map<number, string>([...GENERIC, ...VMD_TYPES.map((n) => [vmd(n), n] as const)])

/** "IMSG_VMDOP_START_VM_END" for 9; "type 99" for a number we do not know. */
export const imsgTypeName = (type: number): string => NAMES.get(type) ?? `type ${type}`

/** Special peer ids (vmd.h, proc.c). */
export const PEERID_NONE = 0xffffffff
export const IMSG_AGENTX_PEERID = 0xfffffffe

/** proc_compose_imsg always writes pid 1 in the header (proc.c 1.36). */
export const PROC_COMPOSE_PID = 1

/** PROC_PARENT_SOCK_FILENO: a privsep child's channel to the parent. */
export const PROC_PARENT_SOCK_FILENO = 3

/** IMSG_CTL_RESET payload bits (proc.h). */
export const CONFIG_RELOAD = 0x00
export const CONFIG_VMS = 0x01
export const CONFIG_SWITCHES = 0x02
export const CONFIG_ALL = 0xff

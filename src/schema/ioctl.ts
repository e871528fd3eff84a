/**
 * ioctl request numbers, as OpenBSD sys/ioccom.h builds them (vmd.md §5):
 * request = inout | ((len & IOCPARM_MASK) << 16) | (group << 8) | num.
 * Results are unsigned 32-bit numbers (`>>> 0`: JS bit operators are signed).
 */
import { VM_CREATE_PARAMS, VM_INFO_PARAMS, VM_TERMINATE_PARAMS } from "./layout.ts"

export const IOCPARM_MASK = 0x1fff
export const IOC_VOID = 0x20000000
export const IOC_OUT = 0x40000000
export const IOC_IN = 0x80000000
export const IOC_INOUT = (IOC_IN | IOC_OUT) >>> 0
export const IOC_DIRMASK = 0xe0000000

/** A group given as a one-character string ('V') or its code. */
export type IocGroup = string | number

const groupCode = (group: IocGroup): number => (typeof group === "string" ? group.charCodeAt(0) : group) & 0xff

export const _IOC = (inout: number, group: IocGroup, num: number, len: number): number =>
  (inout | ((len & IOCPARM_MASK) << 16) | (groupCode(group) << 8) | (num & 0xff)) >>> 0

export const _IO = (group: IocGroup, num: number): number => _IOC(IOC_VOID, group, num, 0)
/** Kernel writes the argument (copyout). */
export const _IOR = (group: IocGroup, num: number, len: number): number => _IOC(IOC_OUT, group, num, len)
/** Kernel reads the argument (copyin). */
export const _IOW = (group: IocGroup, num: number, len: number): number => _IOC(IOC_IN, group, num, len)
export const _IOWR = (group: IocGroup, num: number, len: number): number => _IOC(IOC_INOUT, group, num, len)

export const IOCPARM_LEN = (request: number): number => (request >>> 16) & IOCPARM_MASK
export const IOCGROUP = (request: number): number => (request >>> 8) & 0xff

/** _IOWR('V', 3, struct vm_info_params) = 0xC0185603. */
export const VMM_IOC_INFO = _IOWR("V", 3, VM_INFO_PARAMS.sizeof)
/** _IOW('V', 4, struct vm_terminate_params) = 0x80045604. */
export const VMM_IOC_TERM = _IOW("V", 4, VM_TERMINATE_PARAMS.sizeof)
/** _IOWR('V', 1, struct vm_create_params) = 0xCA605601; the vmm process never issues it. */
export const VMM_IOC_CREATE = _IOWR("V", 1, VM_CREATE_PARAMS.sizeof)

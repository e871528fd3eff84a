/**
 * The bytes the tests put on the wire and expect back, written out by hand
 * from the offsets of vmd.md §4 (not through src/schema), so that the vmm's
 * replies are checked against an independent reading of the ABI.
 */

/** OpenBSD errno and vmd codes the tests name (vmd.md §3). */
export const E = {
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  ENOMEM: 12,
  EINVAL: 22,
  ERANGE: 34,
  EAGAIN: 35,
  EALREADY: 37,
  VMD_DISK_MISSING: 1002,
  VMD_VM_STOP_INVALID: 1004
} as const

/** Message numbers with IMSG_PROC_MAX = 5 (DECISIONS.md), spelled out rather than imported. */
export const M = {
  CTL_VERBOSE: 3,
  CTL_RESET: 4,
  START_VM_REQUEST: 5,
  START_VM_CDROM: 6,
  START_VM_DISK: 7,
  START_VM_IF: 8,
  START_VM_END: 9,
  START_VM_RESPONSE: 10,
  PAUSE_VM: 11,
  PAUSE_VM_RESPONSE: 12,
  UNPAUSE_VM: 13,
  UNPAUSE_VM_RESPONSE: 14,
  WAIT_VM_REQUEST: 15,
  TERMINATE_VM_REQUEST: 16,
  TERMINATE_VM_RESPONSE: 17,
  TERMINATE_VM_EVENT: 18,
  GET_INFO_VM_REQUEST: 19,
  GET_INFO_VM_DATA: 20,
  GET_INFO_VM_END_DATA: 21,
  LOAD: 22,
  RECEIVE_VMM_FD: 23,
  RECEIVE_PSP_FD: 24,
  PRIV_GET_ADDR_RESPONSE: 36,
  VM_SHUTDOWN: 37,
  VM_REBOOT: 38,
  CONFIG: 39
} as const

export const PEERID_NONE = 0xffffffff
export const CONFIG_VMS = 0x01
export const VMOP_FORCE = 0x01
export const SIZE = { vmop_result: 28, vmop_id: 76, vmop_info_result: 200, vmop_create_params: 8392, vmd_vm: 13352 }

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength)

const putChars = (b: Uint8Array, off: number, s: string) => {
  for (let i = 0; i < s.length; i++) b[off + i] = s.charCodeAt(i) & 0xff
}

const getChars = (b: Uint8Array, off: number, max: number) => {
  let s = ""
  for (let i = 0; i < max && b[off + i] !== 0; i++) s += String.fromCharCode(b[off + i] as number)
  return s
}

export const int32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4)
  view(b).setInt32(0, n, true)
  return b
}

export const uint32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4)
  view(b).setUint32(0, n >>> 0, true)
  return b
}

/** struct vmop_result {res, id, pid, ttyname ""} (28 bytes). */
export const vmopResult = (res: number, id: number, pid: number): Uint8Array => {
  const b = new Uint8Array(28)
  const v = view(b)
  v.setInt32(0, res, true)
  v.setUint32(4, id >>> 0, true)
  v.setInt32(8, pid, true)
  return b
}

export interface Result {
  readonly res: number
  readonly id: number
  readonly pid: number
  readonly ttyname: string
}

export const readResult = (b: Uint8Array): Result => {
  if (b.length !== 28) throw new Error(`vmop_result of ${b.length} bytes`)
  const v = view(b)
  return { res: v.getInt32(0, true), id: v.getUint32(4, true), pid: v.getInt32(8, true), ttyname: getChars(b, 12, 16) }
}

export const readInt = (b: Uint8Array): number => {
  if (b.length !== 4) throw new Error(`int of ${b.length} bytes`)
  return view(b).getInt32(0, true)
}

/** struct vmop_id (76 bytes). */
export const vmopId = (id: number, flags = 0, name = ""): Uint8Array => {
  const b = new Uint8Array(76)
  const v = view(b)
  v.setUint32(0, id >>> 0, true)
  putChars(b, 4, name)
  v.setUint32(72, flags, true)
  return b
}

/** struct vmop_addr_result (16 bytes). */
export const vmopAddrResult = (vmid: number, nic: number, mac: ReadonlyArray<number>): Uint8Array => {
  const b = new Uint8Array(16)
  const v = view(b)
  v.setUint32(0, vmid >>> 0, true)
  v.setUint32(4, nic, true)
  b.set(mac, 8)
  return b
}

/** struct local_prefix (40 bytes): IPv4 address and mask, IPv6 address and mask. */
export const localPrefix = (
  inet: ReadonlyArray<number>,
  mask: ReadonlyArray<number>,
  inet6: ReadonlyArray<number>,
  mask6: ReadonlyArray<number>
): Uint8Array => {
  const b = new Uint8Array(40)
  b.set(inet, 0)
  b.set(mask, 4)
  b.set(inet6, 8)
  b.set(mask6, 24)
  return b
}

/** config_init/config_purge's prefix: 100.64.0.0/10 and fd00::/8. */
export const DEFAULT_PREFIX = localPrefix([100, 64, 0, 0], [255, 192, 0, 0], [0xfd], [0xff])

/** config_purge: the IPv4 prefix back to 100.64.0.0/10, the IPv6 one kept. */
export const purgedPrefix = (p: Uint8Array): Uint8Array => {
  const b = p.slice()
  b.set(DEFAULT_PREFIX.subarray(0, 8), 0)
  return b
}

/** struct vmd_config (216 bytes) with the given local prefix at offset 28. */
export const vmdConfig = (prefix: Uint8Array, flags = 0): Uint8Array => {
  const b = new Uint8Array(216)
  view(b).setUint32(0, flags, true)
  b.set(prefix, 28)
  return b
}

export interface CreateSpec {
  readonly name: string
  readonly flags?: number
  readonly vmcId?: number
  readonly ncpus?: number
  readonly memory?: bigint
  readonly nmemranges?: number
  readonly ndisks?: number
  readonly diskbases?: ReadonlyArray<number>
  readonly cdrom?: string
  readonly nnics?: number
  readonly macs?: ReadonlyArray<ReadonlyArray<number>>
}

/** struct vmop_create_params (8392 bytes), the fields the vmm looks at. */
export const createParams = (s: CreateSpec): Uint8Array => {
  const b = new Uint8Array(8392)
  const v = view(b)
  v.setUint32(0, s.vmcId ?? 0, true)
  putChars(b, 4, s.name)
  v.setUint32(88, s.flags ?? 0x1f, true)
  v.setBigUint64(96, BigInt(s.ncpus ?? 1), true)
  v.setBigUint64(2168, BigInt(s.nmemranges ?? 1), true)
  v.setBigUint64(2176 + 16, s.memory ?? 0n, true)
  v.setInt32(2688, -1, true)
  const ndisks = s.ndisks ?? 0
  v.setBigUint64(2696, BigInt(ndisks), true)
  for (let i = 0; i < Math.min(ndisks, 4); i++) putChars(b, 2704 + 1024 * i, `/var/vm/${s.name.slice(0, 40)}-${i}.qcow2`)
  for (let i = 0; i < 4; i++) v.setUint32(6816 + 4 * i, s.diskbases?.[i] ?? 0, true)
  putChars(b, 6832, s.cdrom ?? "")
  const nnics = s.nnics ?? 0
  v.setBigUint64(7856, BigInt(nnics), true)
  for (let i = 0; i < Math.min(nnics, 4); i++) {
    putChars(b, 7864 + 16 * i, `tap${i}`)
    b.set(s.macs?.[i] ?? [], 8264 + 6 * i)
  }
  return b
}

export interface InfoResult {
  readonly memory: bigint
  readonly used: bigint
  readonly ncpus: bigint
  readonly vcpuState: ReadonlyArray<number>
  readonly creatorPid: number
  readonly id: number
  readonly name: string
  readonly ttyname: string
  readonly uid: number
  readonly gid: bigint
  readonly state: number
}

/** struct vmop_info_result (200 bytes). */
export const readInfo = (b: Uint8Array): InfoResult => {
  if (b.length !== 200) throw new Error(`vmop_info_result of ${b.length} bytes`)
  const v = view(b)
  return {
    memory: v.getBigUint64(0, true),
    used: v.getBigUint64(8, true),
    ncpus: v.getBigUint64(16, true),
    vcpuState: Array.from(b.subarray(24, 88)),
    creatorPid: v.getInt32(88, true),
    id: v.getUint32(92, true),
    name: getChars(b, 96, 64),
    ttyname: getChars(b, 160, 16),
    uid: v.getUint32(176, true),
    gid: v.getBigInt64(184, true),
    state: v.getUint32(192, true)
  }
}

/** What the kernel mock reports per vcpu: RUNNING (1) for each of ncpus, then STOPPED (0). */
export const vcpuStates = (ncpus: number): Array<number> => Array.from({ length: 64 }, (_, i) => (i < ncpus ? 1 : 0))

/** The fields of a received struct vmd_vm the tests look at (vmd.md §4.5). */
export interface VmdVmView {
  readonly name: string
  readonly ncpus: bigint
  readonly memory: bigint
  readonly ndisks: bigint
  readonly diskbases: ReadonlyArray<number>
  readonly nnics: bigint
  readonly vmcKernel: number
  readonly pid: number
  readonly vmid: number
  readonly vmmid: number
  readonly peerid: number
  readonly kernel: number
  readonly cdrom: number
  readonly disks: ReadonlyArray<ReadonlyArray<number>>
  readonly ifs: ReadonlyArray<number>
  readonly tty: number
  readonly state: number
  readonly ibufFd: number
}

export const readVmdVm = (b: Uint8Array): VmdVmView => {
  if (b.length !== 13352) throw new Error(`vmd_vm of ${b.length} bytes`)
  const v = view(b)
  return {
    name: getChars(b, 4, 64),
    ncpus: v.getBigUint64(96, true),
    memory: v.getBigUint64(2176 + 16, true),
    ndisks: v.getBigUint64(2696, true),
    diskbases: [0, 1, 2, 3].map((i) => v.getUint32(6816 + 4 * i, true)),
    nnics: v.getBigUint64(7856, true),
    vmcKernel: v.getInt32(2688, true),
    pid: v.getInt32(8392, true),
    vmid: v.getUint32(8400, true),
    vmmid: v.getUint32(8404, true),
    peerid: v.getUint32(8408, true),
    kernel: v.getInt32(12784, true),
    cdrom: v.getInt32(12800, true),
    disks: [0, 1, 2, 3].map((i) => [0, 1, 2, 3].map((j) => v.getInt32(12804 + 16 * i + 4 * j, true))),
    ifs: [0, 1, 2, 3].map((i) => v.getInt32(12896 + 56 * i, true)),
    tty: v.getInt32(13112, true),
    state: v.getUint32(13304, true),
    ibufFd: v.getInt32(13136, true)
  }
}

/** A name for messages: "START_VM_RESPONSE" for 10. */
export const typeName = (t: number): string =>
  Object.entries(M).find(([, n]) => n === t)?.[0] ?? `type ${t}`

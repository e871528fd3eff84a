/**
 * Field kinds and the layout tables of every struct the vmm process reads or
 * writes (amd64 LP64, little-endian), exactly as vmd.md §4.1, §4.2, §4.4–§4.6
 * give them. This is the one module that pins the struct ABI (DECISIONS.md);
 * `codec.ts` encodes and decodes any table, `structs.ts` names the results.
 *
 * Every table lists its padding explicitly, so `defineStruct` can check at
 * module load that the fields are contiguous, aligned and end at the
 * documented sizeof; a wrong offset in a table stops the program at import.
 * test/schema/c/layout.c checks the same numbers against gcc.
 */
import {
  ETHER_ADDR_LEN,
  IF_NAMESIZE,
  PATH_MAX,
  SUN_PATH_LEN,
  VM_MAX_BASE_PER_DISK,
  VM_MAX_DISKS_PER_VM,
  VM_MAX_NICS_PER_VM,
  VM_NAME_MAX,
  VM_SEV_NSEGMENTS,
  VM_TTYNAME_MAX,
  VMM_MAX_MEM_RANGES,
  VMM_MAX_NAME_LEN,
  VMM_MAX_VCPUS,
  VMM_MAX_VCPUS_PER_VM
} from "./constants.ts"

// ---------------------------------------------------------------------------
// Field kinds

/** 1- and 4-byte integers, decoded as `number`. */
export interface NumberType<K extends "u8" | "u32" | "i32" = "u8" | "u32" | "i32"> {
  readonly kind: K
  readonly size: number
  readonly align: number
}

/** 8-byte integers (size_t, int64_t, time_t, a pointer value), decoded as `bigint`. */
export interface BigIntType<K extends "u64" | "i64" = "u64" | "i64"> {
  readonly kind: K
  readonly size: 8
  readonly align: 8
}

/**
 * char[N], decoded as a latin1 `string` up to the first NUL. `terminated`:
 * vmd forces byte N-1 to 0 after reading (vmd.md §8), so at most N-1 chars.
 */
export interface CharType {
  readonly kind: "char"
  readonly size: number
  readonly align: 1
  readonly terminated: boolean
}

/** Raw bytes (uint8_t[N], in_addr, in6_addr), decoded as a `Uint8Array` copy. */
export interface BytesType {
  readonly kind: "bytes"
  readonly size: number
  readonly align: number
}

export interface StructType<L extends AnyLayout = AnyLayout> {
  readonly kind: "struct"
  readonly size: number
  readonly align: number
  readonly layout: L
}

export interface ArrayType<E extends FieldType = FieldType> {
  readonly kind: "array"
  readonly size: number
  readonly align: number
  readonly count: number
  readonly elem: E
}

/** A 4-byte int an opaque region must carry (vm_iev.ibuf.fd = -1). */
export interface FixedInt {
  /** Path inside the region, as C spells it ("ibuf.fd"). */
  readonly path: string
  readonly offset: number
  readonly value: number
}

/**
 * A region the port never interprets (pointers, struct event, TAILQ
 * entries): written as zeros (plus `fixed`), ignored on decode, absent from
 * the decoded value.
 */
export interface OpaqueType {
  readonly kind: "opaque"
  readonly size: number
  readonly align: number
  /** The C type, for documentation and the layout check. */
  readonly ctype: string
  readonly fixed: ReadonlyArray<FixedInt>
}

/** Compiler padding: written as zeros, ignored on decode. */
export interface PadType {
  readonly kind: "pad"
  readonly size: number
  readonly align: 1
}

export type FieldType =
  | NumberType
  | BigIntType
  | CharType
  | BytesType
  | StructType
  | ArrayType
  | OpaqueType
  | PadType

export interface Field<N extends string = string, T extends FieldType = FieldType> {
  readonly name: N
  readonly offset: number
  readonly type: T
  /** This field counts the elements of that array field (vmc_ndisks → vmc_disks). */
  readonly countOf?: string
}

export interface StructLayout<F extends ReadonlyArray<Field> = ReadonlyArray<Field>> {
  /** The C struct tag, without "struct". */
  readonly name: string
  readonly sizeof: number
  readonly align: number
  readonly fields: F
}

export type AnyLayout = StructLayout<ReadonlyArray<Field>>

// ---------------------------------------------------------------------------
// Decoded value types, derived from the tables

type Hidden = OpaqueType | PadType

export type ValueOf<T extends FieldType> = T extends NumberType
  ? number
  : T extends BigIntType
    ? bigint
    : T extends CharType
      ? string
      : T extends BytesType
        ? Uint8Array
        : T extends StructType<infer L>
          ? StructValue<L>
          : T extends ArrayType<infer E>
            ? ReadonlyArray<ValueOf<E>>
            : never

/** The decoded value of a struct: one property per non-opaque field, named as in C. */
export type StructValue<L extends AnyLayout> = {
  readonly [F in L["fields"][number] as F["type"] extends Hidden ? never : F["name"]]: ValueOf<F["type"]>
}

// ---------------------------------------------------------------------------
// Constructors

const num = <K extends "u8" | "u32" | "i32">(kind: K, size: number): NumberType<K> => ({ kind, size, align: size })
const big = <K extends "u64" | "i64">(kind: K): BigIntType<K> => ({ kind, size: 8, align: 8 })

export const u8 = num("u8", 1)
/** uint32_t, unsigned int, uid_t, enum. */
export const u32 = num("u32", 4)
/** int, pid_t. */
export const i32 = num("i32", 4)
/** size_t, paddr_t, vaddr_t, a pointer whose value matters. */
export const u64 = big("u64")
/** int64_t, time_t, long. */
export const i64 = big("i64")

export const char = (size: number, termination: "terminated" | "raw"): CharType => ({
  kind: "char",
  size,
  align: 1,
  terminated: termination === "terminated"
})

export const bytes = (size: number, align = 1): BytesType => ({ kind: "bytes", size, align })

export const struct = <L extends AnyLayout>(layout: L): StructType<L> => ({
  kind: "struct",
  size: layout.sizeof,
  align: layout.align,
  layout
})

export const array = <E extends FieldType>(count: number, elem: E): ArrayType<E> => ({
  kind: "array",
  size: count * elem.size,
  align: elem.align,
  count,
  elem
})

export const opaque = (ctype: string, size: number, align: number, fixed: ReadonlyArray<FixedInt> = []): OpaqueType => ({
  kind: "opaque",
  size,
  align,
  ctype,
  fixed
})

/** A pointer the port never follows: 8 zero bytes. */
export const pointer = (ctype: string): OpaqueType => opaque(ctype, 8, 8)

/** TAILQ_ENTRY(x): two pointers. */
export const tailqEntry: OpaqueType = opaque("TAILQ_ENTRY", 16, 8)

export const field = <const N extends string, const T extends FieldType>(
  name: N,
  offset: number,
  type: T,
  options?: { readonly countOf: string }
): Field<N, T> => (options === undefined ? { name, offset, type } : { name, offset, type, countOf: options.countOf })

/** Padding of `size` bytes at `offset`. */
export const pad = (offset: number, size: number): Field<`_pad${number}`, PadType> => ({
  name: `_pad${offset}`,
  offset,
  type: { kind: "pad", size, align: 1 }
})

/** Problems with a table: order, overlap, gaps, alignment, sizeof. Empty when sound. */
export const checkLayout = (layout: AnyLayout): ReadonlyArray<string> => {
  const problems: Array<string> = []
  const names = new Set<string>()
  let end = 0
  let maxAlign = 1
  for (const f of layout.fields) {
    const where = `${layout.name}.${f.name}`
    if (names.has(f.name)) problems.push(`${where}: duplicate name`)
    names.add(f.name)
    if (f.offset !== end) problems.push(`${where}: at ${f.offset}, previous field ends at ${end}`)
    if (f.offset % f.type.align !== 0) problems.push(`${where}: offset ${f.offset} not ${f.type.align}-aligned`)
    maxAlign = Math.max(maxAlign, f.type.align)
    end = f.offset + f.type.size
    if (f.type.kind === "opaque") {
      for (const x of f.type.fixed) {
        if (x.offset < 0 || x.offset + 4 > f.type.size) problems.push(`${where}.${x.path}: outside the region`)
      }
    }
    if (f.countOf !== undefined) {
      const target = layout.fields.find((g) => g.name === f.countOf)
      if (target === undefined || target.type.kind !== "array") problems.push(`${where}: counts no array field`)
    }
  }
  if (end !== layout.sizeof) problems.push(`${layout.name}: fields end at ${end}, sizeof is ${layout.sizeof}`)
  if (maxAlign !== layout.align) problems.push(`${layout.name}: align is ${layout.align}, fields need ${maxAlign}`)
  if (layout.sizeof % layout.align !== 0) problems.push(`${layout.name}: sizeof not a multiple of align`)
  return problems
}

/** A struct table, checked at module load (a bad table is a programming error). */
export const defineStruct = <const F extends ReadonlyArray<Field>>(
  name: string,
  sizeof: number,
  align: number,
  fields: F
): StructLayout<F> => {
  const layout: StructLayout<F> = { name, sizeof, align, fields }
  const problems = checkLayout(layout)
  if (problems.length > 0) throw new Error(`layout table ${name} is wrong:\n  ${problems.join("\n  ")}`)
  return layout
}

/** Offset and size of a C member designator ("vm_ifs[2].vif_fd", "vm_iev.ibuf.fd"), for checks and --trace. */
export const resolvePath = (
  layout: AnyLayout,
  path: string
): { readonly offset: number; readonly size: number } | undefined => {
  const segments = path.split(".")
  let type: FieldType = struct(layout)
  let offset = 0
  for (let i = 0; i < segments.length; i++) {
    if (type.kind === "opaque") {
      const rest = segments.slice(i).join(".")
      const x: FixedInt | undefined = type.fixed.find((y) => y.path === rest)
      return x === undefined ? undefined : { offset: offset + x.offset, size: 4 }
    }
    const m = /^([A-Za-z_]\w*)((?:\[\d+\])*)$/.exec(segments[i] ?? "")
    if (m === null || type.kind !== "struct") return undefined
    const f: Field | undefined = type.layout.fields.find((g) => g.name === m[1] && g.type.kind !== "pad")
    if (f === undefined) return undefined
    offset += f.offset
    type = f.type
    for (const index of Array.from((m[2] ?? "").matchAll(/\d+/g), (x) => Number(x[0]))) {
      if (type.kind !== "array" || index >= type.count) return undefined
      offset += index * type.elem.size
      type = type.elem
    }
  }
  return { offset, size: type.size }
}

// ---------------------------------------------------------------------------
// The tables. Offsets are written out (not computed) so each line can be read
// against vmd.md; `defineStruct` proves they are consistent.

/** struct timeval (16, 8). */
export const TIMEVAL = defineStruct("timeval", 16, 8, [
  field("tv_sec", 0, i64),
  field("tv_usec", 8, i64)
])

/** struct vm_mem_range (32, 8), K11. */
export const VM_MEM_RANGE = defineStruct("vm_mem_range", 32, 8, [
  field("vmr_gpa", 0, u64),
  field("vmr_va", 8, u64),
  field("vmr_size", 16, u64),
  field("vmr_type", 24, i32),
  pad(28, 4)
])

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

/** struct local_prefix (40, 4), §4.1; addresses in network byte order, kept as bytes. */
export const LOCAL_PREFIX = defineStruct("local_prefix", 40, 4, [
  field("lp_in", 0, bytes(4, 4)),
  field("lp_mask", 4, bytes(4, 4)),
  field("lp_in6", 8, bytes(16, 4)),
  field("lp_mask6", 24, bytes(16, 4))
])

/** struct vmd_agentx (144, 4), §4.1. */
export const VMD_AGENTX = defineStruct("vmd_agentx", 144, 4, [
  field("ax_enabled", 0, i32),
  field("ax_path", 4, char(SUN_PATH_LEN, "terminated")),
  field("ax_context", 108, char(33, "terminated")),
  pad(141, 3)
])

/** struct vmd_config (216, 8), §4.1. */
export const VMD_CONFIG = defineStruct("vmd_config", 216, 8, [
  field("cfg_flags", 0, u32),
  pad(4, 4),
  field("delay", 8, struct(TIMEVAL)),
  field("parallelism", 24, i32),
  field("cfg_localprefix", 28, struct(LOCAL_PREFIX)),
  field("cfg_agentx", 68, struct(VMD_AGENTX)),
  pad(212, 4)
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

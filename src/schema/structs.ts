/**
 * The structs of vmd.md §4 as typed values, with their codecs. Property
 * names are the C field names. 8-byte integers are bigint; char[N] is a
 * latin1 string; uint8_t[N] and addresses are Uint8Array.
 *
 * For each struct X: `decodeX(bytes)` (exact sizeof, NUL-terminates like the
 * vmd *_read helpers), `encodeX(value)`, `emptyX()` (all zeros) and `XCodec`.
 */
import { Either } from "effect"
import { boundedCount, checkCounts, decodeArray, encodeArray, makeCodec, SchemaError } from "./codec.ts"
import type { Codec } from "./codec.ts"
import { VM_MAX_DISKS_PER_VM, VM_MAX_NICS_PER_VM, VMM_MAX_MEM_RANGES } from "./constants.ts"
import {
  defineStruct,
  field,
  i32,
  LOCAL_PREFIX,
  TIMEVAL,
  u32,
  VM_CREATE_PARAMS,
  VM_INFO_PARAMS,
  VM_INFO_RESULT,
  VM_MEM_RANGE,
  VM_TERMINATE_PARAMS,
  VMD_AGENTX,
  VMD_CONFIG,
  VMD_IF,
  VMD_VM,
  VMOP_ADDR_REQ,
  VMOP_ADDR_RESULT,
  VMOP_CREATE_PARAMS,
  VMOP_ID,
  VMOP_INFO_RESULT,
  VMOP_OWNER,
  VMOP_RESULT
} from "./layout.ts"
import type { StructValue } from "./layout.ts"

/** sizeof of every struct (amd64), from the layout tables. */
export const SIZEOF = {
  timeval: TIMEVAL.sizeof,
  vm_mem_range: VM_MEM_RANGE.sizeof,
  vmop_result: VMOP_RESULT.sizeof,
  vmop_id: VMOP_ID.sizeof,
  vmop_info_result: VMOP_INFO_RESULT.sizeof,
  vmop_addr_req: VMOP_ADDR_REQ.sizeof,
  vmop_addr_result: VMOP_ADDR_RESULT.sizeof,
  vmop_owner: VMOP_OWNER.sizeof,
  local_prefix: LOCAL_PREFIX.sizeof,
  vmd_agentx: VMD_AGENTX.sizeof,
  vmd_config: VMD_CONFIG.sizeof,
  vmop_create_params: VMOP_CREATE_PARAMS.sizeof,
  vmd_if: VMD_IF.sizeof,
  vmd_vm: VMD_VM.sizeof,
  vm_info_result: VM_INFO_RESULT.sizeof,
  vm_info_params: VM_INFO_PARAMS.sizeof,
  vm_terminate_params: VM_TERMINATE_PARAMS.sizeof,
  vm_create_params: VM_CREATE_PARAMS.sizeof,
  int: 4
} as const

/** START_VM_RESPONSE, *_RESPONSE, TERMINATE_VM_EVENT payload (28). */
export interface VmopResult extends StructValue<typeof VMOP_RESULT> {}
export const VmopResultCodec: Codec<VmopResult> = makeCodec(VMOP_RESULT)
export const decodeVmopResult = VmopResultCodec.decode
export const encodeVmopResult = VmopResultCodec.encode
export const emptyVmopResult = VmopResultCodec.empty

/** PAUSE/UNPAUSE/TERMINATE_VM_REQUEST payload (76). */
export interface VmopId extends StructValue<typeof VMOP_ID> {}
export const VmopIdCodec: Codec<VmopId> = makeCodec(VMOP_ID)
export const decodeVmopId = VmopIdCodec.decode
export const encodeVmopId = VmopIdCodec.encode
export const emptyVmopId = VmopIdCodec.empty

/** GET_INFO_VM_DATA payload (200). */
export interface VmopInfoResult extends StructValue<typeof VMOP_INFO_RESULT> {}
export const VmopInfoResultCodec: Codec<VmopInfoResult> = makeCodec(VMOP_INFO_RESULT)
export const decodeVmopInfoResult = VmopInfoResultCodec.decode
export const encodeVmopInfoResult = VmopInfoResultCodec.encode
export const encodeVmopInfoResultInto = VmopInfoResultCodec.encodeInto
export const emptyVmopInfoResult = VmopInfoResultCodec.empty

/** PRIV_GET_ADDR payload (8). */
export interface VmopAddrReq extends StructValue<typeof VMOP_ADDR_REQ> {}
export const VmopAddrReqCodec: Codec<VmopAddrReq> = makeCodec(VMOP_ADDR_REQ)
export const decodeVmopAddrReq = VmopAddrReqCodec.decode
export const encodeVmopAddrReq = VmopAddrReqCodec.encode
export const emptyVmopAddrReq = VmopAddrReqCodec.empty

/** PRIV_GET_ADDR_RESPONSE payload (16). */
export interface VmopAddrResult extends StructValue<typeof VMOP_ADDR_RESULT> {}
export const VmopAddrResultCodec: Codec<VmopAddrResult> = makeCodec(VMOP_ADDR_RESULT)
export const decodeVmopAddrResult = VmopAddrResultCodec.decode
export const encodeVmopAddrResult = VmopAddrResultCodec.encode
export const emptyVmopAddrResult = VmopAddrResultCodec.empty

export interface VmopOwner extends StructValue<typeof VMOP_OWNER> {}
export const VmopOwnerCodec: Codec<VmopOwner> = makeCodec(VMOP_OWNER)
export const decodeVmopOwner = VmopOwnerCodec.decode
export const encodeVmopOwner = VmopOwnerCodec.encode
export const emptyVmopOwner = VmopOwnerCodec.empty

/** Written to the VM child after struct vmd_vm (40). */
export interface LocalPrefix extends StructValue<typeof LOCAL_PREFIX> {}
export const LocalPrefixCodec: Codec<LocalPrefix> = makeCodec(LOCAL_PREFIX)
export const decodeLocalPrefix = LocalPrefixCodec.decode
export const encodeLocalPrefix = LocalPrefixCodec.encode
export const emptyLocalPrefix = LocalPrefixCodec.empty

export interface VmdAgentx extends StructValue<typeof VMD_AGENTX> {}
export const VmdAgentxCodec: Codec<VmdAgentx> = makeCodec(VMD_AGENTX)
export const decodeVmdAgentx = VmdAgentxCodec.decode
export const encodeVmdAgentx = VmdAgentxCodec.encode
export const emptyVmdAgentx = VmdAgentxCodec.empty

/** CONFIG payload (216). */
export interface VmdConfig extends StructValue<typeof VMD_CONFIG> {}
export const VmdConfigCodec: Codec<VmdConfig> = makeCodec(VMD_CONFIG)
export const decodeVmdConfig = VmdConfigCodec.decode
export const encodeVmdConfig = VmdConfigCodec.encode
export const emptyVmdConfig = VmdConfigCodec.empty

export interface Timeval extends StructValue<typeof TIMEVAL> {}
export const TimevalCodec: Codec<Timeval> = makeCodec(TIMEVAL)

export interface VmMemRange extends StructValue<typeof VM_MEM_RANGE> {}
export const VmMemRangeCodec: Codec<VmMemRange> = makeCodec(VM_MEM_RANGE)
export const decodeVmMemRange = VmMemRangeCodec.decode
export const encodeVmMemRange = VmMemRangeCodec.encode
export const emptyVmMemRange = VmMemRangeCodec.empty

/** START_VM_REQUEST payload (8392). */
export interface VmopCreateParams extends StructValue<typeof VMOP_CREATE_PARAMS> {}
export const VmopCreateParamsCodec: Codec<VmopCreateParams> = makeCodec(VMOP_CREATE_PARAMS)
export const decodeVmopCreateParams = VmopCreateParamsCodec.decode
export const encodeVmopCreateParams = VmopCreateParamsCodec.encode
export const emptyVmopCreateParams = VmopCreateParamsCodec.empty

export interface VmdIf extends StructValue<typeof VMD_IF> {}

/**
 * struct vmd_vm (13352), written raw to the VM child. Encoding zeroes the
 * pointers, TAILQ entries and vm_iev, and puts -1 in vm_iev.ibuf.fd.
 */
export interface VmdVm extends StructValue<typeof VMD_VM> {}
export const VmdVmCodec: Codec<VmdVm> = makeCodec(VMD_VM)
export const decodeVmdVm = VmdVmCodec.decode
export const encodeVmdVm = VmdVmCodec.encode
export const emptyVmdVm = VmdVmCodec.empty

/** Kernel struct vm_info_result (160); compatible with services/VmmDevice.ts VmInfo. */
export interface VmInfoResult extends StructValue<typeof VM_INFO_RESULT> {}
export const VmInfoResultCodec: Codec<VmInfoResult> = makeCodec(VM_INFO_RESULT)
export const decodeVmInfoResult = VmInfoResultCodec.decode
export const encodeVmInfoResult = VmInfoResultCodec.encode
export const emptyVmInfoResult = VmInfoResultCodec.empty

/** Kernel struct vm_info_params (24), the VMM_IOC_INFO argument; vip_info is a user address. */
export interface VmInfoParams extends StructValue<typeof VM_INFO_PARAMS> {}
export const VmInfoParamsCodec: Codec<VmInfoParams> = makeCodec(VM_INFO_PARAMS)
export const decodeVmInfoParams = VmInfoParamsCodec.decode
export const encodeVmInfoParams = VmInfoParamsCodec.encode
export const emptyVmInfoParams = VmInfoParamsCodec.empty

/** Kernel struct vm_terminate_params (4), the VMM_IOC_TERM argument. */
export interface VmTerminateParams extends StructValue<typeof VM_TERMINATE_PARAMS> {}
export const VmTerminateParamsCodec: Codec<VmTerminateParams> = makeCodec(VM_TERMINATE_PARAMS)

/** Every struct's codec above, for what goes over all of them (the codec tests, bench-codec). */
export const ALL_CODECS: ReadonlyArray<Codec<unknown>> = [
  VmopResultCodec,
  VmopIdCodec,
  VmopInfoResultCodec,
  VmopAddrReqCodec,
  VmopAddrResultCodec,
  VmopOwnerCodec,
  LocalPrefixCodec,
  VmdAgentxCodec,
  VmdConfigCodec,
  TimevalCodec,
  VmMemRangeCodec,
  VmopCreateParamsCodec,
  VmdVmCodec,
  VmInfoResultCodec,
  VmInfoParamsCodec,
  VmTerminateParamsCodec
] as ReadonlyArray<Codec<unknown>>
export const decodeVmTerminateParams = VmTerminateParamsCodec.decode
export const encodeVmTerminateParams = VmTerminateParamsCodec.encode
export const emptyVmTerminateParams = VmTerminateParamsCodec.empty

// ---------------------------------------------------------------------------
// 4-byte int / unsigned int payloads (proc.c imsg_int_read / imsg_uint_read)

const IntCodec = makeCodec(defineStruct("int", 4, 4, [field("value", 0, i32)]))
const UintCodec = makeCodec(defineStruct("unsigned int", 4, 4, [field("value", 0, u32)]))

// The four helpers below are what IntCodec / UintCodec give (decode then
// .value; encode of { value }), with the common case written out: these run
// on every CTL_VERBOSE, START_VM_DISK/IF and GET_INFO_VM_END_DATA. Errors
// still come from the codecs, so they are the same SchemaErrors.
const le32 = (b: Uint8Array): number => (b[0] as number) | ((b[1] as number) << 8) | ((b[2] as number) << 16) | ((b[3] as number) << 24)
const int32Bytes = (value: number): Uint8Array => {
  const out = new Uint8Array(4)
  out[0] = value
  out[1] = value >> 8
  out[2] = value >> 16
  out[3] = value >> 24
  return out
}

/** CTL_VERBOSE, GET_INFO_VM_END_DATA: exactly 4 bytes, host order. */
export const imsgIntRead = (bytes: Uint8Array): Either.Either<number, SchemaError> =>
  bytes.length === 4 ? Either.right(le32(bytes)) : Either.map(IntCodec.decode(bytes), (x) => x.value)
/** CTL_RESET mode, START_VM_DISK / START_VM_IF index: exactly 4 bytes. */
export const imsgUintRead = (bytes: Uint8Array): Either.Either<number, SchemaError> =>
  bytes.length === 4 ? Either.right(le32(bytes) >>> 0) : Either.map(UintCodec.decode(bytes), (x) => x.value)
export const encodeImsgInt = (value: number): Either.Either<Uint8Array, SchemaError> =>
  typeof value === "number" && (value | 0) === value ? Either.right(int32Bytes(value)) : IntCodec.encode({ value })
export const encodeImsgUint = (value: number): Either.Either<Uint8Array, SchemaError> =>
  typeof value === "number" && value >>> 0 === value ? Either.right(int32Bytes(value)) : UintCodec.encode({ value })
/** Short names for the same four functions. */
export const decodeInt = imsgIntRead
export const decodeUint = imsgUintRead
export const encodeInt = encodeImsgInt
export const encodeUint = encodeImsgUint

// ---------------------------------------------------------------------------
// Counts used as array bounds

/** vmc_ndisks as a loop bound: ≤ VM_MAX_DISKS_PER_VM else SchemaError. */
export const vmcDiskCount = (p: VmopCreateParams): Either.Either<number, SchemaError> =>
  boundedCount(VMOP_CREATE_PARAMS.name, "vmc_ndisks", p.vmc_ndisks, VM_MAX_DISKS_PER_VM)
/** vmc_nnics as a loop bound: ≤ VM_MAX_NICS_PER_VM else SchemaError. */
export const vmcNicCount = (p: VmopCreateParams): Either.Either<number, SchemaError> =>
  boundedCount(VMOP_CREATE_PARAMS.name, "vmc_nnics", p.vmc_nnics, VM_MAX_NICS_PER_VM)
/** vmc_nmemranges as a loop bound: ≤ VMM_MAX_MEM_RANGES else SchemaError. */
export const vmcMemRangeCount = (p: VmopCreateParams): Either.Either<number, SchemaError> =>
  boundedCount(VMOP_CREATE_PARAMS.name, "vmc_nmemranges", p.vmc_nmemranges, VMM_MAX_MEM_RANGES)

/** All counts of a create request within their arrays (returns it unchanged). */
export const checkVmopCreateParams = (p: VmopCreateParams): Either.Either<VmopCreateParams, SchemaError> =>
  checkCounts(VMOP_CREATE_PARAMS, p)
/** All counts of a vmd_vm (its vm_params and vm_sev_nmemsegments) within their arrays. */
export const checkVmdVm = (vm: VmdVm): Either.Either<VmdVm, SchemaError> => checkCounts(VMD_VM, vm)

/**
 * The VMM_IOC_INFO result buffer: vip_size / 160 entries (vmm.c get_info_vm).
 * vip_size must be a multiple of 160 and within the buffer.
 */
export const decodeVmInfoResults = (
  buffer: Uint8Array,
  vip_size: bigint
): Either.Either<ReadonlyArray<VmInfoResult>, SchemaError> => {
  const one = BigInt(VM_INFO_RESULT.sizeof)
  if (vip_size < 0n || vip_size % one !== 0n) {
    return Either.left(
      new SchemaError({ struct: VM_INFO_PARAMS.name, field: "vip_size", message: `${vip_size} is not a multiple of ${one}` })
    )
  }
  if (vip_size > BigInt(buffer.length)) {
    return Either.left(
      new SchemaError({
        struct: VM_INFO_PARAMS.name,
        field: "vip_size",
        message: `${vip_size} exceeds the ${buffer.length}-byte vip_info buffer`
      })
    )
  }
  return decodeArray(VmInfoResultCodec, buffer.subarray(0, Number(vip_size)))
}

/** The buffer a VMM_IOC_INFO fills (for the in-memory device). */
export const encodeVmInfoResults = (entries: ReadonlyArray<VmInfoResult>): Either.Either<Uint8Array, SchemaError> =>
  encodeArray(VmInfoResultCodec, entries)

/**
 * A dedicated encoder of struct vmop_info_result (200, 8) that writes into a
 * caller's buffer at an offset, for get_info_vm's reply per VM: with 512 VMs
 * the general codec's fresh 200-byte Uint8Array per VM (an off-heap buffer
 * each, as it is over 64 bytes) dominated the encoding cost. Here a whole
 * reply batch shares one buffer.
 *
 * It writes exactly the bytes `encodeVmopInfoResult` gives (proved on random
 * values by test/schema/vmopInfoResultInto.test.ts). For any value outside
 * its fast path (a wrong type, a value out of range, a string that does not
 * fit or is not latin1, ...) it defers to the codec, so a value that does
 * not encode gets the codec's very SchemaError.
 */
import { Either } from "effect"
import type { SchemaError } from "./codec.ts"
import { encodeVmopInfoResult, VmopInfoResultCodec, type VmopInfoResult } from "./structs.ts"

/** sizeof(struct vmop_info_result) */
export const VMOP_INFO_RESULT_SIZE = 200

if (VmopInfoResultCodec.sizeof !== VMOP_INFO_RESULT_SIZE) throw new Error("vmop_info_result: layout size changed")

// Offsets of struct vmop_info_result (layouts/kernel.ts, layouts/vmop.ts).
const MEMORY_SIZE = 0
const USED_SIZE = 8
const NCPUS = 16
const VCPU_STATE = 24
const VCPU_STATE_LEN = 64
const CREATOR_PID = 88
const ID = 92
const NAME = 96
const NAME_LEN = 64
const TTYNAME = 160
const TTYNAME_LEN = 16
const UID = 176
const GID = 184
const STATE = 192

const U64_MAX = 0xffffffffffffffffn
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER)
const I64_MIN = -0x8000000000000000n
const I64_MAX = 0x7fffffffffffffffn
const TWO32 = 4294967296

const scratch = new Uint8Array(8)
const scratchView = new DataView(scratch.buffer)

const put32 = (U: Uint8Array, at: number, v: number): void => {
  U[at] = v
  U[at + 1] = v >>> 8
  U[at + 2] = v >>> 16
  U[at + 3] = v >>> 24
}

/** A non-zero bigint in range, little-endian; below 2^53 through a double (no bigint arithmetic). */
const put64 = (U: Uint8Array, at: number, v: bigint, signed: boolean): void => {
  if (v > 0n && v <= SAFE_MAX) {
    const n = Number(v)
    const lo = n >>> 0
    put32(U, at, lo)
    put32(U, at + 4, (n - lo) / TWO32)
    return
  }
  if (signed) scratchView.setBigInt64(0, v, true)
  else scratchView.setBigUint64(0, v, true)
  for (let i = 0; i < 8; i++) U[at + i] = scratch[i]!
}

/** Latin1 chars of s, at most max, NUL-free; false if it cannot (the codec's error case). */
const putChars = (U: Uint8Array, at: number, s: string, max: number): boolean => {
  const n = s.length
  if (n > max) return false
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i)
    if (c === 0 || c > 0xff) return false
    U[at + i] = c
  }
  return true
}

const isU32 = (v: unknown): v is number => typeof v === "number" && v >>> 0 === v
const isI32 = (v: unknown): v is number => typeof v === "number" && (v | 0) === v
const isU64 = (v: unknown): v is bigint => typeof v === "bigint" && v >= 0n && v <= U64_MAX
const isI64 = (v: unknown): v is bigint => typeof v === "bigint" && v >= I64_MIN && v <= I64_MAX

/** The fast path: true once every byte of the region is written, false for a value the codec must judge. */
const tryEncode = (value: VmopInfoResult, U: Uint8Array, b: number): boolean => {
  const memory = value.vir_memory_size
  const used = value.vir_used_size
  const ncpus = value.vir_ncpus
  const vcpu = value.vir_vcpu_state
  const pid = value.vir_creator_pid
  const id = value.vir_id
  const name = value.vir_name
  const tty = value.vir_ttyname
  const uid = value.vir_uid
  const gid = value.vir_gid
  const state = value.vir_state
  if (!isU64(memory) || !isU64(used) || !isU64(ncpus) || !isI32(pid) || !isU32(id) || !isU32(uid) || !isI64(gid) || !isU32(state))
    return false
  if (!(vcpu instanceof Uint8Array) || vcpu.length > VCPU_STATE_LEN) return false
  if (typeof name !== "string" || typeof tty !== "string") return false
  U.fill(0, b, b + VMOP_INFO_RESULT_SIZE)
  if (!putChars(U, b + NAME, name, NAME_LEN - 1) || !putChars(U, b + TTYNAME, tty, TTYNAME_LEN - 1)) return false
  if (memory) put64(U, b + MEMORY_SIZE, memory, false)
  if (used) put64(U, b + USED_SIZE, used, false)
  if (ncpus) put64(U, b + NCPUS, ncpus, false)
  if (vcpu.length !== 0) U.set(vcpu, b + VCPU_STATE)
  if (pid !== 0) put32(U, b + CREATOR_PID, pid)
  if (id !== 0) put32(U, b + ID, id)
  if (uid !== 0) put32(U, b + UID, uid)
  if (gid) put64(U, b + GID, gid, true)
  if (state !== 0) put32(U, b + STATE, state)
  return true
}

/**
 * Write `value` as struct vmop_info_result at target[offset, offset + 200):
 * the bytes of `encodeVmopInfoResult(value)`. Returns undefined, or the
 * codec's SchemaError for a value that does not encode (the region's
 * contents are then unspecified). A RangeError if the region does not fit.
 */
export const encodeVmopInfoResultInto = (value: VmopInfoResult, target: Uint8Array, offset: number): SchemaError | undefined => {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + VMOP_INFO_RESULT_SIZE > target.length)
    throw new RangeError(`vmop_info_result at ${offset} does not fit ${target.length} bytes`)
  if (typeof value === "object" && value !== null && tryEncode(value, target, offset)) return undefined
  const r = encodeVmopInfoResult(value)
  if (Either.isLeft(r)) return r.left
  target.set(r.right, offset)
  return undefined
}

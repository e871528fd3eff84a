/**
 * Encoding the replies vmm builds itself. Their values come from us, not
 * from a peer, so a value that fails to encode is a bug: a defect, which the
 * dispatcher logs without taking the process down.
 */
import { Either } from "effect"
import type { SchemaError } from "../schema/codec.ts"
import { resolvePath, VMOP_RESULT } from "../schema/layout.ts"
import { encodeImsgInt, encodeLocalPrefix, type LocalPrefix } from "../schema/structs.ts"

export const orDie = (e: Either.Either<Uint8Array, SchemaError>): Uint8Array =>
  Either.getOrThrowWith(e, (err) => new Error(`encode ${err.struct}.${err.field}: ${err.message}`))

const offsetOf = (name: string): number => {
  const at = resolvePath(VMOP_RESULT, name)
  if (at === undefined) throw new Error(`vmop_result has no field ${name}`)
  return at.offset
}
const VMR_RESULT = offsetOf("vmr_result")
const VMR_ID = offsetOf("vmr_id")
const VMR_PID = offsetOf("vmr_pid")

/**
 * struct vmop_result {res, id, pid, ttyname ""}, written at the layout's
 * offsets (the empty ttyname is the zeroed bytes it starts as): the bytes
 * encodeVmopResult gives for the same values (test/vmm/replyBytes.test.ts), without
 * its checks and Either, which cost ~15 µs of cold code on the path of
 * TERMINATE_VM_EVENT. `res` and `pid` are C ints, `id` a uint32_t.
 */
export const vmopResultBytes = (res: number, id: number, pid: number): Uint8Array => {
  const b = new Uint8Array(VMOP_RESULT.sizeof)
  const dv = new DataView(b.buffer)
  dv.setInt32(VMR_RESULT, res, true)
  dv.setUint32(VMR_ID, id >>> 0, true)
  dv.setInt32(VMR_PID, pid, true)
  return b
}

export const intBytes = (n: number): Uint8Array => orDie(encodeImsgInt(n))

export const localPrefixBytes = (lp: LocalPrefix): Uint8Array => orDie(encodeLocalPrefix(lp))

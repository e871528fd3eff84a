/**
 * Encoding the replies vmm builds itself. Their values come from us, not
 * from a peer, so a value that fails to encode is a bug: a defect, which the
 * dispatcher logs without taking the process down.
 */
import { Either } from "effect"
import type { SchemaError } from "../schema/codec.ts"
import { encodeImsgInt, encodeLocalPrefix, encodeVmopResult, type LocalPrefix } from "../schema/structs.ts"

export const orDie = (e: Either.Either<Uint8Array, SchemaError>): Uint8Array =>
  Either.getOrThrowWith(e, (err) => new Error(`encode ${err.struct}.${err.field}: ${err.message}`))

/** struct vmop_result {res, id, pid, ttyname ""} */
export const vmopResultBytes = (res: number, id: number, pid: number): Uint8Array =>
  orDie(encodeVmopResult({ vmr_result: res, vmr_id: id >>> 0, vmr_pid: pid, vmr_ttyname: "" }))

export const intBytes = (n: number): Uint8Array => orDie(encodeImsgInt(n))

export const localPrefixBytes = (lp: LocalPrefix): Uint8Array => orDie(encodeLocalPrefix(lp))

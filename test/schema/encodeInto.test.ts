/**
 * The compiled codec's encodeInto (encodeVmopInfoResultInto, what
 * get_info_vm writes its replies with) against its encode: on random valid
 * values written at a random offset of a buffer full of junk, the same 200
 * bytes and nothing outside them touched; on values with junk in one field,
 * the same SchemaError (struct, field, message).
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import fc from "fast-check"
import { encodeVmopInfoResult, encodeVmopInfoResultInto, SIZEOF, type VmopInfoResult } from "../../src/schema/structs.ts"

const VMOP_INFO_RESULT_SIZE = SIZEOF.vmop_info_result

const latin1 = fc.integer({ min: 1, max: 0xff }).map((c) => String.fromCharCode(c))
const chars = (size: number) =>
  fc.oneof(
    fc.string({ unit: latin1, maxLength: size - 1 }),
    fc.string({ unit: latin1, minLength: size - 1, maxLength: size - 1 }),
    fc.string({ unit: fc.constantFrom("a", "Z", "0", "-", "_", "."), maxLength: size - 1 }),
    fc.constant("")
  )
const u64 = fc.oneof(
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.bigInt({ min: 0n, max: 2n ** 53n + 8n }),
  fc.bigInt({ min: 0n, max: 2n ** 40n }),
  fc.constantFrom(0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 64n - 1n)
)
const i64 = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.bigInt({ min: -(2n ** 54n), max: 2n ** 54n }),
  fc.constantFrom(0n, -1n, 1n, -(2n ** 63n), 2n ** 63n - 1n, 2n ** 53n - 1n, -(2n ** 53n), 2n ** 32n)
)
const u32 = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(0, -0, 1, 0xffffffff))
const i32 = fc.oneof(fc.integer({ min: -0x80000000, max: 0x7fffffff }), fc.constantFrom(0, -0, -1, -0x80000000, 0x7fffffff))
const vcpu = fc.oneof(
  fc.uint8Array({ minLength: 64, maxLength: 64 }),
  fc.uint8Array({ maxLength: 64 }),
  fc.constant(new Uint8Array(64)),
  fc.uint8Array({ minLength: 64, maxLength: 64 }).map((b) => Buffer.from(b)),
  // a view into a larger buffer
  fc.uint8Array({ minLength: 70, maxLength: 90 }).map((b) => b.subarray(3, 67))
)

const goodFields = {
  vir_memory_size: u64,
  vir_used_size: u64,
  vir_ncpus: u64,
  vir_vcpu_state: vcpu,
  vir_creator_pid: i32,
  vir_id: u32,
  vir_name: chars(64),
  vir_ttyname: chars(16),
  vir_uid: u32,
  vir_gid: i64,
  vir_state: u32
}
const good = fc.record(goodFields) as fc.Arbitrary<VmopInfoResult>

const junk = fc.oneof(
  fc.anything(),
  fc.constantFrom<unknown>(null, undefined, "", "0", 0, 1.5, -1, NaN, Infinity, 2 ** 53, 2 ** 64, 0n, -1n, 2n ** 64n, -(2n ** 63n) - 1n, 2n ** 63n, 2n ** 70n, [], {}, new Uint8Array(65), true),
  fc.string({ unit: latin1, minLength: 64, maxLength: 66 }),
  fc.string({ unit: latin1, minLength: 16, maxLength: 17 }),
  fc.constantFrom("a\0b", "\u0100", "vm\u2603", "\u{1f600}", "x".repeat(63) + "\u0100")
)

/** A valid value with junk in one field, or a missing field. */
const bad = fc
  .tuple(good, fc.constantFrom(...Object.keys(goodFields)), junk, fc.boolean())
  .map(([v, key, j, drop]) => {
    const out: Record<string, unknown> = { ...v }
    if (drop) delete out[key]
    else out[key] = j
    return out as unknown as VmopInfoResult
  })

const placed = <A>(value: fc.Arbitrary<A>) =>
  fc.tuple(value, fc.nat({ max: 3 }), fc.nat({ max: 16 }), fc.integer({ min: 0, max: 255 }))

describe("encodeVmopInfoResultInto", () => {
  it("writes exactly the codec's bytes, and only its 200 bytes", () => {
    fc.assert(
      fc.property(placed(good), ([value, slot, extra, fill]) => {
        const expected = Either.getOrThrow(encodeVmopInfoResult(value))
        const offset = slot * VMOP_INFO_RESULT_SIZE + extra
        const target = new Uint8Array(offset + VMOP_INFO_RESULT_SIZE + 7).fill(fill)
        expect(encodeVmopInfoResultInto(value, target, offset)).toBeUndefined()
        expect(target.subarray(offset, offset + VMOP_INFO_RESULT_SIZE)).toEqual(expected)
        expect(target.subarray(0, offset).every((b) => b === fill)).toBe(true)
        expect(target.subarray(offset + VMOP_INFO_RESULT_SIZE).every((b) => b === fill)).toBe(true)
      }),
      { numRuns: 2000 }
    )
  })

  it("gives the codec's result for values with junk in them (the same error, or the same bytes)", () => {
    fc.assert(
      fc.property(placed(bad), ([value, slot, extra, fill]) => {
        const expected = encodeVmopInfoResult(value)
        const offset = slot * VMOP_INFO_RESULT_SIZE + extra
        const target = new Uint8Array(offset + VMOP_INFO_RESULT_SIZE).fill(fill)
        const got = encodeVmopInfoResultInto(value, target, offset)
        if (Either.isLeft(expected)) {
          expect(got).toBeDefined()
          expect({ struct: got!.struct, field: got!.field, message: got!.message }).toEqual({
            struct: expected.left.struct,
            field: expected.left.field,
            message: expected.left.message
          })
        } else {
          expect(got).toBeUndefined()
          expect(target.subarray(offset, offset + VMOP_INFO_RESULT_SIZE)).toEqual(expected.right)
        }
      }),
      { numRuns: 2000 }
    )
  })

  it("refuses a region that does not fit", () => {
    const v: VmopInfoResult = {
      vir_memory_size: 1n,
      vir_used_size: 2n,
      vir_ncpus: 1n,
      vir_vcpu_state: new Uint8Array(64),
      vir_creator_pid: 5,
      vir_id: 1,
      vir_name: "vm",
      vir_ttyname: "",
      vir_uid: 0,
      vir_gid: 0n,
      vir_state: 0
    }
    expect(() => encodeVmopInfoResultInto(v, new Uint8Array(199), 0)).toThrow(RangeError)
    expect(() => encodeVmopInfoResultInto(v, new Uint8Array(400), 201)).toThrow(RangeError)
    expect(() => encodeVmopInfoResultInto(v, new Uint8Array(400), -1)).toThrow(RangeError)
    expect(encodeVmopInfoResultInto(v, new Uint8Array(400), 200)).toBeUndefined()
  })
})

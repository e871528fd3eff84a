/**
 * Properties of every struct codec: decode(encode(x)) = x for valid values;
 * encode(decode(b)) is b with the non-semantic bytes canonicalised (padding,
 * opaque regions, bytes after a string's NUL), so canonical bytes survive
 * exactly; decoding anything and encoding anything never throws.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import fc from "fast-check"
import type { Codec } from "../../src/schema/codec.ts"
import { struct } from "../../src/schema/layout.ts"
import type { FieldType } from "../../src/schema/layout.ts"
import * as S from "../../src/schema/structs.ts"

/** Valid values of a field kind, straight from the table. */
const arbitraryOf = (t: FieldType): fc.Arbitrary<unknown> => {
  switch (t.kind) {
    case "u8":
      return fc.integer({ min: 0, max: 0xff })
    case "u32":
      return fc.integer({ min: 0, max: 0xffffffff })
    case "i32":
      return fc.integer({ min: -0x80000000, max: 0x7fffffff })
    case "u64":
      return fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
    case "i64":
      return fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })
    case "char":
      return fc.string({
        unit: fc.integer({ min: 1, max: 0xff }).map((c) => String.fromCharCode(c)),
        maxLength: t.terminated ? t.size - 1 : t.size
      })
    case "bytes":
      return fc.uint8Array({ minLength: t.size, maxLength: t.size })
    case "struct":
      return fc.record(
        Object.fromEntries(
          t.layout.fields.filter((f) => f.type.kind !== "pad" && f.type.kind !== "opaque").map((f) => [f.name, arbitraryOf(f.type)])
        )
      )
    case "array":
      return fc.array(arbitraryOf(t.elem), { minLength: t.count, maxLength: t.count })
    case "opaque":
    case "pad":
      return fc.constant(undefined)
  }
}

/** What encode(decode(b)) must give: b with padding/opaque zeroed (fixed ints set) and string tails cleared. */
const canonical = (codec: Codec<unknown>, b: Uint8Array): Uint8Array => {
  const c = b.slice()
  const view = new DataView(c.buffer)
  const walk = (t: FieldType, at: number): void => {
    switch (t.kind) {
      case "pad":
        c.fill(0, at, at + t.size)
        return
      case "opaque":
        c.fill(0, at, at + t.size)
        for (const x of t.fixed) view.setInt32(at + x.offset, x.value, true)
        return
      case "char": {
        const limit = t.terminated ? t.size - 1 : t.size
        let n = 0
        while (n < limit && c[at + n] !== 0) n++
        c.fill(0, at + n, at + t.size)
        return
      }
      case "struct":
        for (const f of t.layout.fields) walk(f.type, at + f.offset)
        return
      case "array":
        for (let i = 0; i < t.count; i++) walk(t.elem, at + i * t.elem.size)
        return
      default:
        return
    }
  }
  walk(struct(codec.layout), 0)
  return c
}

const big = new Set(["vmop_create_params", "vmd_vm", "vm_create_params"])

const properties = <A>(codec: Codec<A>): void => {
  const name = codec.layout.name
  const numRuns = big.has(name) ? 15 : 100
  const values = arbitraryOf(struct(codec.layout)) as fc.Arbitrary<A>
  // Codec<A> only differs from Codec<unknown> in encode's parameter.
  const loose = codec as unknown as Codec<unknown>

  describe(name, () => {
    it("decode(encode(x)) equals x for every valid value", () => {
      fc.assert(
        fc.property(values, (x) => {
          const bytes = codec.encode(x)
          expect(Either.isRight(bytes)).toBe(true)
          if (Either.isRight(bytes)) expect(codec.decode(bytes.right)).toEqual(Either.right(x))
        }),
        { numRuns }
      )
    })

    it("encode(decode(b)) equals b with only padding, opaque bytes and string tails canonicalised", () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: codec.sizeof, maxLength: codec.sizeof }), (b) => {
          const want = canonical(loose, b)
          const again = Either.flatMap(codec.decode(b), codec.encode)
          expect(again).toEqual(Either.right(want))
          expect(Either.flatMap(codec.decode(want), codec.encode)).toEqual(Either.right(want))
        }),
        { numRuns }
      )
    })

    it("decoding bytes of any length never throws, and fails exactly when the length is wrong", () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: codec.sizeof + 64 }), fc.boolean(), (b, exact) => {
          const input = exact ? new Uint8Array(codec.sizeof).map((_, i) => b[i] ?? 0) : b
          const r = codec.decode(input)
          expect(Either.isRight(r)).toBe(input.length === codec.sizeof)
          if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct: name, field: "sizeof" })
        }),
        { numRuns }
      )
    })

    it("encoding any JS value never throws; a bad one is a SchemaError naming the struct", () => {
      fc.assert(
        fc.property(fc.anything(), (junk) => {
          const r = loose.encode(junk)
          if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct: name })
        }),
        { numRuns }
      )
    })
  })
}

describe("round trips", () => {
  properties(S.VmopResultCodec)
  properties(S.VmopIdCodec)
  properties(S.VmopInfoResultCodec)
  properties(S.VmopAddrReqCodec)
  properties(S.VmopAddrResultCodec)
  properties(S.VmopOwnerCodec)
  properties(S.LocalPrefixCodec)
  properties(S.VmdAgentxCodec)
  properties(S.VmdConfigCodec)
  properties(S.TimevalCodec)
  properties(S.VmMemRangeCodec)
  properties(S.VmopCreateParamsCodec)
  properties(S.VmdVmCodec)
  properties(S.VmInfoResultCodec)
  properties(S.VmInfoParamsCodec)
  properties(S.VmTerminateParamsCodec)
})

describe("VMM_IOC_INFO buffer", () => {
  it("decodeVmInfoResults(encodeVmInfoResults(xs), 160·n) equals xs", () => {
    const entry = arbitraryOf(struct(S.VmInfoResultCodec.layout)) as fc.Arbitrary<S.VmInfoResult>
    fc.assert(
      fc.property(fc.array(entry, { maxLength: 5 }), (xs) => {
        const buf = S.encodeVmInfoResults(xs)
        expect(Either.flatMap(buf, (b) => S.decodeVmInfoResults(b, BigInt(xs.length * 160)))).toEqual(Either.right(xs))
      }),
      { numRuns: 30 }
    )
  })
})

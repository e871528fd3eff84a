/**
 * Properties of every struct codec: decode(encode(x)) = x for valid values;
 * encode(decode(b)) is b with the non-semantic bytes canonicalised (padding,
 * opaque regions, bytes after a string's NUL), so canonical bytes survive
 * exactly; decoding anything and encoding anything never throws, and a
 * value with one field made definitely invalid is refused naming that field.
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

/** A place in a struct value that encode checks: the keys down to it and its kind. */
interface Site {
  readonly keys: ReadonlyArray<string | number>
  readonly type: FieldType
}

/** Every place encode checks: the value itself, each field, each array element, nested. */
const sitesOf = (t: FieldType, keys: ReadonlyArray<string | number>): Array<Site> => {
  switch (t.kind) {
    case "pad":
    case "opaque":
      return []
    case "struct":
      return [{ keys, type: t }, ...t.layout.fields.flatMap((f) => sitesOf(f.type, [...keys, f.name]))]
    case "array":
      return [{ keys, type: t }, ...Array.from({ length: t.count }, (_, i) => sitesOf(t.elem, [...keys, i])).flat()]
    default:
      return [{ keys, type: t }]
  }
}

/** The C member designator of a site ("vm_params.vmc_memranges[3].vmr_size"; "" for the value itself). */
const designator = (keys: ReadonlyArray<string | number>): string =>
  keys.map((k, j) => (typeof k === "number" ? `[${k}]` : j === 0 ? k : `.${k}`)).join("")

/** `v` with the value at `keys` replaced by `x` (copies along the path only). */
const setAt = (v: unknown, keys: ReadonlyArray<string | number>, x: unknown): unknown => {
  const [k, ...rest] = keys
  if (k === undefined) return x
  if (typeof k === "number") {
    const a = [...(v as ReadonlyArray<unknown>)]
    a[k] = setAt(a[k], rest, x)
    return a
  }
  const r = v as Readonly<Record<string, unknown>>
  return { ...r, [k]: setAt(r[k], rest, x) }
}

/** One value of each JS type, by the kind of field it would suit. */
const samples: ReadonlyArray<readonly [unknown, string]> = [
  [undefined, "undefined"],
  [null, "null"],
  [true, "boolean"],
  [() => 0, "function"],
  [7, "number"],
  [7n, "bigint"],
  ["7", "string"],
  [new Uint8Array(2), "Uint8Array"],
  [new Int8Array(2), "other"],
  [[7], "array"],
  [{ length: 1, 0: 7 }, "object"]
]

/** Values of every JS type but `keep`'s: each is wrong for a field that wants `keep`. */
const otherThan = (keep: "number" | "bigint" | "string" | "Uint8Array" | "array" | "object"): fc.Arbitrary<unknown> =>
  fc.constantFrom(...samples.filter(([, kind]) => kind !== keep).map(([v]) => v))

/** A length over `limit`: often just one over (the edge), else up to 8 over. */
const tooMany = (limit: number): fc.Arbitrary<number> =>
  fc.oneof(fc.constant(limit + 1), fc.integer({ min: limit + 2, max: limit + 8 }))

/** Values a field of kind `t` must refuse: another JS type, an out-of-range or fractional number, a string or byte array that does not fit, an array that is too long. */
const invalidOf = (t: FieldType): fc.Arbitrary<unknown> => {
  const ints = (lo: number, hi: number) =>
    fc.oneof(
      otherThan("number"),
      fc.integer({ min: hi + 1, max: Number.MAX_SAFE_INTEGER }),
      fc.integer({ min: Number.MIN_SAFE_INTEGER, max: lo - 1 }),
      fc.double({ noInteger: true }),
      fc.constantFrom(NaN, Infinity, -Infinity, hi + 0.5)
    )
  const bigs = (lo: bigint, hi: bigint) =>
    fc.oneof(
      otherThan("bigint"),
      fc.bigInt({ min: hi + 1n, max: hi * 4n + 4n }),
      fc.bigInt({ min: lo - (hi + 1n) * 4n, max: lo - 1n }),
      fc.constantFrom(0, 1)
    )
  switch (t.kind) {
    case "u8":
      return ints(0, 0xff)
    case "u32":
      return ints(0, 0xffffffff)
    case "i32":
      return ints(-0x80000000, 0x7fffffff)
    case "u64":
      return bigs(0n, 2n ** 64n - 1n)
    case "i64":
      return bigs(-(2n ** 63n), 2n ** 63n - 1n)
    case "char": {
      const max = t.terminated ? t.size - 1 : t.size
      const latin1 = fc.integer({ min: 1, max: 0xff }).map((c) => String.fromCharCode(c))
      const within = fc.string({ unit: latin1, maxLength: max - 1 })
      return fc.oneof(
        otherThan("string"),
        tooMany(max).chain((n) => fc.string({ unit: latin1, minLength: n, maxLength: n })),
        // A NUL or a char above 0xff inside an otherwise fitting string.
        fc.tuple(within, fc.constantFrom("\0", "\u0100", "\u2603", "\ud83d")).chain(([s, bad]) =>
          fc.nat({ max: s.length }).map((at) => s.slice(0, at) + bad + s.slice(at))
        )
      )
    }
    case "bytes":
      return fc.oneof(
        otherThan("Uint8Array"),
        tooMany(t.size).chain((n) => fc.uint8Array({ minLength: n, maxLength: n })),
        fc.constant(Array.from({ length: t.size }, () => 1)),
        fc.constant(new Uint8ClampedArray(t.size))
      )
    case "struct":
      return otherThan("object").filter((v) => typeof v !== "object" || v === null)
    case "array":
      return fc.oneof(
        otherThan("array"),
        tooMany(t.count).map((n) => new Array<number>(n).fill(0))
      )
    case "opaque":
    case "pad":
      throw new Error(`no site is ${t.kind}`)
  }
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

    // Sites grouped by kind, a kind picked first: the few arrays and strings of a struct are tried as often as its many ints.
    const byKind = new Map<string, Array<Site>>()
    for (const site of sitesOf(struct(codec.layout), [])) {
      const group = byKind.get(site.type.kind)
      if (group === undefined) byKind.set(site.type.kind, [site])
      else group.push(site)
    }
    it("one field (or element, or the value itself) made definitely invalid is a SchemaError naming it", () => {
      const broken = fc
        .constantFrom(...byKind.values())
        .chain((group) => fc.constantFrom(...group))
        .chain((site) => fc.tuple(fc.constant(site), values, invalidOf(site.type)))
      fc.assert(
        fc.property(broken, ([site, x, bad]) => {
          const r = loose.encode(setAt(x, site.keys, bad))
          expect(Either.isLeft(r)).toBe(true)
          if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct: name, field: designator(site.keys) })
        }),
        { numRuns: numRuns * 3 }
      )
    })

    // The field encode checks first: a value without it fails there.
    const first = codec.layout.fields.find((f) => f.type.kind !== "pad" && f.type.kind !== "opaque")?.name ?? ""
    it(`encoding any JS value never throws, and one that is not a ${name} is refused at the value ("") or at ${first}`, () => {
      fc.assert(
        fc.property(fc.anything(), (junk) => {
          const r = loose.encode(junk)
          const notObject = typeof junk !== "object" || junk === null
          // fc.anything's objects have random keys; one that happened to hold `first` is only checked for shape.
          if (!notObject && first in junk) {
            if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct: name })
            return
          }
          expect(Either.isLeft(r)).toBe(true)
          if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct: name, field: notObject ? "" : first })
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

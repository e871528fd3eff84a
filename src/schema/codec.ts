/**
 * One encoder/decoder for every layout table in layout.ts. Pure: bytes in,
 * values out, and back. Every failure is a `SchemaError` value naming the
 * struct and the field (as a C member designator, "vm_params.vmc_disks[2]");
 * nothing here throws for any input.
 *
 * Either is a subtype of Effect, so `yield* decodeVmopId(bytes)` works inside
 * Effect.gen and fails the effect with the SchemaError.
 */
import { Data, Either } from "effect"
import type { AnyLayout, CharType, FieldType, StructValue } from "./layout.ts"

export class SchemaError extends Data.TaggedError("SchemaError")<{
  /** The C struct tag ("vmop_id"); for nested fields, the outermost struct. */
  readonly struct: string
  /** C member designator ("vid_name", "vm_ifs[2].vif_fd"), or "sizeof" for a wrong buffer length. */
  readonly field: string
  readonly message: string
}> {}

export interface Codec<A> {
  readonly layout: AnyLayout
  readonly sizeof: number
  /** Exactly `sizeof` bytes, else SchemaError(field "sizeof"). NUL-terminates as vmd does (vmd.md §8). */
  readonly decode: (bytes: Uint8Array) => Either.Either<A, SchemaError>
  /** `sizeof` bytes; padding, pointers and opaque regions are zero. */
  readonly encode: (value: A) => Either.Either<Uint8Array, SchemaError>
  /** The all-zero value (what decode gives for `sizeof` zero bytes). */
  readonly empty: () => A
}

// ---------------------------------------------------------------------------
// decode

const viewOf = (bytes: Uint8Array): DataView => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

const decodeChars = (bytes: Uint8Array, offset: number, type: CharType): string => {
  const limit = offset + (type.terminated ? type.size - 1 : type.size)
  let end = offset
  while (end < limit && bytes[end] !== 0) end++
  return String.fromCharCode(...bytes.subarray(offset, end))
}

const decodeField = (type: FieldType, view: DataView, bytes: Uint8Array, offset: number): unknown => {
  switch (type.kind) {
    case "u8":
      return view.getUint8(offset)
    case "u32":
      return view.getUint32(offset, true)
    case "i32":
      return view.getInt32(offset, true)
    case "u64":
      return view.getBigUint64(offset, true)
    case "i64":
      return view.getBigInt64(offset, true)
    case "char":
      return decodeChars(bytes, offset, type)
    case "bytes":
      return bytes.slice(offset, offset + type.size)
    case "struct":
      return decodeStruct(type.layout, view, bytes, offset)
    case "array":
      return Array.from({ length: type.count }, (_, i) => decodeField(type.elem, view, bytes, offset + i * type.elem.size))
    case "opaque":
    case "pad":
      return undefined
  }
}

const decodeStruct = (layout: AnyLayout, view: DataView, bytes: Uint8Array, offset: number): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const f of layout.fields) {
    if (f.type.kind !== "opaque" && f.type.kind !== "pad") {
      out[f.name] = decodeField(f.type, view, bytes, offset + f.offset)
    }
  }
  return out
}

// ---------------------------------------------------------------------------
// encode

const INT_RANGE = {
  u8: [0, 0xff],
  u32: [0, 0xffffffff],
  i32: [-0x80000000, 0x7fffffff]
} as const
const BIGINT_RANGE = {
  u64: [0n, 0xffffffffffffffffn],
  i64: [-0x8000000000000000n, 0x7fffffffffffffffn]
} as const

const describe = (value: unknown): string =>
  value === null ? "null" : Array.isArray(value) ? "an array" : value instanceof Uint8Array ? "a Uint8Array" : typeof value

/** Why `value` cannot be a `type` field, or undefined if it can. */
const encodeField = (
  type: FieldType,
  value: unknown,
  view: DataView,
  bytes: Uint8Array,
  offset: number,
  path: string,
  fail: (path: string, message: string) => SchemaError
): SchemaError | undefined => {
  switch (type.kind) {
    case "u8":
    case "u32":
    case "i32": {
      const [lo, hi] = INT_RANGE[type.kind]
      if (typeof value !== "number" || !Number.isInteger(value) || value < lo || value > hi) {
        return fail(path, `expected a ${type.kind} (${lo}..${hi}), got ${typeof value === "number" ? value : describe(value)}`)
      }
      if (type.kind === "u8") view.setUint8(offset, value)
      else if (type.kind === "u32") view.setUint32(offset, value, true)
      else view.setInt32(offset, value, true)
      return undefined
    }
    case "u64":
    case "i64": {
      const [lo, hi] = BIGINT_RANGE[type.kind]
      if (typeof value !== "bigint" || value < lo || value > hi) {
        return fail(path, `expected a ${type.kind} bigint (${lo}..${hi}), got ${typeof value === "bigint" ? value : describe(value)}`)
      }
      if (type.kind === "u64") view.setBigUint64(offset, value, true)
      else view.setBigInt64(offset, value, true)
      return undefined
    }
    case "char": {
      if (typeof value !== "string") return fail(path, `expected a string, got ${describe(value)}`)
      const max = type.terminated ? type.size - 1 : type.size
      if (value.length > max) {
        return fail(path, `${value.length} chars do not fit char[${type.size}] (at most ${max}${type.terminated ? " plus NUL" : ""})`)
      }
      for (let i = 0; i < value.length; i++) {
        const c = value.charCodeAt(i)
        if (c === 0 || c > 0xff) return fail(path, `char ${i} is ${c === 0 ? "NUL" : `U+${c.toString(16)}, not latin1`}`)
        bytes[offset + i] = c
      }
      return undefined
    }
    case "bytes": {
      if (!(value instanceof Uint8Array)) return fail(path, `expected a Uint8Array, got ${describe(value)}`)
      if (value.length > type.size) return fail(path, `${value.length} bytes do not fit ${type.size}`)
      bytes.set(value, offset)
      return undefined
    }
    case "struct": {
      if (typeof value !== "object" || value === null) return fail(path, `expected a struct ${type.layout.name}, got ${describe(value)}`)
      const record = value as Readonly<Record<string, unknown>>
      for (const f of type.layout.fields) {
        const sub = path === "" ? f.name : `${path}.${f.name}`
        const err = encodeField(f.type, record[f.name], view, bytes, offset + f.offset, sub, fail)
        if (err !== undefined) return err
      }
      return undefined
    }
    case "array": {
      if (!Array.isArray(value)) return fail(path, `expected an array of ${type.count}, got ${describe(value)}`)
      if (value.length > type.count) return fail(path, `${value.length} elements do not fit [${type.count}]`)
      for (let i = 0; i < value.length; i++) {
        const err = encodeField(type.elem, value[i], view, bytes, offset + i * type.elem.size, `${path}[${i}]`, fail)
        if (err !== undefined) return err
      }
      return undefined
    }
    case "opaque":
      for (const x of type.fixed) view.setInt32(offset + x.offset, x.value, true)
      return undefined
    case "pad":
      return undefined
  }
}

// ---------------------------------------------------------------------------
// codecs

export const sizeError = (struct: string, expected: number, got: number): SchemaError =>
  new SchemaError({ struct, field: "sizeof", message: `expected ${expected} bytes, got ${got}` })

/**
 * The codec of a table. Arrays and byte arrays shorter than the C array are
 * accepted on encode (the missing tail is zero); longer ones are a SchemaError.
 */
export const makeCodec = <L extends AnyLayout>(layout: L): Codec<StructValue<L>> => {
  const fail = (field: string, message: string) => new SchemaError({ struct: layout.name, field, message })
  // The one place the untyped decoder output meets the table's static type:
  // decodeStruct builds exactly the keys and value kinds StructValue<L> names.
  const decodeAt = (bytes: Uint8Array) => decodeStruct(layout, viewOf(bytes), bytes, 0) as StructValue<L>
  return {
    layout,
    sizeof: layout.sizeof,
    decode: (bytes) =>
      bytes.length === layout.sizeof ? Either.right(decodeAt(bytes)) : Either.left(sizeError(layout.name, layout.sizeof, bytes.length)),
    encode: (value) => {
      const bytes = new Uint8Array(layout.sizeof)
      const err = encodeField({ kind: "struct", size: layout.sizeof, align: layout.align, layout }, value, viewOf(bytes), bytes, 0, "", fail)
      return err === undefined ? Either.right(bytes) : Either.left(err)
    },
    empty: () => decodeAt(new Uint8Array(layout.sizeof))
  }
}

/** Consecutive structs (the VMM_IOC_INFO buffer); `bytes` must be a whole number of them. */
export const decodeArray = <A>(codec: Codec<A>, bytes: Uint8Array): Either.Either<ReadonlyArray<A>, SchemaError> => {
  if (bytes.length % codec.sizeof !== 0) {
    return Either.left(
      new SchemaError({
        struct: codec.layout.name,
        field: "sizeof",
        message: `${bytes.length} bytes is not a whole number of ${codec.sizeof}-byte structs`
      })
    )
  }
  const out: Array<A> = []
  for (let at = 0; at < bytes.length; at += codec.sizeof) {
    const one = codec.decode(bytes.subarray(at, at + codec.sizeof))
    if (Either.isLeft(one)) return Either.left(one.left)
    out.push(one.right)
  }
  return Either.right(out)
}

export const encodeArray = <A>(codec: Codec<A>, values: ReadonlyArray<A>): Either.Either<Uint8Array, SchemaError> => {
  const out = new Uint8Array(values.length * codec.sizeof)
  for (let i = 0; i < values.length; i++) {
    const one = codec.encode(values[i] as A)
    if (Either.isLeft(one)) return Either.left(new SchemaError({ ...one.left, field: `[${i}].${one.left.field}` }))
    out.set(one.right, i * codec.sizeof)
  }
  return Either.right(out)
}

/**
 * A count used as an array bound (vmc_ndisks for vmc_disks): the count as a
 * number, or a SchemaError if it exceeds the array.
 */
export const boundedCount = (
  struct: string,
  field: string,
  count: bigint | number,
  max: number
): Either.Either<number, SchemaError> =>
  count >= 0 && count <= max
    ? Either.right(Number(count))
    : Either.left(new SchemaError({ struct, field, message: `${count} exceeds the array bound ${max}` }))

/**
 * Every count field of a decoded value (the `countOf` marks in the table,
 * nested structs included) within its array: vmc_ndisks ≤ 4, vmc_nnics ≤ 4,
 * vmc_nmemranges ≤ 16, vm_sev_nmemsegments ≤ 128. Returns the value unchanged.
 */
export const checkCounts = <L extends AnyLayout>(layout: L, value: StructValue<L>): Either.Either<StructValue<L>, SchemaError> => {
  const walk = (l: AnyLayout, v: Readonly<Record<string, unknown>>, prefix: string): SchemaError | undefined => {
    for (const f of l.fields) {
      const path = prefix + f.name
      const target = f.countOf === undefined ? undefined : l.fields.find((g) => g.name === f.countOf)
      const n = v[f.name]
      if (target !== undefined && target.type.kind === "array" && (typeof n === "bigint" || typeof n === "number")) {
        const r = boundedCount(layout.name, path, n, target.type.count)
        if (Either.isLeft(r)) return r.left
      }
      if (f.type.kind === "struct" && typeof n === "object" && n !== null) {
        const err = walk(f.type.layout, n as Readonly<Record<string, unknown>>, `${path}.`)
        if (err !== undefined) return err
      }
    }
    return undefined
  }
  const err = walk(layout, value, "")
  return err === undefined ? Either.right(value) : Either.left(err)
}

/**
 * The previous codec: a generic interpreter over the layout tables, kept
 * verbatim (decodeStruct / encodeField from src/schema/codec.ts before the
 * tables were compiled) as the reference the compiled codecs must agree
 * with byte for byte and error for error (test/schema/compiled.test.ts).
 */
import { Either } from "effect"
import { SchemaError, sizeError } from "../../../src/schema/codec.ts"
import type { AnyLayout, CharType, FieldType, StructValue } from "../../../src/schema/layout.ts"

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
// the reference codec (makeCodec's decode/encode, as they were)

export interface ReferenceCodec<A> {
  readonly decode: (bytes: Uint8Array) => Either.Either<A, SchemaError>
  readonly encode: (value: A) => Either.Either<Uint8Array, SchemaError>
}

export const referenceCodec = <L extends AnyLayout>(layout: L): ReferenceCodec<StructValue<L>> => {
  const fail = (field: string, message: string) => new SchemaError({ struct: layout.name, field, message })
  const decodeAt = (bytes: Uint8Array) => decodeStruct(layout, viewOf(bytes), bytes, 0) as StructValue<L>
  return {
    decode: (bytes) =>
      bytes.length === layout.sizeof ? Either.right(decodeAt(bytes)) : Either.left(sizeError(layout.name, layout.sizeof, bytes.length)),
    encode: (value) => {
      const bytes = new Uint8Array(layout.sizeof)
      const err = encodeField({ kind: "struct", size: layout.sizeof, align: layout.align, layout }, value, viewOf(bytes), bytes, 0, "", fail)
      return err === undefined ? Either.right(bytes) : Either.left(err)
    }
  }
}

/**
 * The codec of every layout table in layout.ts, compiled once per table into
 * straight-line code (compile.ts). Pure: bytes in, values out, and back.
 * Every failure is a `SchemaError` value naming the struct and the field (as
 * a C member designator, "vm_params.vmc_disks[2]"); nothing here throws for
 * any input.
 *
 * Either is a subtype of Effect, so `yield* decodeVmopId(bytes)` works inside
 * Effect.gen and fails the effect with the SchemaError.
 */
import { Data, Either } from "effect"
import { compileLayout } from "./compile.ts"
import type { Failure } from "./compile.ts"
import type { AnyLayout, StructValue } from "./layout.ts"

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
  /**
   * `encode`'s bytes written at target[offset, offset + sizeof), for many
   * structs in one buffer (get_info_vm's replies): undefined, or the same
   * SchemaError as `encode` (the region's contents are then unspecified).
   * A RangeError if the region does not fit.
   */
  readonly encodeInto: (value: A, target: Uint8Array, offset: number) => SchemaError | undefined
  /** The all-zero value (what decode gives for `sizeof` zero bytes). */
  readonly empty: () => A
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
  const sizeof = layout.sizeof
  const name = layout.name
  // Compiled on first use, not at import: a process uses a few of these
  // codecs, and start-up (bin/vmm's code cache) should not pay for the rest.
  let compiled: ReturnType<typeof compileLayout> | null = null
  let zeros: Uint8Array | null = null
  const code = () => (compiled ??= compileLayout(layout))
  // The one place the untyped decoder output meets the table's static type:
  // the compiled decoder builds exactly the keys and value kinds StructValue<L> names.
  const decodeAt = (bytes: Uint8Array) => code().decode(bytes) as StructValue<L>
  const schemaError = (r: Failure): SchemaError =>
    new SchemaError({ struct: name, field: r.path.startsWith(".") ? r.path.slice(1) : r.path, message: r.message })
  return {
    layout,
    sizeof,
    decode: (bytes) => (bytes.length === sizeof ? Either.right(decodeAt(bytes)) : Either.left(sizeError(name, sizeof, bytes.length))),
    encode: (value) => {
      const r = code().encode(value)
      return r instanceof Uint8Array ? Either.right(r) : Either.left(schemaError(r))
    },
    encodeInto: (value, target, offset) => {
      if (!Number.isSafeInteger(offset) || offset < 0 || offset + sizeof > target.length)
        throw new RangeError(`${name} at ${offset} does not fit ${target.length} bytes`)
      const r = code().encodeInto(value, target, offset)
      return r === undefined ? undefined : schemaError(r)
    },
    // Decoding never writes to its input and copies every byte array out, so one zero buffer serves every call.
    empty: () => decodeAt((zeros ??= new Uint8Array(sizeof)))
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

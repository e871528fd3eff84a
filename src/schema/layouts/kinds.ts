/**
 * The vocabulary of the layout tables: field kinds, the decoded value types
 * derived from them, the table constructors (u32, char, struct, array,
 * opaque, pad, ...), and the table checks (`checkLayout`, `defineStruct`,
 * `resolvePath`). The tables themselves are in the sibling modules, by
 * topic; `../layout.ts` re-exports everything.
 */

// ---------------------------------------------------------------------------
// Field kinds

/** 1- and 4-byte integers, decoded as `number`. */
export interface NumberType<K extends "u8" | "u32" | "i32" = "u8" | "u32" | "i32"> {
  readonly kind: K
  readonly size: number
  readonly align: number
}

/** 8-byte integers (size_t, int64_t, time_t, a pointer value), decoded as `bigint`. */
export interface BigIntType<K extends "u64" | "i64" = "u64" | "i64"> {
  readonly kind: K
  readonly size: 8
  readonly align: 8
}

/**
 * char[N], decoded as a latin1 `string` up to the first NUL. `terminated`:
 * vmd forces byte N-1 to 0 after reading (vmd.md §8), so at most N-1 chars.
 */
export interface CharType {
  readonly kind: "char"
  readonly size: number
  readonly align: 1
  readonly terminated: boolean
}

/** Raw bytes (uint8_t[N], in_addr, in6_addr), decoded as a `Uint8Array` copy. */
export interface BytesType {
  readonly kind: "bytes"
  readonly size: number
  readonly align: number
}

export interface StructType<L extends AnyLayout = AnyLayout> {
  readonly kind: "struct"
  readonly size: number
  readonly align: number
  readonly layout: L
}

export interface ArrayType<E extends FieldType = FieldType> {
  readonly kind: "array"
  readonly size: number
  readonly align: number
  readonly count: number
  readonly elem: E
}

/** A 4-byte int an opaque region must carry (vm_iev.ibuf.fd = -1). */
export interface FixedInt {
  /** Path inside the region, as C spells it ("ibuf.fd"). */
  readonly path: string
  readonly offset: number
  readonly value: number
}

/**
 * A region the port never interprets (pointers, struct event, TAILQ
 * entries): written as zeros (plus `fixed`), ignored on decode, absent from
 * the decoded value.
 */
export interface OpaqueType {
  readonly kind: "opaque"
  readonly size: number
  readonly align: number
  /** The C type, for documentation and the layout check. */
  readonly ctype: string
  readonly fixed: ReadonlyArray<FixedInt>
}

/** Compiler padding: written as zeros, ignored on decode. */
export interface PadType {
  readonly kind: "pad"
  readonly size: number
  readonly align: 1
}

export type FieldType =
  | NumberType
  | BigIntType
  | CharType
  | BytesType
  | StructType
  | ArrayType
  | OpaqueType
  | PadType

export interface Field<N extends string = string, T extends FieldType = FieldType> {
  readonly name: N
  readonly offset: number
  readonly type: T
  /** This field counts the elements of that array field (vmc_ndisks → vmc_disks). */
  readonly countOf?: string
}

export interface StructLayout<F extends ReadonlyArray<Field> = ReadonlyArray<Field>> {
  /** The C struct tag, without "struct". */
  readonly name: string
  readonly sizeof: number
  readonly align: number
  readonly fields: F
}

export type AnyLayout = StructLayout<ReadonlyArray<Field>>

// ---------------------------------------------------------------------------
// Decoded value types, derived from the tables

type Hidden = OpaqueType | PadType

export type ValueOf<T extends FieldType> = T extends NumberType
  ? number
  : T extends BigIntType
    ? bigint
    : T extends CharType
      ? string
      : T extends BytesType
        ? Uint8Array
        : T extends StructType<infer L>
          ? StructValue<L>
          : T extends ArrayType<infer E>
            ? ReadonlyArray<ValueOf<E>>
            : never

/** The decoded value of a struct: one property per non-opaque field, named as in C. */
export type StructValue<L extends AnyLayout> = {
  readonly [F in L["fields"][number] as F["type"] extends Hidden ? never : F["name"]]: ValueOf<F["type"]>
}

// ---------------------------------------------------------------------------
// Constructors

const num = <K extends "u8" | "u32" | "i32">(kind: K, size: number): NumberType<K> => ({ kind, size, align: size })
const big = <K extends "u64" | "i64">(kind: K): BigIntType<K> => ({ kind, size: 8, align: 8 })

export const u8 = num("u8", 1)
/** uint32_t, unsigned int, uid_t, enum. */
export const u32 = num("u32", 4)
/** int, pid_t. */
export const i32 = num("i32", 4)
/** size_t, paddr_t, vaddr_t, a pointer whose value matters. */
export const u64 = big("u64")
/** int64_t, time_t, long. */
export const i64 = big("i64")

export const char = (size: number, termination: "terminated" | "raw"): CharType => ({
  kind: "char",
  size,
  align: 1,
  terminated: termination === "terminated"
})

export const bytes = (size: number, align = 1): BytesType => ({ kind: "bytes", size, align })

export const struct = <L extends AnyLayout>(layout: L): StructType<L> => ({
  kind: "struct",
  size: layout.sizeof,
  align: layout.align,
  layout
})

export const array = <E extends FieldType>(count: number, elem: E): ArrayType<E> => ({
  kind: "array",
  size: count * elem.size,
  align: elem.align,
  count,
  elem
})

export const opaque = (ctype: string, size: number, align: number, fixed: ReadonlyArray<FixedInt> = []): OpaqueType => ({
  kind: "opaque",
  size,
  align,
  ctype,
  fixed
})

/** A pointer the port never follows: 8 zero bytes. */
export const pointer = (ctype: string): OpaqueType => opaque(ctype, 8, 8)

/** TAILQ_ENTRY(x): two pointers. */
export const tailqEntry: OpaqueType = opaque("TAILQ_ENTRY", 16, 8)

export const field = <const N extends string, const T extends FieldType>(
  name: N,
  offset: number,
  type: T,
  options?: { readonly countOf: string }
): Field<N, T> => (options === undefined ? { name, offset, type } : { name, offset, type, countOf: options.countOf })

/** Padding of `size` bytes at `offset`. */
export const pad = (offset: number, size: number): Field<`_pad${number}`, PadType> => ({
  name: `_pad${offset}`,
  offset,
  type: { kind: "pad", size, align: 1 }
})

/** Problems with a table: order, overlap, gaps, alignment, sizeof. Empty when sound. */
export const checkLayout = (layout: AnyLayout): ReadonlyArray<string> => {
  const problems: Array<string> = []
  const names = new Set<string>()
  let end = 0
  let maxAlign = 1
  for (const f of layout.fields) {
    const where = `${layout.name}.${f.name}`
    if (names.has(f.name)) problems.push(`${where}: duplicate name`)
    names.add(f.name)
    if (f.offset !== end) problems.push(`${where}: at ${f.offset}, previous field ends at ${end}`)
    if (f.offset % f.type.align !== 0) problems.push(`${where}: offset ${f.offset} not ${f.type.align}-aligned`)
    maxAlign = Math.max(maxAlign, f.type.align)
    end = f.offset + f.type.size
    if (f.type.kind === "opaque") {
      for (const x of f.type.fixed) {
        if (x.offset < 0 || x.offset + 4 > f.type.size) problems.push(`${where}.${x.path}: outside the region`)
      }
    }
    if (f.countOf !== undefined) {
      const target = layout.fields.find((g) => g.name === f.countOf)
      if (target === undefined || target.type.kind !== "array") problems.push(`${where}: counts no array field`)
    }
  }
  if (end !== layout.sizeof) problems.push(`${layout.name}: fields end at ${end}, sizeof is ${layout.sizeof}`)
  if (maxAlign !== layout.align) problems.push(`${layout.name}: align is ${layout.align}, fields need ${maxAlign}`)
  if (layout.sizeof % layout.align !== 0) problems.push(`${layout.name}: sizeof not a multiple of align`)
  return problems
}

/** A struct table, checked at module load (a bad table is a programming error). */
export const defineStruct = <const F extends ReadonlyArray<Field>>(
  name: string,
  sizeof: number,
  align: number,
  fields: F
): StructLayout<F> => {
  const layout: StructLayout<F> = { name, sizeof, align, fields }
  const problems = checkLayout(layout)
  if (problems.length > 0) throw new Error(`layout table ${name} is wrong:\n  ${problems.join("\n  ")}`)
  return layout
}

/** Offset and size of a C member designator ("vm_ifs[2].vif_fd", "vm_iev.ibuf.fd"), for checks and --trace. */
export const resolvePath = (
  layout: AnyLayout,
  path: string
): { readonly offset: number; readonly size: number } | undefined => {
  const segments = path.split(".")
  let type: FieldType = struct(layout)
  let offset = 0
  for (let i = 0; i < segments.length; i++) {
    if (type.kind === "opaque") {
      const rest = segments.slice(i).join(".")
      const x: FixedInt | undefined = type.fixed.find((y) => y.path === rest)
      return x === undefined ? undefined : { offset: offset + x.offset, size: 4 }
    }
    const m = /^([A-Za-z_]\w*)((?:\[\d+\])*)$/.exec(segments[i] ?? "")
    if (m === null || type.kind !== "struct") return undefined
    const f: Field | undefined = type.layout.fields.find((g) => g.name === m[1] && g.type.kind !== "pad")
    if (f === undefined) return undefined
    offset += f.offset
    type = f.type
    for (const index of Array.from((m[2] ?? "").matchAll(/\d+/g), (x) => Number(x[0]))) {
      if (type.kind !== "array" || index >= type.count) return undefined
      offset += index * type.elem.size
      type = type.elem
    }
  }
  return { offset, size: type.size }
}

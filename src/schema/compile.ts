/**
 * Compiles a layout table into a specialised encoder and decoder: straight
 * DataView / Uint8Array code, one function per struct table, loops for the
 * arrays, an object literal per decoded struct (so every decoded value of a
 * table has one shape), and no allocation on the success path but the
 * result. codec.ts wraps them in Either and SchemaError.
 *
 * Semantics are those of the table interpreter this replaced (kept as the
 * reference in test/schema/reference/codec.ts, and checked against it on
 * random values and random junk by test/schema/compiled.test.ts): the same
 * checks in the same order, the same messages, the same C member designator
 * for the failing field.
 *
 * The code is generated with `new Function` from the tables only: names are
 * checked to be identifiers and emitted as JSON string literals, sizes and
 * offsets are checked to be safe integers, and every message is built at run
 * time by the helpers below, never spliced into the source. Each generated
 * function carries a `//# sourceURL` (schema/<struct>.codec.js) so it shows
 * by name in a profile or a debugger; `codecSource(layout)` returns the text.
 */
import type { AnyLayout, CharType, FieldType } from "./layout.ts"

/** Why a value does not encode: `path` is the C designator relative to the top struct, starting with "." or "[" ("" for the top value itself). */
export interface Failure {
  readonly path: string
  readonly message: string
}

export interface Compiled {
  /** The encoded bytes, or why the value does not encode. Never throws. */
  readonly encode: (value: unknown) => Uint8Array | Failure
  /**
   * The same bytes written at target[at, at + sizeof) (the caller checks that
   * they fit): undefined, or why the value does not encode (the region's
   * contents are then unspecified). Never throws.
   */
  readonly encodeInto: (value: unknown, target: Uint8Array, at: number) => Failure | undefined
  /** The value of exactly `sizeof` bytes (the caller checks the length). */
  readonly decode: (bytes: Uint8Array) => Record<string, unknown>
}

// ---------------------------------------------------------------------------
// Run-time helpers the generated code calls (passed in, never inlined as text)

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

const badInt = (kind: "u8" | "u32" | "i32", value: unknown): string => {
  const [lo, hi] = INT_RANGE[kind]
  return `expected a ${kind} (${lo}..${hi}), got ${typeof value === "number" ? value : describe(value)}`
}

const badBig = (kind: "u64" | "i64", value: unknown): string => {
  const [lo, hi] = BIGINT_RANGE[kind]
  return `expected a ${kind} bigint (${lo}..${hi}), got ${typeof value === "bigint" ? value : describe(value)}`
}

const fail = (path: string, message: string): Failure => ({ path, message })
const nest = (path: string, inner: Failure): Failure => ({ path: path + inner.path, message: inner.message })

/** Writes a latin1 string of at most `max` chars (the caller checked it is a string); a message if it cannot. */
const putChars = (bytes: Uint8Array, offset: number, s: string, size: number, terminated: boolean): string | undefined => {
  const max = terminated ? size - 1 : size
  if (s.length > max) return `${s.length} chars do not fit char[${size}] (at most ${max}${terminated ? " plus NUL" : ""})`
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c === 0 || c > 0xff) return `char ${i} is ${c === 0 ? "NUL" : `U+${c.toString(16)}, not latin1`}`
    bytes[offset + i] = c
  }
  return undefined
}

/** The latin1 string in bytes[offset, offset + limit) up to the first NUL. */
const getChars = (bytes: Uint8Array, offset: number, limit: number): string => {
  const stop = offset + limit
  let end = offset
  while (end < stop && bytes[end] !== 0) end++
  const n = end - offset
  if (n === 0) return ""
  if (n <= 24) {
    let s = ""
    for (let i = offset; i < end; i++) s += String.fromCharCode(bytes[i] as number)
    return s
  }
  // One call over the span (a NUL-free latin1 byte is its own code point).
  return String.fromCharCode.apply(null, bytes.subarray(offset, end) as unknown as Array<number>)
}

/** 8-byte integers; all-zero bytes give the literal 0n (no allocation), the common case. */
const getU64 = (view: DataView, offset: number): bigint =>
  view.getUint32(offset, true) === 0 && view.getUint32(offset + 4, true) === 0 ? 0n : view.getBigUint64(offset, true)
const getI64 = (view: DataView, offset: number): bigint =>
  view.getUint32(offset, true) === 0 && view.getUint32(offset + 4, true) === 0 ? 0n : view.getBigInt64(offset, true)

// Small structs (see BYTEWISE_MAX) never make a DataView over their bytes: the
// 8-byte integers go through this scratch one, 8 bytes copied each way.
const scratch = new Uint8Array(8)
const scratchView = new DataView(scratch.buffer)
const put64 = (bytes: Uint8Array, offset: number, value: bigint, signed: boolean): void => {
  if (signed) scratchView.setBigInt64(0, value, true)
  else scratchView.setBigUint64(0, value, true)
  for (let i = 0; i < 8; i++) bytes[offset + i] = scratch[i] as number
}
const get64 = (bytes: Uint8Array, offset: number, signed: boolean): bigint => {
  let any = 0
  for (let i = 0; i < 8; i++) any |= scratch[i] = bytes[offset + i] as number
  if (any === 0) return 0n
  return signed ? scratchView.getBigInt64(0, true) : scratchView.getBigUint64(0, true)
}

const RUNTIME = { describe, badInt, badBig, fail, nest, putChars, getChars, getU64, getI64, put64, get64 }

/**
 * Up to this sizeof the generated code reads and writes 4-byte integers byte
 * by byte and never makes a DataView. Up to 64 bytes V8 keeps a fresh
 * Uint8Array's bytes on the JS heap, and asking for its `.buffer` (to make a
 * DataView) moves them to a new off-heap allocation; above that, making the
 * DataView still costs more than the few integers of a small struct save
 * with it (measured: vmop_info_result and vmd_config are faster byte by
 * byte, vmop_create_params and vmd_vm decode faster with a DataView).
 */
const BYTEWISE_MAX = 1024

// ---------------------------------------------------------------------------
// Code generation

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/

const int = (n: number, what: string): string => {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`compile: ${what} is not a non-negative integer: ${n}`)
  return String(n)
}
const name = (n: string): string => {
  if (!IDENT.test(n) || n === "__proto__") throw new Error(`compile: field name ${JSON.stringify(n)} is not an identifier`)
  return JSON.stringify(n)
}
const i32 = (n: number): string => {
  if ((n | 0) !== n) throw new Error(`compile: fixed int ${n} is not an int32`)
  return String(n)
}
/** `base + k` without a `+ 0`. */
const plus = (base: string, k: number): string => (k === 0 ? base : `${base} + ${int(k, "offset")}`)

class Generator {
  /** Byte-by-byte integers and no DataView (small structs), else DataView calls. */
  constructor(private readonly bytewise: boolean) {}

  private readonly functions: Array<string> = []
  private readonly encoders = new Map<AnyLayout, string>()
  private readonly decoders = new Map<AnyLayout, string>()
  private counter = 0

  private fresh(prefix: string): string {
    return `${prefix}${this.counter++}`
  }

  /** The name of the encoder of `layout`: (record, view, bytes, base) => Failure | undefined. */
  encoderOf(layout: AnyLayout): string {
    const known = this.encoders.get(layout)
    if (known !== undefined) return known
    const fn = `encode_${this.encoders.size}_${layout.name.replace(/\W/g, "_")}`
    this.encoders.set(layout, fn)
    const body: Array<string> = []
    for (const f of layout.fields) {
      if (f.type.kind === "pad") continue
      const at = plus("b", f.offset)
      if (f.type.kind === "opaque") {
        for (const x of f.type.fixed) body.push(`  ${this.set32(plus("b", f.offset + x.offset), i32(x.value), true)};`)
        continue
      }
      const v = this.fresh("v")
      body.push(`  const ${v} = r[${name(f.name)}];`)
      this.encodeValue(f.type, v, at, JSON.stringify(`.${f.name}`), body, "  ")
    }
    this.functions.push(`function ${fn}(r, V, U, b) {\n  let m, e;\n${body.join("\n")}\n  return undefined;\n}`)
    return fn
  }

  /** Statements that check `v` (a local) as a `type` value and write it at `at`; on failure they return a Failure at `path` (a JS expression). */
  private encodeValue(type: FieldType, v: string, at: string, path: string, out: Array<string>, indent: string): void {
    const push = (line: string) => out.push(indent + line)
    switch (type.kind) {
      case "u8":
        push(`if (typeof ${v} !== "number" || (${v} & 255) !== ${v}) return fail(${path}, badInt("u8", ${v}));`)
        push(`U[${at}] = ${v};`)
        return
      case "u32":
        push(`if (typeof ${v} !== "number" || (${v} >>> 0) !== ${v}) return fail(${path}, badInt("u32", ${v}));`)
        push(`if (${v} !== 0) ${this.set32(at, v, false)};`)
        return
      case "i32":
        push(`if (typeof ${v} !== "number" || (${v} | 0) !== ${v}) return fail(${path}, badInt("i32", ${v}));`)
        push(`if (${v} !== 0) ${this.set32(at, v, true)};`)
        return
      case "u64":
        // A bigint is truthy unless 0n: zero (most of a struct) skips the range compares and the write.
        push(`if (typeof ${v} !== "bigint") return fail(${path}, badBig("u64", ${v}));`)
        push(`if (${v}) {`)
        push(`  if (${v} < 0n || ${v} > 0xffffffffffffffffn) return fail(${path}, badBig("u64", ${v}));`)
        push(`  ${this.bytewise ? `put64(U, ${at}, ${v}, false)` : `V.setBigUint64(${at}, ${v}, true)`};`)
        push(`}`)
        return
      case "i64":
        push(`if (typeof ${v} !== "bigint") return fail(${path}, badBig("i64", ${v}));`)
        push(`if (${v}) {`)
        push(`  if (${v} < -0x8000000000000000n || ${v} > 0x7fffffffffffffffn) return fail(${path}, badBig("i64", ${v}));`)
        push(`  ${this.bytewise ? `put64(U, ${at}, ${v}, true)` : `V.setBigInt64(${at}, ${v}, true)`};`)
        push(`}`)
        return
      case "char":
        push(`if (typeof ${v} !== "string") return fail(${path}, "expected a string, got " + describe(${v}));`)
        push(
          `if (${v}.length !== 0 && (m = putChars(U, ${at}, ${v}, ${int(type.size, "char size")}, ${type.terminated ? "true" : "false"})) !== undefined) return fail(${path}, m);`
        )
        return
      case "bytes": {
        const size = int(type.size, "bytes size")
        push(`if (!(${v} instanceof Uint8Array)) return fail(${path}, "expected a Uint8Array, got " + describe(${v}));`)
        push(`if (${v}.length > ${size}) return fail(${path}, ${v}.length + " bytes do not fit ${size}");`)
        push(`U.set(${v}, ${at});`)
        return
      }
      case "struct": {
        const fn = this.encoderOf(type.layout)
        push(
          `if (typeof ${v} !== "object" || ${v} === null) return fail(${path}, ${JSON.stringify(`expected a struct ${type.layout.name}, got `)} + describe(${v}));`
        )
        push(`if ((e = ${fn}(${v}, V, U, ${at})) !== undefined) return nest(${path}, e);`)
        return
      }
      case "array": {
        const count = int(type.count, "array count")
        const i = this.fresh("i")
        const x = this.fresh("x")
        push(`if (!Array.isArray(${v})) return fail(${path}, "expected an array of ${count}, got " + describe(${v}));`)
        push(`if (${v}.length > ${count}) return fail(${path}, ${v}.length + " elements do not fit [${count}]");`)
        push(`for (let ${i} = 0; ${i} < ${v}.length; ${i}++) {`)
        push(`  const ${x} = ${v}[${i}];`)
        this.encodeValue(
          type.elem,
          x,
          `${at} + ${i} * ${int(type.elem.size, "element size")}`,
          `${path} + "[" + ${i} + "]"`,
          out,
          `${indent}  `
        )
        push(`}`)
        return
      }
      case "opaque":
      case "pad":
        return
    }
  }

  /** The name of the decoder of `layout`: (view, bytes, base) => record. */
  decoderOf(layout: AnyLayout): string {
    const known = this.decoders.get(layout)
    if (known !== undefined) return known
    const fn = `decode_${this.decoders.size}_${layout.name.replace(/\W/g, "_")}`
    this.decoders.set(layout, fn)
    const body: Array<string> = []
    const props: Array<string> = []
    for (const f of layout.fields) {
      if (f.type.kind === "pad" || f.type.kind === "opaque") continue
      props.push(`${name(f.name)}: ${this.decodeValue(f.type, plus("b", f.offset), body, "  ")}`)
    }
    this.functions.push(`function ${fn}(V, U, b) {\n${body.map((l) => `${l}\n`).join("")}  return {\n    ${props.join(",\n    ")}\n  };\n}`)
    return fn
  }

  /** An expression for the `type` value at `at`, after the statements it pushes. */
  private decodeValue(type: FieldType, at: string, out: Array<string>, indent: string): string {
    switch (type.kind) {
      case "u8":
        return `U[${at}]`
      case "u32":
        return this.bytewise ? `(${this.get32(at)}) >>> 0` : `V.getUint32(${at}, true)`
      case "i32":
        return this.bytewise ? `(${this.get32(at)})` : `V.getInt32(${at}, true)`
      case "u64":
        return this.bytewise ? `get64(U, ${at}, false)` : `getU64(V, ${at})`
      case "i64":
        return this.bytewise ? `get64(U, ${at}, true)` : `getI64(V, ${at})`
      case "char":
        return `getChars(U, ${at}, ${int(charLimit(type), "char limit")})`
      case "bytes":
        return `U.slice(${at}, ${at} + ${int(type.size, "bytes size")})`
      case "struct":
        return `${this.decoderOf(type.layout)}(V, U, ${at})`
      case "array": {
        const a = this.fresh("a")
        const i = this.fresh("i")
        const inner: Array<string> = []
        const elem = this.decodeValue(type.elem, `${at} + ${i} * ${int(type.elem.size, "element size")}`, inner, `${indent}  `)
        const count = int(type.count, "array count")
        // Allocated at its final length (no regrowth while filling); every slot is set.
        out.push(`${indent}const ${a} = new Array(${count});`)
        out.push(`${indent}for (let ${i} = 0; ${i} < ${count}; ${i}++) {`)
        for (const line of inner) out.push(line)
        out.push(`${indent}  ${a}[${i}] = ${elem};`)
        out.push(`${indent}}`)
        return a
      }
      case "opaque":
      case "pad":
        return "undefined"
    }
  }

  /** A 4-byte little-endian store of the int32/uint32 expression `v` (a local or a literal). */
  private set32(at: string, v: string, signed: boolean): string {
    if (!this.bytewise) return `V.${signed ? "setInt32" : "setUint32"}(${at}, ${v}, true)`
    // A Uint8Array store keeps the low 8 bits; >>> works on both signs.
    return `(U[${at}] = ${v}, U[${at} + 1] = ${v} >>> 8, U[${at} + 2] = ${v} >>> 16, U[${at} + 3] = ${v} >>> 24)`
  }

  /** The int32 at `at`, little-endian, from the bytes. */
  private get32(at: string): string {
    return `U[${at}] | (U[${at} + 1] << 8) | (U[${at} + 2] << 16) | (U[${at} + 3] << 24)`
  }

  source(layout: AnyLayout): string {
    const enc = this.encoderOf(layout)
    const dec = this.decoderOf(layout)
    const size = int(layout.sizeof, "sizeof")
    return [
      `"use strict";`,
      `const { describe, badInt, badBig, fail, nest, putChars, getChars, getU64, getI64, put64, get64 } = rt;`,
      ...this.functions,
      `function encodeInto(value, U, at) {`,
      `  if (typeof value !== "object" || value === null) return fail("", ${JSON.stringify(`expected a struct ${layout.name}, got `)} + describe(value));`,
      `  U.fill(0, at, at + ${size});`,
      this.bytewise ? `  const V = null;` : `  const V = new DataView(U.buffer, U.byteOffset, U.byteLength);`,
      `  return ${enc}(value, V, U, at);`,
      `}`,
      `function encode(value) {`,
      `  const U = new Uint8Array(${size});`,
      `  const e = encodeInto(value, U, 0);`,
      `  return e === undefined ? U : e;`,
      `}`,
      `function decode(bytes) {`,
      this.bytewise
        ? `  return ${dec}(null, bytes, 0);`
        : `  return ${dec}(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes, 0);`,
      `}`,
      `return { encode, encodeInto, decode };`,
      `//# sourceURL=schema/${layout.name.replace(/\W/g, "_")}.codec.js`
    ].join("\n")
  }
}

const charLimit = (type: CharType): number => (type.terminated ? type.size - 1 : type.size)

export interface CompileOptions {
  /**
   * Integers byte by byte, no DataView: the default for structs up to
   * BYTEWISE_MAX bytes. Either way gives the same bytes and values (the
   * tests compile every table both ways).
   */
  readonly bytewise?: boolean
}

const bytewiseFor = (layout: AnyLayout, options: CompileOptions): boolean => options.bytewise ?? layout.sizeof <= BYTEWISE_MAX

/** The generated source of a table's codec (for reading, debugging and the tests). */
export const codecSource = (layout: AnyLayout, options: CompileOptions = {}): string =>
  new Generator(bytewiseFor(layout, options)).source(layout)

/** The table's encoder and decoder, compiled once. */
export const compileLayout = (layout: AnyLayout, options: CompileOptions = {}): Compiled => {
  // The source is built from the table alone (see the module comment); rt is the helpers above.
  const build = new Function("rt", codecSource(layout, options)) as (rt: typeof RUNTIME) => Compiled
  return build(RUNTIME)
}

/**
 * Fuzz targets with no I/O: every decoder of src/schema and the imsg parser.
 *
 * Decoders: any bytes give a value or a SchemaError, never a throw; a
 * buffer of exactly sizeof bytes always decodes; a decoded value re-encodes
 * (or is refused with a SchemaError) and decodes again to the same value.
 *
 * Parser: any byte stream, split anyhow, with fds riding on any read, gives
 * back exactly the well-framed messages before the first bad length, in
 * order and byte for byte; from a bad length on it refuses everything; each
 * fd handed to it is delivered with a message or closed, exactly once.
 */
import { Either, Equal } from "effect"
import * as S from "../../../src/schema/structs.ts"
import type { Codec, SchemaError } from "../../../src/schema/codec.ts"
import { decodeHeader, encodeHeader, MAX_IMSGSIZE } from "../../../src/schema/imsgHeader.ts"
import { ImsgParser, type ParsedImsg } from "../../../src/imsg/parser.ts"
import { frame, mutate, rawGarbage, type FuzzImsg } from "./gen.ts"
import type { Rng } from "./rng.ts"

export class FuzzFailure extends Error {
  constructor(
    readonly target: string,
    message: string,
    readonly input: Uint8Array | null = null
  ) {
    super(`${target}: ${message}${input === null ? "" : ` (input ${Buffer.from(input.subarray(0, 64)).toString("hex")}${input.length > 64 ? "…" : ""}, ${input.length} bytes)`}`)
  }
}

export interface PureStats {
  messages: number
  decodeErrors: number
  crashes: number
}

export const CODECS: ReadonlyArray<readonly [string, Codec<unknown>]> = S.ALL_CODECS.map((c) => [c.layout.name, c] as const)

/** Structural equality for decoded values (bigints, Uint8Arrays, nested arrays). */
const same = (a: unknown, b: unknown): boolean => {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.from(a).equals(Buffer.from(b))
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]))
  if (typeof a === "object" && a !== null && typeof b === "object" && b !== null) {
    const ka = Object.keys(a)
    const kb = Object.keys(b)
    return ka.length === kb.length && ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  }
  return Equal.equals(a, b)
}

const isSchemaError = (e: unknown): e is SchemaError =>
  typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "SchemaError"

/** Run `f`; a throw is a crash of the target. */
export const guard = <A>(target: string, input: Uint8Array, f: () => A): A => {
  try {
    return f()
  } catch (e) {
    throw new FuzzFailure(target, `threw ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`, input)
  }
}

export const inputFor = (rng: Rng, sizeof: number): Uint8Array => {
  switch (rng.int(6)) {
    case 0:
      return rng.bytes(sizeof)
    case 1:
      return mutate(rng, new Uint8Array(sizeof))
    case 2:
      return rng.bytes(Math.max(0, sizeof + rng.pick([-1, 1, -4, 4, -sizeof])))
    case 3:
      return rng.bytes(rng.int(2 * sizeof + 8))
    case 4: {
      // boundary-heavy: 0xff everywhere, or one field's worth flipped
      const b = new Uint8Array(sizeof).fill(rng.chance(0.5) ? 0xff : 0x80)
      return mutate(rng, b)
    }
    default:
      return new Uint8Array(0)
  }
}

/** One decoder input: checks the decoder's contract; returns whether it was refused. */
export const checkDecoder = (name: string, codec: Codec<unknown>, input: Uint8Array): boolean => {
  const r = guard(name, input, () => codec.decode(input))
  if (!Either.isEither(r)) throw new FuzzFailure(name, "decode did not return an Either", input)
  if (Either.isLeft(r)) {
    if (!isSchemaError(r.left)) throw new FuzzFailure(name, `decode failed with a non-SchemaError ${String(r.left)}`, input)
    if (input.length === codec.sizeof) throw new FuzzFailure(name, `refused ${codec.sizeof} bytes: ${r.left.message}`, input)
    return true
  }
  if (input.length !== codec.sizeof) throw new FuzzFailure(name, `accepted ${input.length} bytes (sizeof ${codec.sizeof})`, input)
  const again = guard(`${name} encode`, input, () => codec.encode(r.right))
  if (Either.isLeft(again)) {
    if (!isSchemaError(again.left)) throw new FuzzFailure(name, "encode failed with a non-SchemaError", input)
    return false
  }
  if (again.right.length !== codec.sizeof) throw new FuzzFailure(name, `encode gave ${again.right.length} bytes`, input)
  const back = guard(`${name} decode(encode)`, again.right, () => codec.decode(again.right))
  if (Either.isLeft(back) || !same(back.right, r.right)) throw new FuzzFailure(name, "decode(encode(decode(x))) differs from decode(x)", input)
  return false
}

const intReaders: ReadonlyArray<readonly [string, (b: Uint8Array) => Either.Either<number, SchemaError>]> = [
  ["imsgIntRead", S.imsgIntRead],
  ["imsgUintRead", S.imsgUintRead]
]

/** Which decoder a case goes to: 0..CODECS.length-1 a struct codec, then the two int readers, the INFO array, the header. */
export const DECODER_TARGETS = CODECS.length + 4

/** One decoder case: target `k`, its bytes, and (INFO array only) the vip_size it claims. */
export interface DecoderCase {
  readonly k: number
  readonly input: Uint8Array
  readonly size: bigint
}

/** A random case, as the random fuzzer draws them. */
export const randomDecoderCase = (rng: Rng): DecoderCase => {
  const k = rng.int(DECODER_TARGETS)
  if (k < CODECS.length) return { k, input: inputFor(rng, (CODECS[k] as readonly [string, Codec<unknown>])[1].sizeof), size: 0n }
  if (k < CODECS.length + 2) return { k, input: rng.bytes(rng.chance(0.6) ? 4 : rng.int(9)), size: 0n }
  if (k === CODECS.length + 2) {
    const input = rng.bytes(rng.int(4) * 160 + rng.pick([0, 0, 1, 159]))
    return { k, input, size: rng.chance(0.7) ? BigInt(input.length) : BigInt(rng.u32()) * BigInt(rng.int(3)) }
  }
  return { k, input: rng.bytes(16), size: 0n }
}

/** Run one case and check its contract (throws FuzzFailure). */
export const runDecoderCase = (c: DecoderCase, stats: PureStats): void => {
  const { k, input } = c
  stats.messages++
  if (k < CODECS.length) {
    const [name, codec] = CODECS[k] as readonly [string, Codec<unknown>]
    if (checkDecoder(name, codec, input)) stats.decodeErrors++
    // the count checks on what a VM or parent may send
    if (name === "vmop_create_params" && input.length === codec.sizeof) {
      const p = Either.getOrThrow(S.decodeVmopCreateParams(input))
      const r = guard("checkVmopCreateParams", input, () => S.checkVmopCreateParams(p))
      if (Either.isLeft(r)) stats.decodeErrors++
    } else if (name === "vmd_vm" && input.length === codec.sizeof) {
      const vm = Either.getOrThrow(S.decodeVmdVm(input))
      const r = guard("checkVmdVm", input, () => S.checkVmdVm(vm))
      if (Either.isLeft(r)) stats.decodeErrors++
    }
  } else if (k < CODECS.length + 2) {
    const [name, read] = intReaders[k - CODECS.length] as (typeof intReaders)[number]
    const r = guard(name, input, () => read(input))
    if (Either.isLeft(r) !== (input.length !== 4)) throw new FuzzFailure(name, "wrong size accepted or right size refused", input)
    if (Either.isLeft(r)) stats.decodeErrors++
  } else if (k === CODECS.length + 2) {
    const r = guard("decodeVmInfoResults", input, () => S.decodeVmInfoResults(input, c.size))
    if (Either.isLeft(r)) stats.decodeErrors++
    else if (BigInt(r.right.length * 160) !== c.size) throw new FuzzFailure("decodeVmInfoResults", `${r.right.length} entries for vip_size ${c.size}`, input)
  } else {
    const h = guard("decodeHeader", input, () => decodeHeader(input))
    const back = guard("encodeHeader", input, () => encodeHeader(h))
    // the header is the four words, with len's mark bit carried by hasFd
    if (input.length === 16 && !Buffer.from(back).equals(Buffer.from(input))) throw new FuzzFailure("decodeHeader", "encode(decode(h)) != h", input)
  }
}

/** `n` inputs spread over every decoder (and the count checks and array decoders). */
export const fuzzDecoders = (rng: Rng, n: number, stats: PureStats): void => {
  for (let i = 0; i < n; i++) runDecoderCase(randomDecoderCase(rng), stats)
}

// ---------------------------------------------------------------------------
// The parser

interface TestFd {
  readonly id: number
  closes: number
}

/** Up to 12 (sometimes 64) messages of random sizes, some marked as carrying an fd. */
export const randomMessages = (rng: Rng): Array<FuzzImsg> => {
  const msgs: Array<FuzzImsg> = []
  const count = rng.int(rng.chance(0.1) ? 64 : 12)
  for (let i = 0; i < count; i++) {
    const size = rng.weighted<number>([
      [50, rng.int(32)],
      [30, rng.int(300)],
      [15, rng.int(MAX_IMSGSIZE - 16 + 1)],
      [5, MAX_IMSGSIZE - 16]
    ])
    msgs.push({ type: rng.u32(), peerid: rng.u32(), pid: rng.u32(), data: rng.bytes(size), withFd: rng.chance(0.3) })
  }
  return msgs
}

/** A stream of frames, maybe with garbage somewhere, split into reads with fds on some of them. */
export const checkParserStream = (rng: Rng, stats: PureStats): void => {
  const msgs = randomMessages(rng)
  let stream = frame(msgs)
  const goodBytes = stream.length
  let garbageAt = -1
  if (rng.chance(0.4)) {
    const g = rawGarbage(rng)
    const tail = new Uint8Array(stream.length + g.bytes.length)
    tail.set(stream)
    tail.set(g.bytes, stream.length)
    stream = tail
    garbageAt = goodBytes
  }
  stats.messages += msgs.length + (garbageAt >= 0 ? 1 : 0)

  const fds: Array<TestFd> = []
  let nextFd = 0
  const parser = new ImsgParser<TestFd>({
    closeFd: (fd) => {
      fd.closes++
    }
  })
  const out: Array<ParsedImsg<TestFd>> = []
  let failedAt: number | null = null
  let at = 0
  while (at < stream.length || (failedAt !== null && at === stream.length && rng.chance(0.2))) {
    const n = Math.min(stream.length - at, 1 + rng.int(rng.chance(0.3) ? 8 : 70000))
    const given: Array<TestFd> = []
    const k = rng.chance(0.25) ? 1 + rng.int(rng.chance(0.1) ? 3 : 1) : 0
    for (let j = 0; j < k; j++) {
      const fd = { id: nextFd++, closes: 0 }
      fds.push(fd)
      given.push(fd)
    }
    const r = guard("ImsgParser.feed", stream.subarray(at, at + n), () => parser.feed(stream, at, at + n, given, out))
    if (!r.ok && failedAt === null) failedAt = at
    if (r.ok && failedAt !== null) throw new FuzzFailure("ImsgParser", "accepted input after a framing error")
    at += n
    if (n === 0) break
  }
  guard("ImsgParser.dispose", stream, () => parser.dispose())

  // the well-framed messages come back exactly, in order; garbage after them may end the stream
  if (out.length < msgs.length) throw new FuzzFailure("ImsgParser", `only ${out.length} of ${msgs.length} messages came out`)
  if (out.length > msgs.length && garbageAt < 0) throw new FuzzFailure("ImsgParser", `${out.length} messages out of ${msgs.length}`)
  for (let i = 0; i < msgs.length; i++) {
    const a = out[i] as ParsedImsg<TestFd>
    const b = msgs[i] as FuzzImsg
    if (a.type !== b.type >>> 0 || a.peerid !== b.peerid >>> 0 || a.pid !== b.pid >>> 0 || !Buffer.from(a.data).equals(Buffer.from(b.data)))
      throw new FuzzFailure("ImsgParser", `message ${i} differs`)
    if (a.fd !== null && !b.withFd) throw new FuzzFailure("ImsgParser", `message ${i} got an fd without the mark`)
  }
  if (failedAt !== null && garbageAt < 0) throw new FuzzFailure("ImsgParser", "framing error on good frames")
  const badLen = garbageAt >= 0 && failedAt !== null
  if (badLen) stats.decodeErrors++
  // every fd delivered once or closed once, never both
  const delivered = new Set(out.flatMap((m) => (m.fd === null ? [] : [m.fd.id])))
  for (const fd of fds) {
    const uses = fd.closes + (delivered.has(fd.id) ? 1 : 0)
    if (uses !== 1) throw new FuzzFailure("ImsgParser", `fd ${fd.id} closed ${fd.closes} times, delivered ${delivered.has(fd.id)}`)
  }
}

export const fuzzParser = (rng: Rng, n: number, stats: PureStats): void => {
  const start = stats.messages
  while (stats.messages - start < n) checkParserStream(rng, stats)
}

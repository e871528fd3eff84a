/**
 * Coverage-guided fuzzing of the in-process targets (issue 5): the
 * decoders, the imsg parser, and (memory.ts, through `DispatchGuide`) both
 * dispatchers on the in-memory layers.
 *
 * AFL's loop, with V8 block coverage (coverage.ts) as the feedback: keep a
 * corpus of inputs that reached new code, draw most inputs by mutating
 * corpus entries (bit and byte flips, boundary values, arithmetic on
 * aligned 32-bit words, which is where the length and count fields are,
 * truncation, extension, resizing to sizeof±1, splicing two entries,
 * and for streams re-splitting and attaching or detaching fds), the rest
 * fresh from the random generator. Coverage is taken per batch (a take
 * costs 20-150 ms, a decoder case microseconds); when a batch reached
 * something new, it is split in halves and re-run with a take after each
 * half until the inputs that did it are found (a bounded number of takes),
 * and those join the corpus. The pure targets are deterministic, so a
 * re-run reaches what the first run did.
 */
import * as T from "../../../src/schema/imsgTypes.ts"
import { SIZEOF } from "../../../src/schema/structs.ts"
import { MAX_IMSG_PAYLOAD } from "../../../src/schema/imsgHeader.ts"
import { FORGED_ID_BASE, frame, mutate, PARENT_SIZES, rawGarbage, sanitizeParent, type FuzzImsg, type ParentGenOptions, type VmFuzzImsg } from "./gen.ts"
import type { DispatchGuide, GuideItem } from "./memory.ts"
import { CODECS, DECODER_TARGETS, FuzzFailure, guard, randomDecoderCase, randomMessages, runDecoderCase, type DecoderCase, type PureStats } from "./pure.ts"
import type { CoverageMap, CoverageSession } from "./coverage.ts"
import type { Rng } from "./rng.ts"
import { ImsgParser, type ParsedImsg } from "../../../src/imsg/parser.ts"
import { MAX_IMSGSIZE } from "../../../src/schema/imsgHeader.ts"

export interface GuidedTarget<I> {
  readonly name: string
  fresh(rng: Rng): I
  mutate(rng: Rng, a: I, other: I): I
  /** Run one input and check its properties (throws FuzzFailure); adds to stats.messages. */
  run(input: I, stats: PureStats): void
}

export interface GuidedOptions<I> {
  /** Inputs to run (not counting the re-runs that find what was new). */
  readonly inputs: number
  /** Inputs between coverage takes. */
  readonly batch: number
  readonly session: CoverageSession
  readonly map: CoverageMap
  readonly seeds: ReadonlyArray<I>
  /** Takes allowed per batch for finding the new inputs. */
  readonly bisectTakes?: number
  /** Share of inputs mutated from the corpus (the rest fresh). */
  readonly mutateRate?: number
  /** Stop early after this many ms (the CI version). */
  readonly deadlineMs?: number
  /** Also stop once stats.messages grew by this much (a parser input holds many messages). */
  readonly messages?: number
}

export interface GuidedStats {
  inputs: number
  seeds: number
  corpus: number
  /** Corpus entries that came from a mutation (not a fresh input). */
  fromMutation: number
  batches: number
  novelBatches: number
  rerunInputs: number
  takes: number
}

export const emptyGuidedStats = (): GuidedStats => ({ inputs: 0, seeds: 0, corpus: 0, fromMutation: 0, batches: 0, novelBatches: 0, rerunInputs: 0, takes: 0 })

interface Entry<I> {
  readonly input: I
  /** Times picked; fresh entries are picked more. */
  picks: number
}

export const runGuided = <I>(rng: Rng, target: GuidedTarget<I>, o: GuidedOptions<I>, stats: PureStats, g: GuidedStats = emptyGuidedStats()): GuidedStats => {
  const corpus: Array<Entry<I>> = []
  const scratch: PureStats = { messages: 0, decodeErrors: 0, crashes: 0 }
  const started = Date.now()
  const bisectTakes = o.bisectTakes ?? 24
  const mutateRate = o.mutateRate ?? 0.8

  // the seeds: all in the corpus, their coverage in the map
  o.session.take()
  for (const s of o.seeds) {
    target.run(s, stats)
    corpus.push({ input: s, picks: 0 })
  }
  o.map.merge(o.session.take())
  g.takes++
  g.seeds += o.seeds.length

  const pick = (): Entry<I> => {
    // favour entries picked least (the newest), AFL's "favoured" in small
    const a = corpus[rng.int(corpus.length)] as Entry<I>
    const b = corpus[rng.int(corpus.length)] as Entry<I>
    return a.picks <= b.picks ? a : b
  }

  /** Which inputs of `xs` reach past the map: re-run halves, a take after each. */
  const attribute = (xs: ReadonlyArray<{ input: I; mutated: boolean }>, budget: { takes: number }): void => {
    if (xs.length === 0) return
    if (o.deadlineMs !== undefined && Date.now() - started > o.deadlineMs) budget.takes = 0
    if (budget.takes <= 0 || xs.length === 1) {
      // found (or out of takes: keep one of the group, it may be the one)
      const x = xs.length === 1 ? (xs[0] as (typeof xs)[number]) : (rng.pick(xs) as (typeof xs)[number])
      corpus.push({ input: x.input, picks: 0 })
      if (x.mutated) g.fromMutation++
      return
    }
    const half = xs.length >> 1
    for (const part of [xs.slice(0, half), xs.slice(half)]) {
      o.session.take()
      for (const x of part) target.run(x.input, scratch)
      g.rerunInputs += part.length
      const t = o.session.take()
      g.takes += 2
      budget.takes--
      const n = o.map.novelty(t)
      if (n.bytes + n.functions === 0) continue
      if (part.length === 1) {
        o.map.merge(t)
        attribute(part, budget)
      } else {
        attribute(part, budget)
        o.map.merge(t)
      }
    }
  }

  const firstMessage = stats.messages
  while (g.inputs < o.inputs) {
    if (o.deadlineMs !== undefined && Date.now() - started > o.deadlineMs) break
    if (o.messages !== undefined && stats.messages - firstMessage >= o.messages) break
    const n = Math.min(o.batch, o.inputs - g.inputs)
    const batch: Array<{ input: I; mutated: boolean }> = []
    o.session.take()
    for (let i = 0; i < n; i++) {
      let x: { input: I; mutated: boolean }
      if (corpus.length > 0 && rng.chance(mutateRate)) {
        const e = pick()
        e.picks++
        const other = (corpus[rng.int(corpus.length)] as Entry<I>).input
        let input = target.mutate(rng, e.input, other)
        // stacked mutations, as AFL's havoc
        for (let k = rng.int(3); k > 0; k--) input = target.mutate(rng, input, other)
        x = { input, mutated: true }
      } else {
        x = { input: target.fresh(rng), mutated: false }
      }
      target.run(x.input, stats)
      batch.push(x)
    }
    g.inputs += n
    g.batches++
    const t = o.session.take()
    g.takes += 2
    const nov = o.map.novelty(t)
    if (nov.bytes + nov.functions > 0) {
      g.novelBatches++
      attribute(batch, { takes: bisectTakes })
      o.map.merge(t)
    }
  }
  g.corpus = corpus.length
  return g
}

// ---------------------------------------------------------------------------
// byte mutations (AFL's deterministic and havoc stages, drawn at random)

const INTERESTING8 = [0, 1, 0x7f, 0x80, 0xff, 16, 32, 64, 100]
const INTERESTING32 = [0, 1, 2, 4, 15, 16, 17, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x4000, 0x4001, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 0x80000010]

/** One AFL-style edit of a copy of `a` (length may change); `b` for splicing. */
export const mutateBytes = (rng: Rng, a: Uint8Array, b: Uint8Array, maxLen: number): Uint8Array => {
  let x: Uint8Array = a.slice()
  const view = () => new DataView(x.buffer, x.byteOffset, x.byteLength)
  switch (rng.int(11)) {
    case 0: // flip 1, 2 or 4 bits
      if (x.length > 0) {
        const bit = rng.int(x.length * 8)
        const w = rng.pick([1, 2, 4])
        for (let i = 0; i < w && (bit + i) >> 3 < x.length; i++) x[(bit + i) >> 3] = (x[(bit + i) >> 3] as number) ^ (1 << ((bit + i) & 7))
      }
      break
    case 1: // interesting byte
      if (x.length > 0) x[rng.int(x.length)] = rng.pick(INTERESTING8)
      break
    case 2: // interesting 32-bit value at an aligned offset (lengths, counts, ids)
      if (x.length >= 4) view().setUint32(rng.int(x.length >> 2) * 4, rng.pick(INTERESTING32) >>> 0, true)
      break
    case 3: // arithmetic on an aligned word
      if (x.length >= 4) {
        const at = rng.int(x.length >> 2) * 4
        const d = (1 + rng.int(35)) * (rng.chance(0.5) ? 1 : -1)
        view().setUint32(at, (view().getUint32(at, true) + d) >>> 0, true)
      }
      break
    case 4: // truncate
      x = x.slice(0, rng.int(x.length + 1))
      break
    case 5: // extend with random or zero bytes
      {
        const add = rng.chance(0.5) ? rng.bytes(1 + rng.int(16)) : new Uint8Array(1 + rng.int(64))
        const y = new Uint8Array(Math.min(maxLen, x.length + add.length))
        y.set(x.subarray(0, y.length))
        y.set(add.subarray(0, y.length - Math.min(x.length, y.length)), Math.min(x.length, y.length))
        x = y
      }
      break
    case 6: // off by one or four in size
      {
        const len = Math.max(0, Math.min(maxLen, x.length + rng.pick([-4, -1, 1, 4])))
        const y = new Uint8Array(len)
        y.set(x.subarray(0, len))
        x = y
      }
      break
    case 7: // splice: head of a, tail of b
      {
        const cut = rng.int(x.length + 1)
        const from = rng.int(b.length + 1)
        const y = new Uint8Array(Math.min(maxLen, cut + (b.length - from)))
        y.set(x.subarray(0, Math.min(cut, y.length)))
        if (y.length > cut) y.set(b.subarray(from, from + (y.length - cut)), cut)
        x = y
      }
      break
    case 8: // copy a block within
      if (x.length >= 2) {
        const len = 1 + rng.int(Math.min(32, x.length - 1))
        const from = rng.int(x.length - len + 1)
        const to = rng.int(x.length - len + 1)
        x.copyWithin(to, from, from + len)
      }
      break
    case 9: // random byte
      if (x.length > 0) x[rng.int(x.length)] = rng.int(256)
      break
    default: // the old generator's mutation (bit flips and boundary values)
      x = mutate(rng, x)
  }
  return x
}

// ---------------------------------------------------------------------------
// the decoders

const sizeofK = (k: number): number =>
  k < CODECS.length ? (CODECS[k] as (typeof CODECS)[number])[1].sizeof : k < CODECS.length + 2 ? 4 : k === CODECS.length + 2 ? 160 : 16

export const decoderTarget: GuidedTarget<DecoderCase> = {
  name: "decoders",
  fresh: randomDecoderCase,
  mutate: (rng, a, b) => {
    if (rng.chance(0.03)) {
      // the same bytes to another decoder
      const k = rng.int(DECODER_TARGETS)
      return { k, input: k === DECODER_TARGETS - 1 ? fit(a.input, 16) : a.input, size: a.size }
    }
    if (a.k === CODECS.length + 2 && rng.chance(0.2)) {
      // the claimed vip_size
      const size = rng.pick([BigInt(a.input.length), a.size + 160n, a.size - 160n, a.size + 1n, 0n, BigInt(rng.u32()), 1n << 63n])
      return { ...a, size: size < 0n ? 0n : size }
    }
    const maxLen = 2 * sizeofK(a.k) + 64
    let input = mutateBytes(rng, a.input, b.k === a.k ? b.input : b.input.subarray(0, 0), maxLen)
    if (a.k === DECODER_TARGETS - 1) input = fit(input, 16) // the header reader takes 16 bytes
    return { k: a.k, input, size: a.size }
  },
  run: runDecoderCase
}

const fit = (x: Uint8Array, n: number): Uint8Array => {
  if (x.length === n) return x
  const y = new Uint8Array(n)
  y.set(x.subarray(0, n))
  return y
}

/** Seeds: each decoder at exactly sizeof, all zeroes and all 0xff. */
export const decoderSeeds = (): Array<DecoderCase> => {
  const out: Array<DecoderCase> = []
  for (let k = 0; k < DECODER_TARGETS; k++) {
    const n = sizeofK(k)
    out.push({ k, input: new Uint8Array(n), size: BigInt(n) })
    out.push({ k, input: new Uint8Array(n).fill(0xff), size: k === CODECS.length + 2 ? BigInt(n) : 0n })
  }
  return out
}

// ---------------------------------------------------------------------------
// the parser: arbitrary bytes, split as the input says, fds on some reads

export interface StreamCase {
  readonly bytes: Uint8Array
  /** Read sizes and how many fds ride on each read; what is left is one last read. */
  readonly reads: ReadonlyArray<readonly [number, number]>
}

interface TestFd {
  readonly id: number
  closes: number
}

const u32at = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true)

/**
 * The parser's contract on any input: no throw; what comes out is the
 * stream's frames from the start, byte for byte (type, peerid, pid, data);
 * no read is accepted after one was refused; each fd handed to it is
 * delivered with a message or closed, exactly once.
 */
export const runStreamCase = (c: StreamCase, stats: PureStats): void => {
  const stream = c.bytes
  const parser = new ImsgParser<TestFd>({ closeFd: (fd) => void fd.closes++ })
  const fds: Array<TestFd> = []
  const out: Array<ParsedImsg<TestFd>> = []
  let failed = false
  let at = 0
  let r = 0
  while (at < stream.length || r < c.reads.length) {
    const [want, nfd] = c.reads[r] ?? [stream.length - at, 0]
    r++
    const n = Math.min(stream.length - at, Math.max(0, want))
    const given: Array<TestFd> = []
    for (let j = 0; j < nfd; j++) {
      const fd = { id: fds.length, closes: 0 }
      fds.push(fd)
      given.push(fd)
    }
    if (n === 0 && given.length === 0) {
      if (at >= stream.length) break
      continue
    }
    const res = guard("ImsgParser.feed", stream.subarray(at, at + n), () => parser.feed(stream, at, at + n, given, out))
    if (res.ok && failed) throw new FuzzFailure("ImsgParser", "accepted a read after a framing error", stream)
    if (!res.ok) failed = true
    at += n
  }
  guard("ImsgParser.dispose", stream, () => parser.dispose())
  let o = 0
  for (const [i, m] of out.entries()) {
    if (o + 16 + m.data.length > stream.length) throw new FuzzFailure("ImsgParser", `message ${i} runs past the stream`, stream)
    if (m.type !== u32at(stream, o) || m.peerid !== u32at(stream, o + 8) || m.pid !== u32at(stream, o + 12) || !Buffer.from(m.data).equals(Buffer.from(stream.subarray(o + 16, o + 16 + m.data.length))))
      throw new FuzzFailure("ImsgParser", `message ${i} is not the stream's frame at ${o}`, stream)
    o += 16 + m.data.length
  }
  const delivered = new Set(out.flatMap((m) => (m.fd === null ? [] : [m.fd.id])))
  for (const fd of fds) {
    const uses = fd.closes + (delivered.has(fd.id) ? 1 : 0)
    if (uses !== 1) throw new FuzzFailure("ImsgParser", `fd ${fd.id} closed ${fd.closes} times, delivered ${delivered.has(fd.id)}`, stream)
  }
  stats.messages += Math.max(1, out.length + (failed ? 1 : 0))
  if (failed) stats.decodeErrors++
}

const MAX_STREAM = 4 * MAX_IMSGSIZE

const randomReads = (rng: Rng, length: number): Array<readonly [number, number]> => {
  const reads: Array<readonly [number, number]> = []
  let left = length
  while (left > 0 && reads.length < 256) {
    const n = Math.min(left, 1 + rng.int(rng.chance(0.3) ? 8 : 70000))
    reads.push([n, rng.chance(0.2) ? 1 + rng.int(2) : 0])
    left -= n
  }
  return reads
}

export const streamTarget: GuidedTarget<StreamCase> = {
  name: "parser",
  fresh: (rng) => {
    // the random parser fuzzer's streams (pure.ts)
    const msgs = randomMessages(rng)
    let bytes: Uint8Array = frame(msgs)
    if (rng.chance(0.4)) {
      const g = rawGarbage(rng).bytes
      const y = new Uint8Array(bytes.length + g.length)
      y.set(bytes)
      y.set(g, bytes.length)
      bytes = y
    }
    return { bytes, reads: randomReads(rng, bytes.length) }
  },
  mutate: (rng, a, b) => {
    switch (rng.int(6)) {
      case 0: // split differently
        return { bytes: a.bytes, reads: randomReads(rng, a.bytes.length) }
      case 1: {
        // attach or detach an fd on one read
        if (a.reads.length === 0) return { bytes: a.bytes, reads: [[a.bytes.length, 1]] }
        const reads = [...a.reads]
        const i = rng.int(reads.length)
        const [n, f] = reads[i] as readonly [number, number]
        reads[i] = [n, f > 0 ? 0 : 1 + rng.int(3)]
        return { bytes: a.bytes, reads }
      }
      case 2: {
        // a header word at a frame boundary: the len (with or without the fd mark), or the type
        const bytes = a.bytes.slice()
        const starts: Array<number> = []
        for (let o = 0; o + 16 <= bytes.length && starts.length < 64; ) {
          starts.push(o)
          const len = u32at(bytes, o + 4) & 0x7fffffff
          if (len < 16) break
          o += len
        }
        const at = rng.pick(starts.length > 0 ? starts : [0])
        if (at + 8 <= bytes.length) {
          const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
          const len = v.getUint32(at + 4, true)
          v.setUint32(at + 4, rng.pick([len ^ 0x80000000, (len + 1) >>> 0, (len - 1) >>> 0, 15, 16, MAX_IMSGSIZE, MAX_IMSGSIZE + 1, rng.pick(INTERESTING32)]) >>> 0, true)
        }
        return { bytes, reads: a.reads }
      }
      case 3: {
        // splice whole streams: a's head and b's tail
        const cut = rng.int(a.bytes.length + 1)
        const from = rng.int(b.bytes.length + 1)
        const bytes = new Uint8Array(Math.min(MAX_STREAM, cut + b.bytes.length - from))
        bytes.set(a.bytes.subarray(0, Math.min(cut, bytes.length)))
        if (bytes.length > cut) bytes.set(b.bytes.subarray(from, from + bytes.length - cut), cut)
        return { bytes, reads: rng.chance(0.5) ? a.reads : randomReads(rng, bytes.length) }
      }
      default:
        return { bytes: mutateBytes(rng, a.bytes, b.bytes, MAX_STREAM), reads: a.reads }
    }
  },
  run: runStreamCase
}

/** Seeds: an empty stream, one frame of each size class, with and without an fd. */
export const streamSeeds = (rng: Rng): Array<StreamCase> => {
  const out: Array<StreamCase> = [{ bytes: new Uint8Array(0), reads: [] }]
  for (const size of [0, 4, 160, MAX_IMSGSIZE - 16]) {
    for (const withFd of [false, true]) {
      const bytes = frame([{ type: 1, peerid: 2, pid: 3, data: rng.bytes(size), withFd }])
      out.push({ bytes, reads: [[bytes.length, withFd ? 1 : 0]] })
    }
  }
  return out
}

// ---------------------------------------------------------------------------
// both dispatchers (memory.ts): corpus entries are the rounds that reached new code

const BENIGN_VM_TYPES = [T.IMSG_VMDOP_VM_SHUTDOWN, T.IMSG_VMDOP_VM_REBOOT, T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE]
const isResponse = (type: number) => type === T.IMSG_VMDOP_PAUSE_VM_RESPONSE || type === T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE

/**
 * Whether the vmm must end the VM that sent `m` (as gen.ts's vmMessage
 * decides for its own): a type a VM may not send, or a pause/unpause
 * response of the wrong size. A well-sized response names a forged VM id,
 * never an innocent one.
 */
export const classifyVmMessage = (m: Omit<VmFuzzImsg, "hostile">): VmFuzzImsg => {
  const type = m.type >>> 0
  if (!BENIGN_VM_TYPES.includes(type)) return { ...m, type, hostile: true }
  if (isResponse(type)) {
    if (m.data.length !== SIZEOF.vmop_result) return { ...m, type, hostile: true }
    const data = m.data.slice()
    const v = new DataView(data.buffer)
    v.setUint32(4, FORGED_ID_BASE + (v.getUint32(4, true) & 0x0fffffff), true)
    return { ...m, type, data, hostile: false }
  }
  return { ...m, type, hostile: false }
}

const mutateParentMsg = (rng: Rng, m: FuzzImsg, other: FuzzImsg, gen: ParentGenOptions): FuzzImsg => {
  let { type, peerid, pid, data, withFd } = m
  switch (rng.int(6)) {
    case 0:
      type = rng.chance(0.8) ? rng.pick([...PARENT_SIZES.keys()]) : rng.chance(0.5) ? rng.int(45) : rng.u32()
      break
    case 1:
      withFd = !withFd
      break
    case 2:
      peerid = rng.pick([0, T.PEERID_NONE, rng.pick(gen.fuzzIds), rng.pick(gen.fuzzIds), (peerid + 1) >>> 0, rng.u32()])
      break
    case 3:
      pid = rng.pick([0, 1, 0xffffffff, rng.u32()])
      break
    default:
      data = mutateBytes(rng, data, other.data, MAX_IMSG_PAYLOAD)
  }
  return sanitizeParent({ type, peerid, pid, data, withFd }, gen, rng)
}

const mutateVmMsg = (rng: Rng, m: VmFuzzImsg, other: VmFuzzImsg): VmFuzzImsg => {
  let { type, peerid, pid, data, withFd } = m
  switch (rng.int(5)) {
    case 0:
      type = rng.chance(0.6) ? rng.pick(BENIGN_VM_TYPES) : rng.chance(0.5) ? rng.int(45) : rng.u32()
      break
    case 1:
      withFd = !withFd
      break
    case 2:
      peerid = rng.u32()
      pid = rng.u32()
      break
    default:
      data = mutateBytes(rng, data, other.data, MAX_IMSG_PAYLOAD)
  }
  return classifyVmMessage({ type, peerid, pid, data, withFd })
}

export interface DispatchGuideOptions {
  readonly session: CoverageSession
  readonly map: CoverageMap
  /** Share of messages drawn from the corpus (the rest fresh). */
  readonly mutateRate?: number
}

export interface DispatchGuideStats {
  rounds: number
  novelRounds: number
  corpus: number
  fromCorpus: number
  takes: number
}

/**
 * The guide: each round's messages are remembered; if the round reached new
 * code (a take after its checks), they join the corpus as one entry. Later
 * messages are drawn, at `mutateRate`, from a window of a corpus entry with
 * one to three of its messages mutated (parent messages sanitized as the
 * generator does, so that the innocent VMs stay out of reach; VM messages
 * re-classified as hostile or not), or spliced with another entry.
 */
export const makeDispatchGuide = (rng: Rng, o: DispatchGuideOptions): { readonly guide: DispatchGuide; readonly stats: DispatchGuideStats } => {
  const corpus: Array<ReadonlyArray<GuideItem>> = []
  let round: Array<GuideItem> = []
  const parentQ: Array<ReadonlyArray<FuzzImsg>> = []
  const vmQ: Array<VmFuzzImsg> = []
  const stats: DispatchGuideStats = { rounds: 0, novelRounds: 0, corpus: 0, fromCorpus: 0, takes: 0 }
  const mutateRate = o.mutateRate ?? 0.7
  o.session.take()

  /** Queue a window of a corpus entry, mutated, on both sides. */
  const refillFromCorpus = (gen: ParentGenOptions | null): void => {
    const e = rng.pick(corpus) as ReadonlyArray<GuideItem>
    const other = rng.pick(corpus) as ReadonlyArray<GuideItem>
    const start = rng.int(e.length)
    let items = e.slice(start, start + 1 + rng.int(16))
    if (rng.chance(0.2)) {
      const s2 = rng.int(other.length)
      items = [...items, ...other.slice(s2, s2 + 1 + rng.int(8))]
    }
    const edits = new Set(Array.from({ length: 1 + rng.int(3) }, () => rng.int(items.length)))
    const otherParent = other.find((i) => i.side === "parent")
    const otherVm = other.find((i) => i.side === "vm")
    for (const [i, it] of items.entries()) {
      if (it.side === "parent") {
        const msgs = edits.has(i) && gen !== null
          ? it.msgs.map((m, j) => (j === rng.int(it.msgs.length) ? mutateParentMsg(rng, m, otherParent?.side === "parent" ? (otherParent.msgs[0] ?? m) : m, gen) : m))
          : it.msgs
        parentQ.push(msgs)
      } else {
        vmQ.push(edits.has(i) ? mutateVmMsg(rng, it.msg, otherVm?.side === "vm" ? otherVm.msg : it.msg) : it.msg)
      }
    }
  }

  const guide: DispatchGuide = {
    parent: (r, gen) => {
      if (parentQ.length === 0 && corpus.length > 0 && r.chance(mutateRate)) refillFromCorpus(gen)
      const m = parentQ.shift()
      if (m !== undefined) stats.fromCorpus += m.length
      return m ?? null
    },
    vm: (r) => {
      if (vmQ.length === 0 && corpus.length > 0 && r.chance(mutateRate)) refillFromCorpus(null)
      const m = vmQ.shift()
      if (m !== undefined) stats.fromCorpus++
      return m ?? null
    },
    sent: (item) => {
      round.push(item)
    },
    roundEnd: () => {
      stats.rounds++
      const t = o.session.take()
      stats.takes++
      const n = o.map.merge(t)
      if (n.bytes + n.functions > 0 && round.length > 0) {
        stats.novelRounds++
        corpus.push(round)
      }
      round = []
      stats.corpus = corpus.length
    }
  }
  return { guide, stats }
}

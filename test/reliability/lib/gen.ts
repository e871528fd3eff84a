/**
 * Hostile message generators for the fuzzers, shared by the tests (short
 * runs) and scripts/fuzz.ts (the million-message run).
 *
 * Payloads are random, truncated, oversized, wrongly sized by one, empty,
 * or mutations of well-formed structs (bit flips, boundary values at
 * aligned offsets), with or without an fd. The parent generator can be
 * told which VMs are the innocent bystanders: it never asks the vmm to end
 * them (TERMINATE_VM_REQUEST, START_VM_* under their id or name, CTL_RESET
 * with CONFIG_VMS), since those are the parent's legitimate powers, not
 * faults; everything else is fair game.
 */
import { Either } from "effect"
import * as T from "../../../src/schema/imsgTypes.ts"
import {
  emptyVmdConfig,
  emptyVmopAddrResult,
  emptyVmopCreateParams,
  emptyVmopId,
  encodeVmdConfig,
  encodeVmopAddrResult,
  encodeVmopCreateParams,
  encodeVmopId,
  SIZEOF
} from "../../../src/schema/structs.ts"
import { MAX_IMSG_PAYLOAD } from "../../../src/schema/imsgHeader.ts"
import type { Rng } from "./rng.ts"

/** One message as a peer would frame it (always a valid frame). */
export interface FuzzImsg {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly withFd: boolean
}

/** The payload size each type must have on the parent → vmm path (null: any, not read). */
export const PARENT_SIZES: ReadonlyMap<number, number | null> = new Map<number, number | null>([
  [T.IMSG_CTL_VERBOSE, 4],
  [T.IMSG_CTL_RESET, 4],
  [T.IMSG_VMDOP_START_VM_REQUEST, SIZEOF.vmop_create_params],
  [T.IMSG_VMDOP_START_VM_CDROM, null],
  [T.IMSG_VMDOP_START_VM_DISK, 4],
  [T.IMSG_VMDOP_START_VM_IF, 4],
  [T.IMSG_VMDOP_START_VM_END, null],
  [T.IMSG_VMDOP_PAUSE_VM, SIZEOF.vmop_id],
  [T.IMSG_VMDOP_UNPAUSE_VM, SIZEOF.vmop_id],
  [T.IMSG_VMDOP_TERMINATE_VM_REQUEST, SIZEOF.vmop_id],
  [T.IMSG_VMDOP_GET_INFO_VM_REQUEST, null],
  [T.IMSG_VMDOP_CONFIG, SIZEOF.vmd_config],
  [T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, SIZEOF.vmop_addr_result],
  [T.IMSG_VMDOP_RECEIVE_VMM_FD, null],
  [T.IMSG_VMDOP_RECEIVE_PSP_FD, null]
])

/** The vmm → parent messages and the rest of the enum: a parent never sends them. */
const OTHER_TYPES = Array.from({ length: 45 }, (_, i) => i).filter((t) => !PARENT_SIZES.has(t))

/** Does this parent message have a payload the vmm must refuse (wrong size for a sized type, or an unknown type)? */
export const parentMalformed = (m: FuzzImsg): boolean => {
  if (!PARENT_SIZES.has(m.type)) return true
  const want = PARENT_SIZES.get(m.type)
  return want !== null && want !== undefined && m.data.length !== want
}

const BOUNDARY32 = [0, 1, 2, 3, 4, 5, 16, 63, 64, 65, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 0x10000]

/** Flip bits and drop boundary values into a copy of a well-formed payload. */
export const mutate = (rng: Rng, good: Uint8Array): Uint8Array => {
  const b = good.slice()
  if (b.length === 0) return b
  const view = new DataView(b.buffer)
  const edits = 1 + rng.int(rng.chance(0.2) ? 32 : 4)
  for (let i = 0; i < edits; i++) {
    switch (rng.int(4)) {
      case 0: {
        const at = rng.int(b.length)
        b[at] = (b[at] as number) ^ (1 << rng.int(8))
        break
      }
      case 1:
        b[rng.int(b.length)] = rng.int(256)
        break
      default:
        if (b.length >= 4) view.setUint32(rng.int(b.length >> 2) * 4, rng.pick(BOUNDARY32), true)
    }
  }
  return b
}

const orThrow = (e: Either.Either<Uint8Array, { readonly message: string }>): Uint8Array =>
  Either.getOrThrowWith(e, (err) => new Error(err.message))

const NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._"

/** A create request a vmm would accept (a fuzz VM), before mutation. */
export const goodCreateParams = (rng: Rng, name: string): Uint8Array => {
  const p = emptyVmopCreateParams()
  const ndisks = rng.int(3)
  const nnics = rng.int(3)
  return orThrow(
    encodeVmopCreateParams({
      ...p,
      vmc_name: name,
      vmc_flags: 0x1f,
      vmc_ncpus: BigInt(rng.int(4)),
      vmc_nmemranges: 1n,
      vmc_memranges: p.vmc_memranges.map((r, i) => (i === 0 ? { ...r, vmr_size: BigInt(rng.int(4)) << 28n } : r)),
      vmc_kernel: -1,
      vmc_ndisks: BigInt(ndisks),
      vmc_disks: p.vmc_disks.map((d, i) => (i < ndisks ? `/var/vm/${name}-${i}.img` : d)),
      vmc_nnics: BigInt(nnics),
      vmc_ifnames: p.vmc_ifnames.map((n, i) => (i < nnics ? `tap${i}` : n))
    })
  )
}

const vmopId = (id: number, flags: number) => orThrow(encodeVmopId({ ...emptyVmopId(), vid_id: id >>> 0, vid_flags: flags >>> 0 }))

const u32le = (n: number) => {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n >>> 0, true)
  return b
}

export interface ParentGenOptions {
  /** The innocent VMs' vmd ids: never terminated, re-registered or restarted by the fuzzer. */
  readonly protectedIds: ReadonlySet<number>
  readonly protectedNames: ReadonlySet<string>
  /** The ids the fuzzer starts and stops its own VMs under (bounds how many exist at once). */
  readonly fuzzIds: ReadonlyArray<number>
  /** Allow START_VM_END with a tty for a fuzz id (spawns a VM process). */
  readonly allowStarts: boolean
  /** Send fds (real: /dev/null; memory: a fresh table fd). */
  readonly fdRate: number
}

/** A payload for `type`: well-formed, mutated, or the wrong size. */
const parentPayload = (rng: Rng, type: number, o: ParentGenOptions): Uint8Array => {
  const want = PARENT_SIZES.get(type)
  const sizeChoice = rng.weighted<"exact" | "off1" | "zero" | "small" | "big" | "max">([
    [60, "exact"],
    [12, "off1"],
    [8, "zero"],
    [10, "small"],
    [8, "big"],
    [2, "max"]
  ])
  const exact = want ?? 0
  switch (sizeChoice) {
    case "off1":
      return rng.bytes(Math.max(0, exact + (rng.chance(0.5) ? 1 : -1)))
    case "zero":
      return new Uint8Array(0)
    case "small":
      return rng.bytes(rng.int(80))
    case "big":
      return rng.bytes(rng.int(MAX_IMSG_PAYLOAD + 1))
    case "max":
      return rng.bytes(MAX_IMSG_PAYLOAD)
    case "exact":
      break
  }
  if (want === null || want === undefined) return rng.chance(0.8) ? new Uint8Array(0) : rng.bytes(rng.int(64))
  const pristine = rng.chance(0.4)
  let good: Uint8Array
  switch (type) {
    case T.IMSG_VMDOP_START_VM_REQUEST: {
      const name = rng.chance(0.7) ? `fzp-${rng.int(1000)}` : Array.from({ length: 1 + rng.int(12) }, () => rng.pick([...NAME_CHARS])).join("")
      good = goodCreateParams(rng, name)
      break
    }
    case T.IMSG_VMDOP_PAUSE_VM:
    case T.IMSG_VMDOP_UNPAUSE_VM:
    case T.IMSG_VMDOP_TERMINATE_VM_REQUEST:
      good = vmopId(rng.chance(0.8) ? rng.pick(o.fuzzIds) : rng.chance(0.5) ? 0 : rng.u32(), rng.int(4))
      break
    case T.IMSG_VMDOP_CONFIG:
      good = orThrow(encodeVmdConfig(emptyVmdConfig()))
      break
    case T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE:
      good = orThrow(
        encodeVmopAddrResult({
          ...emptyVmopAddrResult(),
          var_vmid: rng.chance(0.5) ? rng.pick([...o.protectedIds, ...o.fuzzIds]) : rng.u32(),
          var_nic_idx: rng.int(6),
          var_addr: rng.bytes(6)
        })
      )
      break
    case T.IMSG_CTL_VERBOSE:
      good = u32le(rng.pick([0, 1, 2, 3, -1, 0x7fffffff, 0x80000000]))
      break
    default:
      good = u32le(rng.chance(0.8) ? rng.int(6) : rng.u32())
  }
  return pristine ? good : mutate(rng, good)
}

/** Keep the innocent VMs out of the fuzzer's legitimate powers (see the file comment). */
export const sanitizeParent = (m: FuzzImsg, o: ParentGenOptions, rng: Rng): FuzzImsg => {
  let { peerid, data, withFd } = m
  const isStart = m.type >= T.IMSG_VMDOP_START_VM_REQUEST && m.type <= T.IMSG_VMDOP_START_VM_END
  if (isStart && o.protectedIds.has(peerid)) peerid = rng.pick(o.fuzzIds)
  if (m.type === T.IMSG_VMDOP_START_VM_END && !o.allowStarts) withFd = false
  if (m.type === T.IMSG_VMDOP_START_VM_REQUEST && data.length === SIZEOF.vmop_create_params) {
    data = data.slice()
    const view = new DataView(data.buffer)
    if (o.protectedIds.has(view.getUint32(0, true))) view.setUint32(0, 0, true)
    let end = 4
    while (end < 4 + 63 && data[end] !== 0) end++
    const name = String.fromCharCode(...data.subarray(4, end))
    if (o.protectedNames.has(name)) data[4] = "Z".charCodeAt(0)
  }
  if (m.type === T.IMSG_VMDOP_TERMINATE_VM_REQUEST && data.length === SIZEOF.vmop_id) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
    if (o.protectedIds.has(view.getUint32(0, true))) {
      data = data.slice()
      new DataView(data.buffer).setUint32(0, rng.pick(o.fuzzIds), true)
    }
  }
  if (m.type === T.IMSG_CTL_RESET && data.length === 4 && ((data[0] as number) & 1) !== 0) {
    data = data.slice()
    data[0] = (data[0] as number) & ~1
  }
  return { ...m, peerid, data, withFd }
}

/** One hostile or odd parent message. */
export const parentMessage = (rng: Rng, o: ParentGenOptions): FuzzImsg => {
  const type = rng.weighted<number>([
    [80, rng.pick([...PARENT_SIZES.keys()])],
    [12, rng.pick(OTHER_TYPES)],
    [8, rng.u32()]
  ])
  const isStart = type >= T.IMSG_VMDOP_START_VM_REQUEST && type <= T.IMSG_VMDOP_START_VM_END
  const peerid = isStart && rng.chance(0.85)
    ? rng.pick(o.fuzzIds)
    : rng.pick([0, T.PEERID_NONE, T.IMSG_AGENTX_PEERID, rng.u32(), rng.pick(o.fuzzIds)])
  const fdWanted = type === T.IMSG_VMDOP_START_VM_END || type === T.IMSG_VMDOP_START_VM_REQUEST ? 0.7 : o.fdRate
  const m: FuzzImsg = {
    type,
    peerid,
    pid: rng.chance(0.9) ? 1 : rng.u32(),
    data: parentPayload(rng, type, o),
    withFd: rng.chance(fdWanted)
  }
  return sanitizeParent(m, o, rng)
}

/** A start sequence for a fuzz id (often mutated): what reaches deepest into vmm_start_vm. */
export const parentStartSequence = (rng: Rng, o: ParentGenOptions): Array<FuzzImsg> => {
  const id = rng.pick(o.fuzzIds)
  const msg = (type: number, data: Uint8Array, withFd: boolean): FuzzImsg =>
    sanitizeParent({ type, peerid: id, pid: 1, data, withFd }, o, rng)
  const params = goodCreateParams(rng, `fzs-${id}-${rng.int(100)}`)
  const out = [msg(T.IMSG_VMDOP_START_VM_REQUEST, rng.chance(0.7) ? params : mutate(rng, params), rng.chance(0.9))]
  const view = new DataView(params.buffer)
  const ndisks = Number(view.getBigUint64(2696, true))
  const nnics = Number(view.getBigUint64(7856, true))
  if (rng.chance(0.2)) out.push(msg(T.IMSG_VMDOP_START_VM_CDROM, new Uint8Array(0), rng.chance(0.8)))
  for (let i = 0; i < ndisks + rng.int(2); i++) out.push(msg(T.IMSG_VMDOP_START_VM_DISK, u32le(rng.chance(0.9) ? i : rng.int(6)), rng.chance(0.95)))
  for (let i = 0; i < nnics; i++) out.push(msg(T.IMSG_VMDOP_START_VM_IF, u32le(rng.chance(0.9) ? i : rng.int(6)), rng.chance(0.95)))
  if (rng.chance(0.9)) out.push(msg(T.IMSG_VMDOP_START_VM_END, new Uint8Array(0), rng.chance(0.9)))
  return out
}

// ---------------------------------------------------------------------------
// VM → vmm

export type VmMsgKind = "benign" | "badType" | "badSize" | "withFd"

/** A message from a VM process; `hostile` ones must end that VM (and only that VM). */
export interface VmFuzzImsg extends FuzzImsg {
  readonly hostile: boolean
}

/** vmr_id values a fuzzing VM puts in forwarded responses: never an innocent VM's id. */
export const FORGED_ID_BASE = 0x40000000

export const vmMessage = (rng: Rng, hostileRate: number): VmFuzzImsg => {
  const withFd = rng.chance(0.1)
  if (rng.chance(hostileRate)) {
    if (rng.chance(0.5)) {
      let type = rng.chance(0.7) ? rng.int(45) : rng.u32()
      if (type === T.IMSG_VMDOP_VM_SHUTDOWN || type === T.IMSG_VMDOP_VM_REBOOT) type = 99
      if (type === T.IMSG_VMDOP_PAUSE_VM_RESPONSE || type === T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE) type = 0
      return { type, peerid: rng.u32(), pid: rng.u32(), data: rng.bytes(rng.int(64)), withFd, hostile: true }
    }
    const type = rng.pick([T.IMSG_VMDOP_PAUSE_VM_RESPONSE, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE])
    let size = rng.int(rng.chance(0.5) ? 64 : MAX_IMSG_PAYLOAD + 1)
    if (size === SIZEOF.vmop_result) size = 0
    return { type, peerid: rng.u32(), pid: rng.u32(), data: rng.bytes(size), withFd, hostile: true }
  }
  const type = rng.pick([
    T.IMSG_VMDOP_VM_SHUTDOWN,
    T.IMSG_VMDOP_VM_REBOOT,
    T.IMSG_VMDOP_PAUSE_VM_RESPONSE,
    T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE
  ])
  let data: Uint8Array
  if (type === T.IMSG_VMDOP_PAUSE_VM_RESPONSE || type === T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE) {
    data = rng.bytes(SIZEOF.vmop_result)
    new DataView(data.buffer).setUint32(4, FORGED_ID_BASE + rng.int(0x10000000), true)
  } else {
    // vmm.c does not look at the payload of these two
    data = rng.chance(0.8) ? new Uint8Array(0) : rng.bytes(rng.int(128))
  }
  return { type, peerid: rng.chance(0.5) ? T.PEERID_NONE : rng.u32(), pid: rng.u32(), data, withFd, hostile: false }
}

/** Bytes that break the frame stream: a len below 16, above MAX_IMSGSIZE, or a frame cut short by EOF. */
export type RawGarbage = { readonly bytes: Uint8Array; readonly kind: "shortLen" | "longLen" | "truncated" | "noise" }

export const rawGarbage = (rng: Rng): RawGarbage => {
  const hdr = new Uint8Array(16)
  const v = new DataView(hdr.buffer)
  v.setUint32(0, rng.int(50), true)
  v.setUint32(8, rng.u32(), true)
  v.setUint32(12, rng.u32(), true)
  switch (rng.int(4)) {
    case 0:
      v.setUint32(4, rng.int(16) | (rng.chance(0.3) ? 0x80000000 : 0), true)
      return { bytes: hdr, kind: "shortLen" }
    case 1:
      v.setUint32(4, (16385 + rng.int(0x7fffbfff)) | (rng.chance(0.3) ? 0x80000000 : 0), true)
      return { bytes: hdr, kind: "longLen" }
    case 2: {
      const len = 17 + rng.int(2000)
      v.setUint32(4, len, true)
      const cut = rng.int(len - 1)
      const full = new Uint8Array(len)
      full.set(hdr)
      full.set(rng.bytes(len - 16), 16)
      return { bytes: full.subarray(0, Math.max(1, cut)), kind: "truncated" }
    }
    default:
      return { bytes: rng.bytes(1 + rng.int(256)), kind: "noise" }
  }
}

/** Serialize messages as a libutil writer would (no fds: those travel beside the bytes). */
export const frame = (msgs: ReadonlyArray<FuzzImsg>): Uint8Array => {
  const total = msgs.reduce((n, m) => n + 16 + m.data.length, 0)
  const out = new Uint8Array(total)
  const v = new DataView(out.buffer)
  let at = 0
  for (const m of msgs) {
    v.setUint32(at, m.type >>> 0, true)
    v.setUint32(at + 4, ((16 + m.data.length) | (m.withFd ? 0x80000000 : 0)) >>> 0, true)
    v.setUint32(at + 8, m.peerid >>> 0, true)
    v.setUint32(at + 12, m.pid >>> 0, true)
    out.set(m.data, at + 16)
    at += 16 + m.data.length
  }
  return out
}

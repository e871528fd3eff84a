/**
 * --trace: every imsg in and out, on every channel, by name with its
 * payload decoded field by field; and the raw start handshake before a VM's
 * socket becomes a channel (struct vmd_vm, the local prefix, the 4-byte id,
 * or why a read failed), in both the vmm and our VM process. A decorator
 * over the ImsgChannel service, so it sees exactly what goes on the wire
 * and costs nothing when off.
 */
import { Effect, Either, Layer, Stream } from "effect"
import * as T from "../schema/imsgTypes.ts"
import * as S from "../schema/structs.ts"
import type { SchemaError } from "../schema/codec.ts"
import { ImsgChannel, type Channel, type Imsg, type OutgoingImsg } from "../services/ImsgChannel.ts"
import { logState } from "./log.ts"

type Decoder = (data: Uint8Array) => Either.Either<unknown, SchemaError>

const PAYLOADS: ReadonlyMap<number, Decoder> = new Map<number, Decoder>([
  [T.IMSG_CTL_VERBOSE, S.imsgIntRead],
  [T.IMSG_CTL_RESET, S.imsgUintRead],
  [T.IMSG_VMDOP_START_VM_REQUEST, S.decodeVmopCreateParams],
  [T.IMSG_VMDOP_START_VM_DISK, S.imsgUintRead],
  [T.IMSG_VMDOP_START_VM_IF, S.imsgUintRead],
  [T.IMSG_VMDOP_START_VM_RESPONSE, S.decodeVmopResult],
  [T.IMSG_VMDOP_PAUSE_VM, S.decodeVmopId],
  [T.IMSG_VMDOP_PAUSE_VM_RESPONSE, S.decodeVmopResult],
  [T.IMSG_VMDOP_UNPAUSE_VM, S.decodeVmopId],
  [T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE, S.decodeVmopResult],
  [T.IMSG_VMDOP_TERMINATE_VM_REQUEST, S.decodeVmopId],
  [T.IMSG_VMDOP_TERMINATE_VM_RESPONSE, S.decodeVmopResult],
  [T.IMSG_VMDOP_TERMINATE_VM_EVENT, S.decodeVmopResult],
  [T.IMSG_VMDOP_GET_INFO_VM_DATA, S.decodeVmopInfoResult],
  [T.IMSG_VMDOP_GET_INFO_VM_END_DATA, S.imsgIntRead],
  [T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, S.decodeVmopAddrResult],
  [T.IMSG_VMDOP_CONFIG, S.decodeVmdConfig]
])

/** Field values, skipping zero bytes arrays and empty strings so a create request stays readable. */
const show = (v: unknown): string => {
  if (typeof v === "bigint") return v.toString()
  if (typeof v === "string") return JSON.stringify(v)
  if (v instanceof Uint8Array) return Buffer.from(v).toString("hex")
  if (Array.isArray(v)) return `[${v.map(show).join(",")}]`
  if (typeof v === "object" && v !== null)
    return `{${Object.entries(v)
      .filter(([, x]) => !(x === "" || (x instanceof Uint8Array && x.every((b) => b === 0))))
      .map(([k, x]) => `${k}=${show(x)}`)
      .join(" ")}}`
  return String(v)
}

export const describeImsg = (type: number, peerid: number, pid: number, data: Uint8Array, hasFd: boolean): string => {
  const head = `${T.imsgTypeName(type)} peerid=${peerid === T.PEERID_NONE ? "-1" : peerid} pid=${pid} len=${data.length}${hasFd ? " fd" : ""}`
  if (data.length === 0) return head
  const decode = PAYLOADS.get(type)
  if (decode === undefined) return `${head} data=${Buffer.from(data.subarray(0, 64)).toString("hex")}`
  const v = decode(data)
  return Either.isRight(v) ? `${head} ${show(v.right)}` : `${head} (undecodable: ${v.left.message})`
}

const line = (fd: number, dir: "<" | ">", text: string) =>
  logState.sink("info", `${logState.title}: trace fd ${fd} ${dir} ${text}`)

const v4 = (b: Uint8Array) => [...b].join(".")
const v6 = (b: Uint8Array) => Array.from({ length: 8 }, (_, i) => ((b[2 * i]! << 8) | b[2 * i + 1]!).toString(16)).join(":")
const fdList = (ns: ReadonlyArray<number>) => `[${ns.filter((n) => n !== -1).join(",")}]`

/**
 * The raw handshake's pieces, told apart by their sizes (vmd.md §7): what a
 * VM process is told (its ids, state, name and every fd number it must
 * find), the prefix, the id; anything else in hex.
 */
export const describeRaw = (data: Uint8Array): string => {
  if (data.length === S.SIZEOF.vmd_vm) {
    const d = S.decodeVmdVm(data)
    if (Either.isLeft(d)) return `struct vmd_vm len=${data.length} (undecodable: ${d.left.message})`
    const vm = d.right
    const p = vm.vm_params
    return (
      `struct vmd_vm len=${data.length} {vm_vmid=${vm.vm_vmid} vm_pid=${vm.vm_pid} vm_state=${vm.vm_state}` +
      ` vmc_name=${JSON.stringify(p.vmc_name)} vmc_ncpus=${p.vmc_ncpus} vmc_ndisks=${p.vmc_ndisks} vmc_nnics=${p.vmc_nnics}` +
      ` vm_kernel=${vm.vm_kernel} vm_cdrom=${vm.vm_cdrom} vm_disks=[${vm.vm_disks.map(fdList).join(",")}]` +
      ` vif_fd=${fdList(vm.vm_ifs.map((i) => i.vif_fd))} vm_tty=${vm.vm_tty}}`
    )
  }
  if (data.length === S.SIZEOF.local_prefix) {
    const d = S.decodeLocalPrefix(data)
    if (Either.isLeft(d)) return `struct local_prefix len=${data.length} (undecodable: ${d.left.message})`
    const lp = d.right
    return `struct local_prefix len=${data.length} {lp_in=${v4(lp.lp_in)} lp_mask=${v4(lp.lp_mask)} lp_in6=${v6(lp.lp_in6)} lp_mask6=${v6(lp.lp_mask6)}}`
  }
  if (data.length === 4) return `vm id ${Either.getOrElse(S.decodeUint(data), () => -1)}`
  return `len=${data.length} data=${Buffer.from(data.subarray(0, 64)).toString("hex")}`
}

const traceOut = (ch: Channel, msg: OutgoingImsg) =>
  line(ch.fd, ">", describeImsg(msg.type, msg.peerid, msg.pid, msg.data ?? new Uint8Array(0), msg.fd != null))

const traceIn = (ch: Channel, m: Imsg) =>
  line(ch.fd, "<", describeImsg(m.type, m.peerid, m.pid, m.data, m.fd !== null))

const traceChannel = (ch: Channel): Channel => ({
  ...ch,
  send: (msg: OutgoingImsg) => Effect.zipRight(Effect.sync(() => traceOut(ch, msg)), ch.send(msg)),
  // what composeParent sends through, and the exit path's event (unsafeSendNow)
  unsafeSend: (msg: OutgoingImsg) => {
    traceOut(ch, msg)
    return ch.unsafeSend(msg)
  },
  unsafeSendNow: (msg: OutgoingImsg) => {
    traceOut(ch, msg)
    return ch.unsafeSendNow(msg)
  },
  sendAll: (msgs: Iterable<OutgoingImsg>) => {
    const list = [...msgs]
    return Effect.zipRight(Effect.sync(() => list.forEach((m) => traceOut(ch, m))), ch.sendAll(list))
  },
  messages: ch.messages.pipe(Stream.tap((m: Imsg) => Effect.sync(() => traceIn(ch, m)))),
  receive: Effect.tap(ch.receive, (ms) => {
    if (ms !== null) for (const m of ms) traceIn(ch, m)
  }),
  listen: (l) =>
    ch.listen({
      messages: (ms) => {
        for (const m of ms) traceIn(ch, m)
        l.messages(ms)
      },
      end: l.end
    })
})

/** Wrap the ImsgChannel service in the context so every channel it opens is traced. */
export const withTrace = Layer.effect(
  ImsgChannel,
  Effect.map(ImsgChannel, (svc) => ({
    ...svc,
    open: (fd) => Effect.map(svc.open(fd), traceChannel),
    openOwned: (fd, options) => Effect.map(svc.openOwned(fd, options), traceChannel),
    writeRaw: (fd, bytes, timeoutMs) =>
      Effect.zipRight(Effect.sync(() => line(fd.num, ">", `raw ${describeRaw(bytes)}`)), svc.writeRaw(fd, bytes, timeoutMs)),
    readRaw: (fd, n, timeoutMs, blockMs) =>
      svc.readRaw(fd, n, timeoutMs, blockMs).pipe(
        Effect.tapBoth({
          onSuccess: (bytes) => Effect.sync(() => line(fd.num, "<", `raw ${describeRaw(bytes)}`)),
          onFailure: (e) => Effect.sync(() => line(fd.num, "<", `raw ${n} bytes: ${e.message}`))
        })
      )
  }))
)

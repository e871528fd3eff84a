/**
 * What the fake parent does and checks, shared by the example and property
 * tests: the START_VM_* sequence of config_setvm, readable dumps of replies,
 * and the fd-table assertions.
 */
import { Effect } from "effect"
import { expect } from "vitest"
import type { Fd } from "../../src/services/Fd.ts"
import type { Harness, ParentMsg } from "./harness.ts"
import { createParams, int32, M, readInfo, readInt, readResult, typeName, uint32 } from "./wire.ts"
import type { CreateSpec } from "./wire.ts"

/** Which START_VM_* messages to send, and with which fds (config_setvm order). */
export interface StartParts {
  /** START_VM_REQUEST carries a kernel fd (default true). */
  readonly kernel?: boolean
  /** Send START_VM_REQUEST with this payload instead of a well-formed one. */
  readonly requestData?: Uint8Array
  /** START_VM_CDROM: with an fd, without one, or not sent. */
  readonly cdrom?: "fd" | "nofd" | "none"
  /** START_VM_DISK: one entry per message, [disk index, with fd]. Default: none. */
  readonly disks?: ReadonlyArray<readonly [number, boolean]>
  /** START_VM_IF: one entry per message, [nic index, with fd]. */
  readonly nics?: ReadonlyArray<readonly [number, boolean]>
  /** START_VM_END: with a tty, without one, or not sent (default "tty"). */
  readonly end?: "tty" | "notty" | "none"
}

/** One message of a start sequence and the label of the fd it carried ("" for none). */
export interface SentStep {
  readonly type: number
  readonly fd: string
}

let fdSerial = 0

/** Send a start sequence for `vmid` back to back, as the parent pipelines it. Returns each step. */
export const sendStart = (h: Harness, vmid: number, spec: CreateSpec, parts: StartParts = {}) =>
  Effect.gen(function* () {
    const sent: Array<SentStep> = []
    const step = (type: number, what: string | null, data?: Uint8Array) =>
      Effect.suspend(() => {
        const fd: Fd | null = what === null ? null : h.makeFd(`vm${vmid}.${what}#${++fdSerial}`)
        sent.push({ type, fd: fd?.label ?? "" })
        return h.send({ type, peerid: vmid, data: data ?? new Uint8Array(0), fd })
      })
    yield* step(M.START_VM_REQUEST, parts.kernel === false ? null : "kernel", parts.requestData ?? createParams(spec))
    if ((parts.cdrom ?? "none") !== "none") yield* step(M.START_VM_CDROM, parts.cdrom === "fd" ? "cdrom" : null)
    for (const [i, withFd] of parts.disks ?? []) yield* step(M.START_VM_DISK, withFd ? `disk${i}` : null, uint32(i))
    for (const [i, withFd] of parts.nics ?? []) yield* step(M.START_VM_IF, withFd ? `if${i}` : null, uint32(i))
    if ((parts.end ?? "tty") !== "none") yield* step(M.START_VM_END, parts.end === "notty" ? null : "tty")
    return sent
  })

/** A readable form of a message: type name, header, decoded payload. */
export const show = (m: { readonly type: number; readonly peerid: number; readonly pid: number; readonly data: Uint8Array; readonly fd?: boolean }) => {
  let payload: unknown
  if (m.type === M.GET_INFO_VM_DATA && m.data.length === 200) payload = readInfo(m.data)
  else if (m.data.length === 28) payload = readResult(m.data)
  else if (m.data.length === 4) payload = readInt(m.data)
  else payload = Buffer.from(m.data).toString("hex")
  return { type: typeName(m.type), peerid: m.peerid >>> 0, pid: m.pid, payload, ...(m.fd === true ? { fd: true } : {}) }
}

/** An expected vmm → parent message from proc_compose_imsg (header pid 1). */
export const reply = (type: number, peerid: number, data: Uint8Array) => ({ type, peerid, pid: 1, data })

export const expectParent = (got: ReadonlyArray<ParentMsg>, want: ReadonlyArray<{ type: number; peerid: number; pid: number; data: Uint8Array }>) => {
  expect(got.map(show)).toEqual(want.map(show))
  // and byte for byte
  expect(got.map((m) => Buffer.from(m.data).toString("hex"))).toEqual(want.map((m) => Buffer.from(m.data).toString("hex")))
}

/** The fds open in the table, by label, sorted. */
export const openLabels = (h: Harness): Array<string> => h.table.openFds().map((f) => f.label).sort()

/** Nothing closed twice, anywhere. */
export const expectNoDoubleClose = (h: Harness) => {
  expect(h.table.doubleCloses).toBe(0)
  expect(h.proxyDoubleCloses()).toBe(0)
}

/** Exactly these fds are open (labels), and nothing was closed twice. */
export const expectOpen = (h: Harness, labels: ReadonlyArray<string>) => {
  expect(openLabels(h)).toEqual([...labels].sort())
  expectNoDoubleClose(h)
}

export { int32, uint32 }

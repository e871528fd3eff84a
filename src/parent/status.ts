/**
 * `vmctl status` output (vmctl.c print_vm_info, vm_state; libutil
 * fmt_scaled) for the rows GET_INFO returns. Pure, except for reading the
 * user and group names once.
 */
import { readFileSync } from "node:fs"
import { VM_STATE_DISABLED, VM_STATE_PAUSED, VM_STATE_RUNNING, VM_STATE_SHUTDOWN, VM_STATE_WAITING } from "../schema/constants.ts"
import type { VmopInfoResult } from "../schema/structs.ts"

const UNITS = "BKMGTPE"

/** fmt_scaled(3): "512M", "1.5G", "0B"; at most 3 significant digits. */
export const fmtScaled = (value: bigint): string => {
  const abval = value < 0n ? -value : value
  let number = value
  let fract = 0n
  let unit = 0
  let factor = 1n
  for (let i = 0; i < UNITS.length; i++, factor *= 1024n) {
    if (abval / 1024n < factor) {
      unit = i
      fract = i === 0 ? 0n : abval % factor
      number /= factor
      if (i > 0) fract /= factor / 1024n
      break
    }
  }
  fract = (10n * fract + 512n) / 1024n
  // if the result would be >= 10, round main number
  if (fract >= 10n) {
    number += number >= 0n ? 1n : -1n
    fract = 0n
  }
  if (number === 0n) return "0B"
  if (unit === 0 || number >= 100n || number <= -100n) {
    if (fract >= 5n) number += number >= 0n ? 1n : -1n
    return `${number}${UNITS[unit]}`
  }
  return `${number}.${fract}${UNITS[unit]}`
}

/** vmctl's vm_state: the order matters (a paused VM is also running). */
export const vmStateName = (mask: number): string => {
  if (mask & VM_STATE_PAUSED) return "paused"
  if (mask & VM_STATE_WAITING) return "waiting"
  if (mask & VM_STATE_SHUTDOWN) return "stopping"
  if (mask & VM_STATE_RUNNING) return "running"
  if (mask === 0 || mask & VM_STATE_DISABLED) return "stopped"
  return "unknown"
}

/** Names from an /etc/passwd or /etc/group text: id -> name. */
export const parseIdNames = (text: string): ReadonlyMap<number, string> => {
  const names = new Map<number, string>()
  for (const line of text.split("\n")) {
    const f = line.split(":")
    const id = Number(f[2])
    if (f[0] !== undefined && f[0] !== "" && Number.isInteger(id) && !names.has(id)) names.set(id, f[0])
  }
  return names
}

const readNames = (path: string): ReadonlyMap<number, string> => {
  try {
    return parseIdNames(readFileSync(path, "latin1"))
  } catch {
    return new Map()
  }
}

let users: ReadonlyMap<number, string> | undefined
let groups: ReadonlyMap<number, string> | undefined

/** user_from_uid / group_from_gid with a numeric fallback; gid -1 means no group. */
export const ownerName = (uid: number, gid: bigint): string => {
  users ??= readNames("/etc/passwd")
  const user = users.get(uid) ?? String(uid)
  if (gid === -1n) return user
  groups ??= readNames("/etc/group")
  // vmctl builds it in a char[16]
  return `${user}:${groups.get(Number(gid)) ?? String(gid)}`.slice(0, 15)
}

const pad = (s: string | number | bigint, width: number) => String(s).padStart(width)

export const STATUS_HEADER = [
  pad("ID", 5),
  pad("PID", 5),
  pad("VCPUS", 5),
  pad("MAXMEM", 7),
  pad("CURMEM", 7),
  pad("TTY", 7),
  pad("OWNER", 12),
  pad("STATE", 8),
  "NAME"
].join(" ")

/** One line of `vmctl status`: "%5u %5u %5zd %7s %7s %7s %12s %8s %s". */
export const statusLine = (vir: VmopInfoResult): string => {
  const running = vir.vir_creator_pid !== 0 && vir.vir_id !== 0
  const tty = vir.vir_ttyname === "" ? "-" : vir.vir_ttyname.slice(vir.vir_ttyname.lastIndexOf("/") + 1) || vir.vir_ttyname
  return [
    pad(vir.vir_id, 5),
    pad(running ? vir.vir_creator_pid : "-", 5),
    pad(vir.vir_ncpus, 5),
    pad(fmtScaled(vir.vir_memory_size), 7),
    pad(running ? fmtScaled(vir.vir_used_size) : "-", 7),
    pad(running ? tty : "-", 7),
    pad(ownerName(vir.vir_uid, vir.vir_gid), 12),
    pad(vmStateName(vir.vir_state), 8),
    vir.vir_name
  ].join(" ")
}

export const statusTable = (rows: ReadonlyArray<VmopInfoResult>): string =>
  [STATUS_HEADER, ...rows.map(statusLine)].join("\n")

/**
 * What /proc says about a process (Linux): its fds and their flags, its
 * children and their states, its resident memory. For the hygiene tests
 * and the soak's samples.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs"
import { pageSize } from "../../../src/native/sys.ts"
import { procStat } from "../../e2e/proc.ts"

export { procStat }

/** O_CLOEXEC as fdinfo's "flags:" field shows it (octal 02000000). */
export const O_CLOEXEC_FLAG = 0o2000000

const ints = (dir: string): Array<number> => {
  try {
    return readdirSync(dir)
      .filter((n) => /^\d+$/.test(n))
      .map(Number)
      .sort((a, b) => a - b)
  } catch {
    return []
  }
}

/** The fd numbers of a process (empty if it is gone). */
export const fdNumbers = (pid: number): Array<number> => ints(`/proc/${pid}/fd`)

/** fd number → what it points at ("socket:[123]", "/dev/null", "pipe:[9]", ...). */
export const fdLinks = (pid: number): Map<number, string> => {
  const out = new Map<number, string>()
  for (const n of fdNumbers(pid)) {
    try {
      out.set(n, readlinkSync(`/proc/${pid}/fd/${n}`))
    } catch {
      // closed meanwhile
    }
  }
  return out
}

/** fd number → open flags (octal field of /proc/<pid>/fdinfo/<fd>), O_CLOEXEC included. */
export const fdFlags = (pid: number): Map<number, number> => {
  const out = new Map<number, number>()
  for (const n of fdNumbers(pid)) {
    try {
      const m = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${n}`, "latin1"))
      if (m !== null) out.set(n, parseInt(m[1] as string, 8))
    } catch {
      // closed meanwhile
    }
  }
  return out
}

export interface ProcStat {
  readonly pid: number
  readonly state: string
  readonly ppid: number
  readonly comm: string
}

/** Every process whose parent is `pid`, with its state (Z for a zombie). */
export const childrenOf = (pid: number): Array<ProcStat> => {
  const out: Array<ProcStat> = []
  for (const p of ints("/proc")) {
    const st = procStat(p)
    if (st !== null && st.ppid === pid) out.push(st)
  }
  return out
}

/** Children and grandchildren (with the C spawner helper, the VMs are the vmm's grandchildren). */
export const descendants = (pid: number): Array<ProcStat> => {
  const all: Array<ProcStat> = []
  for (const p of ints("/proc")) {
    const st = procStat(p)
    if (st !== null) all.push(st)
  }
  const kids = new Set(all.filter((p) => p.ppid === pid).map((p) => p.pid))
  return all.filter((p) => p.ppid === pid || kids.has(p.ppid))
}

/** Resident bytes (statm × page size); 0 if gone. */
export const rssBytes = (pid: number): number => {
  try {
    const pages = Number(readFileSync(`/proc/${pid}/statm`, "latin1").split(" ")[1])
    return pages * pageSize()
  } catch {
    return 0
  }
}

/** kill(pid, 0) and not a zombie. */
export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  const st = procStat(pid)
  return st !== null && st.state !== "Z"
}


/**
 * What the end-to-end tests read from /proc (Linux): process status and
 * ancestry, the processes of a test run (by the token in their
 * environment), and the open files behind fd numbers.
 */
import { fstatSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs"
import type { Fd } from "../../src/services/Fd.ts"

export interface ProcStat {
  readonly pid: number
  readonly comm: string
  readonly state: string
  readonly ppid: number
  readonly pgrp: number
  /** Field 6: the session id. */
  readonly session: number
}

/** /proc/<pid>/stat, or null if there is no such process. */
export const procStat = (pid: number): ProcStat | null => {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, "latin1")
  } catch {
    return null
  }
  // comm may contain spaces and parentheses: the fields start after the last ')'
  const close = text.lastIndexOf(")")
  const rest = text.slice(close + 2).split(" ")
  return {
    pid,
    comm: text.slice(text.indexOf("(") + 1, close),
    state: rest[0] ?? "?",
    ppid: Number(rest[1]),
    pgrp: Number(rest[2]),
    session: Number(rest[3])
  }
}

/** Alive and not a zombie. */
export const running = (pid: number): boolean => {
  const s = procStat(pid)
  return s !== null && s.state !== "Z" && s.state !== "X"
}

const pids = (): Array<number> =>
  readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map(Number)

export const cmdline = (pid: number): ReadonlyArray<string> => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").slice(0, -1)
  } catch {
    return []
  }
}

/** "pid [state ppid n] argv", for messages. */
export const describeProc = (pid: number): string => {
  const s = procStat(pid)
  return `${pid} [${s?.state ?? "?"} ppid ${s?.ppid ?? "?"}] ${cmdline(pid).join(" ") || s?.comm || ""}`
}

/** Every process below `root`, zombies included. */
export const descendants = (root: number = process.pid): ReadonlyArray<number> => {
  const children = new Map<number, Array<number>>()
  for (const pid of pids()) {
    const s = procStat(pid)
    if (s === null) continue
    const list = children.get(s.ppid) ?? []
    list.push(pid)
    children.set(s.ppid, list)
  }
  const out: Array<number> = []
  const todo = [...(children.get(root) ?? [])]
  while (todo.length > 0) {
    const pid = todo.pop()!
    out.push(pid)
    todo.push(...(children.get(pid) ?? []))
  }
  return out
}

/** The environment variable that marks a test run's processes. */
export const TOKEN_VARIABLE = "VMM_E2E_TOKEN"

/** Processes whose environment carries this test's token (the vmm, its VMs, wrappers). */
export const tokenProcesses = (token: string): ReadonlyArray<number> => {
  const needle = `${TOKEN_VARIABLE}=${token}\0`
  return pids().filter((pid) => {
    try {
      const env = readFileSync(`/proc/${pid}/environ`, "latin1")
      return env.startsWith(needle) || env.includes(`\0${needle}`)
    } catch {
      return false
    }
  })
}

/** The VM processes among them: the ones running with -V (not the vmm, its spawner helper or a wrapper). */
export const vmProcesses = (token: string): ReadonlyArray<number> => tokenProcesses(token).filter((pid) => cmdline(pid).includes("-V"))

/** Is `pid` below `ancestor` (a VM below the vmm: its child, or its spawner helper's)? */
export const isBelow = (pid: number, ancestor: number): boolean => descendants(ancestor).includes(pid)

export const childrenOf = (pid: number): ReadonlyArray<number> => pids().filter((p) => procStat(p)?.ppid === pid)

/** fd number -> what /proc/<pid>/fd/<n> links to. */
export const fdLinks = (pid: number): ReadonlyMap<number, string> => {
  const links = new Map<number, string>()
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      links.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`))
    } catch {
      // closed while listing
    }
  }
  return links
}

/** A link's kind without its inode: "pipe", "socket", "anon_inode:[eventfd]", or the path. */
export const fdKind = (link: string): string => /^(pipe|socket):\[\d+\]$/.exec(link)?.[1] ?? link

export interface FileId {
  readonly dev: bigint
  readonly ino: bigint
  /** For a pty master: the pty's number (fdinfo tty-index); every master is the same /dev/ptmx inode. */
  readonly tty?: number
}

const ttyIndexOf = (fdinfo: string): number | undefined => {
  const m = /^tty-index:\s*(\d+)$/m.exec(fdinfo)
  return m === null ? undefined : Number(m[1])
}

const withTty = (id: { dev: bigint; ino: bigint }, tty: number | undefined): FileId =>
  tty === undefined ? { dev: id.dev, ino: id.ino } : { dev: id.dev, ino: id.ino, tty }

/** The open file at fd n of process pid (stat through /proc/<pid>/fd/<n>). */
export const fileIdAt = (pid: number, n: number): FileId => {
  const st = statSync(`/proc/${pid}/fd/${n}`, { bigint: true })
  return withTty({ dev: st.dev, ino: st.ino }, ttyIndexOf(readFileSync(`/proc/${pid}/fdinfo/${n}`, "latin1")))
}

/** The open file behind one of our fds. */
export const fileIdOf = (fd: Fd): FileId => {
  const st = fstatSync(fd.num, { bigint: true })
  return withTty({ dev: st.dev, ino: st.ino }, ttyIndexOf(readFileSync(`/proc/self/fdinfo/${fd.num}`, "latin1")))
}

export const sameFile = (a: FileId) => (b: FileId) => a.dev === b.dev && a.ino === b.ino && a.tty === b.tty

/** The numbers of `pid`'s fds that are `file`. */
export const fdsOpenOn = (pid: number, file: FileId): ReadonlyArray<number> =>
  [...fdLinks(pid).keys()].filter((n) => {
    try {
      return sameFile(file)(fileIdAt(pid, n))
    } catch {
      return false
    }
  })

/**
 * What the Process layers' tests (ProcessNode, ProcessSpawner, ProcessDirect) share: temp
 * files as owned Fds, the report test/process/c/child.c writes about its fds,
 * and the children of a process.
 */
import { Effect, Scheduler } from "effect"
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs"
import { constants as osConstants } from "node:os"
import { join } from "node:path"
import koffi from "koffi"
import { Errno } from "../../src/schema/errno.ts"
import { Fd } from "../../src/services/Fd.ts"
import type { FdBackend } from "../../src/services/Fd.ts"
import { procStat } from "../e2e/proc.ts"

/** Fds opened by Node's fs in the tests. */
export const fsBackend: FdBackend = {
  name: "node-fs",
  closeNumber: (n) => {
    try {
      closeSync(n)
      return 0
    } catch {
      return Errno.EBADF
    }
  },
  onDoubleClose: () => {}
}

let files = 0
/** A temp file in dir() opened by Node (close-on-exec), owned by the test's scope. */
export const tempFdIn = (dir: () => string) => (label: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const path = join(dir(), `${label}-${files++}`)
      return { path, fd: new Fd(openSync(path, "w+"), fsBackend, label) }
    }),
    ({ fd }) => fd.close
  )

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
export const SIGTERM = signals["SIGTERM"] ?? 15
export const SIGKILL = signals["SIGKILL"] ?? 9

/** Wait (real time) until a file has content. */
export const untilWritten = (path: string) =>
  Effect.gen(function* () {
    for (let i = 0; i < 400; i++) {
      if (statSync(path).size > 0) return
      yield* Effect.sleep("5 millis")
    }
    return yield* Effect.die(new Error(`${path} never written`))
  })

/** What child.c reports: its pid and session, each fd asked about, every fd open. */
export interface FdReport {
  readonly pid: number
  readonly sid: number
  readonly fds: ReadonlyMap<number, string>
  readonly open: ReadonlyArray<number>
}

export const parseReport = (text: string): FdReport => {
  const fds = new Map<number, string>()
  let pid = -1
  let sid = -1
  let open: Array<number> = []
  for (const line of text.trim().split("\n")) {
    const [key, ...rest] = line.split(" ")
    if (key === "pid") pid = Number(rest[0])
    else if (key === "sid") sid = Number(rest[0])
    else if (key === "fd") fds.set(Number(rest[0]), rest.slice(1).join(" "))
    else if (key === "open") open = rest.map(Number).sort((a, b) => a - b)
  }
  return { pid, sid, fds, open }
}

/** The file behind an fd, as child.c prints it. */
export const identity = (fd: number): string => {
  const st = fstatSync(fd, { bigint: true })
  return `dev ${st.dev} ino ${st.ino}`
}

const fcntl = koffi.load(null).func("int fcntl(int fd, int cmd, ...)")
/** Let an fd be inherited (clear FD_CLOEXEC): what a test needs to plant a stray fd. */
export const clearCloexec = (fd: number): void => {
  fcntl(fd, 2 /* F_SETFD */, "int", 0)
}

/** Pids whose parent is ppid, from /proc/<pid>/stat (Linux). */
export const childrenOf = (ppid: number): ReadonlyArray<number> =>
  readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((name) => procStat(Number(name))?.ppid === ppid)
    .map(Number)

/**
 * Spin, with this thread's event loop blocked, until child `pid` is a zombie
 * (or `ms` have passed): exited, and not reaped by a watch whose callback
 * would need a turn of the loop.
 */
export const blockUntilZombie = (pid: number, ms = 5000): void => {
  const until = Date.now() + ms
  while (procStat(pid)?.state !== "Z" && Date.now() < until) {
    // spin
  }
}

export const sorted = (xs: ReadonlyArray<number>): Array<number> => [...xs].sort((a, b) => a - b)

/** "dev D ino I" of /dev/null, as child.c prints an fd on it. */
export const devnullId = (): string => {
  const st = statSync("/dev/null", { bigint: true })
  return `dev ${st.dev} ino ${st.ino}`
}

/** This process's fds that are pidfds (Linux: /proc/self/fd links to anon_inode:[pidfd]). */
export const openPidfds = (): ReadonlyArray<number> =>
  readdirSync("/proc/self/fd").flatMap((name: string) => {
    try {
      return readlinkSync(`/proc/self/fd/${name}`) === "anon_inode:[pidfd]" ? [Number(name)] : []
    } catch {
      return [] // the directory's own fd, gone
    }
  })

/** SigBlk, SigIgn and SigCgt of a process, from /proc/<pid>/status (bit n-1 is signal n). */
export const signalMasks = (pid: number): { readonly blocked: bigint; readonly ignored: bigint; readonly caught: bigint } => {
  const text = readFileSync(`/proc/${pid}/status`, "utf8")
  const field = (name: string): bigint => {
    const hex = new RegExp(`^${name}:\\s*([0-9a-f]+)$`, "m").exec(text)?.[1]
    if (hex === undefined) throw new Error(`no ${name} in /proc/${pid}/status`)
    return BigInt(`0x${hex}`)
  }
  return { blocked: field("SigBlk"), ignored: field("SigIgn"), caught: field("SigCgt") }
}

/**
 * Run `body` under a scheduler that yields at the first op after Node has
 * queued a failed spawn's 'error' (its nextTick, onErrorNT) and goes on in a
 * setImmediate, after that nextTick has run: as the vmm's dispatcher would
 * when its op budget ran out right there. A spawn that listens for the
 * 'error' only at its next effect then lets it be thrown, uncaught.
 */
export const yieldingAfterSpawnError = <A, E, R>(body: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    const realNextTick = process.nextTick
    let yieldNext = false
    const spy = (fn: (...a: Array<unknown>) => void, ...args: Array<unknown>): void => {
      if (fn.name === "onErrorNT") yieldNext = true
      realNextTick.call(process, fn, ...args)
    }
    const scheduler: Scheduler.Scheduler = {
      scheduleTask: (task) => void setImmediate(task),
      shouldYield: () => (yieldNext ? ((yieldNext = false), 0) : false)
    }
    process.nextTick = spy as typeof process.nextTick
    return body.pipe(
      Effect.withScheduler(scheduler),
      Effect.ensuring(
        Effect.sync(() => {
          process.nextTick = realNextTick
        })
      )
    )
  })

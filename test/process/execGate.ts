/**
 * Execs held in the kernel, for tests of what a Process layer does while a
 * child is stuck in execve (a hung filesystem): a fanotify permission mark
 * (FAN_OPEN_EXEC_PERM) on one file. Root only, and a kernel with it:
 * `fanotifyWorks` says whether tests can use it here.
 */
import { constants as osConstants } from "node:os"
import koffi from "koffi"
import { expect } from "vitest"
import * as libc from "../../src/native/libc.ts"

const c = koffi.load(null)
const fanotifyInit = c.func("int fanotify_init(unsigned int flags, unsigned int event_f_flags)")
const fanotifyMark = c.func("int fanotify_mark(int fd, unsigned int flags, uint64_t mask, int dirfd, const char *path)")
const FAN_CLOEXEC = 0x1
const FAN_NONBLOCK = 0x2
const FAN_CLASS_CONTENT = 0x4
const FAN_MARK_ADD = 0x1
const FAN_OPEN_EXEC_PERM = 0x40000
export const FAN_ALLOW = 0x1
export const FAN_DENY = 0x2
const AT_FDCWD = -100

/** Whether this process may hold execs with fanotify (root, and a kernel with FAN_OPEN_EXEC_PERM). */
export const fanotifyWorks = ((): boolean => {
  if (process.platform !== "linux") return false
  try {
    const fd = fanotifyInit(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, 0) as number
    if (fd < 0) return false
    libc.close(fd)
    return true
  } catch {
    return false
  }
})()

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

const responseBytes = (fd: number, response: number): Uint8Array => {
  const bytes = new Uint8Array(8)
  const v = new DataView(bytes.buffer)
  v.setInt32(0, fd, true)
  v.setInt32(4, response, true)
  return bytes
}

export interface ExecGate {
  /** Waits for the next exec of the file and holds it: [event fd, pid of the exec'ing child]. */
  readonly nextExec: () => Promise<[number, number]>
  /** Lets a held exec go on (FAN_ALLOW) or refuses it (FAN_DENY, EPERM). */
  readonly answer: (fd: number, response: number) => void
  /** Lets every exec still held go on and removes the gate (a test's finally). */
  readonly release: () => void
}

/** Hold every exec of `path` until answered. */
export const holdExecs = (path: string): ExecGate => {
  const fan = fanotifyInit(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, 0) as number
  expect(fan).toBeGreaterThanOrEqual(0)
  const held: Array<number> = [] // event fds not answered yet
  if ((fanotifyMark(fan, FAN_MARK_ADD, FAN_OPEN_EXEC_PERM, AT_FDCWD, path) as number) !== 0) {
    libc.close(fan)
    throw new Error(`fanotify_mark ${path}: errno ${koffi.errno()}`)
  }
  const nextExec = async (): Promise<[number, number]> => {
    const ev = new Uint8Array(4096)
    const v = new DataView(ev.buffer)
    for (let i = 0; ; i++) {
      const n = libc.read(fan, ev)
      if (n >= 24) {
        expect(v.getUint32(0, true)).toBe(24) // one event per read here
        const fd = v.getInt32(16, true)
        held.push(fd)
        return [fd, v.getInt32(20, true)]
      }
      if (n !== -osConstants.errno.EAGAIN) throw new Error(`fanotify read: ${n}`)
      if (i > 2500) throw new Error(`no exec of ${path}`)
      await sleep(2)
    }
  }
  const answer = (fd: number, response: number): void => {
    expect(libc.write(fan, responseBytes(fd, response))).toBe(8)
    libc.close(fd)
    held.splice(held.indexOf(fd), 1)
  }
  const release = (): void => {
    for (const fd of held.splice(0)) {
      libc.write(fan, responseBytes(fd, FAN_ALLOW))
      libc.close(fd)
    }
    libc.close(fan)
  }
  return { nextExec, answer, release }
}

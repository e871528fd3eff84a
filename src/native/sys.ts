/**
 * The few libc calls the process and device layers need, through koffi:
 * ioctl(2), fcntl(2) F_GETFD/F_SETFD, sysconf(_SC_PAGESIZE), and the
 * address of a buffer.
 *
 * Kept apart from src/native/libc.ts (sockets and fd I/O) so the two can be
 * written independently. Every function returns a host errno (0 on success)
 * rather than throwing; callers translate it to OpenBSD numbering.
 *
 * Symbols are looked up in the running program (dlopen(NULL)), whose global
 * scope includes libc on Linux, macOS and OpenBSD, so no library name is
 * guessed. The bindings are made on first use.
 */
import koffi from "koffi"
import { readdirSync } from "node:fs"

type Int = number

interface Bindings {
  /** int ioctl(int, unsigned long, ...): the argument is variadic and must be typed. */
  readonly ioctl: (fd: Int, request: number, argType: "void *", arg: Uint8Array | null) => Int
  /** int fcntl(int, int, ...). */
  readonly fcntl0: (fd: Int, cmd: Int) => Int
  readonly fcntl1: (fd: Int, cmd: Int, argType: "int", arg: Int) => Int
  readonly sysconf: (name: Int) => number
}

let bindings: Bindings | undefined

const bind = (): Bindings => {
  if (bindings !== undefined) return bindings
  const self = koffi.load(null)
  const ioctl = self.func("int ioctl(int fd, unsigned long request, ...)")
  const fcntl = self.func("int fcntl(int fd, int cmd, ...)")
  const sysconf = self.func("long sysconf(int name)")
  bindings = {
    ioctl: (fd, request, argType, arg) => ioctl(fd, request, argType, arg) as Int,
    fcntl0: (fd, cmd) => fcntl(fd, cmd) as Int,
    fcntl1: (fd, cmd, argType, arg) => fcntl(fd, cmd, argType, arg) as Int,
    sysconf: (name) => Number(sysconf(name))
  }
  return bindings
}

/** Host errno for a thrown binding error (koffi could not load): ENOSYS. */
const HOST_ENOSYS = process.platform === "linux" ? 38 : 78

const guarded = <A>(f: () => A, onError: A): A => {
  try {
    return f()
  } catch {
    return onError
  }
}

/** ioctl(fd, request, buf): 0 or the host errno. The kernel reads and writes `buf` in place. */
export const ioctl = (fd: number, request: number, buf: Uint8Array): number =>
  guarded(() => {
    const b = bind()
    const rc = b.ioctl(fd, request, "void *", buf.byteLength === 0 ? null : buf)
    return rc === -1 ? koffi.errno() : 0
  }, HOST_ENOSYS)

/** The address of a buffer's first byte (0n for an empty buffer). Node Buffers do not move. */
export const addressOf = (buf: Uint8Array): bigint => (buf.byteLength === 0 ? 0n : koffi.address(buf))

// fcntl and sysconf constants (same on Linux, OpenBSD, macOS for these).
const F_GETFD = 1
const F_SETFD = 2
const FD_CLOEXEC = 1
const SC_PAGESIZE: number | undefined = ({ linux: 30, openbsd: 28, darwin: 29 } as Partial<Record<string, number>>)[
  process.platform
]

/** Set FD_CLOEXEC on fd; 0 or the host errno (EBADF if it is not open). */
export const setCloexec = (fd: number): number =>
  guarded(() => {
    const b = bind()
    const flags = b.fcntl0(fd, F_GETFD)
    if (flags === -1) return koffi.errno()
    if ((flags & FD_CLOEXEC) !== 0) return 0
    return b.fcntl1(fd, F_SETFD, "int", flags | FD_CLOEXEC) === -1 ? koffi.errno() : 0
  }, HOST_ENOSYS)

/** true if fd is open and has FD_CLOEXEC set; false if clear; null if not open. */
export const isCloexec = (fd: number): boolean | null =>
  guarded(() => {
    const flags = bind().fcntl0(fd, F_GETFD)
    return flags === -1 ? null : (flags & FD_CLOEXEC) !== 0
  }, null)

let pageSizeCache: number | undefined

/** sysconf(_SC_PAGESIZE), 4096 if it cannot be asked. */
export const pageSize = (): number => {
  if (pageSizeCache === undefined) {
    const n = SC_PAGESIZE === undefined ? -1 : guarded(() => bind().sysconf(SC_PAGESIZE), -1)
    pageSizeCache = n > 0 ? n : 4096
  }
  return pageSizeCache
}

/**
 * The fd numbers open in this process, from /proc/self/fd (Linux) or
 * /dev/fd (macOS, FreeBSD with fdescfs). null where neither lists them
 * (OpenBSD's /dev/fd is a fixed set of nodes).
 */
export const openFdNumbers = (platform: NodeJS.Platform = process.platform): ReadonlyArray<number> | null => {
  if (platform === "openbsd") return null
  for (const dir of ["/proc/self/fd", "/dev/fd"]) {
    try {
      return readdirSync(dir)
        .map((name) => Number(name))
        .filter((n) => Number.isInteger(n))
    } catch {
      // next
    }
  }
  return null
}

/**
 * Set FD_CLOEXEC on every fd ≥ 3 of this process: whatever this process
 * inherited without close-on-exec (vmd's parent socket at fd 3, a test
 * harness's pipes) must not reach a VM child. Fds a child should get are
 * passed explicitly and dup2'ed into place by the spawner, which clears the
 * flag in the child only. Where fds cannot be listed, 3..255 are tried.
 */
export const sealInheritedFds = (): void => {
  const fds = openFdNumbers() ?? Array.from({ length: 253 }, (_, i) => i + 3)
  for (const fd of fds) if (fd >= 3) setCloexec(fd)
}

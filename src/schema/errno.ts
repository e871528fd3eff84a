/**
 * errno on the wire and in exit codes is OpenBSD's numbering (DECISIONS.md).
 * Host errno (Linux here) is translated at the boundary, in one place.
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EDEADLK: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  EPIPE: 32,
  ERANGE: 34,
  EAGAIN: 35,
  EINPROGRESS: 36,
  EALREADY: 37,
  ENOTSOCK: 38,
  EMSGSIZE: 40,
  EOPNOTSUPP: 45,
  ECONNRESET: 54,
  ENOBUFS: 55,
  ETIMEDOUT: 60,
  ECONNREFUSED: 61,
  ENAMETOOLONG: 63,
  ENOSYS: 78,
  ECANCELED: 88,
  EBADMSG: 92
} as const

export type ErrnoName = keyof typeof Errno

/** vmd's own result codes (vmd.h), sent in vmr_result like an errno. */
export const VmdError = {
  VMD_BIOS_MISSING: 1001,
  VMD_DISK_MISSING: 1002,
  VMD_VM_STOP_INVALID: 1004,
  VMD_CDROM_MISSING: 1005,
  VMD_CDROM_INVALID: 1006,
  VMD_PARENT_INVALID: 1007
} as const

/** Linux errno numbers (asm-generic/errno*.h) for the names we use. */
const LINUX: Readonly<Record<ErrnoName, number>> = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EDEADLK: 35,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  EPIPE: 32,
  ERANGE: 34,
  EAGAIN: 11,
  EINPROGRESS: 115,
  EALREADY: 114,
  ENOTSOCK: 88,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  ENOBUFS: 105,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ECANCELED: 125,
  EBADMSG: 74
}

const hostIsOpenBSD = process.platform === "openbsd"

const fromLinux = new Map<number, number>(
  (Object.keys(LINUX) as Array<ErrnoName>).map((name) => [LINUX[name], Errno[name]])
)
const toLinux = new Map<number, number>(
  (Object.keys(LINUX) as Array<ErrnoName>).map((name) => [Errno[name], LINUX[name]])
)

/**
 * Host errno -> OpenBSD errno. On OpenBSD this is the identity. An errno we
 * have no name for becomes EIO (the parent only needs "failed").
 */
export const fromHostErrno = (host: number): number => {
  if (hostIsOpenBSD) return host
  return fromLinux.get(host) ?? Errno.EIO
}

/** OpenBSD errno -> host errno (for tests and for exit codes read on this host). */
export const toHostErrno = (openbsd: number): number => {
  if (hostIsOpenBSD) return openbsd
  return toLinux.get(openbsd) ?? openbsd
}

/** Node's error codes ("ENOENT", "EAGAIN", ...) -> OpenBSD errno; unknown codes become EIO. */
export const fromErrorCode = (code: string | undefined): number =>
  code !== undefined && code in Errno ? Errno[code as ErrnoName] : Errno.EIO

/** A readable name for an OpenBSD errno or vmd result code, for logs. */
export const errnoName = (n: number): string => {
  for (const [k, v] of Object.entries(Errno)) if (v === n) return k
  for (const [k, v] of Object.entries(VmdError)) if (v === n) return k
  return String(n)
}

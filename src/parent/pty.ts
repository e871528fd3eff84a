/**
 * A pseudo-terminal for a VM's console, as vmd's parent opens one
 * (vm_opentty: openpty, keep the master, name the slave). The master goes
 * to the vmm (a dup of it, in START_VM_END) and from there to the VM
 * process; the parent keeps its own copy across guest resets.
 *
 * posix_openpt/grantpt/unlockpt/ptsname_r from libc through koffi (Linux).
 */
import { Either } from "effect"
import koffi from "koffi"
import { close, nativeFd, O_CLOEXEC, O_RDWR, self } from "../native/libc.ts"
import { fromHostErrno } from "../schema/errno.ts"
import type { Fd } from "../services/Fd.ts"
import { parentError, type ParentError } from "./errors.ts"

const O_NOCTTY = 0o400

const c = {
  posixOpenpt: self.func("int posix_openpt(int flags)"),
  grantpt: self.func("int grantpt(int fd)"),
  unlockpt: self.func("int unlockpt(int fd)"),
  ptsnameR: self.func("int ptsname_r(int fd, _Out_ uint8_t *buf, size_t buflen)")
}

export interface Pty {
  readonly master: Fd
  /** The slave's path, "/dev/pts/3": vm_ttyname. */
  readonly name: string
}

const fail = (what: string, hostErrno: number) =>
  Either.left(parentError("start", fromHostErrno(hostErrno), `${what} failed`))

export const openPty = (label: string): Either.Either<Pty, ParentError> => {
  const fd = c.posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC) as number
  if (fd < 0) return fail("posix_openpt", koffi.errno())
  const buf = new Uint8Array(64)
  const failed =
    (c.grantpt(fd) as number) !== 0
      ? "grantpt"
      : (c.unlockpt(fd) as number) !== 0
        ? "unlockpt"
        : (c.ptsnameR(fd, buf, buf.length) as number) !== 0
          ? "ptsname_r"
          : null
  if (failed !== null) {
    const errno = koffi.errno()
    close(fd)
    return fail(failed, errno)
  }
  const end = buf.indexOf(0)
  return Either.right({ master: nativeFd(fd, label), name: Buffer.from(buf.subarray(0, end < 0 ? buf.length : end)).toString("latin1") })
}

/**
 * Opening what a VM is started with, as config_setvm does before it sends
 * the start sequence: the kernel, the cdrom, each disk's image chain (the
 * top image read-write, its bases read-only), a tap per nic and a dup of the
 * tty master. Here a tap is one end of a socketpair: the VM's end is sent,
 * the host's end stays with the parent until the VM stops.
 *
 * Either everything opens or nothing stays open.
 */
import { Either } from "effect"
import * as libc from "../native/libc.ts"
import { fromHostErrno, VmdError } from "../schema/errno.ts"
import type { Fd } from "../services/Fd.ts"
import { parentError, type ParentError } from "./errors.ts"
import type { StartFds } from "./messages.ts"
import type { VmSpec } from "./spec.ts"

export interface Media {
  /** What goes to the vmm; the channel owns these once sent. */
  readonly fds: StartFds
  /** The host ends of the taps, kept by the parent. */
  readonly hostTaps: ReadonlyArray<Fd>
}

/** vmd's VM_DEFAULT_BIOS: what config_setvm sends as the kernel of a VM that names none. */
export const VM_DEFAULT_BIOS = "/etc/firmware/vmm-bios"

export const openMedia = (spec: VmSpec, ttyMaster: Fd, bios: string = VM_DEFAULT_BIOS): Either.Either<Media, ParentError> => {
  const opened: Array<Fd> = []
  /** A new fd number (or -errno) as an owned Fd, remembered for the cleanup. */
  const own = (num: number, what: string): Either.Either<Fd, ParentError> => {
    if (num < 0) return Either.left(parentError("start", fromHostErrno(-num), what))
    const fd = libc.nativeFd(num, what)
    opened.push(fd)
    return Either.right(fd)
  }
  const failed = (e: ParentError): Either.Either<Media, ParentError> => {
    for (const fd of opened) fd.closeSync()
    return Either.left(e)
  }

  // config_setvm: the kernel named, else the BIOS (VMD_BIOS_MISSING if it cannot be opened);
  // vm.c needs a boot fd ("failed to receive boot fd")
  const boot = spec.kernel ?? bios
  const kernelFd = own(libc.open(boot, libc.O_RDONLY), boot)
  if (Either.isLeft(kernelFd)) {
    return failed(spec.kernel !== undefined ? kernelFd.left : parentError("start", VmdError.VMD_BIOS_MISSING, `can't open ${bios}`))
  }
  const kernel = kernelFd.right
  let cdrom: Fd | null = null
  if (spec.cdrom !== undefined) {
    const r = own(libc.open(spec.cdrom, libc.O_RDONLY), spec.cdrom)
    if (Either.isLeft(r)) return failed(r.left)
    cdrom = r.right
  }
  const disks: Array<Array<Fd>> = []
  for (const layers of spec.disks ?? []) {
    const disk: Array<Fd> = []
    for (const [j, path] of layers.entries()) {
      const r = own(libc.open(path, j === 0 ? libc.O_RDWR : libc.O_RDONLY), path)
      if (Either.isLeft(r)) return failed(r.left)
      disk.push(r.right)
    }
    disks.push(disk)
  }
  const taps: Array<Fd> = []
  const hostTaps: Array<Fd> = []
  for (let i = 0; i < (spec.nics ?? 0); i++) {
    const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
    if (typeof pair === "number") return failed(parentError("start", fromHostErrno(-pair), `tap${i} socketpair`))
    const [vmEnd, hostEnd] = [libc.nativeFd(pair[0], `${spec.name} tap${i}`), libc.nativeFd(pair[1], `${spec.name} tap${i} host`)]
    opened.push(vmEnd, hostEnd)
    taps.push(vmEnd)
    hostTaps.push(hostEnd)
  }
  const tty = own(libc.dup(ttyMaster.num), `${spec.name} tty`)
  if (Either.isLeft(tty)) return failed(tty.left)
  return Either.right({ fds: { kernel, cdrom, disks, taps, tty: tty.right }, hostTaps })
}

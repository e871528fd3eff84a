/**
 * ioctl(2) on an fd with an in/out argument buffer (vmm(4) ABI, vmd.md §5).
 * The native layer goes through koffi; the buffer is passed by pointer and
 * updated in place.
 */
import { Context, Data, Effect } from "effect"

export class IoctlError extends Data.TaggedError("IoctlError")<{
  readonly request: number
  /** OpenBSD errno. */
  readonly errno: number
  readonly message: string
}> {}

export interface IoctlService {
  /** ioctl(fd, request, buf). `buf` is read and written by the kernel in place. */
  readonly ioctl: (fd: number, request: number, buf: Uint8Array) => Effect.Effect<void, IoctlError>
  /**
   * The address of a buffer as the kernel sees it, for structs that carry a
   * pointer (vm_info_params.vip_info). The buffer must stay alive (and not
   * move) across the ioctl; Node Buffers from Buffer.alloc do not move.
   */
  readonly addressOf: (buf: Uint8Array) => bigint
}

export class Ioctl extends Context.Tag("vmd-vmm/Ioctl")<Ioctl, IoctlService>() {}

/**
 * vmm(4) through /dev/vmm: vmm.c get_info_vm and terminate_vm on the
 * `Ioctl` service (vmd.md §5). Runs unchanged on IoctlNative (OpenBSD) and
 * on VmmDeviceMock's kernel model (tests).
 *
 * attach keeps the device Fd (the parent's RECEIVE_VMM_FD) and closes it
 * when the layer's scope ends; a second attach closes the previous Fd (the
 * 1.136 dispatcher treats a second RECEIVE_VMM_FD as fatal before it gets
 * here). Before attach, INFO and TERM fail with EBADF, as ioctl(-1) does.
 */
import { Effect, Either, Layer } from "effect"
import type { Scope } from "effect"
import { Errno, errnoName } from "../schema/errno.ts"
import { VMM_IOC_INFO, VMM_IOC_TERM } from "../schema/ioctl.ts"
import { decodeVmInfoParams, decodeVmInfoResults, encodeVmInfoParams, encodeVmTerminateParams, SIZEOF } from "../schema/structs.ts"
import type { Fd } from "../services/Fd.ts"
import { Ioctl } from "../services/Ioctl.ts"
import type { IoctlError } from "../services/Ioctl.ts"
import { VmmDevice, VmmError } from "../services/VmmDevice.ts"
import type { VmInfo, VmmDeviceService } from "../services/VmmDevice.ts"

/** The largest INFO buffer get_info_vm will allocate; beyond it malloc "fails" (ENOMEM). */
const MAX_INFO_BYTES = 64n * 1024n * 1024n

const vmmError = (errno: number, what: string) =>
  new VmmError({ errno, message: `${what}: ${errnoName(errno)}` })

const fromIoctl = (what: string) => (e: IoctlError) => vmmError(e.errno, what)

/** Encoding our own well-formed params cannot fail; if it ever did, that bug is reported as EINVAL. */
const orEinval = <A>(what: string, either: Either.Either<A, unknown>): Effect.Effect<A, VmmError> =>
  Either.isRight(either) ? Effect.succeed(either.right) : Effect.fail(vmmError(Errno.EINVAL, what))

/**
 * The RECEIVE_VMM_FD fd, owned by the layer: kept until the scope ends and
 * closed then, once; a second attach closes the previous Fd. (Shared with
 * the process backend, which keeps the fd the same way and never uses it.)
 */
export const deviceFdHolder: Effect.Effect<
  { readonly attach: (fd: Fd) => Effect.Effect<void>; readonly current: () => Fd | null },
  never,
  Scope.Scope
> = Effect.gen(function* () {
  let device: Fd | null = null
  yield* Effect.addFinalizer(() => Effect.sync(() => device?.closeSync()))
  return {
    attach: (fd) =>
      Effect.sync(() => {
        if (device !== null && device !== fd) device.closeSync()
        device = fd
      }),
    current: () => device
  }
})

export const make: Effect.Effect<VmmDeviceService, never, Ioctl | Scope.Scope> = Effect.gen(function* () {
  const { ioctl, addressOf } = yield* Ioctl
  const holder = yield* deviceFdHolder

  const deviceFd = Effect.suspend(() => {
    const device = holder.current()
    return device !== null && device.isOpen ? Effect.succeed(device.num) : Effect.fail(vmmError(Errno.EBADF, "/dev/vmm"))
  })

  /*
   * get_info_vm: VMM_IOC_INFO with vip_size 0 to learn the size (a reply
   * with entries is EIO), then again into a buffer of that size. The entry
   * count is vip_size / 160 from the first call: if VMs vanished in
   * between, the kernel filled fewer and the tail entries are zero (vir_id
   * 0); if VMs were created in between, the kernel copied nothing and every
   * entry is zero. (The C reads vip_size after the second call, which in the
   * second case exceeds its malloc'd buffer; the buffer here is zeroed.)
   */
  const info: Effect.Effect<ReadonlyArray<VmInfo>, VmmError> = Effect.gen(function* () {
    const fd = yield* deviceFd
    const params = yield* orEinval(
      "vm_info_params",
      encodeVmInfoParams({ vip_size: 0n, vip_info_ct: 0n, vip_info: 0n })
    )
    yield* ioctl(fd, VMM_IOC_INFO, params).pipe(Effect.mapError(fromIoctl("VMM_IOC_INFO")))
    const first = yield* orEinval("vm_info_params", decodeVmInfoParams(params))
    if (first.vip_info_ct !== 0n) return yield* Effect.fail(vmmError(Errno.EIO, "VMM_IOC_INFO size query"))
    if (first.vip_size > MAX_INFO_BYTES) return yield* Effect.fail(vmmError(Errno.ENOMEM, "VMM_IOC_INFO buffer"))
    const buffer = Buffer.alloc(Number(first.vip_size))
    const fill = yield* orEinval(
      "vm_info_params",
      encodeVmInfoParams({ vip_size: first.vip_size, vip_info_ct: first.vip_info_ct, vip_info: addressOf(buffer) })
    )
    yield* ioctl(fd, VMM_IOC_INFO, fill).pipe(Effect.mapError(fromIoctl("VMM_IOC_INFO")))
    const one = BigInt(SIZEOF.vm_info_result)
    const whole = (first.vip_size / one) * one
    // Decode through a plain Uint8Array view so the decoded byte fields are Uint8Arrays, not Buffers.
    const view = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
    return yield* orEinval("vm_info_result", decodeVmInfoResults(view, whole))
  })

  // terminate_vm: VMM_IOC_TERM on the kernel id; the ioctl's errno (ENOENT for an unknown id) is the result.
  const terminate: VmmDeviceService["terminate"] = ({ vmmId }) =>
    Effect.gen(function* () {
      const fd = yield* deviceFd
      const params = yield* orEinval("vm_terminate_params", encodeVmTerminateParams({ vtp_vm_id: vmmId }))
      yield* ioctl(fd, VMM_IOC_TERM, params).pipe(Effect.mapError(fromIoctl(`VMM_IOC_TERM ${vmmId}`)))
    })

  return VmmDevice.of({ attach: holder.attach, info, terminate })
})

/** VmmDevice on /dev/vmm through whatever Ioctl is provided. */
export const layer: Layer.Layer<VmmDevice, never, Ioctl> = Layer.scoped(VmmDevice, make)

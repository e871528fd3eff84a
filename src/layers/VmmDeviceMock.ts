/**
 * An in-memory vmm(4): the kernel side of VMM_IOC_INFO and VMM_IOC_TERM
 * (vmd.md §5, sys/dev/vmm/vmm.c vm_get_info / vm_terminate) behind a mock
 * `Ioctl`, so that VmmDeviceVmm — the real get_info_vm / terminate_vm
 * logic — runs unchanged on top of it.
 *
 * Kernel semantics modelled:
 *  - ids from 1, incremented per create, never 0;
 *  - INFO: need = n × 160; vip_size < need → vip_info_ct 0, vip_size =
 *    need, success, nothing copied; otherwise vip_info_ct = n and n entries
 *    copied to vip_info (EFAULT if that address is not a live buffer of at
 *    least `need` bytes); vip_size is not rewritten on that path;
 *  - TERM: unknown id (0 included) → ENOENT, else the VM is gone;
 *  - any other request → ENOTTY; a negative fd → EBADF; an argument buffer
 *    shorter than the request's length → EFAULT; on error nothing is
 *    copied back.
 * Addresses come from the mock's `addressOf`, which hands out fake user
 * addresses and remembers (weakly) which buffer each one names.
 *
 * Faults for tests: the next INFO/TERM fails with an errno; the next INFO
 * reply carries a given vip_info_ct; an action runs right after the next
 * INFO (between get_info_vm's two calls: create or destroy VMs there).
 */
import { Context, Effect, Either, Layer } from "effect"
import { VMM_MAX_NAME_LEN } from "../schema/constants.ts"
import { Errno, errnoName } from "../schema/errno.ts"
import { IOCPARM_LEN, VMM_IOC_INFO, VMM_IOC_TERM } from "../schema/ioctl.ts"
import {
  decodeVmInfoParams,
  decodeVmTerminateParams,
  encodeVmInfoParams,
  encodeVmInfoResults,
  SIZEOF
} from "../schema/structs.ts"
import type { VmInfoResult } from "../schema/structs.ts"
import { Ioctl, IoctlError } from "../services/Ioctl.ts"
import type { IoctlService } from "../services/Ioctl.ts"
import type { VmmDevice } from "../services/VmmDevice.ts"
import * as VmmDeviceVmm from "./VmmDeviceVmm.ts"

export interface KernelVmSpec {
  readonly name: string
  readonly ncpus: number
  readonly memorySize: bigint
  readonly creatorPid: number
  /** Resident bytes reported as vir_used_size (default 0). */
  readonly usedSize?: bigint
}

export interface KernelVm {
  readonly id: number
  readonly name: string
  readonly ncpus: number
  readonly memorySize: bigint
  readonly usedSize: bigint
  readonly creatorPid: number
}

export type KernelRequest = "INFO" | "TERM"

/** One ioctl the kernel saw: the argument bytes as passed in and as returned (null on error). */
export interface KernelCall {
  readonly request: number
  readonly fd: number
  readonly input: Uint8Array
  readonly output: Uint8Array | null
  /** 0 or the OpenBSD errno returned. */
  readonly errno: number
}

export interface VmmKernelService {
  /** vm_create as seen from outside: the new kernel id (1, 2, 3, ...). */
  readonly create: (spec: KernelVmSpec) => Effect.Effect<number>
  /** Remove a VM as if another process TERM-ed it; false if there was none. */
  readonly destroy: (id: number) => Effect.Effect<boolean>
  readonly list: Effect.Effect<ReadonlyArray<KernelVm>>
  /** The next ioctl of that kind fails with this OpenBSD errno (queued). */
  readonly failNext: (request: KernelRequest, errno: number) => Effect.Effect<void>
  /** The next INFO reply carries this vip_info_ct (a kernel that filled on a size query). */
  readonly injectInfoCount: (count: bigint) => Effect.Effect<void>
  /** Run `action` right after the next INFO call (before the caller's second call). */
  readonly afterNextInfo: (action: Effect.Effect<void>) => Effect.Effect<void>
  /** Every ioctl so far, in order. */
  readonly calls: Effect.Effect<ReadonlyArray<KernelCall>>
}

export class VmmKernel extends Context.Tag("vmd-vmm/VmmKernelMock")<VmmKernel, VmmKernelService>() {}

const VCPU_RUNNING = 1

const toResult = (vm: KernelVm): VmInfoResult => {
  const vcpus = new Uint8Array(64)
  vcpus.fill(VCPU_RUNNING, 0, Math.min(vm.ncpus, 64))
  return {
    vir_memory_size: vm.memorySize,
    vir_used_size: vm.usedSize,
    vir_ncpus: BigInt(vm.ncpus),
    vir_vcpu_state: vcpus,
    vir_creator_pid: vm.creatorPid,
    vir_id: vm.id,
    vir_name: vm.name
  }
}

const hex = (n: number): string => `0x${(n >>> 0).toString(16).toUpperCase()}`

export const make = (): { readonly ioctl: IoctlService; readonly kernel: VmmKernelService } => {
  let lastId = 0
  const vms: Array<KernelVm> = []
  const calls: Array<KernelCall> = []
  const faults: Record<KernelRequest, Array<number>> = { INFO: [], TERM: [] }
  const infoCounts: Array<bigint> = []
  const afterInfo: Array<Effect.Effect<void>> = []

  // Fake user addresses → the buffers they name.
  let nextAddress = 0x7f00_0000_1000n
  const buffers = new Map<bigint, WeakRef<Uint8Array>>()
  const addressOf = (buf: Uint8Array): bigint => {
    if (buf.byteLength === 0) return 0n
    for (const [addr, ref] of buffers) {
      const b = ref.deref()
      if (b === undefined) buffers.delete(addr)
      else if (b === buf) return addr
    }
    const addr = nextAddress
    nextAddress += BigInt(Math.ceil(buf.byteLength / 4096) + 1) * 4096n
    buffers.set(addr, new WeakRef(buf))
    return addr
  }

  /** vm_get_info: returns the errno (0) and writes the reply into `arg`. */
  const getInfo = (arg: Uint8Array): number => {
    const params = decodeVmInfoParams(arg.subarray(0, SIZEOF.vm_info_params))
    if (Either.isLeft(params)) return Errno.EFAULT
    const { vip_size, vip_info } = params.right
    const need = BigInt(vms.length * SIZEOF.vm_info_result)
    let reply = { ...params.right }
    if (vip_size < need) {
      reply = { ...reply, vip_info_ct: 0n, vip_size: need }
    } else {
      if (need > 0n) {
        const target = buffers.get(vip_info)?.deref()
        if (target === undefined || BigInt(target.byteLength) < need) return Errno.EFAULT
        const bytes = encodeVmInfoResults(vms.map(toResult))
        if (Either.isLeft(bytes)) return Errno.EFAULT
        target.set(bytes.right)
      }
      reply = { ...reply, vip_info_ct: BigInt(vms.length) }
    }
    const injected = infoCounts.shift()
    if (injected !== undefined) reply = { ...reply, vip_info_ct: injected }
    const out = encodeVmInfoParams(reply)
    if (Either.isLeft(out)) return Errno.EFAULT
    arg.set(out.right)
    return 0
  }

  /** vm_terminate via vm_find: ENOENT for an id nobody has. */
  const terminate = (arg: Uint8Array): number => {
    const params = decodeVmTerminateParams(arg.subarray(0, SIZEOF.vm_terminate_params))
    if (Either.isLeft(params)) return Errno.EFAULT
    const at = vms.findIndex((vm) => vm.id === params.right.vtp_vm_id)
    if (at === -1) return Errno.ENOENT
    vms.splice(at, 1)
    return 0
  }

  const dispatch = (fd: number, request: number, arg: Uint8Array): number => {
    if (fd < 0) return Errno.EBADF
    const kind: KernelRequest | null = request === VMM_IOC_INFO ? "INFO" : request === VMM_IOC_TERM ? "TERM" : null
    if (kind === null) return Errno.ENOTTY
    if (arg.byteLength < IOCPARM_LEN(request)) return Errno.EFAULT
    const fault = faults[kind].shift()
    if (fault !== undefined) return fault
    return kind === "INFO" ? getInfo(arg) : terminate(arg)
  }

  const ioctl: IoctlService = {
    ioctl: (fd, request, buf) =>
      Effect.suspend(() => {
        const input = buf.slice()
        const errno = dispatch(fd, request, buf)
        if (errno !== 0) buf.set(input) // the kernel copies nothing out on error
        calls.push({ request, fd, input, output: errno === 0 ? buf.slice() : null, errno })
        const hook = request === VMM_IOC_INFO ? afterInfo.shift() : undefined
        const result =
          errno === 0
            ? Effect.void
            : Effect.fail(new IoctlError({ request, errno, message: `ioctl(${fd}, ${hex(request)}): ${errnoName(errno)}` }))
        return hook === undefined ? result : Effect.zipRight(hook, result)
      }),
    addressOf
  }

  const kernel: VmmKernelService = {
    create: (spec) =>
      Effect.sync(() => {
        const id = ++lastId
        vms.push({
          id,
          name: spec.name.slice(0, VMM_MAX_NAME_LEN - 1), // the kernel keeps a NUL-terminated char[64]
          ncpus: spec.ncpus,
          memorySize: spec.memorySize,
          usedSize: spec.usedSize ?? 0n,
          creatorPid: spec.creatorPid
        })
        return id
      }),
    destroy: (id) =>
      Effect.sync(() => {
        const at = vms.findIndex((vm) => vm.id === id)
        if (at !== -1) vms.splice(at, 1)
        return at !== -1
      }),
    list: Effect.sync(() => [...vms]),
    failNext: (request, errno) => Effect.sync(() => void faults[request].push(errno)),
    injectInfoCount: (count) => Effect.sync(() => void infoCounts.push(count)),
    afterNextInfo: (action) => Effect.sync(() => void afterInfo.push(action)),
    calls: Effect.sync(() => [...calls])
  }
  return { ioctl, kernel }
}

/** The mock kernel alone: Ioctl plus the VmmKernel model. */
export const kernelLayer: Layer.Layer<Ioctl | VmmKernel> = Layer.effectContext(
  Effect.sync(() => {
    const { ioctl, kernel } = make()
    return Context.make(Ioctl, ioctl).pipe(Context.add(VmmKernel, kernel))
  })
)

/** VmmDeviceVmm on the mock kernel, with the kernel model (and its Ioctl) exposed for tests. */
export const layer: Layer.Layer<VmmDevice | VmmKernel | Ioctl> = VmmDeviceVmm.layer.pipe(
  Layer.provideMerge(kernelLayer)
)

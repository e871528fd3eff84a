/**
 * A VM as the stand-in parent describes it (what vm.conf or `vmctl start`
 * would say), and the struct vmop_create_params vmd's parent sends for it
 * in START_VM_REQUEST (vmd.md §4.2, §6a). Pure.
 */
import { Either } from "effect"
import {
  VM_DEFAULT_MEMORY,
  VM_MAX_BASE_PER_DISK,
  VM_MAX_DISKS_PER_VM,
  VM_MAX_NICS_PER_VM,
  VMDF_RAW,
  VMIFF_UP,
  VMOP_CREATE_CDROM,
  VMOP_CREATE_CPU,
  VMOP_CREATE_DISK,
  VMOP_CREATE_KERNEL,
  VMOP_CREATE_MEMORY,
  VMOP_CREATE_NETWORK
} from "../schema/constants.ts"
import { Errno } from "../schema/errno.ts"
import { emptyVmopCreateParams, encodeVmopCreateParams, type VmopCreateParams } from "../schema/structs.ts"
import { parentError, type ParentError } from "./errors.ts"

export interface VmSpec {
  readonly name: string
  /** Bytes of guest memory; 512M (vmd's default) when absent. */
  readonly memory?: bigint
  readonly vcpus?: number
  /** Path of the kernel or BIOS image, sent as START_VM_REQUEST's fd. */
  readonly kernel?: string
  /** Each disk is its image chain, top image first (at most 4 layers); the top is opened read-write. */
  readonly disks?: ReadonlyArray<ReadonlyArray<string>>
  readonly cdrom?: string
  /** Network interfaces; each gets a tap stand-in (one end of a socketpair). */
  readonly nics?: number
  /** vmc_bootdevice: a VM that boots from a device other than auto is not restarted after a reset (vmd). */
  readonly bootdevice?: number
}

/** Up to 4 disks of up to 4 layers, up to 4 nics, something to boot: what vm_register would refuse, refused early. */
export const checkSpec = (spec: VmSpec): Either.Either<VmSpec, ParentError> => {
  const disks = spec.disks ?? []
  const bad = (why: string) => Either.left(parentError("start", Errno.EINVAL, `${spec.name}: ${why}`))
  if (disks.length > VM_MAX_DISKS_PER_VM) return bad(`more than ${VM_MAX_DISKS_PER_VM} disks`)
  if (disks.some((layers) => layers.length === 0 || layers.length > VM_MAX_BASE_PER_DISK))
    return bad(`a disk needs 1 to ${VM_MAX_BASE_PER_DISK} image layers`)
  if ((spec.nics ?? 0) > VM_MAX_NICS_PER_VM) return bad(`more than ${VM_MAX_NICS_PER_VM} interfaces`)
  if (spec.kernel === undefined && disks.length === 0 && spec.cdrom === undefined) return bad("no kernel, disk or cdrom")
  return Either.right(spec)
}

/**
 * vmop_create_params as vmd's parent fills it: name, cpus, memory in
 * vmc_memranges[0].vmr_size, disk paths (raw), cdrom path, nic names, the
 * create flags, owner root (gid -1: no group). vmc_kernel and
 * vmc_diskbases are left for the vmm to fill from the fds it receives; MAC
 * addresses zero, so the vmm picks them.
 */
export const createParams = (spec: VmSpec, ifnames: ReadonlyArray<string>): VmopCreateParams => {
  const base = emptyVmopCreateParams()
  const disks = spec.disks ?? []
  const nics = ifnames.length
  const flag = (on: boolean, bit: number) => (on ? bit : 0)
  return {
    ...base,
    vmc_name: spec.name,
    vmc_flags:
      VMOP_CREATE_CPU |
      VMOP_CREATE_MEMORY |
      flag(spec.kernel !== undefined, VMOP_CREATE_KERNEL) |
      flag(disks.length > 0, VMOP_CREATE_DISK) |
      flag(spec.cdrom !== undefined, VMOP_CREATE_CDROM) |
      flag(nics > 0, VMOP_CREATE_NETWORK),
    vmc_owner: { uid: 0, gid: -1n },
    vmc_ncpus: BigInt(spec.vcpus ?? 1),
    vmc_memranges: base.vmc_memranges.map((r, i) => (i === 0 ? { ...r, vmr_size: spec.memory ?? VM_DEFAULT_MEMORY } : r)),
    vmc_kernel: -1,
    vmc_bootdevice: spec.bootdevice ?? 0,
    vmc_ndisks: BigInt(disks.length),
    vmc_disks: base.vmc_disks.map((p, i) => disks[i]?.[0] ?? p),
    vmc_disktypes: base.vmc_disktypes.map((t, i) => (i < disks.length ? VMDF_RAW : t)),
    vmc_cdrom: spec.cdrom ?? "",
    vmc_nnics: BigInt(nics),
    vmc_ifnames: base.vmc_ifnames.map((n, i) => ifnames[i] ?? n),
    vmc_ifflags: base.vmc_ifflags.map((f, i) => (i < nics ? VMIFF_UP : f))
  }
}

/** The START_VM_REQUEST payload; a name or path that does not fit its C array is EINVAL. */
export const createParamsBytes = (params: VmopCreateParams): Either.Either<Uint8Array, ParentError> =>
  Either.mapLeft(encodeVmopCreateParams(params), (e) => parentError("start", Errno.EINVAL, `${e.field}: ${e.message}`))

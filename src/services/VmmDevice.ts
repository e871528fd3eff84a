/**
 * The vmm(4) operations the vmm process needs: INFO (the two-call size
 * protocol) and TERM. vmm.c get_info_vm / terminate_vm.
 *
 * Layers:
 *  - `VmmDeviceVmm`: the real OpenBSD /dev/vmm through `Ioctl`;
 *  - `VmmDeviceProcess`: the portable backend (vmm.c 1.143 style): TERM is
 *    SIGTERM then SIGKILL after 10 s, INFO comes from the registry and the VM
 *    process's resident memory;
 *  - `VmmDeviceMock`: an in-memory model of vmm(4) with injectable faults.
 */
import { Context, Data, Effect } from "effect"
import type { Fd } from "./Fd.ts"

/** struct vm_info_result (kernel, 160 bytes), decoded. */
export interface VmInfo {
  readonly vir_memory_size: bigint
  readonly vir_used_size: bigint
  readonly vir_ncpus: bigint
  readonly vir_vcpu_state: Uint8Array // 64 bytes
  readonly vir_creator_pid: number
  readonly vir_id: number
  readonly vir_name: string
}

export class VmmError extends Data.TaggedError("VmmError")<{
  /** OpenBSD errno, as get_info_vm / terminate_vm return it. */
  readonly errno: number
  readonly message: string
}> {}

/** What terminate needs to find the VM: the kernel id (vmm) or the process (process backend). */
export interface TerminateTarget {
  readonly vmmId: number
  readonly pid: number
}

export interface VmmDeviceService {
  /** RECEIVE_VMM_FD: the device fd from the parent (ignored by the process backend). */
  readonly attach: (fd: Fd) => Effect.Effect<void>
  /**
   * VMM_IOC_INFO twice, as get_info_vm does: the first call with size 0 to
   * learn the size (EIO if it reports entries), the second to fill. Returns
   * vip_size / 160 entries (tail entries zero if VMs vanished in between).
   */
  readonly info: Effect.Effect<ReadonlyArray<VmInfo>, VmmError>
  /** VMM_IOC_TERM on a kernel id (ENOENT if unknown). */
  readonly terminate: (target: TerminateTarget) => Effect.Effect<void, VmmError>
}

export class VmmDevice extends Context.Tag("vmd-vmm/VmmDevice")<VmmDevice, VmmDeviceService>() {}

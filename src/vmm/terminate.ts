/**
 * terminate_vm and the TERMINATE_VM_REQUEST branch of vmm_dispatch_parent.
 */
import { Effect } from "effect"
import { Errno, VmdError } from "../schema/errno.ts"
import { VMOP_FORCE, VM_STATE_SHUTDOWN } from "../schema/constants.ts"
import { IMSG_VMDOP_VM_REBOOT } from "../schema/imsgTypes.ts"
import type { Vm } from "../services/VmRegistry.ts"
import type { VmmContext } from "./context.ts"
import { composeVm } from "./context.ts"
import { logDebug } from "./log.ts"
import { opError, type VmOpError } from "./errors.ts"
import { span } from "./span.ts"

/** terminate_vm: VMM_IOC_TERM (or SIGTERM in the process backend). Returns 0 or an errno. */
export const terminateVm = (ctx: VmmContext, vm: Pick<Vm, "vmmid" | "pid">) =>
  ctx.device.terminate({ vmmId: vm.vmmid, pid: vm.pid }).pipe(
    Effect.as(0),
    Effect.catchAll((e) => Effect.succeed(e.errno))
  )

/**
 * The stop request: id 0 is ENOENT; an unknown VM is VMD_VM_STOP_INVALID;
 * FORCE terminates at once; otherwise the VM is asked to reboot while marked
 * as shutting down, so that the guest's reset ends it instead of restarting
 * it (vmm.c's comment: this avoids the ACPI-less "press any key to reboot").
 */
const fail = (errno: number) => Effect.fail(opError("terminate")(errno))

export const terminateRequest = (ctx: VmmContext, id: number, flags: number): Effect.Effect<void, VmOpError> =>
  Effect.gen(function* () {
    yield* logDebug(`vmm_dispatch_parent: recv'ed TERMINATE_VM for ${id}`)
    if (id === 0) return yield* fail(Errno.ENOENT)
    const vm = yield* ctx.registry.byVmid(id)
    if (vm === null) {
      yield* logDebug("vmm_dispatch_parent: cannot stop vm that is not running")
      return yield* fail(VmdError.VMD_VM_STOP_INVALID)
    }
    if (flags & VMOP_FORCE) {
      vm.state |= VM_STATE_SHUTDOWN
      yield* terminateVm(ctx, vm)
      return
    }
    if (!(vm.state & VM_STATE_SHUTDOWN)) {
      yield* logDebug(`vmm_dispatch_parent: sending shutdown request to vm ${id}`)
      vm.state |= VM_STATE_SHUTDOWN
      const sent = yield* composeVm(vm.channel, { type: IMSG_VMDOP_VM_REBOOT, peerid: 0, pid: 0 })
      // A VM registered but not started has no channel to send on. vmm.c composes
      // on its zeroed imsgbuf, which libutil refuses with ERANGE (payload + 16 >
      // maxsize 0, imsg.md §1.2), and answers that errno; the shutdown mark stays.
      if (!sent) return yield* fail(Errno.ERANGE)
      return
    }
    // Already shutting down: only an error if the VM never got a kernel id.
    if (vm.vmmid === 0) {
      yield* logDebug("vmm_dispatch_parent: no vm running anymore")
      return yield* fail(VmdError.VMD_VM_STOP_INVALID)
    }
  }).pipe(span("terminate_vm"))


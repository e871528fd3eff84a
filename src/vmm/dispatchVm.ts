/**
 * vmm_dispatch_vm: messages from a VM process.
 *
 * VM_SHUTDOWN / VM_REBOOT set and clear the shutdown mark; PAUSE and
 * UNPAUSE responses go on to the parent (proc_forward_imsg: same type and
 * peerid, header pid 1). vmm.c calls fatalx on anything else, which takes
 * every VM on the host down with it. We end only the VM that misbehaved
 * (DECISIONS.md): log, mark it shutting down, terminate it and close its
 * channel; its exit is then reported as usual.
 *
 * Hardening beyond vmm.c, both invisible to a well-behaved VM: a PAUSE or
 * UNPAUSE response must carry exactly a struct vmop_result (the parent
 * would fatal on any other size), and an fd sent by a VM is never
 * forwarded to the parent.
 */
import { Effect } from "effect"
import { VM_STATE_SHUTDOWN } from "../schema/constants.ts"
import { SIZEOF } from "../schema/structs.ts"
import * as T from "../schema/imsgTypes.ts"
import type { Imsg } from "../services/ImsgChannel.ts"
import type { Vm } from "../services/VmRegistry.ts"
import { composeParent, type VmmContext } from "./context.ts"
import { terminateVm } from "./terminate.ts"
import { closeVmChannel } from "../layers/VmRegistryLive.ts"
import { logDebug, logWarnx } from "./log.ts"
import { span } from "./span.ts"

/** End a VM that broke the protocol, without touching the others. */
export const endMisbehavingVm = (ctx: VmmContext, vm: Vm, why: string) =>
  Effect.gen(function* () {
    yield* logWarnx(`vmm_dispatch_vm: ${why} from vm ${vm.params.vmc_name} (id ${vm.vmid}), terminating it`)
    vm.state |= VM_STATE_SHUTDOWN
    yield* terminateVm(ctx, vm)
    closeVmChannel(vm)
  })

export const dispatchVm = (ctx: VmmContext, vm: Vm, imsg: Imsg) =>
  Effect.gen(function* () {
    if (imsg.fd !== null) {
      yield* logDebug(`vmm_dispatch_vm: dropping fd sent by vm ${vm.vmid} with ${T.imsgTypeName(imsg.type)}`)
      imsg.fd.closeSync()
    }
    switch (imsg.type) {
      case T.IMSG_VMDOP_VM_SHUTDOWN:
        vm.state |= VM_STATE_SHUTDOWN
        return
      case T.IMSG_VMDOP_VM_REBOOT:
        vm.state &= ~VM_STATE_SHUTDOWN
        return
      case T.IMSG_VMDOP_PAUSE_VM_RESPONSE:
      case T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE:
        if (imsg.data.length !== SIZEOF.vmop_result) {
          return yield* endMisbehavingVm(
            ctx,
            vm,
            `${T.imsgTypeName(imsg.type)} with ${imsg.data.length} bytes (want ${SIZEOF.vmop_result})`
          )
        }
        yield* composeParent(ctx, imsg.type, imsg.peerid, imsg.data)
        return
      default:
        return yield* endMisbehavingVm(ctx, vm, `got invalid imsg ${imsg.type} (${T.imsgTypeName(imsg.type)})`)
    }
  }).pipe(span("vmm_dispatch_vm"))

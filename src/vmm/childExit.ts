/**
 * vmm_sighdlr's SIGCHLD branch: a reaped VM process becomes a
 * TERMINATE_VM_EVENT to the parent, then the VM is removed.
 *
 * Exit code EAGAIN (35) means the guest reset: the parent restarts it,
 * unless a stop was pending, in which case it is reported as 0. A process
 * killed by a signal is reported as EIO (vmm.c 1.143; 1.136 reported 0).
 * A pid that is not a registered VM (already removed) is ignored.
 */
import { Effect } from "effect"
import { Errno } from "../schema/errno.ts"
import { VM_STATE_SHUTDOWN } from "../schema/constants.ts"
import { vmopResultBytes } from "./wire.ts"
import { IMSG_VMDOP_TERMINATE_VM_EVENT } from "../schema/imsgTypes.ts"
import type { ChildExit } from "../services/Process.ts"
import { composeParent, type VmmContext } from "./context.ts"
import { terminateVm } from "./terminate.ts"
import { logDebug } from "./log.ts"
import { span } from "./span.ts"

export const exitResult = (exit: ChildExit, shuttingDown: boolean): number => {
  const ret = exit.status._tag === "Exited" ? exit.status.code : Errno.EIO
  // Don't reboot on pending shutdown
  return ret === Errno.EAGAIN && shuttingDown ? 0 : ret
}

export const childExited = (ctx: VmmContext, exit: ChildExit) =>
  Effect.gen(function* () {
    const vm = yield* ctx.registry.byPid(exit.pid)
    // If the VM is gone already, it got terminated via a TERMINATE_VM_REQUEST.
    if (vm === null) return
    const ret = exitResult(exit, (vm.state & VM_STATE_SHUTDOWN) !== 0)
    // As in vmm.c the event comes after vm_remove: when the parent reads it,
    // the VM's socket and fds are closed here (test/e2e/wire.test.ts).
    yield* ctx.registry.remove(vm, "vmm_sighdlr")
    yield* composeParent(ctx, IMSG_VMDOP_TERMINATE_VM_EVENT, vm.peerid, vmopResultBytes(ret, vm.vmid, 0))
    // It goes now, and terminate_vm (which vmm.c does first) after it: the
    // process is gone, and the parent's answer to the event (a restart) is
    // handled only once this handler has returned, so the parent cannot
    // tell; the event is out ~0.1 ms sooner (bench-vmm's exit notification).
    yield* ctx.parent.writePending
    if ((yield* terminateVm(ctx, vm)) === 0)
      yield* logDebug(`vmm_sighdlr: terminated vm ${vm.params.vmc_name} (id ${vm.vmid})`)
  }).pipe(span("vmm_sighdlr"))

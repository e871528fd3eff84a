/**
 * vmm_sighdlr's SIGCHLD branch: a reaped VM process becomes a
 * TERMINATE_VM_EVENT to the parent, then the VM is removed.
 *
 * Exit code EAGAIN (35) means the guest reset: the parent restarts it,
 * unless a stop was pending, in which case it is reported as 0. A process
 * killed by a signal is reported as EIO (vmm.c 1.143; 1.136 reported 0).
 * A pid that is not a registered VM (already removed) is ignored.
 *
 * Up to the event written it is one synchronous step (`sighdlrNow`), which
 * the server runs right in the callback that reaped the process when its
 * dispatcher is idle (no fiber to wake: each Effect operation of a cold
 * runtime costs tens of µs here, ~0.2 ms on this path); terminate_vm
 * follows as an effect (`afterExit`). `childExited` is both, for an exit
 * that waited its turn in the dispatcher's queue.
 */
import { Effect } from "effect"
import { Errno } from "../schema/errno.ts"
import { VM_STATE_SHUTDOWN } from "../schema/constants.ts"
import { vmopResultBytes } from "./wire.ts"
import { IMSG_VMDOP_TERMINATE_VM_EVENT } from "../schema/imsgTypes.ts"
import type { ChildExit } from "../services/Process.ts"
import type { Vm } from "../services/VmRegistry.ts"
import { writeParentNow, type VmmContext } from "./context.ts"
import { terminateVm } from "./terminate.ts"
import { closeHeldFds } from "../layers/VmRegistryLive.ts"
import { logDebug } from "./log.ts"
import { span } from "./span.ts"

export const exitResult = (exit: ChildExit, shuttingDown: boolean): number => {
  const ret = exit.status._tag === "Exited" ? exit.status.code : Errno.EIO
  // Don't reboot on pending shutdown
  return ret === Errno.EAGAIN && shuttingDown ? 0 : ret
}

/**
 * vmm_sighdlr up to TERMINATE_VM_EVENT, now: find the VM, close its fds,
 * write the event (past the parent channel's queue when that is empty),
 * then vm_remove the VM (its socket), or vm_remove first if messages wait
 * on that socket. The removed VM (for `afterExit`), or null if the pid is
 * no registered VM. Only where the dispatcher would run: it is idle, or
 * this is its turn.
 */
export const sighdlrNow = (ctx: VmmContext, exit: ChildExit): Vm | null => {
  const vm = ctx.registry.unsafeByPid(exit.pid)
  // If the VM is gone already, it got terminated via a TERMINATE_VM_REQUEST.
  if (vm === null) return null
  const ret = exitResult(exit, (vm.state & VM_STATE_SHUTDOWN) !== 0)
  // vmm.c does vm_remove first, and the parent may act on the event at once
  // (reopen a tap, which is exclusive on OpenBSD): every fd of the VM's is
  // closed before it goes out. The VM's socket may wait until just after it
  // (its peer is dead; nothing is read or answered in between, so the parent
  // cannot tell), which takes three native calls off the event's path
  // (bench-vmm's exit notification). Not when messages wait in that socket's
  // queue (they may carry fds): then vm_remove first, as vmm.c.
  // test/vmm/exitOrder.test.ts, test/e2e/wire.test.ts.
  closeHeldFds(vm) // fds sent for it after its start (START_VM_CDROM, ...); none usually
  if (vm.channel !== null && vm.channel.unsafeQueued() > 0) ctx.registry.unsafeRemove(vm, "vmm_sighdlr")
  try {
    writeParentNow(ctx, IMSG_VMDOP_TERMINATE_VM_EVENT, vm.peerid, vmopResultBytes(ret, vm.vmid, 0))
  } finally {
    ctx.registry.unsafeRemove(vm, "vmm_sighdlr") // a no-op if done above
  }
  return vm
}

/**
 * The rest of vmm_sighdlr: terminate_vm, which vmm.c does first. The
 * process is gone, and the parent's answer to the event (a restart) is
 * handled only after this, so the parent cannot tell; the event is out
 * sooner (bench-vmm's exit notification).
 */
export const afterExit = (ctx: VmmContext, vm: Vm) =>
  Effect.flatMap(terminateVm(ctx, vm), (r) =>
    r === 0 ? logDebug(`vmm_sighdlr: terminated vm ${vm.params.vmc_name} (id ${vm.vmid})`) : Effect.void
  )

/** vmm_sighdlr for an exit handled in its turn: `sighdlrNow`, then `afterExit`. */
export const childExited = (ctx: VmmContext, exit: ChildExit) =>
  Effect.suspend(() => {
    const vm = sighdlrNow(ctx, exit)
    return vm === null ? Effect.void : afterExit(ctx, vm)
  }).pipe(span("vmm_sighdlr"))

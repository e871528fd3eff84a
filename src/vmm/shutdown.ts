/**
 * vmm_shutdown: terminate every VM and remove it (CTL_RESET with
 * CONFIG_VMS, and process exit). Removing a VM closes its channel, so a VM
 * process that survived the terminate sees EOF and exits.
 */
import { Effect } from "effect"
import type { VmmContext } from "./context.ts"
import { terminateVm } from "./terminate.ts"
import { span } from "./span.ts"

export const vmmShutdown = (ctx: VmmContext) =>
  Effect.gen(function* () {
    for (const vm of yield* ctx.registry.all) {
      // XXX suspend or request graceful shutdown
      yield* terminateVm(ctx, vm)
      yield* ctx.registry.remove(vm, "vmm_shutdown")
    }
  }).pipe(span("vmm_shutdown"))

/**
 * get_info_vm: INFO from vmm(4) (two calls), then one GET_INFO_VM_DATA per
 * VM to the parent with the request's peerid; or, for the RECEIVE_VMM_FD
 * sweep, TERM every VM the kernel reports. Returns 0 or an errno, which
 * the dispatcher sends in GET_INFO_VM_END_DATA.
 */
import { Effect } from "effect"
import { Errno } from "../schema/errno.ts"
import { encodeVmopInfoResult, emptyVmopInfoResult } from "../schema/structs.ts"
import { orDie } from "./wire.ts"
import { IMSG_VMDOP_GET_INFO_VM_DATA } from "../schema/imsgTypes.ts"
import type { VmmContext } from "./context.ts"
import type { OutgoingImsg } from "../services/ImsgChannel.ts"
import { terminateVm } from "./terminate.ts"
import { logDebug } from "./log.ts"
import { opError, type VmOpError } from "./errors.ts"
import { span } from "./span.ts"

const fail = (errno: number) => Effect.fail(opError("info")(errno))

export const getInfoVm = (ctx: VmmContext, peerid: number, terminate: boolean): Effect.Effect<void, VmOpError> =>
  Effect.gen(function* () {
    const info = yield* Effect.either(ctx.device.info)
    if (info._tag === "Left") return yield* fail(info.left.errno)
    const replies: Array<OutgoingImsg> = []
    // vm_id2vmid for every entry, from one pass over the registry (not one search per VM).
    const vmidOf = new Map<number, number>()
    if (!terminate)
      for (const vm of yield* ctx.registry.all) if (vm.vmmid !== 0 && !vmidOf.has(vm.vmmid)) vmidOf.set(vm.vmmid, vm.vmid)
    for (const entry of info.right) {
      if (terminate) {
        const ret = yield* terminateVm(ctx, { vmmid: entry.vir_id, pid: entry.vir_creator_pid })
        if (ret !== 0) return yield* fail(ret)
        yield* logDebug(`get_info_vm: terminated vm ${entry.vir_name} (id ${entry.vir_id})`)
        continue
      }
      const vir = {
        ...emptyVmopInfoResult(),
        vir_memory_size: entry.vir_memory_size,
        vir_used_size: entry.vir_used_size,
        vir_ncpus: entry.vir_ncpus,
        vir_vcpu_state: entry.vir_vcpu_state,
        vir_creator_pid: entry.vir_creator_pid,
        vir_id: vmidOf.get(entry.vir_id) ?? 0,
        vir_name: entry.vir_name
      }
      replies.push({ type: IMSG_VMDOP_GET_INFO_VM_DATA, peerid, pid: 1, data: orDie(encodeVmopInfoResult(vir)) })
    }
    // One batch: the same bytes as one proc_compose_imsg per VM, queued at once.
    const sent = yield* Effect.either(ctx.parent.sendAll(replies))
    if (sent._tag === "Left") return yield* fail(Errno.EIO)
  }).pipe(span("get_info_vm"))

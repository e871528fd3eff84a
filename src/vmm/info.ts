/**
 * get_info_vm: INFO from vmm(4) (two calls), then one GET_INFO_VM_DATA per
 * VM to the parent with the request's peerid; or, for the RECEIVE_VMM_FD
 * sweep, TERM every VM the kernel reports. Returns 0 or an errno, which
 * the dispatcher sends in GET_INFO_VM_END_DATA.
 */
import { Effect } from "effect"
import { Errno } from "../schema/errno.ts"
import { emptyVmopInfoResult, encodeVmopInfoResultInto, SIZEOF, type VmopInfoResult } from "../schema/structs.ts"
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
    const entries = info.right
    // Every reply's bytes in one buffer (one allocation, not one per VM), each
    // written by the codec's encodeInto from one reused value (the fields
    // vmm.c leaves zero stay zero).
    const bytes = terminate ? null : new Uint8Array(entries.length * SIZEOF.vmop_info_result)
    const vir: { -readonly [K in keyof VmopInfoResult]: VmopInfoResult[K] } = emptyVmopInfoResult()
    for (const entry of entries) {
      if (terminate) {
        const ret = yield* terminateVm(ctx, { vmmid: entry.vir_id, pid: entry.vir_creator_pid })
        if (ret !== 0) return yield* fail(ret)
        yield* logDebug(`get_info_vm: terminated vm ${entry.vir_name} (id ${entry.vir_id})`)
        continue
      }
      vir.vir_memory_size = entry.vir_memory_size
      vir.vir_used_size = entry.vir_used_size
      vir.vir_ncpus = entry.vir_ncpus
      vir.vir_vcpu_state = entry.vir_vcpu_state
      vir.vir_creator_pid = entry.vir_creator_pid
      vir.vir_id = vmidOf.get(entry.vir_id) ?? 0
      vir.vir_name = entry.vir_name
      const at = replies.length * SIZEOF.vmop_info_result
      const err = encodeVmopInfoResultInto(vir, bytes!, at)
      // Our own values: one that does not encode is a bug (a defect, as orDie makes it).
      if (err !== undefined) throw new Error(`encode ${err.struct}.${err.field}: ${err.message}`)
      replies.push({ type: IMSG_VMDOP_GET_INFO_VM_DATA, peerid, pid: 1, data: bytes!.subarray(at, at + SIZEOF.vmop_info_result) })
    }
    // One batch: the same bytes as one proc_compose_imsg per VM, queued at once.
    const sent = yield* Effect.either(ctx.parent.sendAll(replies))
    if (sent._tag === "Left") return yield* fail(Errno.EIO)
  }).pipe(span("get_info_vm"))

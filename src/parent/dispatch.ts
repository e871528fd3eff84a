/**
 * Messages from the vmm to the parent (vmd.c vmd_dispatch_vmm): replies go
 * to the request waiting for them; TERMINATE_VM_EVENT ends a VM, or, for a
 * guest reset (EAGAIN) of a VM that boots normally, hands it to `restart`.
 * The vmm sends the parent no fds; one that came anyway is closed.
 */
import { Effect, Either } from "effect"
import { VM_STATE_SHUTDOWN, VM_STATE_WAITING } from "../schema/constants.ts"
import { Errno } from "../schema/errno.ts"
import * as T from "../schema/imsgTypes.ts"
import { decodeInt, decodeVmopInfoResult, decodeVmopResult } from "../schema/structs.ts"
import type { Imsg } from "../services/ImsgChannel.ts"
import type { EventLog } from "./events.ts"
import { isRunning, stopRecord, type VmRecord } from "./records.ts"
import type { Requests } from "./requests.ts"

export interface DispatchContext {
  readonly requests: Requests
  readonly records: ReadonlyMap<number, VmRecord>
  readonly log: EventLog
  /** config_setvm again, after vm_stop keeping the tty. */
  readonly restart: (vm: VmRecord) => Effect.Effect<void>
}

const resultOf = (m: Imsg) => Either.getOrUndefined(decodeVmopResult(m.data))

/** A vmop_result reply, to the request under `key` (built from the decoded result). */
const reply = (ctx: DispatchContext, m: Imsg, key: (r: { vmr_id: number }) => string) =>
  Effect.suspend(() => {
    const r = resultOf(m)
    return r === undefined ? Effect.void : ctx.requests.resolve(key(r), { result: r.vmr_result, id: r.vmr_id, pid: r.vmr_pid })
  })

/** vmd.c on TERMINATE_VM_EVENT: restart on a guest reset unless booted from a chosen device, else stop. */
const terminated = (ctx: DispatchContext, m: Imsg) =>
  Effect.gen(function* () {
    const r = resultOf(m)
    const vm = r === undefined ? undefined : ctx.records.get(r.vmr_id)
    if (r === undefined || vm === undefined) return
    yield* ctx.log.publish({ _tag: "Terminated", id: vm.id, name: vm.spec.name, result: r.vmr_result })
    if (r.vmr_result === Errno.EAGAIN && vm.params.vmc_bootdevice === 0) {
      stopRecord(vm, true)
      vm.state = VM_STATE_WAITING
      yield* ctx.restart(vm)
    } else {
      stopRecord(vm, false)
      yield* ctx.log.publish({ _tag: "Stopped", id: vm.id, name: vm.spec.name })
    }
  })

export const dispatchVmm = (ctx: DispatchContext, m: Imsg): Effect.Effect<void> =>
  Effect.gen(function* () {
    m.fd?.closeSync()
    switch (m.type) {
      case T.IMSG_VMDOP_START_VM_RESPONSE:
        return yield* reply(ctx, m, (r) => `start:${r.vmr_id}`)
      case T.IMSG_VMDOP_PAUSE_VM_RESPONSE:
        return yield* reply(ctx, m, (r) => `pause:${r.vmr_id}`)
      case T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE:
        return yield* reply(ctx, m, (r) => `unpause:${r.vmr_id}`)
      case T.IMSG_VMDOP_TERMINATE_VM_RESPONSE: {
        // vmd.c marks the VM as stopping here, in the order the vmm's messages
        // come: its TERMINATE_VM_EVENT (which clears the state) may be in the
        // same read, and must not be undone by a stopVm that resumes after it.
        const r = resultOf(m)
        const vm = r === undefined || r.vmr_result !== 0 ? undefined : ctx.records.get(r.vmr_id)
        if (vm !== undefined && isRunning(vm)) vm.state |= VM_STATE_SHUTDOWN
        return yield* reply(ctx, m, () => `stop:${m.peerid}`)
      }
      case T.IMSG_VMDOP_TERMINATE_VM_EVENT:
        return yield* terminated(ctx, m)
      case T.IMSG_VMDOP_GET_INFO_VM_DATA: {
        const vir = decodeVmopInfoResult(m.data)
        if (Either.isRight(vir)) ctx.requests.collect(m.peerid, vir.right)
        return
      }
      case T.IMSG_VMDOP_GET_INFO_VM_END_DATA: {
        const result = Either.getOrElse(decodeInt(m.data), () => Errno.EBADMSG)
        return yield* ctx.requests.resolve(`info:${m.peerid}`, { result, id: 0, pid: 0 })
      }
      default:
        yield* ctx.log.publish({ _tag: "Unexpected", type: m.type, peerid: m.peerid })
    }
  })

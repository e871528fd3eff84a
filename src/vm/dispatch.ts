/**
 * vm.c vm_dispatch_vmm: messages from the vmm process to a VM.
 *
 * The guest is a null guest that idles, so pausing only records the state;
 * everything the vmm can observe is as vm.c does it:
 *  - PAUSE_VM / UNPAUSE_VM: *_RESPONSE with the received peerid and pid and
 *    a vmop_result {0, vm_vmid} (vm.c leaves pid and ttyname uninitialised;
 *    we send zeros);
 *  - CTL_VERBOSE: the new log verbosity;
 *  - PRIV_GET_ADDR_RESPONSE: the nic's MAC address (logged);
 *  - VM_SHUTDOWN: the guest powers off, exit 0;
 *  - VM_REBOOT: the guest resets, exit EAGAIN (35), which the vmm reports
 *    so that the parent restarts the VM unless a stop is pending;
 *  - anything else, or a payload of the wrong size: fatalx, exit 1.
 * An fd that arrives with a message is not ours to keep: it is closed.
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import * as T from "../schema/imsgTypes.ts"
import { decodeInt, decodeVmopAddrResult, decodeVmopId, encodeVmopResult } from "../schema/structs.ts"
import type { Channel, Imsg } from "../services/ImsgChannel.ts"
import { logDebug, setVerbose } from "../vmm/log.ts"
import { exitWith, type VmExit } from "./exit.ts"

export interface VmState {
  /** vm_vmid: the id in PAUSE/UNPAUSE replies. */
  readonly vmid: number
  paused: boolean
}

const fatalx = (msg: string) => exitWith(1, `vm_dispatch_vmm: ${msg}`)

const macString = (mac: Uint8Array) => Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":")

const pauseReply = (state: VmState, channel: Channel, imsg: Imsg, pause: boolean) =>
  Effect.gen(function* () {
    if (Either.isLeft(decodeVmopId(imsg.data))) return yield* fatalx(`${T.imsgTypeName(imsg.type)}: bad size ${imsg.data.length}`)
    state.paused = pause
    yield* logDebug(`vm ${state.vmid} ${pause ? "paused" : "unpaused"}`)
    const result = encodeVmopResult({ vmr_result: 0, vmr_id: state.vmid, vmr_pid: 0, vmr_ttyname: "" })
    if (Either.isLeft(result)) return yield* fatalx(`encode vmop_result: ${result.left.message}`)
    yield* channel
      .send({
        type: pause ? T.IMSG_VMDOP_PAUSE_VM_RESPONSE : T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE,
        peerid: imsg.peerid,
        pid: imsg.pid,
        data: result.right
      })
      // The vmm is gone: the EOF that follows ends us with 0.
      .pipe(Effect.catchAll(() => Effect.void))
  })

export const dispatchVmm = (state: VmState, channel: Channel, imsg: Imsg): Effect.Effect<void, VmExit> =>
  Effect.gen(function* () {
    imsg.fd?.closeSync()
    switch (imsg.type) {
      case T.IMSG_VMDOP_PAUSE_VM:
        return yield* pauseReply(state, channel, imsg, true)
      case T.IMSG_VMDOP_UNPAUSE_VM:
        return yield* pauseReply(state, channel, imsg, false)
      case T.IMSG_CTL_VERBOSE: {
        const v = decodeInt(imsg.data)
        if (Either.isLeft(v)) return yield* fatalx(`CTL_VERBOSE: bad size ${imsg.data.length}`)
        setVerbose(v.right)
        return
      }
      case T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE: {
        const addr = decodeVmopAddrResult(imsg.data)
        if (Either.isLeft(addr)) return yield* fatalx(`PRIV_GET_ADDR_RESPONSE: bad size ${imsg.data.length}`)
        yield* logDebug(`vm ${state.vmid} nic ${addr.right.var_nic_idx} has lladdr ${macString(addr.right.var_addr)}`)
        return
      }
      case T.IMSG_VMDOP_VM_SHUTDOWN:
        return yield* exitWith(0, "shutdown requested")
      case T.IMSG_VMDOP_VM_REBOOT:
        return yield* exitWith(Errno.EAGAIN, "reboot requested: guest reset")
      default:
        return yield* fatalx(`got invalid imsg ${imsg.type} (${T.imsgTypeName(imsg.type)})`)
    }
  })

/**
 * vmm_dispatch_parent: every message type the parent sends to vmm.
 *
 * Replies follow vmm.c exactly: START_VM_RESPONSE, PAUSE/UNPAUSE_VM_RESPONSE
 * and TERMINATE_VM_RESPONSE carry a struct vmop_result {res, id, pid} with
 * the request's peerid; GET_INFO_VM_END_DATA carries an int. Where vmm.c
 * calls fatal on a malformed payload, we log and answer with EINVAL when the
 * message has a reply, and drop it when it has none (DECISIONS.md).
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import { CONFIG_VMS } from "../schema/constants.ts"
import * as T from "../schema/imsgTypes.ts"
import { decodeVmopAddrResult, decodeVmopId, encodeVmopAddrResult, encodeVmopId, imsgIntRead, imsgUintRead } from "../schema/structs.ts"
import { intBytes, orDie, vmopResultBytes } from "./wire.ts"
import type { Imsg } from "../services/ImsgChannel.ts"
import { composeParent, composeVm, type VmmContext } from "./context.ts"
import { configGetCdrom, configGetConfig, configGetDisk, configGetIf, configGetVm, configPurge } from "./config.ts"
import { startVm } from "./startVm.ts"
import { terminateRequest } from "./terminate.ts"
import { getInfoVm } from "./info.ts"
import { vmmShutdown } from "./shutdown.ts"
import type { VmOpError } from "./errors.ts"
import { logDebug, logWarnx, setVerbose } from "./log.ts"
import { span } from "./span.ts"

/** 0 for success, else the operation's errno: what goes into a reply. */
const errnoOf = <R>(eff: Effect.Effect<void, VmOpError, R>) =>
  eff.pipe(
    Effect.as(0),
    Effect.catchAll((e) => Effect.succeed(e.errno))
  )

/** A reply decided by a handler: none, a vmop_result, or an int (GET_INFO_VM_END_DATA). */
type Reply =
  | { readonly cmd: typeof T.IMSG_NONE }
  | { readonly cmd: number; readonly res: number; readonly id: number; readonly pid: number }

const none: Reply = { cmd: T.IMSG_NONE }
const reply = (cmd: number, res: number, id = 0, pid = 0): Reply => ({ cmd, res, id, pid })

/** START_VM_* steps: 0 means no reply; an errno means START_VM_RESPONSE with it. */
const startStep = (res: number): Reply => (res === 0 ? none : reply(T.IMSG_VMDOP_START_VM_RESPONSE, res))

const pauseOrUnpause = (ctx: VmmContext, imsg: Imsg, responseType: number) =>
  Effect.gen(function* () {
    const vid = decodeVmopId(imsg.data)
    if (Either.isLeft(vid)) {
      imsg.fd?.closeSync()
      yield* logWarnx(`vmm_dispatch_parent: ${T.imsgTypeName(imsg.type)}: ${vid.left.message}`)
      return reply(responseType, Errno.EINVAL)
    }
    const id = vid.right.vid_id
    const vm = yield* ctx.registry.byVmid(id)
    if (vm === null) {
      imsg.fd?.closeSync()
      return reply(responseType, Errno.ENOENT, id)
    }
    const sent = yield* composeVm(vm.channel, {
      type: imsg.type,
      peerid: T.PEERID_NONE,
      pid: imsg.pid,
      data: orDie(encodeVmopId(vid.right)),
      fd: imsg.fd
    })
    if (sent) return none
    // A VM registered but not started has no channel yet. vmm.c composes on its
    // zeroed imsgbuf, which fails (ERANGE: maxsize 0), ignores that and sends
    // nothing: no reply here either, for vmd's parent sets VM_STATE_PAUSED on any
    // *_RESPONSE that names the VM, whatever its result (vmd.md §6e).
    yield* logWarnx(`vmm_dispatch_parent: ${T.imsgTypeName(imsg.type)}: vm ${id} is not started: not forwarded, no reply`)
    return none
  })

const handle = (ctx: VmmContext, imsg: Imsg): Effect.Effect<Reply> =>
  Effect.gen(function* () {
    switch (imsg.type) {
      case T.IMSG_VMDOP_START_VM_REQUEST:
        return startStep(yield* configGetVm(ctx, imsg))
      case T.IMSG_VMDOP_START_VM_CDROM:
        return startStep(yield* configGetCdrom(ctx, imsg))
      case T.IMSG_VMDOP_START_VM_DISK:
        return startStep(yield* configGetDisk(ctx, imsg))
      case T.IMSG_VMDOP_START_VM_IF:
        return startStep(yield* configGetIf(ctx, imsg))
      case T.IMSG_VMDOP_START_VM_END: {
        const started = yield* Effect.either(startVm(ctx, imsg))
        if (Either.isLeft(started)) return reply(T.IMSG_VMDOP_START_VM_RESPONSE, started.left.errno)
        // Check if the ID can be mapped correctly
        const id = yield* ctx.registry.id2vmid(started.right.id)
        if (id === 0) return reply(T.IMSG_VMDOP_START_VM_RESPONSE, Errno.ENOENT, 0, started.right.pid)
        return reply(T.IMSG_VMDOP_START_VM_RESPONSE, 0, id, started.right.pid)
      }
      case T.IMSG_VMDOP_TERMINATE_VM_REQUEST: {
        imsg.fd?.closeSync()
        const vid = decodeVmopId(imsg.data)
        if (Either.isLeft(vid)) {
          yield* logWarnx(`vmm_dispatch_parent: TERMINATE_VM_REQUEST: ${vid.left.message}`)
          return reply(T.IMSG_VMDOP_TERMINATE_VM_RESPONSE, Errno.EINVAL)
        }
        const res = yield* terminateRequest(ctx, vid.right.vid_id, vid.right.vid_flags).pipe(errnoOf)
        return reply(T.IMSG_VMDOP_TERMINATE_VM_RESPONSE, res, vid.right.vid_id)
      }
      case T.IMSG_VMDOP_GET_INFO_VM_REQUEST:
        imsg.fd?.closeSync()
        return reply(T.IMSG_VMDOP_GET_INFO_VM_END_DATA, yield* getInfoVm(ctx, imsg.peerid, false).pipe(errnoOf))
      case T.IMSG_VMDOP_CONFIG:
        yield* configGetConfig(ctx, imsg)
        return none
      case T.IMSG_CTL_RESET: {
        imsg.fd?.closeSync()
        const mode = imsgUintRead(imsg.data)
        if (Either.isLeft(mode)) {
          yield* logWarnx(`vmm_dispatch_parent: CTL_RESET: ${mode.left.message}`)
          return none
        }
        let m = mode.right
        if (m & CONFIG_VMS) {
          // Terminate and remove all VMs
          yield* vmmShutdown(ctx)
          m &= ~CONFIG_VMS
        }
        yield* configPurge(ctx, m)
        return none
      }
      case T.IMSG_CTL_VERBOSE: {
        imsg.fd?.closeSync()
        const verbose = imsgIntRead(imsg.data)
        if (Either.isLeft(verbose)) {
          yield* logWarnx(`vmm_dispatch_parent: CTL_VERBOSE: ${verbose.left.message}`)
          return none
        }
        setVerbose(verbose.right)
        ctx.state.verbose = verbose.right
        // Forward message to each VM process
        for (const vm of yield* ctx.registry.all) {
          yield* composeVm(vm.channel, {
            type: imsg.type,
            peerid: T.PEERID_NONE,
            pid: imsg.pid,
            data: intBytes(verbose.right)
          })
        }
        return none
      }
      case T.IMSG_VMDOP_PAUSE_VM:
        return yield* pauseOrUnpause(ctx, imsg, T.IMSG_VMDOP_PAUSE_VM_RESPONSE)
      case T.IMSG_VMDOP_UNPAUSE_VM:
        return yield* pauseOrUnpause(ctx, imsg, T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE)
      case T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE: {
        const addr = decodeVmopAddrResult(imsg.data)
        if (Either.isLeft(addr)) {
          imsg.fd?.closeSync()
          yield* logWarnx(`vmm_dispatch_parent: PRIV_GET_ADDR_RESPONSE: ${addr.left.message}`)
          return none
        }
        const vm = yield* ctx.registry.byVmid(addr.right.var_vmid)
        if (vm === null) {
          imsg.fd?.closeSync()
          return none
        }
        // Forward hardware address details to the guest vm; dropped if it has no channel yet.
        yield* composeVm(vm.channel, {
          type: imsg.type,
          peerid: T.PEERID_NONE,
          pid: imsg.pid,
          data: orDie(encodeVmopAddrResult(addr.right)),
          fd: imsg.fd
        })
        return none
      }
      case T.IMSG_VMDOP_RECEIVE_VMM_FD: {
        if (ctx.state.vmmFd !== null) {
          imsg.fd?.closeSync()
          yield* logWarnx("vmm_dispatch_parent: already received vmm fd, ignoring another")
          return none
        }
        if (imsg.fd === null) {
          yield* logWarnx("vmm_dispatch_parent: RECEIVE_VMM_FD without an fd")
          return none
        }
        ctx.state.vmmFd = imsg.fd
        yield* ctx.device.attach(imsg.fd)
        // Get and terminate all running VMs
        const res = yield* getInfoVm(ctx, imsg.peerid, true).pipe(errnoOf)
        if (res !== 0) yield* logDebug(`vmm_dispatch_parent: terminate sweep: ${res}`)
        return none
      }
      case T.IMSG_VMDOP_RECEIVE_PSP_FD: {
        if (ctx.state.pspFd !== null) {
          imsg.fd?.closeSync()
          yield* logWarnx("vmm_dispatch_parent: already received psp fd, ignoring another")
          return none
        }
        ctx.state.pspFd = imsg.fd
        return none
      }
      default:
        imsg.fd?.closeSync()
        yield* logWarnx(`vmm_dispatch_parent: got invalid imsg ${imsg.type} (${T.imsgTypeName(imsg.type)}) from parent`)
        return none
    }
  })

/** Handle one parent message and send vmm.c's reply, if it has one. */
export const dispatchParent = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    // The handler then goes on without it (vmm.c's imsg_get_fd gives -1 alike), and its
    // own complaint ("can't get tty", "no kernel or disk/cdrom specified") says less.
    if (imsg.fdMissing === true)
      yield* logWarnx(
        `vmm_dispatch_parent: ${T.imsgTypeName(imsg.type)} (peerid ${imsg.peerid | 0}) came without the fd its header announced (the parent sent none, or this process is out of file descriptors)`
      )
    const r = yield* handle(ctx, imsg)
    if (r.cmd === T.IMSG_NONE || !("res" in r)) return
    const vmId = imsg.peerid
    switch (r.cmd) {
      case T.IMSG_VMDOP_START_VM_RESPONSE: {
        if (r.res !== 0) {
          // Remove local reference if it exists
          const vm = yield* ctx.registry.byVmid(vmId)
          if (vm !== null) {
            yield* logDebug("vmm_dispatch_parent: removing vm, START_VM_RESPONSE")
            yield* ctx.registry.remove(vm, "vmm_dispatch_parent")
          }
        }
        const id = r.id === 0 ? vmId : r.id
        yield* composeParent(ctx, r.cmd, vmId, vmopResultBytes(r.res, id, r.pid))
        return
      }
      case T.IMSG_VMDOP_PAUSE_VM_RESPONSE:
      case T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE:
      case T.IMSG_VMDOP_TERMINATE_VM_RESPONSE:
        yield* composeParent(ctx, r.cmd, vmId, vmopResultBytes(r.res, r.id, r.pid))
        return
      default:
        yield* composeParent(ctx, r.cmd, vmId, intBytes(r.res))
    }
  }).pipe(span("vmm_dispatch_parent", () => ({ type: T.imsgTypeName(imsg.type) })))

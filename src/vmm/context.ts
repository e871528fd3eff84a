/**
 * What the vmm process's functions share: the services (resolved once) and
 * the process state that vmm.c keeps in `env` (vmd_fd, vmd_psp_fd, vmd_cfg,
 * vmd_verbose, vmd_debug, argv0).
 */
import { Context, Effect } from "effect"
import type { VmdConfig } from "../schema/structs.ts"
import type { Channel, ImsgChannelService, OutgoingImsg } from "../services/ImsgChannel.ts"
import type { ProcessService } from "../services/Process.ts"
import type { Vm, VmRegistryService } from "../services/VmRegistry.ts"
import type { VmmDeviceService } from "../services/VmmDevice.ts"
import type { Fd } from "../services/Fd.ts"
import { PROC_COMPOSE_PID } from "../schema/imsgTypes.ts"
import { emitLog } from "./log.ts"

/** How this vmm process was started (bin/vmm flags). */
export interface VmmOptions {
  /** -d: VM processes share our stdio; logs stay on stderr. */
  readonly debug: boolean
  /** -v count. */
  readonly verbose: number
  /** The program exec'd for each VM (vmd: argv0; ours: --vm-exec). */
  readonly vmExec: string
  /** Arguments placed before "-V" (e.g. a script path when vmExec is an interpreter). */
  readonly vmExecArgs: ReadonlyArray<string>
  /**
   * How long to wait for a VM process's 4-byte id in the start handshake.
   * vmm.c blocks forever; we give up, kill the child and answer ENOMEM.
   */
  readonly handshakeTimeoutMs: number
}

export class VmmOptionsTag extends Context.Tag("vmd-vmm/VmmOptions")<VmmOptionsTag, VmmOptions>() {}

/** handshakeTimeoutMs as bin/vmm runs. */
export const HANDSHAKE_TIMEOUT_MS = 30_000

export const defaultVmmOptions = (vmExec: string): VmmOptions => ({
  debug: false,
  verbose: 0,
  vmExec,
  vmExecArgs: [],
  handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS
})

/** env-> fields the vmm process uses. */
export interface VmmState {
  /** env->vmd_fd: /dev/vmm from RECEIVE_VMM_FD. */
  vmmFd: Fd | null
  /** env->vmd_psp_fd: /dev/psp from RECEIVE_PSP_FD. */
  pspFd: Fd | null
  /** env->vmd_cfg (CONFIG). */
  config: VmdConfig
  verbose: number
  /**
   * A shutdown was asked for (SIGTERM/SIGINT) or the parent is gone: a start
   * handshake does not wait for its VM's id any more (the vmm would otherwise
   * shut down only after the handshake timeout).
   */
  stopping: boolean
  /** The VM process whose id a start handshake waits for now (0: none): what a shutdown ends. */
  handshakePid: number
}

export interface VmmContext {
  readonly options: VmmOptions
  readonly state: VmmState
  readonly registry: VmRegistryService
  readonly device: VmmDeviceService
  readonly process: ProcessService
  readonly imsg: ImsgChannelService
  readonly parent: Channel
  /**
   * vmm_pipe, first half: the VM's socket as an imsg channel that reads
   * nothing yet (the handshake's raw id is still to come on it); null if
   * the channel could not be set up (the socket is left open).
   */
  readonly openVmChannel: (socket: Fd) => Effect.Effect<Channel | null>
  /**
   * vmm_pipe, second half: start reading the channel (vmm_dispatch_vm).
   * Sets vm.channel / vm.closeChannel.
   */
  readonly watchVm: (vm: Vm, channel: Channel) => Effect.Effect<void>
}

/** composeParent now, outside an effect (vmm_sighdlr's synchronous step). */
export const composeParentNow = (ctx: VmmContext, type: number, peerid: number, data: Uint8Array): void => {
  const error = ctx.parent.unsafeSend({ type, peerid, pid: PROC_COMPOSE_PID, data })
  if (error !== null) emitLog("warning", `could not send to parent: ${error.message}`)
}

/**
 * composeParentNow with the parent channel written at once (unsafeSendNow:
 * with nothing queued the message goes out in one sendmsg, past the queue):
 * vmm_sighdlr's TERMINATE_VM_EVENT.
 */
export const writeParentNow = (ctx: VmmContext, type: number, peerid: number, data: Uint8Array): void => {
  const error = ctx.parent.unsafeSendNow({ type, peerid, pid: PROC_COMPOSE_PID, data })
  if (error !== null) emitLog("warning", `could not send to parent: ${error.message}`)
}

/** proc_compose_imsg(ps, PROC_PARENT, type, peerid, -1, data): header pid 1. */
export const composeParent = (ctx: VmmContext, type: number, peerid: number, data: Uint8Array) =>
  Effect.sync(() => composeParentNow(ctx, type, peerid, data))

/**
 * imsg_compose_event on a VM's channel; false only if the VM has no channel
 * (not started yet). A channel whose peer is gone (EPIPE, EOF) or that is
 * closed takes the message and drops it, fd closed: vmm.c's imsgbuf of a
 * dead pipe still queues (vmm_dispatch_vm only deletes its event), so a
 * PAUSE gets no reply and a graceful TERMINATE answers 0 until the VM's
 * exit is reaped.
 */
export const composeVm = (channel: Channel | null, msg: OutgoingImsg) => {
  if (channel === null) {
    msg.fd?.closeSync()
    return Effect.succeed(false)
  }
  return channel.send(msg).pipe(Effect.ignore, Effect.as(true))
}

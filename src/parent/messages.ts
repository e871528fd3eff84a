/**
 * The messages vmd's parent sends the vmm process (vmd.md §6), built as
 * values for ImsgChannel.send. Header pid is always 1 (proc_compose_imsg).
 * Pure apart from the Fds they carry, which the channel owns once sent.
 */
import { VMOP_FORCE } from "../schema/constants.ts"
import * as T from "../schema/imsgTypes.ts"
import { emptyVmopId, encodeImsgUint, encodeVmdConfig, encodeVmopId, type VmdConfig } from "../schema/structs.ts"
import type { OutgoingImsg } from "../services/ImsgChannel.ts"
import type { Fd } from "../services/Fd.ts"
import { intBytes, orDie } from "../vmm/wire.ts"

const PID = T.PROC_COMPOSE_PID

const msg = (type: number, peerid: number, data?: Uint8Array, fd?: Fd | null): OutgoingImsg => ({
  type,
  peerid,
  pid: PID,
  ...(data === undefined ? {} : { data }),
  ...(fd === undefined || fd === null ? {} : { fd })
})

const uint = (n: number) => orDie(encodeImsgUint(n))

const vmopId = (id: number, flags = 0) => orDie(encodeVmopId({ ...emptyVmopId(), vid_id: id, vid_flags: flags }))

/** RECEIVE_VMM_FD: /dev/vmm (vmd_configure). */
export const receiveVmmFd = (fd: Fd): OutgoingImsg => msg(T.IMSG_VMDOP_RECEIVE_VMM_FD, T.PEERID_NONE, undefined, fd)

/** CONFIG: struct vmd_config (config_setconfig). */
export const config = (cfg: VmdConfig): OutgoingImsg =>
  msg(T.IMSG_VMDOP_CONFIG, T.PEERID_NONE, orDie(encodeVmdConfig(cfg)))

/** The fds of one start, in the order config_setvm sends them. */
export interface StartFds {
  readonly kernel: Fd | null
  readonly cdrom: Fd | null
  /** Per disk, its layers, top image first. */
  readonly disks: ReadonlyArray<ReadonlyArray<Fd>>
  /** One tap per nic. */
  readonly taps: ReadonlyArray<Fd>
  /** A dup of the pty master. */
  readonly tty: Fd
}

/**
 * config_setvm: START_VM_REQUEST (create params + kernel), START_VM_CDROM,
 * START_VM_DISK per layer (payload the disk index), START_VM_IF per nic
 * (payload the nic index), START_VM_END (the tty), all with peerid = the
 * VM's vmd id.
 */
export const startVm = (vmid: number, params: Uint8Array, fds: StartFds): ReadonlyArray<OutgoingImsg> => [
  msg(T.IMSG_VMDOP_START_VM_REQUEST, vmid, params, fds.kernel),
  ...(fds.cdrom === null ? [] : [msg(T.IMSG_VMDOP_START_VM_CDROM, vmid, undefined, fds.cdrom)]),
  ...fds.disks.flatMap((layers, i) => layers.map((fd) => msg(T.IMSG_VMDOP_START_VM_DISK, vmid, uint(i), fd))),
  ...fds.taps.map((fd, i) => msg(T.IMSG_VMDOP_START_VM_IF, vmid, uint(i), fd)),
  msg(T.IMSG_VMDOP_START_VM_END, vmid, undefined, fds.tty)
]

/** TERMINATE_VM_REQUEST: vmop_id {vid_id, vid_flags FORCE}; peerid names the requester. */
export const terminateVm = (peerid: number, vmid: number, force: boolean): OutgoingImsg =>
  msg(T.IMSG_VMDOP_TERMINATE_VM_REQUEST, peerid, vmopId(vmid, force ? VMOP_FORCE : 0))

/** PAUSE_VM / UNPAUSE_VM: vmop_id {vid_id}. */
export const pauseVm = (peerid: number, vmid: number, pause: boolean): OutgoingImsg =>
  msg(pause ? T.IMSG_VMDOP_PAUSE_VM : T.IMSG_VMDOP_UNPAUSE_VM, peerid, vmopId(vmid))

/** GET_INFO_VM_REQUEST: no payload; DATA and END_DATA come back with this peerid. */
export const getInfo = (peerid: number): OutgoingImsg => msg(T.IMSG_VMDOP_GET_INFO_VM_REQUEST, peerid)

/** CTL_VERBOSE: an int. */
export const verbose = (level: number): OutgoingImsg => msg(T.IMSG_CTL_VERBOSE, T.PEERID_NONE, intBytes(level))

/** CTL_RESET: an unsigned int of CONFIG_* bits. */
export const reset = (mode: number): OutgoingImsg => msg(T.IMSG_CTL_RESET, T.PEERID_NONE, uint(mode))


/**
 * An independent model of what vmm.c 1.136 (with the port's documented
 * decisions, DECISIONS.md) does for each parent request and VM event:
 * the replies the parent gets, the messages each VM gets, which VMs exist
 * in the vmm and in vmm(4), and which fds the vmm holds.
 *
 * Written from vmm.c, vmd.md §6–8 and DECISIONS.md only; it does not use
 * src/vmm. Port decisions where vmm.c would crash or fatal are marked
 * "port:".
 */
import type { VmBehaviour } from "./harness.ts"
import {
  CONFIG_VMS,
  DEFAULT_PREFIX,
  E,
  int32,
  M,
  PEERID_NONE,
  purgedPrefix,
  vcpuStates,
  vmopResult
} from "./wire.ts"

/** A message the model expects somewhere (parent or VM). */
export interface Msg {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  /** An fd travels with it. */
  readonly fd?: boolean
}

/** An expected GET_INFO_VM_DATA, compared field by field. */
export interface InfoExpect {
  readonly memory: bigint
  readonly ncpus: bigint
  readonly vcpuState: ReadonlyArray<number>
  readonly creatorPid: number
  readonly id: number
  readonly name: string
}

export type Expected = { readonly kind: "msg"; readonly msg: Msg } | { readonly kind: "info"; readonly peerid: number; readonly info: InfoExpect }

const PROC_PID = 1
const toParent = (type: number, peerid: number, data: Uint8Array): Expected => ({ kind: "msg", msg: { type, peerid, pid: PROC_PID, data } })

/** How a started VM's process ends in the harness (see harness.ts VmBehaviour). */
export type HandshakeOutcome = "normal" | "dieAfterStruct" | "answerZero" | "shortId" | "spawnFail" | "exitAfterId"

export interface MVm {
  readonly vmid: number
  readonly name: string
  readonly ndisks: number
  readonly nnics: number
  readonly ncpus: number
  readonly memory: bigint
  readonly diskbases: Array<number>
  readonly ifSet: Array<boolean>
  /** Labels of the fds the vmm holds for it. */
  held: Array<string>
  cdrom: string | null
  started: boolean
  shutdown: boolean
  pid: number
  kernelId: number
  behaviour: VmBehaviour
}

export interface MKernelVm {
  readonly id: number
  readonly name: string
  readonly ncpus: number
  readonly memory: bigint
  readonly pid: number
  /** The vmm VM it belongs to; null once the vmm forgot it (vm_remove without TERM). */
  owner: MVm | null
}

/** How a VM left the registry, for the TERMINATE_VM_EVENT invariant. */
export type Departure = "event" | "removed"

export interface StartRequest {
  readonly vmid: number
  readonly name: string
  readonly flags: number
  readonly ncpus: number
  readonly memory: bigint
  readonly ndisks: number
  readonly nnics: number
  readonly cdromPath: string
  readonly diskbases: ReadonlyArray<number>
  readonly badSize: boolean
  readonly outcome: HandshakeOutcome
  readonly behaviour: VmBehaviour
}

/** One message of a start sequence as sent: its type, index payload, and the fd label ("" for none). */
export interface StartStep {
  readonly type: number
  readonly index?: number
  readonly fd: string
}

const MAX_CPUS = 64
const MAX_DISKS = 4
const MAX_NICS = 4
const MAX_LAYERS = 4
const DEFAULT_MEMORY = 512n << 20n

/** vm_register's name rule (vmd.c): [A-Za-z0-9._-], not starting with - . _ */
const validName = (name: string) => /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)

export class VmmModel {
  vms: Array<MVm> = []
  kernel: Array<MKernelVm> = []
  nextKernelId: number
  nextPid: number
  hasVmmFd = false
  prefix: Uint8Array = DEFAULT_PREFIX
  verbose = 0
  /** Labels of fds the vmm holds outside any VM (/dev/vmm, /dev/psp). */
  global: Array<string> = []
  /** Per pid, every message the VM process should have received. */
  readonly vmInbox = new Map<number, Array<Msg>>()
  /** Per pid of a started VM: how it left (undefined while registered). */
  readonly departures = new Map<number, Departure>()
  /** The pid of every started VM, by start order, with its vmid. */
  readonly started: Array<{ readonly pid: number; readonly vmid: number }> = []
  /** The vmm's own pid, in the header of messages it composes with pid 0. */
  readonly ownPid: number

  constructor(options: { readonly firstPid: number; readonly preexistingKernelVms: number; readonly ownPid: number }) {
    this.nextPid = options.firstPid
    this.ownPid = options.ownPid
    // Left over in vmm(4) from an earlier vmd: nobody's.
    for (let i = 1; i <= options.preexistingKernelVms; i++) {
      this.kernel.push({ id: i, name: `old${i}`, ncpus: 1, memory: DEFAULT_MEMORY, pid: 1, owner: null })
    }
    this.nextKernelId = options.preexistingKernelVms + 1
  }

  byVmid(vmid: number): MVm | undefined {
    return vmid === 0 ? undefined : this.vms.find((v) => v.vmid === vmid)
  }

  running(): Array<MVm> {
    return this.vms.filter((v) => v.started)
  }

  pending(): Array<MVm> {
    return this.vms.filter((v) => !v.started)
  }

  /** Labels of every fd that should be open: the parent channel, globals, what VMs hold, running VMs' sockets. */
  openFds(): Array<string> {
    const fds = ["parent[0]", "parent[1]", ...this.global]
    for (const v of this.vms) {
      fds.push(...v.held)
      if (v.started) fds.push(`vm ${v.vmid} channel[0]`, `vm ${v.vmid} channel[1]`)
    }
    return fds.sort()
  }

  // --- registry helpers ----------------------------------------------------

  /** vm_remove: unlink and close everything; the VM's process, if any, sees EOF and its exit is ignored. */
  private remove(v: MVm, how: "terminated" | "forgotten") {
    this.vms = this.vms.filter((x) => x !== v)
    v.held = []
    if (!v.started) return
    if (how === "terminated") this.kernel = this.kernel.filter((k) => k.id !== v.kernelId)
    else for (const k of this.kernel) if (k.id === v.kernelId) k.owner = null
    this.departures.set(v.pid, "removed")
  }

  /** The VM's process ended: TERM in vmm(4), TERMINATE_VM_EVENT, remove (vmm_sighdlr). */
  private exited(v: MVm, status: { code: number } | "signal"): Expected {
    let ret = status === "signal" ? E.EIO : status.code & 0xff
    if (ret === E.EAGAIN && v.shutdown) ret = 0
    this.vms = this.vms.filter((x) => x !== v)
    this.kernel = this.kernel.filter((k) => k.id !== v.kernelId)
    v.held = []
    this.departures.set(v.pid, "event")
    return toParent(M.TERMINATE_VM_EVENT, PEERID_NONE, vmopResult(ret, v.vmid, 0))
  }

  private deliver(v: MVm, msg: Msg) {
    this.vmInbox.get(v.pid)?.push(msg)
  }

  // --- parent requests ---------------------------------------------------------

  receiveVmmFd(label: string): Array<Expected> {
    if (this.hasVmmFd) return [] // refused, fd closed
    this.hasVmmFd = true
    this.global.push(label)
    // The sweep: every VM vmm(4) has is TERM'd. The runner sends this at boot
    // only, when they are all leftovers; with VMs of ours running their
    // processes would end too, which this model does not follow.
    if (this.kernel.some((k) => k.owner !== null)) throw new Error("model: RECEIVE_VMM_FD with VMs running")
    this.kernel = []
    return []
  }

  receivePspFd(label: string, first: boolean): Array<Expected> {
    if (first) this.global.push(label)
    return []
  }

  /** The START_VM_* sequence of one VM (config_setvm), each step's reply. */
  start(req: StartRequest, steps: ReadonlyArray<StartStep>): Array<Expected> {
    const out: Array<Expected> = []
    const fail = (errno: number) => {
      out.push(toParent(M.START_VM_RESPONSE, req.vmid, vmopResult(errno, req.vmid, 0)))
      // Remove local reference if it exists
      const v = this.byVmid(req.vmid)
      if (v !== undefined) this.remove(v, "forgotten")
    }
    for (const step of steps) {
      switch (step.type) {
        case M.START_VM_REQUEST: {
          const r = this.register(req, step.fd)
          if (r !== 0) fail(r)
          break
        }
        case M.START_VM_CDROM: {
          const r = this.cdrom(req.vmid, step.fd)
          if (r !== 0) fail(r)
          break
        }
        case M.START_VM_DISK: {
          const r = this.disk(req.vmid, step.index ?? 0, step.fd)
          if (r !== 0) fail(r)
          break
        }
        case M.START_VM_IF: {
          const r = this.iface(req.vmid, step.index ?? 0, step.fd)
          if (r !== 0) fail(r)
          break
        }
        case M.START_VM_END:
          out.push(...this.end(req.vmid, step.fd))
          break
      }
    }
    return out
  }

  /** config_getvm + vm_register. 0 or the errno. */
  private register(req: StartRequest, kernelFd: string): number {
    if (req.badSize) return E.EINVAL // port: config.c would fatal
    const existing = this.vms.find((v) => v.name === req.name)
    if (existing !== undefined) {
      // vm_register hands back the existing VM and config_getvm removes it.
      this.remove(existing, "forgotten")
      return E.EALREADY
    }
    if (req.flags === 0) return E.VMD_DISK_MISSING
    const ncpus = req.ncpus === 0 ? 1 : req.ncpus
    if (ncpus > MAX_CPUS || req.ndisks > MAX_DISKS || req.nnics > MAX_NICS) return E.EINVAL
    if (kernelFd === "" && req.ndisks === 0 && req.cdromPath === "") return E.EINVAL
    if (!validName(req.name)) return E.EINVAL
    this.vms.push({
      vmid: req.vmid,
      name: req.name,
      ndisks: req.ndisks,
      nnics: req.nnics,
      ncpus,
      memory: req.memory === 0n ? DEFAULT_MEMORY : req.memory,
      diskbases: [0, 1, 2, 3].map((i) => req.diskbases[i] ?? 0),
      ifSet: [false, false, false, false],
      held: kernelFd === "" ? [] : [kernelFd],
      cdrom: null,
      started: false,
      shutdown: false,
      pid: 0,
      kernelId: 0,
      behaviour: req.behaviour
    })
    return 0
  }

  /** config_getcdrom */
  cdrom(vmid: number, fd: string): number {
    const v = this.byVmid(vmid)
    if (v === undefined) return E.ENOENT
    if (fd === "") return E.EINVAL
    // port: an earlier cdrom fd is closed (config.c overwrites it).
    if (v.cdrom !== null) v.held = v.held.filter((l) => l !== v.cdrom)
    v.cdrom = fd
    v.held.push(fd)
    return 0
  }

  /** config_getdisk */
  disk(vmid: number, n: number, fd: string): number {
    const v = this.byVmid(vmid)
    if (v === undefined) return E.ENOENT
    if (n >= v.ndisks || fd === "") return E.EINVAL
    const idx = v.diskbases[n] ?? 0
    v.diskbases[n] = idx + 1
    if (idx >= MAX_LAYERS) return E.EINVAL
    v.held.push(fd)
    return 0
  }

  /** config_getif */
  iface(vmid: number, n: number, fd: string): number {
    const v = this.byVmid(vmid)
    if (v === undefined) return E.ENOENT
    if (n >= v.nnics || v.ifSet[n] === true || fd === "") return E.EINVAL
    v.ifSet[n] = true
    v.held.push(fd)
    return 0
  }

  /** A stray START_VM_CDROM/DISK/IF (any time): its reply if it fails, and the VM is removed. */
  stray(vmid: number, type: number, index: number, fd: string): Array<Expected> {
    const r = type === M.START_VM_CDROM ? this.cdrom(vmid, fd) : type === M.START_VM_DISK ? this.disk(vmid, index, fd) : this.iface(vmid, index, fd)
    if (r === 0) return []
    const v = this.byVmid(vmid)
    if (v !== undefined) this.remove(v, "forgotten")
    return [toParent(M.START_VM_RESPONSE, vmid, vmopResult(r, vmid, 0))]
  }

  /** START_VM_END: vmm_start_vm and the handshake. */
  end(vmid: number, tty: string): Array<Expected> {
    const v = this.byVmid(vmid)
    const reply = (res: number, pid: number) => [toParent(M.START_VM_RESPONSE, vmid, vmopResult(res, vmid, pid))]
    if (v === undefined) return reply(E.ENOENT, 0)
    const failWith = (errno: number) => {
      this.remove(v, "forgotten")
      return reply(errno, 0)
    }
    if (tty === "") return failWith(E.EINVAL)
    const outcome = this.outcomes.get(v.name) ?? "normal"
    if (outcome === "spawnFail") {
      this.spawnFailures++
      return failWith(E.EIO)
    }
    const pid = this.nextPid++
    this.vmInbox.set(pid, [])
    switch (outcome) {
      case "dieAfterStruct":
      case "shortId":
        return failWith(E.ENOMEM)
      case "answerZero":
        return failWith(E.EINVAL)
      case "normal":
      case "exitAfterId":
        break
    }
    // The passed fds now belong to the child; the vmm keeps its end of the socket.
    v.held = []
    v.cdrom = null
    v.ifSet.fill(false)
    v.started = true
    v.pid = pid
    v.kernelId = this.nextKernelId++
    this.kernel.push({ id: v.kernelId, name: v.name, ncpus: v.ncpus, memory: v.memory, pid, owner: v })
    this.started.push({ pid, vmid })
    // A child that exits right after answering: reported once the start is answered.
    if (outcome === "exitAfterId") return [...reply(0, pid), this.exited(v, { code: this.exitAfterIdCodes.get(v.name) ?? 0 })]
    return reply(0, pid)
  }

  /** The exit code of an "exitAfterId" child, by VM name. */
  readonly exitAfterIdCodes = new Map<string, number>()

  /** How each VM's handshake goes, by name (set by the runner with the harness plan). */
  readonly outcomes = new Map<string, HandshakeOutcome>()
  /** fork failures the model expects so far (the runner injects one per expected failure). */
  spawnFailures = 0

  /** TERMINATE_VM_REQUEST */
  stop(vid: number, force: boolean, peerid: number): Array<Expected> {
    const reply = (res: number) => toParent(M.TERMINATE_VM_RESPONSE, peerid, vmopResult(res, vid, 0))
    if (vid === 0) return [reply(E.ENOENT)]
    const v = this.byVmid(vid)
    if (v === undefined) return [reply(E.VMD_VM_STOP_INVALID)]
    if (force) {
      v.shutdown = true
      // TERM: its vcpus die and the process exits with its termCode.
      if (v.started) return [reply(0), this.exited(v, { code: v.behaviour.termCode })]
      return [reply(0)] // no kernel VM yet: TERM fails (ENOENT), ignored
    }
    if (!v.shutdown) {
      v.shutdown = true
      if (!v.started) return [reply(E.ERANGE)] // no channel: vmm.c's compose of VM_REBOOT fails with ERANGE
      this.deliver(v, { type: M.VM_REBOOT, peerid: 0, pid: this.ownPid, data: new Uint8Array(0) })
      if (v.behaviour.onReboot === "exit") return [reply(0), this.exited(v, { code: E.EAGAIN })]
      return [reply(0)]
    }
    return [reply(v.started ? 0 : E.VMD_VM_STOP_INVALID)]
  }

  /** GET_INFO_VM_REQUEST */
  info(peerid: number): Array<Expected> {
    if (!this.hasVmmFd) return [toParent(M.GET_INFO_VM_END_DATA, peerid, int32(E.EBADF))]
    const out: Array<Expected> = this.kernel.map((k) => ({
      kind: "info" as const,
      peerid,
      info: {
        memory: k.memory,
        ncpus: BigInt(k.ncpus),
        vcpuState: vcpuStates(k.ncpus),
        creatorPid: k.pid,
        id: k.owner !== null && this.vms.includes(k.owner) ? k.owner.vmid : 0,
        name: k.name
      }
    }))
    out.push(toParent(M.GET_INFO_VM_END_DATA, peerid, int32(0)))
    return out
  }

  /** PAUSE_VM / UNPAUSE_VM with a well-formed vmop_id. */
  pause(vid: number, type: number, peerid: number, headerPid: number, data: Uint8Array, fd: boolean): Array<Expected> {
    const reply = (res: number) => [toParent(type + 1, peerid, vmopResult(res, vid, 0))]
    const v = this.byVmid(vid)
    if (v === undefined) return reply(E.ENOENT)
    if (!v.started) return [] // no channel yet: vmm.c's compose fails (ERANGE), no reply
    // The message's fd goes along (imsg_get_fd).
    this.deliver(v, { type, peerid: PEERID_NONE, pid: headerPid, data, ...(fd ? { fd } : {}) })
    // vm.c answers {0, vm_vmid} with the peerid and pid it got; vmm forwards it with pid 1.
    return [toParent(type + 1, PEERID_NONE, vmopResult(0, v.vmid, 0))]
  }

  /** CTL_VERBOSE: to every VM that has a channel. */
  setVerbose(level: number, headerPid: number): Array<Expected> {
    this.verbose = level
    for (const v of this.running()) this.deliver(v, { type: M.CTL_VERBOSE, peerid: PEERID_NONE, pid: headerPid, data: int32(level) })
    return []
  }

  /** CTL_RESET */
  reset(mode: number): Array<Expected> {
    if (mode & CONFIG_VMS) for (const v of [...this.vms]) this.remove(v, "terminated")
    this.prefix = purgedPrefix(this.prefix)
    return []
  }

  /** CONFIG */
  config(prefix: Uint8Array): Array<Expected> {
    this.prefix = prefix
    return []
  }

  /** PRIV_GET_ADDR_RESPONSE: to the VM if it has a channel, else dropped. */
  addr(vid: number, headerPid: number, data: Uint8Array, fd: boolean): Array<Expected> {
    const v = this.byVmid(vid)
    if (v !== undefined && v.started) {
      this.deliver(v, { type: M.PRIV_GET_ADDR_RESPONSE, peerid: PEERID_NONE, pid: headerPid, data, ...(fd ? { fd } : {}) })
    }
    return []
  }

  // --- VM events -----------------------------------------------------------------

  vmExit(v: MVm, code: number): Array<Expected> {
    return [this.exited(v, { code })]
  }

  vmSignal(v: MVm): Array<Expected> {
    return [this.exited(v, "signal")]
  }

  vmShutdown(v: MVm, reboot: boolean): Array<Expected> {
    v.shutdown = !reboot
    return []
  }

  /** PAUSE/UNPAUSE_VM_RESPONSE of the right size: forwarded as is. */
  vmResponse(type: number, peerid: number, data: Uint8Array): Array<Expected> {
    return [toParent(type, peerid, data)]
  }

  /** Anything else from a VM (port: that VM is ended, the rest go on). */
  vmMisbehaves(v: MVm): Array<Expected> {
    v.shutdown = true
    return [this.exited(v, { code: v.behaviour.termCode })]
  }
}

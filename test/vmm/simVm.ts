/**
 * The simulated VM process (vm.c's side, vmd.md §7) as a ProcessMock
 * program: reads the 13352-byte struct vmd_vm and the 40-byte local prefix,
 * creates its VM in the mock vmm(4) (or, with no kernel, answers its vmd id
 * as the process backend's VM does), writes the id as 4 bytes LE, then
 * speaks imsg: PAUSE/UNPAUSE answered with *_RESPONSE {0, vm_vmid}, exit 35
 * on VM_REBOOT, exit 0 on EOF, anything else fatalx (exit 1).
 *
 * Misbehaviour is chosen per VM name before its START_VM_END (a
 * HandshakePlan and a VmBehaviour), or commanded while it runs (VmCommand).
 */
import { Duration, Effect, Exit, Queue, Stream } from "effect"
import type { Scope } from "effect"
import type { MemorySocketTable } from "../../src/layers/ImsgChannelMemory.ts"
import type { MockProgram, MockProgramContext } from "../../src/layers/ProcessMock.ts"
import type { VmmKernelService } from "../../src/layers/VmmDeviceMock.ts"
import type { Fd } from "../../src/services/Fd.ts"
import { childNumbers } from "../../src/services/Process.ts"
import type { Channel, Imsg, ImsgChannelService } from "../../src/services/ImsgChannel.ts"
import { E, M, readVmdVm, SIZE, uint32, vmopResult } from "./wire.ts"
import type { VmdVmView } from "./wire.ts"

/** How the child behaves in the start handshake (decided per VM name). */
export type HandshakePlan =
  | { readonly _tag: "Normal" }
  /** Reads the struct, then exits with `code` without answering (vmm reads EOF: ENOMEM). */
  | { readonly _tag: "DieAfterStruct"; readonly code: number }
  /** Writes id 0 (VMM_IOC_CREATE failed) and exits EINVAL. */
  | { readonly _tag: "AnswerZero" }
  /** Writes 2 of the 4 id bytes and exits (vmm: ENOMEM). */
  | { readonly _tag: "ShortId" }
  /** Never answers (until killed or the socket closes). */
  | { readonly _tag: "Hang" }
  /** Answers its id, then exits with `code` at once (a guest that dies while booting). */
  | { readonly _tag: "ExitAfterId"; readonly code: number }

/** How the VM behaves once running. */
export interface VmBehaviour {
  /** VM_REBOOT from the vmm: the guest resets and the process exits EAGAIN, or nothing happens (no vmmci). */
  readonly onReboot: "exit" | "ignore"
  /** Exit code once its VM is gone from vmm(4) (VMM_IOC_TERM): the vcpus stop, the process ends. */
  readonly termCode: number
  /** SIGTERM: default action (killed), trapped and ignored, or a clean exit 0 (vm.c 1.143). */
  readonly sigterm: "default" | "ignore" | "exit0"
  /** EOF on its socket: the end (vm.c), or ignored (a process wedged elsewhere). Default "exit". */
  readonly eof?: "exit" | "ignore"
}

export const defaultBehaviour: VmBehaviour = { onReboot: "exit", termCode: 0, sigterm: "default" }

/** What a VM process received from the vmm over imsg. */
export interface Received {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly fd: boolean
}

/** A command to a running simulated VM. */
export type VmCommand =
  | { readonly _tag: "Send"; readonly type: number; readonly peerid?: number; readonly data?: Uint8Array; readonly withFd?: boolean }
  | { readonly _tag: "Exit"; readonly code: number }
  /** Bytes written straight onto the socket, past the imsg framing (a broken stream). */
  | { readonly _tag: "Raw"; readonly bytes: Uint8Array }

export type VmEvent =
  | { readonly _tag: "Msg"; readonly imsg: Imsg }
  | { readonly _tag: "Eof" }
  | { readonly _tag: "Terminated" }
  | { readonly _tag: "Sigterm" }
  | { readonly _tag: "Cmd"; readonly cmd: VmCommand }

export type VmEnd = { readonly _tag: "Exited"; readonly code: number } | { readonly _tag: "Killed" }

/** One simulated VM process, as the test sees it. */
export interface SimVm {
  readonly pid: number
  readonly argv: ReadonlyArray<string>
  /** The fd numbers the child was given (its fd table after the exec). */
  readonly fdNums: ReadonlyArray<number>
  /** What the child holds at each of those numbers. */
  readonly fdAt: ReadonlyMap<number, Fd>
  /** The struct vmd_vm it read (null if it died first). */
  vmdVm: VmdVmView | null
  prefix: Uint8Array | null
  /** Its VM in vmm(4), 0 until created. */
  kernelId: number
  /** Messages from the vmm, in order. */
  readonly received: Array<Received>
  /** VMM_IOC_TERM ended its VM. */
  terminated: boolean
  /** Set when the program has ended. */
  end: VmEnd | null
  readonly events: Queue.Queue<VmEvent>
}

const HUGE_TIMEOUT_MS = Duration.toMillis(Duration.days(1))

export interface SimVms {
  readonly program: MockProgram
  readonly sims: Map<number, SimVm>
  /** Give the VMs a mock vmm(4) to create their VM in (kernel backend). */
  readonly useKernel: (kernel: VmmKernelService) => void
  /** VMM_IOC_TERM ended kernel VM `id`: its process's vcpus die. */
  readonly kernelTerminated: (id: number) => Effect.Effect<void>
  readonly plan: (name: string, handshake: HandshakePlan, behaviour?: Partial<VmBehaviour>) => void
  readonly closeNextChildAtStart: (code: number) => void
}

/** The program and its bookkeeping, over the shared fd table. */
export const makeSimVms = (imsg: ImsgChannelService, table: MemorySocketTable): SimVms => {
  let kernel: VmmKernelService | null = null
const plans = new Map<string, { handshake: HandshakePlan; behaviour: VmBehaviour }>()
const closeAtStart: Array<number> = []
const sims = new Map<number, SimVm>()
const byKernelId = new Map<number, SimVm>()
let sentFds = 0

const runVm = (sim: SimVm, sock: Fd, ctx: MockProgramContext): Effect.Effect<number, never, Scope.Scope> =>
  Effect.gen(function* () {
    const raw = yield* Effect.either(imsg.readRaw(sock, SIZE.vmd_vm, HUGE_TIMEOUT_MS))
    if (raw._tag === "Left") return E.EIO
    const vm = readVmdVm(raw.right)
    sim.vmdVm = vm
    const plan = plans.get(vm.name) ?? { handshake: { _tag: "Normal" }, behaviour: defaultBehaviour }
    if (plan.behaviour.sigterm !== "default") yield* ctx.trap("SIGTERM")
    if (plan.behaviour.sigterm === "exit0") {
      yield* ctx.nextSignal.pipe(
        Effect.flatMap(() => Queue.offer(sim.events, { _tag: "Sigterm" })),
        Effect.forkScoped
      )
    }
    const hs = plan.handshake
    if (hs._tag === "DieAfterStruct") return hs.code
    const prefix = yield* Effect.either(imsg.readRaw(sock, 40, HUGE_TIMEOUT_MS))
    if (prefix._tag === "Left") return E.EIO
    sim.prefix = prefix.right
    if (hs._tag === "Hang") return yield* Effect.never
    if (hs._tag === "AnswerZero") {
      yield* Effect.ignore(imsg.writeRaw(sock, uint32(0), HUGE_TIMEOUT_MS))
      return E.EINVAL
    }
    if (hs._tag === "ShortId") {
      yield* Effect.ignore(imsg.writeRaw(sock, uint32(7).subarray(0, 2), HUGE_TIMEOUT_MS))
      return E.ENOMEM
    }
    // start_vm: VMM_IOC_CREATE, then the kernel id back to the vmm.
    let id = vm.vmid
    if (kernel !== null) {
      id = yield* kernel.create({
        name: vm.name,
        ncpus: Number(vm.ncpus),
        memorySize: vm.memory,
        creatorPid: sim.pid
      })
      sim.kernelId = id
      byKernelId.set(id, sim)
    }
    const wrote = yield* Effect.either(imsg.writeRaw(sock, uint32(id), HUGE_TIMEOUT_MS))
    if (wrote._tag === "Left") return E.EIO
    if (hs._tag === "ExitAfterId") return hs.code
    const ch: Channel = yield* Effect.orDie(imsg.open(sock))
    yield* ch.messages.pipe(
      Stream.runForEach((m) => Queue.offer(sim.events, { _tag: "Msg", imsg: m })),
      Effect.either,
      Effect.zipRight(Queue.offer(sim.events, { _tag: "Eof" })),
      Effect.forkScoped
    )
    // Its VM may have been terminated while we were busy.
    if (sim.terminated) return plan.behaviour.termCode
    for (;;) {
      const ev = yield* Queue.take(sim.events)
      switch (ev._tag) {
        case "Terminated":
          return plan.behaviour.termCode
        case "Eof":
          if (plan.behaviour.eof === "ignore" && !sim.terminated) break
          // vm.c: EOF on the vmm socket ends the VM with 0; if its vcpus died first, that is the end.
          return sim.terminated ? plan.behaviour.termCode : 0
        case "Sigterm":
          return 0
        case "Cmd": {
          const c = ev.cmd
          if (c._tag === "Exit") {
            yield* ch.flush
            return c.code
          }
          if (c._tag === "Raw") {
            yield* ch.flush
            yield* Effect.ignore(imsg.writeRaw(sock, c.bytes, HUGE_TIMEOUT_MS))
            break
          }
          const fd = c.withFd === true ? table.makeFd(`vm-sent#${++sentFds}`) : null
          yield* Effect.ignore(ch.send({ type: c.type, peerid: c.peerid ?? 0, pid: 0, data: c.data ?? new Uint8Array(0), fd }))
          yield* ch.flush
          break
        }
        case "Msg": {
          const m = ev.imsg
          sim.received.push({ type: m.type, peerid: m.peerid, pid: m.pid, data: m.data, fd: m.fd !== null })
          m.fd?.closeSync()
          if (sim.terminated) return plan.behaviour.termCode
          switch (m.type) {
            case M.PAUSE_VM:
            case M.UNPAUSE_VM:
              // vm.c: *_RESPONSE with the received peerid and pid, {0, vm_vmid}
              yield* Effect.ignore(
                ch.send({ type: m.type + 1, peerid: m.peerid, pid: m.pid, data: vmopResult(0, vm.vmid, 0) })
              )
              yield* ch.flush
              break
            case M.VM_REBOOT:
              if (plan.behaviour.onReboot === "exit") return E.EAGAIN
              break
            case M.CTL_VERBOSE:
            case M.PRIV_GET_ADDR_RESPONSE:
            case M.VM_SHUTDOWN:
              break
            default:
              return 1 // fatalx
          }
        }
      }
    }
  })

const program: MockProgram = (req, ctx) =>
  Effect.gen(function* () {
    const nums = childNumbers(req)
    if (typeof nums === "string") return 1
    const sim: SimVm = {
      pid: ctx.pid,
      argv: req.args,
      fdNums: nums,
      fdAt: new Map(nums.map((n, i) => [n, req.fds[i]!])),
      vmdVm: null,
      prefix: null,
      kernelId: 0,
      received: [],
      terminated: false,
      end: null,
      events: yield* Queue.unbounded<VmEvent>()
    }
    sims.set(ctx.pid, sim)
    const at = req.args.indexOf("-V")
    const sock = sim.fdAt.get(Number(req.args[at + 1]))
    if (sock === undefined) return 1
    const early = closeAtStart.shift()
    const body =
      early !== undefined
        ? Effect.sync(() => {
            sock.closeSync()
            return early
          })
        : runVm(sim, sock, ctx).pipe(Effect.scoped)
    return yield* body.pipe(
      Effect.ensuring(
        Effect.sync(() => {
          if (sock.isOpen) sock.closeSync()
        })
      ),
      Effect.onExit((exit) =>
        Effect.sync(() => {
          sim.end = Exit.isSuccess(exit) ? { _tag: "Exited", code: exit.value } : { _tag: "Killed" }
        })
      )
    )
  })

  return {
    program,
    sims,
    useKernel: (k) => {
      kernel = k
    },
    kernelTerminated: (id) =>
      Effect.suspend(() => {
        const sim = byKernelId.get(id)
        if (sim === undefined) return Effect.void
        byKernelId.delete(id)
        sim.terminated = true
        return Queue.offer(sim.events, { _tag: "Terminated" })
      }),
    plan: (name, handshake, behaviour = {}) => {
      plans.set(name, { handshake, behaviour: { ...defaultBehaviour, ...behaviour } })
    },
    closeNextChildAtStart: (code) => {
      closeAtStart.push(code)
    }
  }
}

/**
 * A whole vmm process on the in-memory layers, with a fake parent and
 * simulated VM processes, for the example and property tests.
 *
 *  - The fake parent holds the other end of an in-memory socketpair whose
 *    vmm end plays fd 3; everything the vmm sends it is collected in order.
 *  - Every fd lives in one MemorySocketTable, so a test can list what is
 *    still open and count double closes.
 *  - fork(2) is modelled: the socket end the vmm hands its child is a proxy
 *    Fd (the vmm's copy, which it closes after spawning); the child gets the
 *    real end. A failed spawn closes the real end, as if the child never was.
 *  - Each VM process is a ProcessMock program (`simVm`) that does the child
 *    side of the start handshake (vmd.md §7), creates its VM in the mock
 *    vmm(4) kernel and speaks imsg afterwards, with controllable misbehaviour.
 *  - The kernel's Ioctl is wrapped so that a VMM_IOC_TERM reaches the VM
 *    process whose VM it ended (its vcpus die and it exits), as on OpenBSD.
 *
 * Nothing here uses real time: readiness is microtasks, and `settle` waits
 * on the Node event loop (not the Clock) until nothing moves any more.
 */
import { registryVms } from "../../src/cli/layers.ts"
import { Effect, Queue, Stream } from "effect"
import type { Scope } from "effect"
import { MemorySocketTable, ImsgChannelMemory } from "../../src/layers/ImsgChannelMemory.ts"
import * as ProcessMock from "../../src/layers/ProcessMock.ts"
import type { ProcessMockControlService } from "../../src/layers/ProcessMock.ts"
import * as VmmDeviceMock from "../../src/layers/VmmDeviceMock.ts"
import type { VmmKernelService } from "../../src/layers/VmmDeviceMock.ts"
import * as VmmDeviceVmm from "../../src/layers/VmmDeviceVmm.ts"
import * as VmmDeviceProcess from "../../src/layers/VmmDeviceProcess.ts"
import { makeVmRegistry } from "../../src/layers/VmRegistryLive.ts"
import { VMM_IOC_TERM } from "../../src/schema/ioctl.ts"
import { Fd } from "../../src/services/Fd.ts"
import type { FdBackend } from "../../src/services/Fd.ts"
import { ChannelError, ImsgChannel } from "../../src/services/ImsgChannel.ts"
import type { ImsgChannelService } from "../../src/services/ImsgChannel.ts"
import { Ioctl } from "../../src/services/Ioctl.ts"
import type { IoctlService } from "../../src/services/Ioctl.ts"
import { Process } from "../../src/services/Process.ts"
import type { ProcessService, SignalName } from "../../src/services/Process.ts"
import { VmRegistry } from "../../src/services/VmRegistry.ts"
import type { VmRegistryService } from "../../src/services/VmRegistry.ts"
import { VmmDevice } from "../../src/services/VmmDevice.ts"
import type { VmmDeviceService } from "../../src/services/VmmDevice.ts"
import type { VmmOptions } from "../../src/vmm/context.ts"
import { logState } from "../../src/vmm/log.ts"
import { startVmmServer } from "../../src/vmm/server.ts"
import type { VmmHandle } from "../../src/vmm/server.ts"
import { makeSimVms } from "./simVm.ts"
import type { HandshakePlan, SimVm, VmBehaviour, VmCommand } from "./simVm.ts"
import { E, SIZE } from "./wire.ts"

export * from "./simVm.ts"

// ---------------------------------------------------------------------------
// The harness

export interface HarnessOptions {
  /** "kernel": VmmDeviceVmm on the mock vmm(4); "process": VmmDeviceProcess (SIGTERM, 10 s, SIGKILL). */
  readonly backend?: "kernel" | "process"
  readonly firstPid?: number
  /** Pids for the first VM processes, in order (ProcessMock's `pids`). */
  readonly pids?: ReadonlyArray<number>
  readonly handshakeTimeoutMs?: number
  readonly verbose?: number
  readonly debug?: boolean
  /** VMs already in vmm(4) when the vmm starts (left over from an earlier vmd). */
  readonly kernelVms?: ReadonlyArray<string>
}

/** The vmm's own socket operations in vmm_start_vm that a test can make fail. */
export type VmmSocketFault = "socketpair" | "writeStruct" | "writePrefix" | "open"

/** A message the fake parent received. */
export interface ParentMsg {
  readonly type: number
  readonly peerid: number
  readonly pid: number
  readonly data: Uint8Array
  readonly fd: boolean
}

export interface ParentSend {
  readonly type: number
  readonly peerid?: number
  readonly pid?: number
  readonly data?: Uint8Array
  readonly fd?: Fd | null
}

export interface Harness {
  readonly table: MemorySocketTable
  readonly handle: VmmHandle
  readonly registry: VmRegistryService
  readonly device: VmmDeviceService
  /** The mock vmm(4) (kernel backend only). */
  readonly kernel: VmmKernelService
  readonly control: ProcessMockControlService
  readonly process: ProcessService
  /** The fake parent's end of fd 3. */
  readonly parentFd: Fd
  /** Queue a message from the parent (pid 1 unless given, as proc_compose does). */
  readonly send: (m: ParentSend) => Effect.Effect<void>
  /** Everything the parent received since the last call, in order. */
  readonly takeParent: () => Array<ParentMsg>
  /** Wait until nothing moves (no message, fd, process, kernel or log change for a few event-loop turns). */
  readonly settle: Effect.Effect<void>
  /** A plain open fd (an image, a tap, a tty) in the shared table. */
  readonly makeFd: (label: string) => Fd
  /** Decide a VM's handshake and behaviour by its name, before its START_VM_END. */
  readonly plan: (name: string, handshake: HandshakePlan, behaviour?: Partial<VmBehaviour>) => void
  /** The next spawned child closes its socket and exits with `code` before the vmm writes anything. */
  readonly closeNextChildAtStart: (code: number) => void
  readonly sims: () => ReadonlyArray<SimVm>
  readonly simByPid: (pid: number) => SimVm
  /** The live simulated VM process of a vmd id, if any. */
  readonly simByVmid: (vmid: number) => SimVm | undefined
  readonly vmCommand: (pid: number, cmd: VmCommand) => Effect.Effect<void>
  readonly kill: (pid: number, sig: SignalName) => Effect.Effect<void>
  /** Make the vmm's next socket operation of this kind fail (EIO). */
  readonly failNext: (which: VmmSocketFault) => void
  /** Double closes of the vmm's copy of a child socket (the proxy Fds). */
  readonly proxyDoubleCloses: () => number
  /** Log lines of the vmm (and VMs), in order. */
  readonly logs: Array<string>
  /** Close the parent's end (vmm sees EOF) and wait for the vmm to finish; its exit code. */
  readonly closeParent: Effect.Effect<number>
}

/** Wait for the next turn of the Node event loop (immediate) or the next timer phase (tick). */
const immediate = Effect.async<void>((resume) => {
  const t = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(t))
})
const tick = Effect.async<void>((resume) => {
  const t = setTimeout(() => resume(Effect.void), 0)
  return Effect.sync(() => clearTimeout(t))
})

export const makeHarness = (options: HarnessOptions = {}): Effect.Effect<Harness, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const backend = options.backend ?? "kernel"
    const table = new MemorySocketTable()
    const imsg = ImsgChannelMemory.make(table)
    const logs: Array<string> = []
    logState.sink = (_level, line) => {
      logs.push(line)
    }
    // The server catches a handler's defect, logs "internal error ..." and goes on (one bad
    // message must not end the vmm); a test that provoked one fails here, whatever it checked.
    yield* Effect.addFinalizer(() => {
      const defects = logs.filter((l) => l.includes("internal error"))
      return defects.length === 0 ? Effect.void : Effect.die(new Error(`the vmm logged a defect: ${defects.join(" | ")}`))
    })

    // --- fork's fd copies: the vmm's copy of the child socket is a proxy -----
    interface ChildEnd {
      readonly real: Fd
      handed: boolean
    }
    const childEnds = new Map<Fd, ChildEnd>()
    const proxyByNum = new Map<number, ChildEnd>()
    let proxyDoubles = 0
    const proxyBackend: FdBackend = {
      name: "fork copy",
      closeNumber: (num) => {
        const end = proxyByNum.get(num)
        proxyByNum.delete(num)
        // Never handed to a child: nobody else has a copy, the socket end goes away.
        if (end !== undefined && !end.handed && end.real.isOpen) end.real.closeSync()
        return 0
      },
      onDoubleClose: () => {
        proxyDoubles++
      }
    }
    // Faults in the vmm's own socket operations, each consumed by the next such call.
    const faults = new Set<VmmSocketFault>()
    const fault = (which: VmmSocketFault) => faults.delete(which)
    const injected = (which: VmmSocketFault) =>
      new ChannelError({ reason: "Io", message: `injected ${which} failure`, errno: E.EIO })
    const vmmImsg: ImsgChannelService = {
      ...imsg,
      // The first open is fd 3's; a fault applies to the VM channels after it.
      open: (fd) => (fault("open") ? Effect.fail(injected("open")) : imsg.open(fd)),
      openOwned: (fd, options) => (fault("open") ? Effect.fail(injected("open")) : imsg.openOwned(fd, options)),
      writeRaw: (fd, bytes, timeoutMs) => {
        // vmm_start_vm writes the struct vmd_vm, then the local prefix.
        const which: VmmSocketFault = bytes.length === SIZE.vmd_vm ? "writeStruct" : "writePrefix"
        return fault(which) ? Effect.fail(injected(which)) : imsg.writeRaw(fd, bytes, timeoutMs)
      },
      socketpair: (label) =>
        fault("socketpair") ? Effect.fail(injected("socketpair")) : Effect.map(imsg.socketpair(label), ([ours, theirs]) => {
          const proxy = new Fd(theirs.num, proxyBackend, theirs.label)
          const end = { real: theirs, handed: false }
          childEnds.set(proxy, end)
          proxyByNum.set(theirs.num, end)
          return [ours, proxy] as const
        })
    }

    // --- simulated VM processes ------------------------------------------------
    const vms = makeSimVms(imsg, table)
    const { program, sims } = vms

    const [mockProcess, control] = yield* ProcessMock.make(program, { firstPid: options.firstPid ?? 1000, pids: options.pids ?? [] })

    // fork: the child gets the real socket end in place of the vmm's copy.
    const process: ProcessService = {
      ...mockProcess,
      spawn: (req) =>
        Effect.suspend(() => {
          const real: Array<Fd> = []
          const fds = req.fds.map((fd) => {
            const end = childEnds.get(fd)
            if (end === undefined) return fd
            end.handed = true
            real.push(end.real)
            return end.real
          })
          return mockProcess.spawn({ ...req, fds }).pipe(
            Effect.tapError(() =>
              Effect.sync(() => {
                for (const fd of real) if (fd.isOpen) fd.closeSync()
              })
            )
          )
        })
    }

    // --- registry and vmm(4) -------------------------------------------------
    let seed = 0x1234
    const registry = yield* makeVmRegistry({ random: () => (seed = (seed * 1103515245 + 12345) >>> 0) })
    const mock = VmmDeviceMock.make()
    let device: VmmDeviceService
    if (backend === "kernel") {
      vms.useKernel(mock.kernel)
      for (const name of options.kernelVms ?? []) {
        yield* mock.kernel.create({ name, ncpus: 1, memorySize: 512n << 20n, creatorPid: 1 })
      }
      // VMM_IOC_TERM ends the VM's vcpus: its process notices and exits.
      const ioctl: IoctlService = {
        addressOf: mock.ioctl.addressOf,
        ioctl: (fd, request, buf) => {
          const id = request === VMM_IOC_TERM && buf.length >= 4 ? new DataView(buf.buffer, buf.byteOffset).getUint32(0, true) : 0
          return mock.ioctl.ioctl(fd, request, buf).pipe(
            Effect.tap(() => (request === VMM_IOC_TERM ? vms.kernelTerminated(id) : Effect.void))
          )
        }
      }
      device = yield* VmmDeviceVmm.make.pipe(Effect.provideService(Ioctl, ioctl))
    } else {
      const source = registryVms(registry)
      device = yield* VmmDeviceProcess.make({ residentBytes: () => 0n }).pipe(
        Effect.provideService(Process, process),
        Effect.provideService(VmmDeviceProcess.VmSource, source)
      )
    }

    // --- the fake parent -------------------------------------------------------
    const [vmmEnd, parentEnd] = table.socketpair("parent")
    const parent = yield* Effect.orDie(imsg.open(parentEnd))
    const inbox: Array<ParentMsg> = []
    yield* parent.messages.pipe(
      Stream.runForEach((m) =>
        Effect.sync(() => {
          inbox.push({ type: m.type, peerid: m.peerid, pid: m.pid, data: m.data, fd: m.fd !== null })
          m.fd?.closeSync()
        })
      ),
      Effect.ignore,
      Effect.forkIn(scope)
    )

    const vmmOptions: VmmOptions = {
      debug: options.debug ?? false,
      verbose: options.verbose ?? 0,
      vmExec: "/usr/sbin/vmd",
      vmExecArgs: [],
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000
    }
    const handle = yield* startVmmServer(vmmEnd, vmmOptions).pipe(
      Effect.orDie,
      Effect.provideService(ImsgChannel, vmmImsg),
      Effect.provideService(Process, process),
      Effect.provideService(VmRegistry, registry),
      Effect.provideService(VmmDevice, device)
    )

    const fingerprint = Effect.gen(function* () {
      let received = 0
      let ended = 0
      for (const s of sims.values()) {
        received += s.received.length
        if (s.end !== null) ended++
      }
      const registered = (yield* registry.all).length
      const children = (yield* mockProcess.children).length
      const kernelVms = (yield* mock.kernel.list).length
      return [inbox.length, table.openFds().length, received, ended, sims.size, registered, children, kernelVms, logs.length].join(",")
    })

    const settle = Effect.gen(function* () {
      let last = yield* fingerprint
      let quiet = 0
      for (let i = 0; i < 2000; i++) {
        // Two quiet event-loop turns, then a quiet timer phase (Effect's scheduler falls back to setTimeout).
        yield* quiet >= 2 ? tick : immediate
        const now = yield* fingerprint
        if (now !== last) {
          last = now
          quiet = 0
        } else if (++quiet >= 3) return
      }
      return yield* Effect.dieMessage("the vmm did not settle")
    })

    const simByPid = (pid: number): SimVm => {
      const s = sims.get(pid)
      if (s === undefined) throw new Error(`no simulated VM with pid ${pid}`)
      return s
    }

    const harness: Harness = {
      table,
      handle,
      registry,
      device,
      kernel: mock.kernel,
      control,
      process,
      parentFd: parentEnd,
      send: (m) =>
        Effect.orDie(
          parent.send({ type: m.type, peerid: m.peerid ?? PEERID_DEFAULT, pid: m.pid ?? 1, data: m.data ?? new Uint8Array(0), fd: m.fd ?? null })
        ),
      takeParent: () => inbox.splice(0),
      settle,
      makeFd: (label) => table.makeFd(label),
      plan: vms.plan,
      closeNextChildAtStart: vms.closeNextChildAtStart,
      sims: () => [...sims.values()],
      simByPid,
      simByVmid: (vmid) => [...sims.values()].find((s) => s.vmdVm?.vmid === vmid && s.end === null),
      vmCommand: (pid, cmd) => Queue.offer(simByPid(pid).events, { _tag: "Cmd", cmd }).pipe(Effect.asVoid),
      kill: (pid, sig) => Effect.orDie(mockProcess.kill(pid, sig)),
      failNext: (which) => {
        faults.add(which)
      },
      proxyDoubleCloses: () => proxyDoubles,
      logs,
      closeParent: Effect.gen(function* () {
        yield* parent.close
        return yield* handle.done
      })
    }
    return harness
  })

const PEERID_DEFAULT = 0xffffffff

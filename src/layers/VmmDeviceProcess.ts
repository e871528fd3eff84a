/**
 * The portable vmm(4) backend, as vmm.c 1.143 does it without the kernel's
 * INFO/TERM (vmd.md §9): every VM is a process of ours.
 *
 * terminate_vm (1.143): pid ≤ 0 → EINVAL; kill(pid, SIGTERM), whose failure
 * is the result (ESRCH 3 for a VM process that is gone or not ours — the
 * kill errno, as 1.143 returns it, not ENOENT); then a 10 s timer whose
 * expiry SIGKILLs the VM if it is still alive. A second terminate of the
 * same pid re-arms the timer (evtimer_add on a pending event). Timers run
 * on Effect's Clock, so TestClock drives them, and end with the layer.
 *
 * get_info_vm (1.143): one entry per VM the registry knows whose process is
 * alive: memory = the VM's memory size, used = resident pages × page size,
 * ncpus, vcpu states zero, creator pid = the VM's pid, vir_id = its id,
 * name. Resident memory comes from /proc/<pid>/statm on Linux; a process
 * gone meanwhile is skipped; a read error is that errno. Elsewhere used is
 * 0 (OpenBSD's sysctl KERN_PROC_PID is not ported).
 *
 * attach keeps the fd (there is no device to talk to) and closes it when
 * the layer's scope ends; a second attach closes the previous one.
 */
import { Context, Duration, Effect, Fiber, Layer } from "effect"
import type { Scope } from "effect"
import { readFileSync } from "node:fs"
import { pageSize } from "../native/sys.ts"
import { Errno, errnoName, fromErrorCode } from "../schema/errno.ts"
import { Process } from "../services/Process.ts"
import { VmmDevice, VmmError } from "../services/VmmDevice.ts"
import type { VmInfo, VmmDeviceService } from "../services/VmmDevice.ts"
import { deviceFdHolder } from "./VmmDeviceVmm.ts"

/** What the backend needs to know of each VM; the registry provides it. */
export interface ProcessBackendVm {
  readonly vmmId: number
  readonly pid: number
  readonly name: string
  readonly memorySize: bigint
  readonly ncpus: bigint
}

export type ProcessBackendVms = Effect.Effect<ReadonlyArray<ProcessBackendVm>>

/** The VMs, as the registry sees them now. */
export class VmSource extends Context.Tag("vmd-vmm/VmSource")<VmSource, ProcessBackendVms>() {}

export interface VmmDeviceProcessOptions {
  /** SIGTERM → SIGKILL delay (default 10 s, vm_timeout_ev in 1.143). */
  readonly killAfter?: Duration.DurationInput
  /** Resident bytes of a process; null if it is gone. Default: /proc/<pid>/statm. */
  readonly residentBytes?: (pid: number) => Effect.Effect<bigint | null, VmmError>
}

export const KILL_AFTER = Duration.seconds(10)

const vmmError = (errno: number, what: string) => new VmmError({ errno, message: `${what}: ${errnoName(errno)}` })

const codeOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

/** Resident pages (statm's second field) × page size; null if the process is gone; 0 where /proc is absent. */
export const statmResidentBytes = (pid: number): Effect.Effect<bigint | null, VmmError> =>
  Effect.suspend(() => {
    if (process.platform !== "linux") return Effect.succeed(0n)
    let text: string
    try {
      text = readFileSync(`/proc/${pid}/statm`, "latin1")
    } catch (e) {
      const code = codeOf(e)
      if (code === "ENOENT" || code === "ESRCH") return Effect.succeed(null)
      return Effect.fail(vmmError(fromErrorCode(code), `/proc/${pid}/statm`))
    }
    const resident = text.split(" ")[1]
    if (resident === undefined || !/^\d+$/.test(resident)) {
      return Effect.fail(vmmError(Errno.EIO, `/proc/${pid}/statm`))
    }
    return Effect.succeed(BigInt(resident) * BigInt(pageSize()))
  })

export const make = (
  options: VmmDeviceProcessOptions = {}
): Effect.Effect<VmmDeviceService, never, Process | VmSource | Scope.Scope> =>
  Effect.gen(function* () {
    const proc = yield* Process
    const vms = yield* VmSource
    const scope = yield* Effect.scope
    const killAfter = Duration.decode(options.killAfter ?? KILL_AFTER)
    const residentBytes = options.residentBytes ?? statmResidentBytes
    const timers = new Map<number, Fiber.RuntimeFiber<void>>()
    const holder = yield* deviceFdHolder

    // The vm_timeout_ev expiry: SIGKILL if the VM is still one of our live children.
    const escalate = (pid: number): Effect.Effect<void> =>
      Effect.sleep(killAfter).pipe(
        Effect.zipRight(Effect.sync(() => timers.delete(pid))),
        Effect.zipRight(proc.isAlive(pid)),
        Effect.flatMap((alive) =>
          alive
            ? proc.kill(pid, "SIGKILL").pipe(
                Effect.catchAll((e) => Effect.logWarning(`SIGKILL ${pid} after ${Duration.format(killAfter)}: ${e.message}`))
              )
            : Effect.void
        )
      )

    const terminate: VmmDeviceService["terminate"] = ({ pid }) =>
      Effect.gen(function* () {
        if (pid <= 0) return yield* Effect.fail(vmmError(Errno.EINVAL, `terminate pid ${pid}`))
        yield* proc.kill(pid, "SIGTERM").pipe(Effect.mapError((e) => vmmError(e.errno, `kill ${pid} SIGTERM`)))
        const pending = timers.get(pid)
        if (pending !== undefined) yield* Fiber.interrupt(pending)
        timers.set(pid, yield* Effect.forkIn(escalate(pid), scope))
      })

    const info: Effect.Effect<ReadonlyArray<VmInfo>, VmmError> = Effect.gen(function* () {
      const entries: Array<VmInfo> = []
      for (const vm of yield* vms) {
        if (vm.pid <= 0 || !(yield* proc.isAlive(vm.pid))) continue
        const used = yield* residentBytes(vm.pid)
        if (used === null) continue
        entries.push({
          vir_memory_size: vm.memorySize,
          vir_used_size: used,
          vir_ncpus: vm.ncpus,
          vir_vcpu_state: new Uint8Array(64),
          vir_creator_pid: vm.pid,
          vir_id: vm.vmmId,
          vir_name: vm.name
        })
      }
      return entries
    })

    return VmmDevice.of({ attach: holder.attach, info, terminate })
  })

/** The process backend with 1.143's defaults (10 s escalation, /proc statm). */
export const layer: Layer.Layer<VmmDevice, never, Process | VmSource> = Layer.scoped(VmmDevice, make())

export const layerWith = (options: VmmDeviceProcessOptions): Layer.Layer<VmmDevice, never, Process | VmSource> =>
  Layer.scoped(VmmDevice, make(options))

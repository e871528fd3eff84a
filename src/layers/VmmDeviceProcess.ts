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
 * name. Resident memory comes from /proc/<pid>/statm on Linux, read with
 * pread on a descriptor kept open per VM (open+read+close of the path cost
 * ~10x more, and info must stay fast with 512 VMs); the descriptor is
 * closed when the VM is terminated, when it is no longer listed, or when
 * the layer ends. A process gone meanwhile is skipped; a read error is that
 * errno. Elsewhere used is 0 (OpenBSD's sysctl KERN_PROC_PID is not ported).
 *
 * attach keeps the fd (there is no device to talk to) and closes it when
 * the layer's scope ends; a second attach closes the previous one.
 */
import { Context, Duration, Effect, Fiber, Layer } from "effect"
import type { Scope } from "effect"
import { closeSync, openSync, readSync } from "node:fs"
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
  /** Resident bytes of a process; null if it is gone; NO_FD if no fd is left to read it. Default: /proc/<pid>/statm (StatmFiles). */
  readonly residentBytes?: (pid: number) => bigint | null | typeof NO_FD | VmmError
}

export const KILL_AFTER = Duration.seconds(10)

/** vir_vcpu_state of every entry: no vcpu state is known without vmm(4) (never written). */
const NO_VCPU_STATE = new Uint8Array(64)

const vmmError = (errno: number, what: string) => new VmmError({ errno, message: `${what}: ${errnoName(errno)}` })

/** kill(2)'s answer for a pid that is not (any more) a child of ours; shared, as it carries nothing per call. */
const GONE = vmmError(Errno.ESRCH, "terminate: no such VM process")

const codeOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

/** The resident field (statm's second) of a statm text, or -1. */
const residentPages = (buf: Uint8Array, n: number): number => {
  let i = 0
  while (i < n && buf[i] !== 0x20) i++
  i++
  let pages = 0
  const start = i
  for (; i < n; i++) {
    const c = buf[i]!
    if (c < 0x30 || c > 0x39) break
    pages = pages * 10 + (c - 0x30)
  }
  return i === start || i >= n || buf[i] !== 0x20 ? -1 : pages
}

/** StatmFiles.read's answer when no fd is left to open a statm with. */
export const NO_FD = "no fd" as const

/**
 * Resident bytes of processes from /proc/<pid>/statm, one descriptor kept
 * open per pid (opened close-on-exec by Node) and read with pread. A pid's
 * descriptor names that process, not the number, so a reused pid cannot be
 * read by mistake: a reaped process reads as gone (ESRCH or an empty read).
 */
export class StatmFiles {
  readonly #fds = new Map<number, number>()
  readonly #buf = new Uint8Array(256)
  readonly #page = BigInt(pageSize())

  /** Descriptors open now (for tests and accounting). */
  get open(): number {
    return this.#fds.size
  }

  /**
   * Resident bytes; null if the process is gone; NO_FD when this process is
   * out of file descriptors to open its statm with; a VmmError if statm
   * cannot be read.
   */
  read(pid: number): bigint | null | typeof NO_FD | VmmError {
    if (process.platform !== "linux") return 0n
    let fd = this.#fds.get(pid)
    if (fd === undefined) {
      try {
        fd = openSync(`/proc/${pid}/statm`, "r")
      } catch (e) {
        const code = codeOf(e)
        if (code === "ENOENT" || code === "ESRCH") return null
        if (code === "EMFILE" || code === "ENFILE") return NO_FD
        return vmmError(fromErrorCode(code), `/proc/${pid}/statm`)
      }
      this.#fds.set(pid, fd)
    }
    let n: number
    try {
      n = readSync(fd, this.#buf, 0, this.#buf.length, 0)
    } catch (e) {
      this.forget(pid)
      const code = codeOf(e)
      if (code === "ESRCH" || code === "ENOENT") return null
      return vmmError(fromErrorCode(code), `/proc/${pid}/statm`)
    }
    if (n === 0) {
      this.forget(pid)
      return null
    }
    const pages = residentPages(this.#buf, n)
    return pages < 0 ? vmmError(Errno.EIO, `/proc/${pid}/statm`) : BigInt(pages) * this.#page
  }

  /** Close pid's descriptor, if open. */
  forget(pid: number): void {
    const fd = this.#fds.get(pid)
    if (fd === undefined) return
    this.#fds.delete(pid)
    try {
      closeSync(fd)
    } catch {
      // nothing to do: it is gone either way
    }
  }

  /** Close the descriptors of every pid not in `keep`. */
  retain(keep: ReadonlySet<number>): void {
    for (const pid of [...this.#fds.keys()]) if (!keep.has(pid)) this.forget(pid)
  }

  closeAll(): void {
    for (const pid of [...this.#fds.keys()]) this.forget(pid)
  }
}

export const make = (
  options: VmmDeviceProcessOptions = {}
): Effect.Effect<VmmDeviceService, never, Process | VmSource | Scope.Scope> =>
  Effect.gen(function* () {
    const proc = yield* Process
    const vms = yield* VmSource
    const scope = yield* Effect.scope
    const killAfter = Duration.decode(options.killAfter ?? KILL_AFTER)
    const statm = new StatmFiles()
    yield* Effect.addFinalizer(() => Effect.sync(() => statm.closeAll()))
    const residentBytes = options.residentBytes ?? ((pid: number) => statm.read(pid))
    const timers = new Map<number, Fiber.RuntimeFiber<void>>()
    const holder = yield* deviceFdHolder

    // The vm_timeout_ev expiry: SIGKILL the process the forced stop was for, unless it has
    // been reaped by then. Tied to that process, not to its pid or the registry: a VM that
    // exits first is left alone, and so is any process later given the same pid (a wrap of
    // the pid space), as a VM restarted under the same id; a VM removed from the registry
    // while still running (vmm_shutdown on CTL_RESET, a failed start's removal) is still
    // killed, as vmm.c 1.143 SIGKILLs what vmm_shutdown leaves.
    const escalate = (pid: number, reaped: Effect.Effect<boolean>): Effect.Effect<void> =>
      Effect.sleep(killAfter).pipe(
        Effect.zipRight(Effect.sync(() => timers.delete(pid))),
        Effect.zipRight(reaped),
        Effect.flatMap((gone) =>
          gone
            ? Effect.void
            : proc.kill(pid, "SIGKILL").pipe(
                Effect.catchAll((e) => Effect.logWarning(`SIGKILL ${pid} after ${Duration.format(killAfter)}: ${e.message}`))
              )
        )
      )

    const terminate: VmmDeviceService["terminate"] = ({ pid }) =>
      Effect.gen(function* () {
        if (pid <= 0) return yield* Effect.fail(vmmError(Errno.EINVAL, `terminate pid ${pid}`))
        statm.forget(pid)
        // The common case, a VM process already reaped (vmm_sighdlr terminates every
        // VM that exited): answer ESRCH without a round trip or a new error object.
        const child = yield* proc.childOf(pid)
        if (child === null) return yield* Effect.fail(GONE)
        yield* proc.kill(pid, "SIGTERM").pipe(Effect.mapError((e) => vmmError(e.errno, `kill ${pid} SIGTERM`)))
        const pending = timers.get(pid)
        if (pending !== undefined) yield* Fiber.interrupt(pending)
        timers.set(pid, yield* Effect.forkIn(escalate(pid, child.reaped), scope))
      })

    // One pass, no Effect per VM: info must stay fast with hundreds of VMs.
    const info: Effect.Effect<ReadonlyArray<VmInfo>, VmmError> = Effect.gen(function* () {
      const listed = yield* vms
      const alive = new Set(yield* proc.children)
      const entries: Array<VmInfo> = []
      let unread = 0
      for (const vm of listed) {
        if (vm.pid <= 0 || !alive.has(vm.pid)) continue
        let used = residentBytes(vm.pid)
        if (used === null) continue
        // Out of fds (statm needs one per VM here; vmm(4)'s VMM_IOC_INFO none): the VM is
        // still listed, its memory in use as 0, rather than the whole answer lost to EMFILE.
        if (used === NO_FD) {
          unread++
          used = 0n
        }
        if (typeof used !== "bigint") return yield* Effect.fail(used)
        entries.push({
          vir_memory_size: vm.memorySize,
          vir_used_size: used,
          vir_ncpus: vm.ncpus,
          vir_vcpu_state: NO_VCPU_STATE,
          vir_creator_pid: vm.pid,
          vir_id: vm.vmmId,
          vir_name: vm.name
        })
      }
      statm.retain(alive)
      if (unread > 0) yield* Effect.logWarning(`info: out of file descriptors: memory in use of ${unread} VM(s) reported as 0`)
      return entries
    })

    return VmmDevice.of({ attach: holder.attach, info, terminate })
  })

/** The process backend with 1.143's defaults (10 s escalation, /proc statm). */
export const layer: Layer.Layer<VmmDevice, never, Process | VmSource> = Layer.scoped(VmmDevice, make())

export const layerWith = (options: VmmDeviceProcessOptions): Layer.Layer<VmmDevice, never, Process | VmSource> =>
  Layer.scoped(VmmDevice, make(options))

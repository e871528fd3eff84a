/**
 * A stand-in for vmd's parent process, enough to run the vmm process as
 * vmd would: it starts `bin/vmm -P vmm` with the channel on fd 3 and drives
 * it with the parent's real message sequences (vmd.md §6):
 *
 *  - startup (vmd_configure): RECEIVE_VMM_FD only if `vmmDevice` is given
 *    (Linux has no /dev/vmm; the process backend ignores the fd, so sending
 *    /dev/null is harmless), then CONFIG;
 *  - startVm: config_setvm's START_VM_REQUEST, CDROM, DISK per layer, IF,
 *    END with real files, taps and a pty; the answer is START_VM_RESPONSE;
 *  - stopVm: TERMINATE_VM_REQUEST (graceful or FORCE), then the VM's
 *    TERMINATE_VM_EVENT; a guest reset (EAGAIN) restarts the VM as vmd's
 *    parent does, anything else leaves it stopped;
 *  - info: GET_INFO_VM_REQUEST, DATA until END_DATA, completed like vmd's
 *    parent (tty, state, owner; rows for VMs not running);
 *  - pause / unpause, verbose (CTL_VERBOSE), reset (CTL_RESET);
 *  - close: closing fd 3 makes the vmm end every VM and exit 0.
 *
 * One operation at a time (a lock), like vmd's single-threaded parent;
 * replies are matched by vmd id (start, pause) or by request peerid.
 */
import { Effect, Stream } from "effect"
import type { Scope } from "effect"
import * as libc from "../native/libc.ts"
import {
  CONFIG_VMS,
  VM_START_RATE_LIMIT,
  VM_START_RATE_SEC,
  VM_STATE_PAUSED,
  VM_STATE_RUNNING,
  VM_STATE_SHUTDOWN,
  VM_STATE_WAITING
} from "../schema/constants.ts"
import { Errno, fromHostErrno } from "../schema/errno.ts"
import type { VmdConfig, VmopInfoResult } from "../schema/structs.ts"
import { ImsgChannel, type ChannelError } from "../services/ImsgChannel.ts"
import type { ExitStatus } from "../services/Process.ts"
import { defaultVmdConfig } from "../vmm/defaults.ts"
import { dispatchVmm } from "./dispatch.ts"
import { parentError, type ParentError, type ParentOp } from "./errors.ts"
import { makeEventLog, type ParentEvent } from "./events.ts"
import { openMedia } from "./media.ts"
import * as M from "./messages.ts"
import { openPty } from "./pty.ts"
import { completeInfo, isRunning, snapshot, stopRecord, type TrackedVm, type VmRecord } from "./records.ts"
import { makeRequests } from "./requests.ts"
import { checkSpec, createParams, createParamsBytes, type VmSpec } from "./spec.ts"
import { vmStateName } from "./status.ts"
import { spawnVmm, type VmmSpawnOptions } from "./vmmProcess.ts"

export interface VmdParentOptions extends VmmSpawnOptions {
  /** Send RECEIVE_VMM_FD with this file first, as vmd sends /dev/vmm. Not sent when absent. */
  readonly vmmDevice?: string
  /** CONFIG payload; vmd's defaults when absent. */
  readonly config?: VmdConfig
  /** How long to wait for a reply or an awaited event. */
  readonly timeoutMs?: number
  /**
   * What a VM without a kernel boots: config_setvm opens vmd's
   * VM_DEFAULT_BIOS (/etc/firmware/vmm-bios) and sends it as the kernel fd,
   * and fails the start with VMD_BIOS_MISSING if it cannot. Absent: that path.
   */
  readonly bios?: string
}

export interface StopOptions {
  /** vmctl stop -f: terminate at once instead of asking the guest. */
  readonly force?: boolean
  /** vmctl stop -w: return once the VM has stopped. */
  readonly wait?: boolean
}

export interface VmdParent {
  readonly vmmPid: number
  readonly startVm: (spec: VmSpec) => Effect.Effect<TrackedVm, ParentError>
  readonly stopVm: (id: number, options?: StopOptions) => Effect.Effect<void, ParentError>
  readonly pause: (id: number) => Effect.Effect<void, ParentError>
  readonly unpause: (id: number) => Effect.Effect<void, ParentError>
  /** `vmctl status`: what the vmm reports, completed by the parent. */
  readonly info: Effect.Effect<ReadonlyArray<VmopInfoResult>, ParentError>
  readonly verbose: (level: number) => Effect.Effect<void, ParentError>
  /** CTL_RESET with CONFIG_* bits; with CONFIG_VMS every VM ends. */
  readonly reset: (mode: number) => Effect.Effect<void, ParentError>
  readonly vms: Effect.Effect<ReadonlyArray<TrackedVm>>
  readonly events: Stream.Stream<ParentEvent>
  readonly mark: Effect.Effect<number>
  readonly waitFor: (pred: (e: ParentEvent) => boolean, mark: number) => Effect.Effect<ParentEvent, ParentError>
  /** Close fd 3 and wait for the vmm to exit. */
  readonly close: Effect.Effect<ExitStatus, ParentError>
}

const MS_PER_SEC = 1000

const spawnError = (e: ChannelError) => parentError("spawn", e.errno ?? Errno.EIO, e.message)

export const makeVmdParent = (o: VmdParentOptions): Effect.Effect<VmdParent, ParentError, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const scope = yield* Effect.scope
    const timeoutMs = o.timeoutMs ?? 60_000
    const log = yield* makeEventLog
    const lock = yield* Effect.makeSemaphore(1)
    const records = new Map<number, VmRecord>()
    let nextVmid = 1

    // proc_init: the socketpair, the vmm with its end on fd 3.
    const [ours, theirs] = yield* imsg.socketpair("vmm parent channel").pipe(Effect.mapError(spawnError))
    const vmm = yield* spawnVmm(o, theirs).pipe(Effect.ensuring(theirs.close), Effect.onError(() => ours.close))
    const channel = yield* imsg.open(ours).pipe(Effect.mapError(spawnError))
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const vm of records.values()) stopRecord(vm, false)
      })
    )
    const requests = makeRequests(channel, timeoutMs)

    const find = (op: ParentOp, id: number) =>
      Effect.suspend(() => {
        const vm = records.get(id)
        return vm === undefined ? Effect.fail(parentError(op, Errno.ENOENT, `no vm ${id}`)) : Effect.succeed(vm)
      })

    // ---------------------------------------------------------------------
    // config_setvm: the start sequence, for a first start and a restart.

    const launch = (vm: VmRecord, restart: boolean) =>
      Effect.gen(function* () {
        // Rate-limit the VM so that it cannot restart in a loop.
        const now = performance.now()
        if (vm.startedAt > 0) {
          vm.fastRestarts = now - vm.startedAt < VM_START_RATE_SEC * MS_PER_SEC ? vm.fastRestarts + 1 : 0
          if (vm.fastRestarts >= VM_START_RATE_LIMIT)
            return yield* Effect.fail(parentError("start", Errno.EPERM, `vm ${vm.id} restarted too quickly`))
        }
        vm.startedAt = now
        if (vm.tty === null) vm.tty = yield* openPty(`${vm.spec.name} tty master`)
        const media = yield* openMedia(vm.spec, vm.tty.master, o.bios)
        vm.hostTaps = media.hostTaps
        const params = yield* createParamsBytes(vm.params)
        const reply = yield* requests.request("start", `start:${vm.id}`, M.startVm(vm.id, params, media.fds))
        if (reply.result !== 0) {
          // One early failure yields a START_VM_RESPONSE for each later step: let them all arrive first.
          yield* Effect.ignore(requests.getInfo)
          return yield* Effect.fail(parentError("start", reply.result, `vmm refused vm ${vm.spec.name}`))
        }
        vm.pid = reply.pid
        vm.state = VM_STATE_RUNNING
        yield* log.publish({ _tag: "Started", id: vm.id, name: vm.spec.name, pid: vm.pid, restart })
        return snapshot(vm)
      }).pipe(
        Effect.tapError((e) =>
          Effect.suspend(() => {
            stopRecord(vm, false)
            return log.publish({ _tag: "StartFailed", id: vm.id, name: vm.spec.name, errno: e.errno })
          })
        )
      )

    const startVm = (spec: VmSpec) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          yield* checkSpec(spec)
          const existing = [...records.values()].find((vm) => vm.spec.name === spec.name)
          if (existing !== undefined && existing.state !== 0)
            return yield* Effect.fail(parentError("start", Errno.EALREADY, `${spec.name} is ${vmStateName(existing.state)}`))
          const id = existing?.id ?? nextVmid++
          const ifnames = Array.from({ length: spec.nics ?? 0 }, (_, i) => `tap${(id - 1) * 4 + i}`)
          const params = createParams(spec, ifnames)
          const vm: VmRecord = existing ?? { id, spec, params, pid: -1, state: 0, tty: null, hostTaps: [], startedAt: 0, fastRestarts: 0 }
          vm.spec = spec
          vm.params = params
          records.set(id, vm)
          return yield* launch(vm, false)
        })
      )

    /**
     * A guest reset: the dispatcher stopped the VM keeping its tty (VM_STATE_WAITING);
     * start it again, in the background, unless a stop or a reset (vmd's config_purge)
     * that held the lock first has ended it meanwhile.
     */
    const restart = (vm: VmRecord) =>
      lock.withPermits(1)(Effect.suspend(() => (vm.state === VM_STATE_WAITING ? Effect.asVoid(launch(vm, true)) : Effect.void))).pipe(
        Effect.catchAll(() => log.publish({ _tag: "Stopped", id: vm.id, name: vm.spec.name })),
        Effect.forkIn(scope),
        Effect.asVoid
      )

    yield* channel.messages.pipe(
      Stream.runForEach((m) => dispatchVmm({ requests, records, log, restart }, m)),
      Effect.ignore,
      Effect.zipRight(
        Effect.suspend(() => {
          requests.failAll(parentError("send", Errno.EPIPE, "the vmm closed the channel"))
          return log.publish({ _tag: "VmmGone" })
        })
      ),
      Effect.forkIn(scope)
    )

    // ---------------------------------------------------------------------
    // vmd_configure

    if (o.vmmDevice !== undefined) {
      const n = libc.open(o.vmmDevice, libc.O_RDWR)
      if (n < 0) return yield* Effect.fail(parentError("spawn", fromHostErrno(-n), o.vmmDevice))
      yield* requests.send("spawn", M.receiveVmmFd(libc.nativeFd(n, o.vmmDevice)))
    }
    yield* requests.send("spawn", M.config(o.config ?? defaultVmdConfig()))

    // ---------------------------------------------------------------------
    // Operations

    const stopVm = (id: number, options: StopOptions = {}) =>
      Effect.gen(function* () {
        const mark = yield* log.mark
        yield* lock.withPermits(1)(
          Effect.gen(function* () {
            const vm = yield* find("stop", id)
            const force = options.force === true
            // vmd.c's checks before it asks the vmm
            if (vm.state & VM_STATE_SHUTDOWN && !force)
              return yield* Effect.fail(parentError("stop", Errno.EALREADY, `${vm.spec.name} is stopping`))
            if (!isRunning(vm)) return yield* Effect.fail(parentError("stop", Errno.EINVAL, `${vm.spec.name} is not running`))
            const peerid = requests.peerid()
            const r = yield* requests.request("stop", `stop:${peerid}`, [M.terminateVm(peerid, id, force)])
            // (VM_STATE_SHUTDOWN was set by dispatchVmm when the response came, in message order)
            if (r.result !== 0) return yield* Effect.fail(parentError("stop", r.result, vm.spec.name))
          })
        )
        if (options.wait === true) yield* log.waitFor("wait", (e) => e._tag === "Stopped" && e.id === id, mark, timeoutMs)
      })

    const pauseOrUnpause = (id: number, pause: boolean) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          const op = pause ? "pause" : "unpause"
          const vm = yield* find(op, id)
          if (!isRunning(vm)) return yield* Effect.fail(parentError(op, Errno.EINVAL, `${vm.spec.name} is not running`))
          const r = yield* requests.request(op, `${op}:${id}`, [M.pauseVm(requests.peerid(), id, pause)])
          if (r.result !== 0) return yield* Effect.fail(parentError(op, r.result, vm.spec.name))
          vm.state = pause ? vm.state | VM_STATE_PAUSED : vm.state & ~VM_STATE_PAUSED
          yield* log.publish(pause ? { _tag: "Paused", id, name: vm.spec.name } : { _tag: "Unpaused", id, name: vm.spec.name })
        })
      )

    const info = lock.withPermits(1)(
      Effect.gen(function* () {
        const { rows, result } = yield* requests.getInfo
        if (result !== 0) return yield* Effect.fail(parentError("info", result, "GET_INFO_VM_END_DATA"))
        return completeInfo(rows, records.values())
      })
    )

    const reset = (mode: number) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          yield* requests.send("send", M.reset(mode))
          if ((mode & CONFIG_VMS) === 0) return
          // vmm_shutdown removes each VM before it exits: no TERMINATE_VM_EVENT follows.
          for (const vm of records.values()) {
            if (vm.state === 0) continue
            stopRecord(vm, false)
            yield* log.publish({ _tag: "Stopped", id: vm.id, name: vm.spec.name })
          }
        })
      )

    const close = Effect.gen(function* () {
      yield* channel.close
      const status = yield* vmm.exit.pipe(
        Effect.timeoutFail({ duration: timeoutMs, onTimeout: () => parentError("close", Errno.ETIMEDOUT, `vmm ${vmm.pid} did not exit`) })
      )
      for (const vm of records.values()) stopRecord(vm, false)
      return status
    })

    const parent: VmdParent = {
      vmmPid: vmm.pid,
      startVm,
      stopVm,
      pause: (id) => pauseOrUnpause(id, true),
      unpause: (id) => pauseOrUnpause(id, false),
      info,
      verbose: (level) => requests.send("send", M.verbose(level)),
      reset,
      vms: Effect.sync(() => [...records.values()].map(snapshot)),
      events: log.events,
      mark: log.mark,
      waitFor: (pred, mark) => log.waitFor("wait", pred, mark, timeoutMs),
      close
    }
    return parent
  })

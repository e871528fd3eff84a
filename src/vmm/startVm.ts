/**
 * vmm_start_vm: fork+exec the VM process and do the parent side of the
 * start handshake (vmd.md §7).
 *
 *   1. socketpair; spawn `argv0 -V <fd> -i <vmm fd> -j <psp fd> [-d] [-v|-vv]`
 *      in its own session with the VM's fds packed from 3 up (vmm.c's fork
 *      leaves each at the vmm's own number; this process holds more fds
 *      than C's, and vm.c refuses a -V or -i above 128);
 *   2. write struct vmd_vm raw, close our copies of the passed fds, write the
 *      local prefix raw, read the 4-byte kernel VM id (0 means the child failed);
 *   3. the socket becomes the VM's imsg channel (vmm_pipe). The channel is
 *      made between 2's writes and its read, while the child starts up
 *      (reading nothing until the id is in), and only started after: ~0.1 ms
 *      less between the id and START_VM_RESPONSE.
 *
 * Returns the kernel id and pid, or an errno as vmm.c does (ENOENT unknown
 * VM, EINVAL no tty or id 0, EIO fork or write failure, ENOMEM no id).
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import { vmdVmBytes, type ChildNumber } from "./vmdVm.ts"
import type { Fd } from "../services/Fd.ts"
import { localPrefixBytes } from "./wire.ts"
import type { Vm } from "../services/VmRegistry.ts"
import type { Channel, Imsg } from "../services/ImsgChannel.ts"
import type { VmmContext } from "./context.ts"
import { closeHeldFds, heldFds } from "../layers/VmRegistryLive.ts"
import { logDebug, logWarn, logWarnx } from "./log.ts"
import { opError, type VmOpError } from "./errors.ts"
import { terminateVm } from "./terminate.ts"
import { span } from "./span.ts"

export interface Started {
  readonly id: number
  readonly pid: number
}

/** The argv vmm.c builds for the child (after argv0), with the child's fd numbers. */
export const vmArgv = (ctx: VmmContext, childSocket: Fd, num: ChildNumber): Array<string> => {
  const args = [
    ...ctx.options.vmExecArgs,
    "-V",
    String(num(childSocket)),
    "-i",
    String(num(ctx.state.vmmFd)),
    "-j",
    String(num(ctx.state.pspFd))
  ]
  if (ctx.options.debug) args.push("-d")
  if (ctx.state.verbose === 1) args.push("-v")
  else if (ctx.state.verbose > 1) args.push("-vv")
  return args
}

/**
 * How long the id read may hold the whole process, as vmm.c's blocking
 * atomicio holds it for the whole read: the child answers within about a
 * millisecond of its exec; a slower one is waited for on the event loop,
 * within the handshake timeout. Meanwhile the sockets are still read and
 * exits reaped, but the dispatcher, as vmm.c, handles nothing else: a stuck
 * VM holds every other request and exit report until its timeout (vmm.c:
 * for ever), except a shutdown, which ends the wait (VmmState.stopping).
 */
export const ID_BLOCK_MS = 5

const handshake = (ctx: VmmContext, vm: Vm, imsg: Imsg): Effect.Effect<Either.Either<Started, number>> =>
  Effect.gen(function* () {
    // A second START_VM_END for a VM that already has a process: vmm.c forks
    // another and loses track of the first (its exit ignored, its socket
    // leaked). Refuse it; the VM is removed as on any start failure, which
    // closes its channel, and its process exits on the EOF. Its VM in vmm(4)
    // is terminated first, else it stays there, listed with id 0, until the
    // next RECEIVE_VMM_FD sweep (as for "setup vm pipe failed" below).
    // Found by test/reliability (fuzzing the parent side) and a review.
    if (vm.pid > 0) {
      imsg.fd?.closeSync()
      yield* logWarnx(`vmm_start_vm: vm ${vm.vmid} already started (pid ${vm.pid})`)
      yield* terminateVm(ctx, vm)
      return Either.left(Errno.EALREADY)
    }
    const tty = imsg.fd
    if (tty === null) {
      yield* logWarnx("vmm_start_vm: can't get tty")
      return Either.left(Errno.EINVAL)
    }
    vm.tty = tty

    const pair = yield* Effect.either(ctx.imsg.socketpair(`vm ${vm.vmid} channel`))
    if (Either.isLeft(pair)) {
      yield* logWarn("vmm_start_vm: socketpair", pair.left.message)
      return Either.left(Errno.EIO)
    }
    const [ours, theirs] = pair.right

    const extra = [ctx.state.vmmFd, ctx.state.pspFd].filter((fd) => fd !== null)
    const fds = [theirs, ...extra, ...heldFds(vm)]
    const at = fds.map((_, i) => 3 + i)
    const childNumber = new Map(fds.map((fd, i) => [fd, at[i]!]))
    const num: ChildNumber = (fd) => (fd === null ? -1 : (childNumber.get(fd) ?? -1))
    const child = yield* Effect.either(
      ctx.process.spawn({
        command: ctx.options.vmExec,
        args: vmArgv(ctx, theirs, num),
        fds,
        at,
        stdio: ctx.options.debug ? "inherit" : "null",
        // As vmm.c's fork: back with the pid at once, so that struct vmd_vm
        // (which carries it) is written while the child execs; a failed exec
        // shows as EOF in the handshake below, and as the child's exit.
        early: true
      })
    )
    theirs.closeSync()
    if (Either.isLeft(child)) {
      ours.closeSync()
      yield* logWarn("vmm_start_vm: start child failed", child.left.message)
      return Either.left(Errno.EIO)
    }
    vm.pid = child.right.pid

    /** Our end as the VM's channel, once made (it owns the socket then). */
    let channel: Channel | null = null
    const fail = (errno: number) =>
      Effect.gen(function* () {
        if (channel !== null) channel.unsafeClose()
        else ours.closeSync()
        // vmm.c leaves the child to fail on its own; ours may be stuck in the
        // handshake, so make sure it ends (its exit is ignored: the VM is removed).
        yield* ctx.process.kill(child.right.pid, "SIGKILL").pipe(Effect.ignore)
        return Either.left(errno)
      })

    const timeout = ctx.options.handshakeTimeoutMs
    const wroteVm = yield* Effect.either(ctx.imsg.writeRaw(ours, vmdVmBytes(vm, num), timeout))
    // As the parent/vmm process, we no longer need these fds.
    closeHeldFds(vm)
    if (Either.isLeft(wroteVm)) {
      yield* logWarnx(`vmm_start_vm: failed to send config for vm '${vm.params.vmc_name}'`)
      return yield* fail(Errno.EIO)
    }
    const wrotePrefix = yield* Effect.either(
      ctx.imsg.writeRaw(ours, localPrefixBytes(ctx.state.config.cfg_localprefix), timeout)
    )
    if (Either.isLeft(wrotePrefix)) {
      yield* logWarnx(`vmm_start_vm: failed to send local prefix for vm '${vm.params.vmc_name}'`)
      return yield* fail(Errno.EIO)
    }
    // vmm_pipe, first half, while the child starts up (a failure is reported below, in vmm.c's order).
    channel = yield* ctx.openVmChannel(ours)
    // A shutdown ends the wait by killing the child (the read then meets EOF): see server.ts's stop.
    const stopped = Effect.suspend(() =>
      Effect.zipRight(logDebug(`vmm_start_vm: shutting down, no longer waiting for vm ${vm.params.vmc_name}'s id`), fail(Errno.EIO))
    )
    if (ctx.state.stopping) return yield* stopped
    ctx.state.handshakePid = child.right.pid
    const idBytes = yield* Effect.either(ctx.imsg.readRaw(ours, 4, timeout, ID_BLOCK_MS)).pipe(
      // (also on a defect or an interruption: a later shutdown must not kill this pid)
      Effect.ensuring(
        Effect.sync(() => {
          ctx.state.handshakePid = 0
        })
      )
    )
    if (Either.isLeft(idBytes)) {
      if (ctx.state.stopping) return yield* stopped
      // vmd could not allocate memory for the vm
      yield* logDebug(`vmm_start_vm: failed to receive vm id from vm ${vm.params.vmc_name}`)
      return yield* fail(Errno.ENOMEM)
    }
    const id = new DataView(idBytes.right.buffer, idBytes.right.byteOffset, 4).getUint32(0, true)
    if (id === 0) return yield* fail(Errno.EINVAL)
    // A VM process may not claim an id another VM holds (vmm.c trusts it, and
    // the parent would then mistake one VM for the other). Found by test/reliability.
    const holder = yield* ctx.registry.byVmmid(id)
    if (holder !== null && holder !== vm) {
      yield* logWarnx(`vmm_start_vm: vm ${vm.vmid} answered id ${id}, which vm ${holder.vmid} holds`)
      return yield* fail(Errno.EINVAL)
    }
    vm.vmmid = id

    // vmm_pipe: the socket is the VM's imsg channel; it starts reading now.
    if (channel === null) {
      yield* logWarnx(`vmm_start_vm: setup vm pipe failed for vm ${vm.vmid}`)
      // vmm.c calls fatal here; we answer EIO and undo the child's work instead:
      // the VM it created in vmm(4) goes too (else it is left behind until the
      // next RECEIVE_VMM_FD sweep). Found by test/vmm.
      yield* terminateVm(ctx, vm)
      return yield* fail(Errno.EIO)
    }
    yield* ctx.watchVm(vm, channel)
    return Either.right({ id, pid: child.right.pid })
  })

export const startVm = (ctx: VmmContext, imsg: Imsg): Effect.Effect<Started, VmOpError> =>
  Effect.gen(function* (): Effect.fn.Return<Either.Either<Started, number>> {
    const vm = yield* ctx.registry.byVmid(imsg.peerid)
    if (vm === null) {
      imsg.fd?.closeSync()
      yield* logWarnx("vmm_start_vm: can't find vm")
      return Either.left(Errno.ENOENT)
    }
    const result = yield* handshake(ctx, vm, imsg)
    if (Either.isLeft(result) && !vm.fromConfig) yield* ctx.registry.remove(vm, "vmm_start_vm")
    return result
  }).pipe(
    Effect.flatMap((r) => (Either.isLeft(r) ? Effect.fail(opError("start")(r.left)) : Effect.succeed(r.right))),
    span("vmm_start_vm")
  )

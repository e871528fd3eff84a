/**
 * The vmm process's side of config.c: config_getvm, config_getdisk,
 * config_getif, config_getcdrom, config_getconfig, config_purge.
 *
 * Each returns 0 or an errno (vmd's -1 + errno), and owns the fd it was
 * given: on every failure path the fd is closed, so nothing leaks.
 * Where config.c calls fatal on a wrong payload size, we answer EINVAL
 * (DECISIONS.md: bad input from the parent is answered, not fatal).
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import { VM_MAX_BASE_PER_DISK, VM_STATE_RUNNING } from "../schema/constants.ts"
import { decodeVmdConfig, decodeVmopCreateParams, imsgUintRead } from "../schema/structs.ts"
import { PEERID_NONE } from "../schema/imsgTypes.ts"
import type { Imsg } from "../services/ImsgChannel.ts"
import type { VmmContext } from "./context.ts"
import { logDebug, logWarnx } from "./log.ts"
import { resetLocalPrefix } from "./defaults.ts"

/** config_getvm: START_VM_REQUEST. Registers the VM under the parent's id (peerid). */
export const configGetVm = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    const kernel = imsg.fd
    const decoded = decodeVmopCreateParams(imsg.data)
    if (Either.isLeft(decoded)) {
      kernel?.closeSync()
      yield* logWarnx(`config_getvm: ${decoded.left.message}`)
      return Errno.EINVAL
    }
    const params = { ...decoded.right, vmc_kernel: kernel?.num ?? -1 }
    const registered = yield* Effect.either(ctx.registry.register(params, imsg.peerid, 0))
    if (Either.isLeft(registered)) {
      const err = registered.left
      kernel?.closeSync()
      // vmd removes the VM vm_register handed back: for EALREADY, the existing one.
      if (err.existing !== null) yield* ctx.registry.remove(err.existing, "config_getvm")
      yield* logDebug(`config_getvm: ${err.message}`)
      return err.errno
    }
    const vm = registered.right
    vm.state |= VM_STATE_RUNNING
    vm.peerid = PEERID_NONE
    vm.kernel = kernel
    return 0
  })

/** The VM a START_VM_* step is for (its peerid), or null with the step's fd closed (ENOENT). */
const vmOf = (ctx: VmmContext, imsg: Imsg) =>
  Effect.map(ctx.registry.byVmid(imsg.peerid), (vm) => {
    if (vm === null) imsg.fd?.closeSync()
    return vm
  })

/** config_getdisk: START_VM_DISK, payload the disk index; one message per image layer. */
export const configGetDisk = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    const vm = yield* vmOf(ctx, imsg)
    if (vm === null) return Errno.ENOENT
    const n = imsgUintRead(imsg.data)
    if (Either.isLeft(n) || imsg.fd === null || BigInt(n.right) >= vm.params.vmc_ndisks) {
      imsg.fd?.closeSync()
      yield* logWarnx(`config_getdisk: invalid disk id or no fd`)
      return Errno.EINVAL
    }
    const idx = vm.params.vmc_diskbases[n.right] ?? 0
    vm.params = { ...vm.params, vmc_diskbases: vm.params.vmc_diskbases.map((b, i) => (i === n.right ? b + 1 : b)) }
    if (idx >= VM_MAX_BASE_PER_DISK) {
      imsg.fd.closeSync()
      yield* logWarnx(`config_getdisk: too many bases for disk ${n.right}`)
      return Errno.EINVAL
    }
    vm.disks[n.right]![idx] = imsg.fd
    return 0
  })

/** config_getif: START_VM_IF, payload the nic index, fd the tap. */
export const configGetIf = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    const vm = yield* vmOf(ctx, imsg)
    if (vm === null) return Errno.ENOENT
    const n = imsgUintRead(imsg.data)
    if (
      Either.isLeft(n) ||
      imsg.fd === null ||
      BigInt(n.right) >= vm.params.vmc_nnics ||
      vm.ifs[n.right] !== null
    ) {
      imsg.fd?.closeSync()
      yield* logWarnx(`config_getif: invalid interface id or no fd`)
      return Errno.EINVAL
    }
    vm.ifs[n.right] = imsg.fd
    return 0
  })

/** config_getcdrom: START_VM_CDROM, fd the image. */
export const configGetCdrom = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    const vm = yield* vmOf(ctx, imsg)
    if (vm === null) return Errno.ENOENT
    if (imsg.fd === null) {
      yield* logWarnx(`config_getcdrom: no fd`)
      return Errno.EINVAL
    }
    // config.c would overwrite (and leak) an earlier cdrom fd; we close it.
    vm.cdrom?.closeSync()
    vm.cdrom = imsg.fd
    return 0
  })

/** config_getconfig: CONFIG (struct vmd_config). No reply. */
export const configGetConfig = (ctx: VmmContext, imsg: Imsg) =>
  Effect.gen(function* () {
    imsg.fd?.closeSync()
    const cfg = decodeVmdConfig(imsg.data)
    if (Either.isLeft(cfg)) {
      yield* logWarnx(`config_getconfig: ${cfg.left.message}`)
      return
    }
    ctx.state.config = cfg.right
  })

/**
 * config_purge(env, mode) in the vmm process: the local prefix goes back to
 * its default and the IPv6 flag is cleared. (The VMs themselves were removed
 * by vmm_shutdown before, when CONFIG_VMS was set.)
 */
export const configPurge = (ctx: VmmContext, mode: number) =>
  Effect.gen(function* () {
    yield* logDebug(`config_purge: mode ${mode}`)
    ctx.state.config = resetLocalPrefix(ctx.state.config)
  })

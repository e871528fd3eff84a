/**
 * The VM child's side of the start handshake (vm.c vm_main / start_vm,
 * vmd.md §7), on the -V socket before it speaks imsg:
 *
 *   1. read struct vmd_vm raw (13352 bytes; short -> EIO);
 *   2. read struct local_prefix raw (40 bytes; short -> EIO);
 *   3. nothing to boot (no kernel, disk or cdrom) -> EINVAL;
 *   4. every fd the struct names must be open here at that number -> EBADF;
 *   5. write the 4-byte VM id. There is no vmm(4) to hand out a kernel id,
 *      so the answer is vm_vmid, vmd's id, which is never 0.
 *
 * Failures write nothing, as vm.c does when it fails before VMM_IOC_CREATE
 * (the vmm then reads EOF and answers ENOMEM).
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import { checkVmdVm, decodeLocalPrefix, decodeVmdVm, SIZEOF, type LocalPrefix, type VmdVm } from "../schema/structs.ts"
import { fstatId } from "../native/libc.ts"
import type { ImsgChannelService } from "../services/ImsgChannel.ts"
import type { Fd } from "../services/Fd.ts"
import { hasBootMedia, namedFds } from "./vmStruct.ts"
import { exitWith, type VmExit } from "./exit.ts"
import type { TestMode } from "./testMode.ts"

/** vm.c blocks on these reads; a vmm that never writes is gone for good after this long. */
const READ_TIMEOUT_MS = 5 * 60_000
const WRITE_TIMEOUT_MS = 30_000

export interface StartData {
  readonly vm: VmdVm
  readonly prefix: LocalPrefix
}

const readExactly = (imsg: ImsgChannelService, sock: Fd, n: number, what: string) =>
  imsg.readRaw(sock, n, READ_TIMEOUT_MS).pipe(
    Effect.catchAll((e) => exitWith(Errno.EIO, `failed to receive ${what}: ${e.message}`))
  )

/** The fds the struct names that are not open in this process. */
export const missingFds = (vm: VmdVm) => namedFds(vm).filter((fd) => typeof fstatId(fd.num) === "number")

export const receiveStartData = (
  imsg: ImsgChannelService,
  sock: Fd,
  mode: TestMode
): Effect.Effect<StartData, VmExit> =>
  Effect.gen(function* () {
    const raw = yield* readExactly(imsg, sock, SIZEOF.vmd_vm, "vm struct")
    const vm = Either.flatMap(decodeVmdVm(raw), checkVmdVm)
    if (Either.isLeft(vm)) return yield* exitWith(Errno.EINVAL, `bad vm struct: ${vm.left.field}: ${vm.left.message}`)
    if (mode === "die-in-handshake") return yield* exitWith(Errno.EIO, "test mode: died in the handshake")
    const prefix = decodeLocalPrefix(yield* readExactly(imsg, sock, SIZEOF.local_prefix, "local prefix"))
    if (Either.isLeft(prefix)) return yield* exitWith(Errno.EIO, `bad local prefix: ${prefix.left.message}`)
    if (!hasBootMedia(vm.right)) return yield* exitWith(Errno.EINVAL, "no kernel, disk or cdrom")
    const missing = missingFds(vm.right)
    if (missing.length > 0) {
      const list = missing.map((fd) => `${fd.label}=${fd.num}`).join(", ")
      return yield* exitWith(Errno.EBADF, `not open in this process: ${list}`)
    }
    return { vm: vm.right, prefix: prefix.right }
  })

/** The 4-byte id, host order (little-endian): vm_vmmid in vmm.c. */
export const idBytes = (id: number): Uint8Array => {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, id >>> 0, true)
  return b
}

export const answerId = (imsg: ImsgChannelService, sock: Fd, id: number): Effect.Effect<void, VmExit> =>
  imsg.writeRaw(sock, idBytes(id), WRITE_TIMEOUT_MS).pipe(
    Effect.catchAll((e) => exitWith(Errno.EIO, `failed to send vm id: ${e.message}`))
  )

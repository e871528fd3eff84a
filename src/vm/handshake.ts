/**
 * The VM child's side of the start handshake (vm.c vm_main / start_vm,
 * vmd.md §7), on the -V socket before it speaks imsg, in vm.c's order:
 *
 *   1. read struct vmd_vm raw (13352 bytes; short -> EIO, no answer);
 *   2. read struct local_prefix raw (40 bytes; short -> EIO, no answer);
 *   3. vm_kernel -1 ("failed to receive boot fd") -> EINVAL, no answer;
 *   4. vmc_sev set without a psp fd (-j) -> EINVAL, no answer;
 *   5. what vmm_create_vm refuses (ncpus > 64, ndisks > 4, nnics > 4) ->
 *      a 4-byte 0 id, then EINVAL (the vmm reports EINVAL);
 *   6. every fd the struct names must be open here at that number -> EBADF,
 *      no answer (this port's own check: vm.c would fail later, after the id);
 *   7. write the 4-byte VM id (answerId, in program.ts). There is no vmm(4)
 *      to hand out a kernel id, so the answer is vm_vmid, vmd's id, which
 *      is never 0.
 *
 * "No answer" is vm.c exiting before start_vm writes anything: the vmm
 * reads EOF and answers ENOMEM. Counts vm.c never reads are not checked:
 * vmc_nmemranges (create_memory_map overwrites it) and vm_sev_nmemsegments
 * (the child overwrites vm_sev_*, §4.5).
 */
import { Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import { decodeLocalPrefix, decodeVmdVm, SIZEOF, type LocalPrefix, type VmdVm } from "../schema/structs.ts"
import { constants, fstatSync } from "node:fs"
import type { ImsgChannelService } from "../services/ImsgChannel.ts"
import type { Fd } from "../services/Fd.ts"
import { createFailure, namedFds } from "./vmStruct.ts"
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

/**
 * The fds the struct names that this process was not given: not open, or one
 * of Node's own (an anonymous inode, as its epoll and eventfds, or a pipe, as
 * libuv's), which takes the number of an fd the vmm failed to pass when it is
 * the lowest free one. (Close-on-exec cannot tell them apart: Node 20 as built
 * here sets it on the fds it inherits as it starts, seen with strace. A passed
 * fd is a file, a device or a socket.)
 */
export const missingFds = (vm: VmdVm) =>
  namedFds(vm).filter((fd) => {
    try {
      const st = fstatSync(fd.num)
      return (st.mode & constants.S_IFMT) === 0 || st.isFIFO()
    } catch {
      return true // not open
    }
  })

export const receiveStartData = (
  imsg: ImsgChannelService,
  sock: Fd,
  mode: TestMode,
  pspFd: number
): Effect.Effect<StartData, VmExit> =>
  Effect.gen(function* () {
    const raw = yield* readExactly(imsg, sock, SIZEOF.vmd_vm, "vm struct")
    if (mode === "die-in-handshake") return yield* exitWith(Errno.EIO, "test mode: died in the handshake")
    const prefixRaw = yield* readExactly(imsg, sock, SIZEOF.local_prefix, "local prefix")
    // Both decode only fail on a size other than the one just read.
    const vm = decodeVmdVm(raw)
    if (Either.isLeft(vm)) return yield* exitWith(Errno.EIO, `bad vm struct: ${vm.left.message}`)
    const prefix = decodeLocalPrefix(prefixRaw)
    if (Either.isLeft(prefix)) return yield* exitWith(Errno.EIO, `bad local prefix: ${prefix.left.message}`)
    const name = vm.right.vm_params.vmc_name
    if (vm.right.vm_kernel === -1) return yield* exitWith(Errno.EINVAL, `${name}: failed to receive boot fd`)
    if (vm.right.vm_params.vmc_sev !== 0 && pspFd < 0) return yield* exitWith(Errno.EINVAL, "/dev/psp not available")
    const refused = createFailure(vm.right)
    if (refused !== undefined) {
      // start_vm: "Let the vmm process know we failed by sending a 0 vm id"; a failed write is ignored.
      yield* answerId(imsg, sock, 0).pipe(Effect.ignore)
      return yield* exitWith(Errno.EINVAL, `${name}: could not create vm: ${refused}`)
    }
    const missing = missingFds(vm.right)
    if (missing.length > 0) {
      const list = missing.map((fd) => `${fd.label}=${fd.num}`).join(", ")
      return yield* exitWith(Errno.EBADF, `not given to this process (not open, or one of its own): ${list}`)
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

/**
 * The parent's messages on the wire: each is sent through a real channel
 * (ImsgChannelNative) and read back raw from the other end of the
 * socketpair, then compared with bytes written out by hand from vmd.md §2,
 * §4 and imsg.md §1. An fd travels as bit 31 of len (read(2) discards the
 * SCM_RIGHTS itself).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import * as libc from "../../src/native/libc.ts"
import * as M from "../../src/parent/messages.ts"
import { createParams } from "../../src/parent/spec.ts"
import { CONFIG_VMS } from "../../src/schema/constants.ts"
import { emptyVmdConfig, encodeVmopCreateParams } from "../../src/schema/structs.ts"
import { ImsgChannel, type OutgoingImsg } from "../../src/services/ImsgChannel.ts"
import { defaultVmdConfig } from "../../src/vmm/defaults.ts"

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex")

/** Send `msgs` on a channel and read `n` raw bytes from the peer. */
const wire = (msgs: ReadonlyArray<OutgoingImsg>, n: number) =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const [a, b] = yield* imsg.socketpair("golden")
    yield* Effect.addFinalizer(() => b.close)
    const channel = yield* imsg.open(a)
    for (const m of msgs) yield* channel.send(m)
    yield* channel.flush
    return yield* imsg.readRaw(b, n, 5000)
  }).pipe(Effect.provide(ImsgChannelNative.layer))

const devnull = () => libc.nativeFd(libc.open("/dev/null", libc.O_RDONLY), "/dev/null")

describe("parent messages, golden bytes", () => {
  it.scopedLive("CTL_VERBOSE, CTL_RESET, GET_INFO_VM_REQUEST", () =>
    Effect.gen(function* () {
      const bytes = yield* wire([M.verbose(2), M.reset(CONFIG_VMS), M.getInfo(5)], 20 + 20 + 16)
      expect(hex(bytes)).toBe(
        // type 3, len 20, peerid 0xffffffff, pid 1, int 2
        "03000000" + "14000000" + "ffffffff" + "01000000" + "02000000" +
        // type 4, len 20, peerid 0xffffffff, pid 1, uint 1
        "04000000" + "14000000" + "ffffffff" + "01000000" + "01000000" +
        // type 19, len 16, peerid 5, pid 1
        "13000000" + "10000000" + "05000000" + "01000000"
      )
    })
  )

  it.scopedLive("TERMINATE_VM_REQUEST (graceful and FORCE), PAUSE_VM, UNPAUSE_VM: a 76-byte vmop_id", () =>
    Effect.gen(function* () {
      const bytes = yield* wire(
        [M.terminateVm(9, 3, false), M.terminateVm(10, 3, true), M.pauseVm(11, 3, true), M.pauseVm(12, 3, false)],
        4 * 92
      )
      const vid = (flags: string) => "03000000" + "00".repeat(64) + "00000000" + flags
      expect(hex(bytes)).toBe(
        "10000000" + "5c000000" + "09000000" + "01000000" + vid("00000000") +
        "10000000" + "5c000000" + "0a000000" + "01000000" + vid("01000000") +
        "0b000000" + "5c000000" + "0b000000" + "01000000" + vid("00000000") +
        "0d000000" + "5c000000" + "0c000000" + "01000000" + vid("00000000")
      )
    })
  )

  it.scopedLive("CONFIG: struct vmd_config with vmd's default local prefix 100.64.0.0/10, fd00::/8", () =>
    Effect.gen(function* () {
      const bytes = yield* wire([M.config(defaultVmdConfig())], 16 + 216)
      expect(hex(bytes.subarray(0, 16))).toBe("27000000" + "e8000000" + "ffffffff" + "01000000")
      const payload = bytes.subarray(16)
      expect(hex(payload.subarray(28, 68))).toBe(
        "64400000" + "ffc00000" + "fd" + "00".repeat(15) + "ff" + "00".repeat(15)
      )
      expect([...payload.subarray(0, 28), ...payload.subarray(68)].every((x) => x === 0)).toBe(true)
      expect(emptyVmdConfig().cfg_flags).toBe(0)
    })
  )

  it.scopedLive("the start sequence: REQUEST (+kernel), CDROM, DISK per layer, IF per nic, END (+tty), peerid = vmd id", () =>
    Effect.gen(function* () {
      const params = createParams(
        { name: "alpine", memory: 1024n * 1024n * 1024n, vcpus: 2, kernel: "/bsd", cdrom: "/cd.iso", disks: [["/a.img", "/base.img"]], nics: 1 },
        ["tap0"]
      )
      const payload = Either.getOrThrow(encodeVmopCreateParams(params))
      const fds = { kernel: devnull(), cdrom: devnull(), disks: [[devnull(), devnull()]], taps: [devnull()], tty: devnull() }
      const msgs = M.startVm(4, payload, fds)
      const bytes = yield* wire(msgs, 16 + 8392 + 16 + 2 * 20 + 20 + 16)
      // every fd now belongs to the channel, which closed it once sent
      expect([fds.kernel, fds.cdrom, ...fds.disks[0]!, ...fds.taps, fds.tty].every((fd) => !fd.isOpen)).toBe(true)

      // START_VM_REQUEST: type 5, len 8408 | fd mark, peerid 4, pid 1
      expect(hex(bytes.subarray(0, 16))).toBe("05000000" + "d8200080" + "04000000" + "01000000")
      const p = new DataView(bytes.buffer, bytes.byteOffset + 16, 8392)
      const str = (off: number, len: number) => Buffer.from(bytes.subarray(16 + off, 16 + off + len)).toString("latin1").replace(/\0.*$/s, "")
      expect(str(4, 64)).toBe("alpine") // vmc_name
      expect(p.getUint32(72, true)).toBe(0) // vmc_owner.uid
      expect(p.getBigInt64(80, true)).toBe(-1n) // vmc_owner.gid: no group
      expect(p.getUint32(88, true)).toBe(0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20) // CPU KERNEL MEMORY NETWORK DISK CDROM
      expect(p.getBigUint64(96, true)).toBe(2n) // vmc_ncpus
      expect(p.getBigUint64(2176 + 16, true)).toBe(1n << 30n) // vmc_memranges[0].vmr_size
      expect(p.getInt32(2688, true)).toBe(-1) // vmc_kernel: the vmm fills it from the fd
      expect(p.getBigUint64(2696, true)).toBe(1n) // vmc_ndisks
      expect(str(2704, 1024)).toBe("/a.img") // vmc_disks[0]
      expect(p.getUint32(6800, true)).toBe(2) // vmc_disktypes[0] = VMDF_RAW
      expect(p.getUint32(6816, true)).toBe(0) // vmc_diskbases[0]: zeroed before sending
      expect(str(6832, 1024)).toBe("/cd.iso") // vmc_cdrom
      expect(p.getBigUint64(7856, true)).toBe(1n) // vmc_nnics
      expect(str(7864, 16)).toBe("tap0") // vmc_ifnames[0]
      expect(p.getUint32(8288, true)).toBe(1) // vmc_ifflags[0] = VMIFF_UP

      const rest = bytes.subarray(16 + 8392)
      expect(hex(rest)).toBe(
        "06000000" + "10000080" + "04000000" + "01000000" + // START_VM_CDROM, fd
        "07000000" + "14000080" + "04000000" + "01000000" + "00000000" + // START_VM_DISK 0, top layer
        "07000000" + "14000080" + "04000000" + "01000000" + "00000000" + // START_VM_DISK 0, base layer
        "08000000" + "14000080" + "04000000" + "01000000" + "00000000" + // START_VM_IF 0, tap
        "09000000" + "10000080" + "04000000" + "01000000" // START_VM_END, tty
      )
    })
  )
})

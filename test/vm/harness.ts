/**
 * The vmm's side of a VM process, played by a test: real files for the
 * kernel and disk, a pty for the tty, a socketpair end as the tap, the VM
 * program spawned through ProcessNode with each fd at its own number, and
 * the raw handshake over a socketpair from the real ImsgChannel layer.
 */
import { Effect, Either, Layer } from "effect"
import type { Scope } from "effect"
import { readdirSync, readlinkSync } from "node:fs"
import { join } from "node:path"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import * as ProcessNode from "../../src/layers/ProcessNode.ts"
import * as libc from "../../src/native/libc.ts"
import { openPty, type Pty } from "../../src/parent/pty.ts"
import { createParams } from "../../src/parent/spec.ts"
import { emptyLocalPrefix, emptyVmdVm, encodeLocalPrefix, encodeVmdVm, type VmdVm } from "../../src/schema/structs.ts"
import type { Fd } from "../../src/services/Fd.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { Process, type Child } from "../../src/services/Process.ts"

export const TestLayers = Layer.mergeAll(ImsgChannelNative.layer, ProcessNode.layer)

/** Four different bytes, so that an id answered from a constant or in the wrong byte order shows. */
export const VMID = 0x01020304

/** A VM program: `command args... -V fd -i -1 -j -1`. */
export interface Program {
  readonly name: string
  readonly command: string
  readonly args: ReadonlyArray<string>
}

export interface VmFiles {
  readonly kernel: Fd
  readonly disk: Fd
  readonly tty: Pty
  readonly tap: Fd
  readonly tapHost: Fd
}

const owned = (num: number, label: string): Fd => {
  if (num < 0) throw new Error(`${label}: errno ${-num}`)
  return libc.nativeFd(num, label)
}

/** What a VM is given, opened in this process (close-on-exec), closed with the scope. */
export const vmFiles = (dir: string): Effect.Effect<VmFiles, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const kernel = owned(libc.open(join(dir, "bsd"), libc.O_RDWR | libc.O_CREAT), "kernel")
      const disk = owned(libc.open(join(dir, "disk.img"), libc.O_RDWR | libc.O_CREAT), "disk")
      const tty = Either.getOrThrow(openPty("tty"))
      const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
      if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
      return { kernel, disk, tty, tap: owned(pair[0], "tap"), tapHost: owned(pair[1], "tap host") }
    }),
    (f) =>
      Effect.sync(() => {
        for (const fd of [f.kernel, f.disk, f.tty.master, f.tap, f.tapHost]) if (fd.isOpen) fd.closeSync()
      })
  )

export const givenFds = (f: VmFiles): ReadonlyArray<Fd> => [f.kernel, f.disk, f.tty.master, f.tap]

/** struct vmd_vm as vmm_start_vm writes it: our fd numbers, -1 where absent. */
export const vmStruct = (f: VmFiles): VmdVm => {
  const base = emptyVmdVm()
  const params = createParams({ name: "testvm", kernel: "bsd", disks: [["disk.img"]], nics: 1 }, ["tap0"])
  return {
    ...base,
    vm_params: { ...params, vmc_kernel: f.kernel.num },
    vm_vmid: VMID,
    vm_peerid: 0xffffffff,
    vm_kernel: f.kernel.num,
    vm_cdrom: -1,
    vm_disks: base.vm_disks.map((layers, i) => layers.map((_, j) => (i === 0 && j === 0 ? f.disk.num : -1))),
    vm_ifs: base.vm_ifs.map((vif, i) => ({ ...vif, vif_fd: i === 0 ? f.tap.num : -1 })),
    vm_tty: f.tty.master.num,
    vm_state: 1
  }
}

export const structBytes = (vm: VmdVm): Uint8Array => Either.getOrThrow(encodeVmdVm(vm))
export const prefixBytes = (): Uint8Array => Either.getOrThrow(encodeLocalPrefix(emptyLocalPrefix()))

export interface Launched {
  /** The vmm's end of the socketpair. */
  readonly sock: Fd
  readonly child: Child
}

/** Spawn the VM program with its end of a fresh socketpair and `fds`, as vmm_start_vm does. */
export const launch = (
  program: Program,
  fds: ReadonlyArray<Fd>,
  env: Readonly<Record<string, string>> = {}
): Effect.Effect<Launched, unknown, Scope.Scope | ImsgChannel | Process> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const proc = yield* Process
    const [sock, theirs] = yield* imsg.socketpair("vm test")
    yield* Effect.addFinalizer(() => Effect.sync(() => sock.isOpen && sock.closeSync()))
    const child = yield* proc
      .spawn({
        command: program.command,
        args: [...program.args, "-V", String(theirs.num), "-i", "-1", "-j", "-1"],
        fds: [theirs, ...fds],
        stdio: "null",
        env
      })
      .pipe(Effect.ensuring(theirs.close))
    return { sock, child }
  })

/** The whole handshake: struct, prefix, and the 4-byte id back. */
export const handshake = (l: Launched, vm: VmdVm) =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    yield* imsg.writeRaw(l.sock, structBytes(vm), 5000)
    yield* imsg.writeRaw(l.sock, prefixBytes(), 5000)
    const id = yield* imsg.readRaw(l.sock, 4, 10_000)
    return new DataView(id.buffer, id.byteOffset, 4).getUint32(0, true)
  })

/** An imsg frame as libutil writes it (imsg.md §1): type, len, peerid, pid, little-endian; then the payload. */
export const frame = (type: number, peerid: number, pid: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array => {
  const b = new Uint8Array(16 + payload.length)
  const dv = new DataView(b.buffer)
  dv.setUint32(0, type, true)
  dv.setUint32(4, b.length, true)
  dv.setUint32(8, peerid >>> 0, true)
  dv.setUint32(12, pid, true)
  b.set(payload, 16)
  return b
}

/** What /proc/<pid>/fd links to, by fd number. */
export const fdLinks = (pid: number): ReadonlyMap<number, string> => {
  const links = new Map<number, string>()
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      links.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`))
    } catch {
      // closed while listing
    }
  }
  return links
}

/** A link's kind without its inode: "pipe", "anon_inode:[eventfd]", "socket", or the path. */
export const fdKind = (link: string): string => {
  const m = /^(pipe|socket):\[\d+\]$/.exec(link)
  return m?.[1] ?? link
}

/** Poll (real time) until `f` holds. */
export const eventually = (f: () => boolean, what: string, ms = 5000) =>
  Effect.gen(function* () {
    for (let t = 0; t < ms; t += 20) {
      if (f()) return
      yield* Effect.sleep("20 millis")
    }
    return yield* Effect.die(new Error(`never happened: ${what}`))
  })

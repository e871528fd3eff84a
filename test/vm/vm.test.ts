/**
 * The VM process (src/vm, bundled) and the C VM program (c/vmprog.c)
 * against the same behaviour: the child side of the start handshake, then
 * imsg with the vmm (vmd.md §6e, §7). The test plays the vmm over a real
 * socketpair; every child is reaped by ProcessNode's layer at the end of
 * each test.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Stream } from "effect"
import { rmSync } from "node:fs"
import { afterAll, beforeAll } from "vitest"
import * as libc from "../../src/native/libc.ts"
import { Errno } from "../../src/schema/errno.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import { decodeVmopResult, emptyVmopId, encodeImsgInt, encodeVmopId } from "../../src/schema/structs.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { Process } from "../../src/services/Process.ts"
import { buildDir, bundleVmProgram, compileVmprog } from "../../src/vm/build.ts"
import { GARBAGE_IMSG_TYPE } from "../../src/vm/testMode.ts"
import { ioctl } from "../../src/native/sys.ts"
import { fdLinks, frame, givenFds, handshake, launch, prefixBytes, structBytes, TestLayers, vmFiles, vmStruct, VMID, type Program } from "./harness.ts"

let dir = ""
const programs: Array<Program> = []

beforeAll(async () => {
  dir = buildDir("vm-test")
  const [bundle, vmprog] = await Promise.all([bundleVmProgram(dir), compileVmprog(dir)])
  programs.push({ name: "node", command: process.execPath, args: [bundle] }, { name: "c", command: vmprog, args: [] })
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const program = (name: string): Program => {
  const p = programs.find((x) => x.name === name)
  if (p === undefined) throw new Error(`no program ${name}`)
  return p
}

const exited = (code: number) => ({ _tag: "Exited", code })

/** SIOCOUTQ (Linux): bytes in a socket's send queue that the peer has not read yet. */
const SIOCOUTQ = 0x5411
const untilPeerRead = (fd: number) =>
  Effect.gen(function* () {
    const buf = new Uint8Array(4)
    for (let i = 0; i < 400; i++) {
      if (ioctl(fd, SIOCOUTQ, buf) === 0 && new DataView(buf.buffer).getInt32(0, true) === 0) return
      yield* Effect.sleep("50 millis")
    }
  })

const vmopId = (id: number) => Either.getOrThrow(encodeVmopId({ ...emptyVmopId(), vid_id: id }))

/** A started VM with its channel open. */
const started = (p: Program, env: Readonly<Record<string, string>> = {}) =>
  Effect.gen(function* () {
    const files = yield* vmFiles(dir)
    const vm = yield* launch(p, givenFds(files), env)
    expect(yield* handshake(vm, vmStruct(files))).toBe(VMID)
    return { ...vm, files }
  })

describe.each(["node", "c"])("VM program (%s)", (name) => {
  it.scopedLive("answers the handshake with vm_vmid and PAUSE_VM with the exact bytes vm.c sends", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program(name))
      // PAUSE_VM as the vmm forwards it: peerid 0xffffffff, the parent's pid 1, a vmop_id.
      yield* imsg.writeRaw(vm.sock, frame(T.IMSG_VMDOP_PAUSE_VM, 0xffffffff, 1, vmopId(VMID)), 5000)
      const reply = yield* imsg.readRaw(vm.sock, 16 + 28, 5000)
      // type 12, len 44, peerid and pid echoed, vmop_result {0, 0x01020304, 0, ""}
      const golden = Uint8Array.from([
        12, 0, 0, 0, 44, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0,
        0, 0, 0, 0, 4, 3, 2, 1, ...new Array<number>(20).fill(0)
      ])
      expect(Array.from(reply)).toEqual(Array.from(golden))
      // and the channel of the real layer decodes UNPAUSE's answer the same way
      const channel = yield* imsg.open(vm.sock)
      yield* channel.send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: 42, pid: 1, data: vmopId(VMID) })
      const [m] = yield* channel.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(m?.type).toBe(T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE)
      expect(m?.peerid).toBe(42)
      expect(m?.pid).toBe(1)
      expect(Either.getOrThrow(decodeVmopResult(m?.data ?? new Uint8Array()))).toMatchObject({ vmr_result: 0, vmr_id: VMID })
      yield* channel.close
      expect(yield* vm.child.exit).toEqual(exited(0)) // EOF from the vmm
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("a short struct is EIO (5)", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program(name), givenFds(files))
      yield* imsg.writeRaw(vm.sock, new Uint8Array(100), 5000)
      vm.sock.closeSync()
      expect(yield* vm.child.exit).toEqual(exited(Errno.EIO))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("a short local prefix is EIO (5)", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program(name), givenFds(files))
      yield* imsg.writeRaw(vm.sock, new Uint8Array(13352 + 39), 5000)
      vm.sock.closeSync()
      expect(yield* vm.child.exit).toEqual(exited(Errno.EIO))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("an fd the struct names but the process was not given is EBADF (9), and no id is written", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program(name), [files.kernel, files.tty.master, files.tap]) // no disk
      yield* imsg.writeRaw(vm.sock, structBytes(vmStruct(files)), 5000)
      yield* imsg.writeRaw(vm.sock, new Uint8Array(40), 5000)
      const id = yield* Effect.either(imsg.readRaw(vm.sock, 4, 5000))
      expect(Either.isLeft(id) && id.left.reason).toBe("Eof")
      expect(yield* vm.child.exit).toEqual(exited(Errno.EBADF))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("nothing to boot (no kernel, disk or cdrom) is EINVAL (22)", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program(name), givenFds(files))
      const s = vmStruct(files)
      const bare = { ...s, vm_kernel: -1, vm_params: { ...s.vm_params, vmc_ndisks: 0n, vmc_cdrom: "" } }
      yield* imsg.writeRaw(vm.sock, structBytes(bare), 5000)
      yield* imsg.writeRaw(vm.sock, new Uint8Array(40), 5000)
      expect(yield* vm.child.exit).toEqual(exited(Errno.EINVAL))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("VM_REBOOT ends the guest with EAGAIN (35); CTL_VERBOSE and PRIV_GET_ADDR_RESPONSE are accepted first", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program(name))
      const channel = yield* imsg.open(vm.sock)
      yield* channel.send({ type: T.IMSG_CTL_VERBOSE, peerid: 0xffffffff, pid: 1, data: Either.getOrThrow(encodeImsgInt(2)) })
      yield* channel.send({ type: T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE, peerid: 0xffffffff, pid: 1, data: new Uint8Array(16) })
      yield* channel.send({ type: T.IMSG_VMDOP_VM_REBOOT, peerid: 0, pid: 0 })
      expect(yield* vm.child.exit).toEqual(exited(Errno.EAGAIN))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("VM_SHUTDOWN exits 0", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program(name))
      yield* imsg.writeRaw(vm.sock, frame(T.IMSG_VMDOP_VM_SHUTDOWN, 0, 0), 5000)
      expect(yield* vm.child.exit).toEqual(exited(0))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("SIGTERM exits 0; SIGHUP (the reset button) exits 35", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const a = yield* started(program(name))
      yield* proc.kill(a.child.pid, "SIGTERM")
      expect(yield* a.child.exit).toEqual(exited(0))
      const b = yield* started(program(name))
      yield* proc.kill(b.child.pid, "SIGHUP")
      expect(yield* b.child.exit).toEqual(exited(Errno.EAGAIN))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("an invalid message type is fatal: exit 1", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program(name))
      yield* imsg.writeRaw(vm.sock, frame(T.IMSG_VMDOP_START_VM_REQUEST, 0, 0), 5000)
      expect(yield* vm.child.exit).toEqual(exited(1))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("a PAUSE_VM with a payload of the wrong size is fatal: exit 1", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program(name))
      yield* imsg.writeRaw(vm.sock, frame(T.IMSG_VMDOP_PAUSE_VM, 0, 0, new Uint8Array(75)), 5000)
      expect(yield* vm.child.exit).toEqual(exited(1))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("test modes: die-in-handshake is EIO with no answer; answer-zero writes 0 and exits EINVAL", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const dies = yield* launch(program(name), givenFds(files), { VMM_TEST_VM_MODE: "die-in-handshake" })
      yield* imsg.writeRaw(dies.sock, structBytes(vmStruct(files)), 5000)
      expect(yield* dies.child.exit).toEqual(exited(Errno.EIO))
      const zero = yield* launch(program(name), givenFds(files), { VMM_TEST_VM_MODE: "answer-zero" })
      expect(yield* handshake(zero, vmStruct(files))).toBe(0)
      expect(yield* zero.child.exit).toEqual(exited(Errno.EINVAL))
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("test modes: hang never answers (SIGTERM still ends it); garbage sends the vmm an invalid imsg", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const proc = yield* Process
      const files = yield* vmFiles(dir)
      const hangs = yield* launch(program(name), givenFds(files), { VMM_TEST_VM_MODE: "hang" })
      const answer = yield* Effect.either(handshake(hangs, vmStruct(files)).pipe(Effect.timeout("700 millis")))
      expect(Either.isLeft(answer)).toBe(true)
      // A Node VM installs its signal handlers when its JS starts; under load
      // that can be after 700 ms. Wait until it has read the whole struct
      // (nothing left in our socket's send queue) so SIGTERM finds them.
      yield* untilPeerRead(hangs.sock.num)
      yield* proc.kill(hangs.child.pid, "SIGTERM")
      expect(yield* hangs.child.exit).toEqual(exited(0))
      const garbage = yield* launch(program(name), givenFds(files), { VMM_TEST_VM_MODE: "garbage" })
      expect(yield* handshake(garbage, vmStruct(files))).toBe(VMID)
      const channel = yield* imsg.open(garbage.sock)
      const [m] = yield* channel.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(m?.type).toBe(GARBAGE_IMSG_TYPE)
    }).pipe(Effect.provide(TestLayers))
  )
})

/**
 * vm.c's checks between the local prefix and the id (vmd.md §7), in the
 * Node VM only (c/vmprog.c, a test double, keeps its simpler rule). What the
 * vmm sees: an EOF where vm_main exits before start_vm (the vmm answers
 * ENOMEM), a 0 id where vmm_create_vm refuses the VM (EINVAL).
 */
describe("VM program (node): vm.c's checks after the local prefix", () => {
  it.scopedLive("a struct naming one of the process's own fds (Node's epoll: open, but not passed) is EBADF (9), and no id is written", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program("node"), [files.kernel, files.disk, files.tap]) // no tty
      // one of Node's own fds in the VM process (libuv's epoll, opened before any JS runs)
      const own = yield* Effect.promise(async () => {
        for (let i = 0; i < 200; i++) {
          const epoll = [...fdLinks(vm.child.pid)].find(([, link]) => link === "anon_inode:[eventpoll]")
          if (epoll !== undefined) return epoll[0]
          await new Promise((r) => setTimeout(r, 25))
        }
        throw new Error("no epoll fd in the VM process")
      })
      yield* imsg.writeRaw(vm.sock, structBytes({ ...vmStruct(files), vm_tty: own }), 5000)
      yield* imsg.writeRaw(vm.sock, new Uint8Array(40), 5000)
      const id = yield* Effect.either(imsg.readRaw(vm.sock, 4, 5000))
      expect(Either.isLeft(id) && id.left.reason).toBe("Eof")
      expect(yield* vm.child.exit).toEqual(exited(Errno.EBADF))
    }).pipe(Effect.provide(TestLayers))
  )

  type Vm = ReturnType<typeof vmStruct>
  /** Write struct and prefix as the vmm does; the 4 bytes back (or the read's failure) and the exit. */
  const answer = (change: (vm: Vm) => Vm) =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const files = yield* vmFiles(dir)
      const vm = yield* launch(program("node"), givenFds(files))
      yield* imsg.writeRaw(vm.sock, structBytes(change(vmStruct(files))), 5000)
      yield* imsg.writeRaw(vm.sock, prefixBytes(), 5000)
      const id = yield* Effect.either(imsg.readRaw(vm.sock, 4, 5000))
      vm.sock.closeSync() // a VM that wrongly started ends on this EOF (exit 0)
      const exit = yield* vm.child.exit
      return {
        id: Either.isLeft(id) ? id.left.reason : new DataView(id.right.buffer, id.right.byteOffset, 4).getUint32(0, true),
        exit
      }
    })
  const params = (p: Partial<Vm["vm_params"]>) => (vm: Vm): Vm => ({ ...vm, vm_params: { ...vm.vm_params, ...p } })

  it.scopedLive("vm_kernel -1 is EINVAL with no answer, even with a disk (\"failed to receive boot fd\")", () =>
    Effect.gen(function* () {
      const r = yield* answer((vm) => ({ ...vm, vm_kernel: -1 }))
      expect(r).toEqual({ id: "Eof", exit: exited(Errno.EINVAL) })
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("vmc_sev without a psp fd is EINVAL with no answer", () =>
    Effect.gen(function* () {
      expect(yield* answer(params({ vmc_sev: 1 }))).toEqual({ id: "Eof", exit: exited(Errno.EINVAL) })
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("what vmm_create_vm refuses (ndisks > 4, nnics > 4, ncpus > 64) reads the prefix, answers 0 and exits EINVAL", () =>
    Effect.gen(function* () {
      for (const p of [{ vmc_ndisks: 5n }, { vmc_nnics: 5n }, { vmc_ncpus: 65n }]) {
        expect(yield* answer(params(p))).toEqual({ id: 0, exit: exited(Errno.EINVAL) })
      }
    }).pipe(Effect.provide(TestLayers))
  )

  it.scopedLive("counts vm.c never reads do not matter: vmc_nmemranges 17, vm_sev_nmemsegments 129, ncpus 64 start", () =>
    Effect.gen(function* () {
      for (const change of [
        params({ vmc_nmemranges: 17n }),
        params({ vmc_ncpus: 64n }),
        (vm: Vm): Vm => ({ ...vm, vm_sev_nmemsegments: 129n })
      ]) {
        const files = yield* vmFiles(dir)
        const vm = yield* launch(program("node"), givenFds(files))
        expect(yield* handshake(vm, change(vmStruct(files)))).toBe(VMID)
        vm.sock.closeSync()
        expect(yield* vm.child.exit).toEqual(exited(0))
      }
    }).pipe(Effect.provide(TestLayers))
  )
})

describe("fd passing to the VM", () => {
  it.scopedLive("an fd that arrives with a message is closed, not kept", () =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const vm = yield* started(program("node"))
      const channel = yield* imsg.open(vm.sock)
      const extra = libc.nativeFd(libc.open("/dev/zero", libc.O_RDONLY), "extra")
      yield* channel.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 0, pid: 1, data: vmopId(VMID), fd: extra })
      const [m] = yield* channel.messages.pipe(Stream.take(1), Stream.runCollect)
      expect(m?.type).toBe(T.IMSG_VMDOP_PAUSE_VM_RESPONSE)
      expect([...fdLinks(vm.child.pid).values()]).not.toContain("/dev/zero")
    }).pipe(Effect.provide(TestLayers))
  )
})

import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { closeSync, mkdtempSync, openSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import koffi from "koffi"
import * as IoctlNative from "../../src/layers/IoctlNative.ts"
import { openPty } from "../../src/parent/pty.ts"
import { Errno } from "../../src/schema/errno.ts"
import { VMM_IOC_INFO } from "../../src/schema/ioctl.ts"
import { Ioctl } from "../../src/services/Ioctl.ts"

// Linux request numbers: these tests exercise the binding on the build host.
const FIONREAD = 0x541b
const TIOCGWINSZ = 0x5413
/** _IOR('T', 0x30, unsigned int): the pty number of a /dev/ptmx master. Above 2^31, like VMM_IOC_*. */
const TIOCGPTN = 0x80045430

const libc = koffi.load(null)
const pipe2 = libc.func("int pipe2(_Out_ int *fds, int flags)")
const write = libc.func("long write(int fd, const void *buf, size_t n)")
const O_CLOEXEC = 0o2000000

const withPipe = <A, E, R>(f: (r: number, w: number) => Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const fds = [-1, -1]
      expect(pipe2(fds, O_CLOEXEC)).toBe(0)
      return [fds[0] ?? -1, fds[1] ?? -1] as const
    }),
    ([r, w]) => f(r, w),
    ([r, w]) =>
      Effect.sync(() => {
        closeSync(r)
        closeSync(w)
      })
  )

describe.runIf(process.platform === "linux")("IoctlNative (Linux host)", () => {
  it.effect("FIONREAD on a pipe reports the pending bytes, written into the buffer in place", () =>
    withPipe((r, w) =>
      Effect.gen(function* () {
        const { ioctl } = yield* Ioctl
        expect(write(w, Buffer.from("hello vmm"), 9)).toBe(9)
        const count = new Uint8Array(4)
        yield* ioctl(r, FIONREAD, count)
        expect(new DataView(count.buffer).getInt32(0, true)).toBe(9)
      })
    ).pipe(Effect.provide(IoctlNative.layer))
  )

  it.effect("errors carry the OpenBSD errno: ENOTTY on a regular file, EBADF on a closed fd", () =>
    Effect.gen(function* () {
      const { ioctl } = yield* Ioctl
      const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-ioctl-"))
      const fd = openSync(join(dir, "f"), "w+")
      const notty = yield* Effect.flip(ioctl(fd, TIOCGWINSZ, new Uint8Array(8)))
      closeSync(fd)
      rmSync(dir, { recursive: true })
      expect(notty).toMatchObject({ _tag: "IoctlError", request: TIOCGWINSZ, errno: Errno.ENOTTY })
      const badf = yield* Effect.flip(ioctl(fd, FIONREAD, new Uint8Array(4)))
      expect(badf.errno).toBe(Errno.EBADF)
    }).pipe(Effect.provide(IoctlNative.layer))
  )

  it.effect("a request number above 2^31 reaches the kernel intact: TIOCGPTN names the pty's slave", () =>
    Effect.acquireUseRelease(
      Effect.sync(() => Either.getOrThrow(openPty("ioctl test master"))),
      (pty) =>
        Effect.gen(function* () {
          const { ioctl } = yield* Ioctl
          expect(TIOCGPTN).toBeGreaterThan(0x7fffffff)
          // Filled with a sentinel so that an ioctl that writes nothing cannot look like pty 0.
          const out = new Uint8Array(4).fill(0xff)
          yield* ioctl(pty.master.num, TIOCGPTN, out)
          const n = new DataView(out.buffer).getUint32(0, true)
          // ptsname_r (libc, the project's pty helper) named the slave independently of this binding.
          expect(pty.name).toBe(`/dev/pts/${n}`)
          // And the slave device node's minor number is that pty number (Linux dev_t layout).
          const rdev = statSync(pty.name).rdev
          expect((rdev & 0xff) | ((rdev >>> 12) & ~0xff)).toBe(n)
        }),
      (pty) => pty.master.close
    ).pipe(Effect.provide(IoctlNative.layer))
  )

  it.effect("an IoctlError reports a request above 2^31 (VMM_IOC_INFO) unsigned, in its field and message", () =>
    Effect.gen(function* () {
      const { ioctl } = yield* Ioctl
      const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-ioctl-"))
      const fd = openSync(join(dir, "f"), "w+")
      const err = yield* Effect.flip(ioctl(fd, VMM_IOC_INFO, new Uint8Array(24)))
      closeSync(fd)
      rmSync(dir, { recursive: true })
      expect(err).toMatchObject({ request: 0xc0185603, errno: Errno.ENOTTY })
      expect(err.message).toContain("0xC0185603")
    }).pipe(Effect.provide(IoctlNative.layer))
  )

  it.effect("addressOf is the address of the buffer's first byte", () =>
    Effect.gen(function* () {
      const { addressOf } = yield* Ioctl
      const buf = Buffer.alloc(160)
      expect(addressOf(buf)).toBe(koffi.address(buf))
      expect(addressOf(buf.subarray(16)) - addressOf(buf)).toBe(16n)
      expect(addressOf(new Uint8Array(0))).toBe(0n)
    }).pipe(Effect.provide(IoctlNative.layer))
  )
})

/**
 * ioctl(2) through koffi (src/native/sys.ts): `int ioctl(int, unsigned
 * long, ...)` with the buffer passed as a typed variadic `void *`, so the
 * kernel reads and writes the caller's bytes in place. The host errno is
 * translated to OpenBSD numbering here, at the boundary.
 */
import { Effect, Layer } from "effect"
import * as sys from "../native/sys.ts"
import { errnoName, fromHostErrno } from "../schema/errno.ts"
import { Ioctl, IoctlError } from "../services/Ioctl.ts"
import type { IoctlService } from "../services/Ioctl.ts"

const hex = (n: number): string => `0x${(n >>> 0).toString(16).toUpperCase()}`

export const make: IoctlService = {
  ioctl: (fd, request, buf) =>
    Effect.suspend(() => {
      const host = sys.ioctl(fd, request, buf)
      if (host === 0) return Effect.void
      const errno = fromHostErrno(host)
      return Effect.fail(
        new IoctlError({ request, errno, message: `ioctl(${fd}, ${hex(request)}): ${errnoName(errno)}` })
      )
    }),
  addressOf: sys.addressOf
}

export const layer: Layer.Layer<Ioctl> = Layer.succeed(Ioctl, make)

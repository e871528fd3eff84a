/**
 * Raw reads and writes on a socket before it carries imsg framing (the VM
 * start handshake, vmd.md §7: vmm writes struct vmd_vm and struct
 * local_prefix, then reads a uint32 VM id). atomicio semantics: all bytes or
 * an error; EOF before n bytes is "Eof"; the deadline covers the whole call.
 */
import { Duration, Effect } from "effect"
import { Errno, errnoName } from "../schema/errno.ts"
import { ChannelError } from "../services/ImsgChannel.ts"

/** One end of a non-blocking socket, for raw I/O. Errors are OpenBSD errno, negated. */
export interface RawSocket {
  readonly fd: number
  /** read(2): bytes, 0 at EOF, or -errno. */
  readonly read: (buf: Uint8Array) => number
  /** write(2): bytes or -errno. */
  readonly write: (buf: Uint8Array) => number
  /** Until the socket is readable (or writable). */
  readonly wait: (writable: boolean) => Effect.Effect<void, ChannelError>
}

const timeout = (what: string, fd: number, ms: number) => () =>
  new ChannelError({ reason: "Timeout", message: `${what} on fd ${fd}: no progress in ${ms} ms`, errno: Errno.ETIMEDOUT })

const ioError = (op: string, fd: number, errno: number): ChannelError =>
  new ChannelError({ reason: "Io", message: `${op} on fd ${fd}: ${errnoName(errno)}`, errno })

/** Write every byte (atomicio(vwrite)). */
export const writeAll = (sock: RawSocket, bytes: Uint8Array, timeoutMs: number): Effect.Effect<void, ChannelError> =>
  Effect.gen(function* () {
    let off = 0
    while (off < bytes.length) {
      const n = sock.write(bytes.subarray(off))
      if (n > 0) off += n
      else if (n === -Errno.EAGAIN || n === -Errno.ENOBUFS) yield* sock.wait(true)
      else return yield* Effect.fail(ioError("write", sock.fd, n === 0 ? Errno.EIO : -n))
    }
  }).pipe(
    Effect.timeoutFail({ duration: Duration.millis(timeoutMs), onTimeout: timeout("raw write", sock.fd, timeoutMs) })
  )

/** Read exactly n bytes (atomicio(read)); EOF first is reason "Eof". */
export const readExactly = (sock: RawSocket, n: number, timeoutMs: number): Effect.Effect<Uint8Array, ChannelError> =>
  Effect.gen(function* () {
    const buf = new Uint8Array(n)
    let off = 0
    while (off < n) {
      const r = sock.read(buf.subarray(off))
      if (r > 0) off += r
      else if (r === 0) {
        return yield* Effect.fail(
          new ChannelError({ reason: "Eof", message: `raw read on fd ${sock.fd}: EOF after ${off} of ${n} bytes` })
        )
      } else if (r === -Errno.EAGAIN) yield* sock.wait(false)
      else return yield* Effect.fail(ioError("read", sock.fd, -r))
    }
    return buf
  }).pipe(Effect.timeoutFail({ duration: Duration.millis(timeoutMs), onTimeout: timeout("raw read", sock.fd, timeoutMs) }))

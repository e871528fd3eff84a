/**
 * Raw reads and writes on a socket before it carries imsg framing (the VM
 * start handshake, vmd.md §7: vmm writes struct vmd_vm and struct
 * local_prefix, then reads a uint32 VM id). atomicio semantics: all bytes or
 * an error; EOF before n bytes is "Eof"; the deadline covers the whole call.
 *
 * Fast path first: the syscalls are tried at once, synchronously, and a call
 * that completes without EAGAIN costs no fiber, timer or poll handle. Only
 * when the socket would block is a wait set up, with the deadline: the
 * socket's own `waitFor` (one timer beside the readiness wait) when it has
 * one, else `wait` under Effect.timeoutFail (the Clock, so TestClock works).
 *
 * A read may first block this thread for a bounded time (`blockMs`, sockets
 * with `block`): vmm.c's vmm_start_vm reads the VM's id with a blocking
 * atomicio, the whole process waiting for the child; we wait that way for
 * at most blockMs (the child answers within about a millisecond of its
 * exec), then on the loop for the rest of the deadline. Waking from poll(2)
 * in place is ~0.15 ms sooner here than a poll handle's callback resuming a
 * fiber after the process has slept (bench-vmm's start latency).
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
  /**
   * Optional, cheaper than `wait` under a timeout fiber: until the socket is
   * readable (or writable), true; or false once `ms` have passed.
   */
  readonly waitFor?: (writable: boolean, ms: number) => Effect.Effect<boolean, ChannelError>
  /**
   * Optional: block this thread until the socket is readable (or writable)
   * or `ms` have passed; true when ready. False on a timeout or an error
   * (the caller then waits on the loop, which reports any error).
   */
  readonly block?: (writable: boolean, ms: number) => boolean
}

const timeoutError = (what: string, fd: number, ms: number): ChannelError =>
  new ChannelError({ reason: "Timeout", message: `${what} on fd ${fd}: no progress in ${ms} ms`, errno: Errno.ETIMEDOUT })

const ioError = (op: string, fd: number, errno: number): ChannelError =>
  new ChannelError({ reason: "Io", message: `${op} on fd ${fd}: ${errnoName(errno)}`, errno })

const eofError = (fd: number, off: number, n: number): ChannelError =>
  new ChannelError({ reason: "Eof", message: `raw read on fd ${fd}: EOF after ${off} of ${n} bytes` })

/** Progress of one raw call: done, would block, or failed. */
type Step = "done" | "again" | ChannelError

/** Write from bytes[state.off] on until done or EAGAIN. */
const writeSome = (sock: RawSocket, bytes: Uint8Array, state: { off: number }): Step => {
  while (state.off < bytes.length) {
    const n = sock.write(state.off === 0 ? bytes : bytes.subarray(state.off))
    if (n > 0) state.off += n
    else if (n === -Errno.EAGAIN || n === -Errno.ENOBUFS) return "again"
    else return ioError("write", sock.fd, n === 0 ? Errno.EIO : -n)
  }
  return "done"
}

/** Read into buf[state.off] on until full or EAGAIN; EOF first is "Eof". */
const readSome = (sock: RawSocket, buf: Uint8Array, state: { off: number }): Step => {
  while (state.off < buf.length) {
    const r = sock.read(state.off === 0 ? buf : buf.subarray(state.off))
    if (r > 0) state.off += r
    else if (r === 0) return eofError(sock.fd, state.off, buf.length)
    else if (r === -Errno.EAGAIN) return "again"
    else return ioError("read", sock.fd, -r)
  }
  return "done"
}

/** The slow path: wait for readiness and step again until done, within timeoutMs of now. */
const untilDone = <A>(
  sock: RawSocket,
  writable: boolean,
  step: () => Step,
  result: A,
  what: string,
  timeoutMs: number
): Effect.Effect<A, ChannelError> => {
  const waitFor = sock.waitFor
  if (waitFor !== undefined) {
    const deadline = performance.now() + timeoutMs
    const loop: Effect.Effect<A, ChannelError> = Effect.flatMap(
      Effect.suspend(() => waitFor(writable, Math.max(0, deadline - performance.now()))),
      (ready) => {
        if (!ready) return Effect.fail(timeoutError(what, sock.fd, timeoutMs))
        const s = step()
        return s === "done" ? Effect.succeed(result) : s === "again" ? loop : Effect.fail(s)
      }
    )
    return loop
  }
  const loop: Effect.Effect<A, ChannelError> = Effect.flatMap(sock.wait(writable), () => {
    const s = step()
    return s === "done" ? Effect.succeed(result) : s === "again" ? loop : Effect.fail(s)
  })
  return loop.pipe(
    Effect.timeoutFail({ duration: Duration.millis(timeoutMs), onTimeout: () => timeoutError(what, sock.fd, timeoutMs) })
  )
}

/** Write every byte (atomicio(vwrite)). */
export const writeAll = (sock: RawSocket, bytes: Uint8Array, timeoutMs: number): Effect.Effect<void, ChannelError> =>
  Effect.suspend(() => {
    const state = { off: 0 }
    const s = writeSome(sock, bytes, state)
    if (s === "done") return Effect.void
    if (s !== "again") return Effect.fail(s)
    return untilDone(sock, true, () => writeSome(sock, bytes, state), undefined, "raw write", timeoutMs)
  })

/**
 * Read exactly n bytes (atomicio(read)); EOF first is reason "Eof". With
 * blockMs > 0 and a socket that can `block`, a read that would block first
 * waits up to blockMs on this thread (see the header), within timeoutMs.
 */
export const readExactly = (
  sock: RawSocket,
  n: number,
  timeoutMs: number,
  blockMs = 0
): Effect.Effect<Uint8Array, ChannelError> =>
  Effect.suspend(() => {
    const buf = new Uint8Array(n)
    const state = { off: 0 }
    let s = readSome(sock, buf, state)
    const start = performance.now()
    const block = sock.block
    if (s === "again" && blockMs > 0 && block !== undefined) {
      const until = start + Math.min(blockMs, timeoutMs)
      while (s === "again" && performance.now() < until && block(false, until - performance.now()))
        s = readSome(sock, buf, state)
    }
    if (s === "done") return Effect.succeed(buf)
    if (s !== "again") return Effect.fail(s)
    const left = Math.max(0, timeoutMs - (performance.now() - start))
    return untilDone(sock, false, () => readSome(sock, buf, state), buf, "raw read", left)
  })

/**
 * ImsgChannel on real sockets: koffi sendmsg/recvmsg (SCM_RIGHTS,
 * MSG_CMSG_CLOEXEC, MSG_NOSIGNAL) and libuv poll handles on Node's loop.
 * Framing and queueing live in src/imsg/channel.ts; this file only moves
 * bytes and owns the native resources: the fd, its poll handle and two
 * native msghdrs, all released once when the channel closes or its scope ends.
 */
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { makeChannel } from "../imsg/channel.ts"
import { MAX_PIECES } from "../imsg/writer.ts"
import type { ChannelOptions, DriverEvents, SocketDriver } from "../imsg/channel.ts"
import type { RawSocket } from "../imsg/raw.ts"
import { readExactly, writeAll } from "../imsg/raw.ts"
import * as libc from "../native/libc.ts"
import { UV_DISCONNECT, UV_READABLE, UV_WRITABLE, UvPoll } from "../native/uvpoll.ts"
import { Errno, errnoName, fromHostErrno } from "../schema/errno.ts"
import type { Fd } from "../services/Fd.ts"
import type { Channel, ImsgChannelService } from "../services/ImsgChannel.ts"
import { ChannelError, ImsgChannel } from "../services/ImsgChannel.ts"

/** Host errno (negated, as libc.ts returns it) to OpenBSD errno (negated). */
const bsd = (r: number): number => (r >= 0 ? r : -fromHostErrno(-r))

const ioError = (op: string, fd: Fd, errno: number): ChannelError =>
  new ChannelError({ reason: "Io", message: `${op} on ${fd}: ${errnoName(errno)}`, errno })

const closedError = (fd: Fd): ChannelError =>
  new ChannelError({ reason: "Closed", message: `${fd} is closed`, errno: Errno.EBADF })


/** Turn a socket fd into a channel (imsgbuf_init + imsgbuf_allow_fdpass); `options.format` for legacy peers. */
/** A channel on fd, or why not; the caller closes it. */
const channelOn = (fd: Fd, options: ChannelOptions): Channel | ChannelError => {
  if (!fd.isOpen) return closedError(fd)
  // fd 3 is inherited and may lack O_NONBLOCK; every channel fd is close-on-exec.
  const r = libc.setNonblockCloexec(fd.num)
  if (r < 0) return ioError("fcntl", fd, fromHostErrno(-r))
  let events: DriverEvents | null = null
  const poll = UvPoll.open(fd.num, (status, ev) => {
    if (events === null) return
    if (status < 0) return events.error(fromHostErrno(-status))
    if ((ev & (UV_READABLE | UV_DISCONNECT)) !== 0) events.readable()
    if ((ev & UV_WRITABLE) !== 0) events.writable()
  })
  if (typeof poll === "number") return ioError("uv_poll_init", fd, fromHostErrno(-poll))
  return makeChannel((e) => {
    events = e
    return nativeDriver(fd, poll, e)
  }, options)
}

const openOwned = (fd: Fd, options: ChannelOptions = {}): Effect.Effect<Channel, ChannelError> =>
  Effect.suspend(() => {
    const c = channelOn(fd, options)
    return c instanceof ChannelError ? Effect.fail(c) : Effect.succeed(c)
  })

const openChannel = (fd: Fd, options: ChannelOptions = {}): Effect.Effect<Channel, ChannelError, Scope.Scope> =>
  Effect.acquireRelease(openOwned(fd, options), (channel) => channel.close)

/**
 * One msghdr pair for every channel: sendmsg and recvmsg are synchronous
 * calls on the one JS thread, and received fds are copied out at once, so
 * channels need not allocate (and free) native memory of their own. The
 * sending one has an iovec per piece of a batch (writer.ts).
 */
let scm: { readonly r: libc.ScmBuffer; readonly w: libc.ScmBuffer } | null = null
const sharedScm = () => (scm ??= { r: new libc.ScmBuffer(), w: new libc.ScmBuffer(MAX_PIECES) })

const nativeDriver = (fd: Fd, poll: UvPoll, events: DriverEvents): SocketDriver => {
  const { r: rbuf, w: wbuf } = sharedScm()
  const sock = fd.num
  const label = `imsg fd via ${fd.label || `fd ${sock}`}`
  return {
    fd: sock,
    recv: (into, out) => {
      const n = rbuf.recv(sock, into)
      for (const f of rbuf.fds) out.push(libc.nativeFd(f, label))
      return bsd(n)
    },
    send: (batch) => {
      const pass = batch.fd
      const n = wbuf.sendPieces(sock, batch.first, batch.count, batch.bufs, batch.offs, batch.lens, pass === null ? -1 : pass.num)
      // msgbuf_write: the fd went with the first sendmsg that sent anything
      if (n > 0 && pass !== null) pass.closeSync()
      return bsd(n)
    },
    watch: (readable, writable) => {
      const r = poll.start((readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0))
      if (r < 0) events.error(fromHostErrno(-r))
    },
    close: (done) => {
      // uv_close first: it stops the handle (its epoll_ctl DEL) while the fd is
      // still open; a DEL after close(2) fails with EBADF. A closing handle never
      // calls back; uv_close's callback only frees its memory.
      poll.close()
      fd.closeSync()
      done()
    }
  }
}

/**
 * Until `fd` is readable (or writable): true; false after `ms` (no timer when
 * ms is Infinity). One poll handle per wait, closed as soon as the wait ends
 * without waiting for uv_close's callback (which only frees its memory): the
 * fiber resumes in the same loop iteration as the readiness event.
 */
const pollWait = (fd: Fd, writable: boolean, ms: number): Effect.Effect<boolean, ChannelError> =>
  Effect.async<boolean, ChannelError>((resume) => {
    let timer: ReturnType<typeof setTimeout> | undefined
    let done = false
    const p = UvPoll.open(fd.num, (status) => {
      if (done) return
      finish()
      resume(status < 0 ? Effect.fail(ioError("poll", fd, fromHostErrno(-status))) : Effect.succeed(true))
    })
    if (typeof p === "number") return resume(Effect.fail(ioError("uv_poll_init", fd, fromHostErrno(-p))))
    const finish = (): void => {
      done = true
      if (timer !== undefined) clearTimeout(timer)
      p.close()
    }
    const r = p.start(writable ? UV_WRITABLE : UV_READABLE)
    if (r < 0) {
      finish()
      return resume(Effect.fail(ioError("uv_poll_start", fd, fromHostErrno(-r))))
    }
    if (ms !== Infinity) {
      timer = setTimeout(() => {
        if (done) return
        finish()
        resume(Effect.succeed(false))
      }, ms)
    }
    return Effect.sync(() => {
      if (!done) finish()
    })
  })

/** Raw I/O on a socket not yet framed; readiness through a poll handle held only while waiting. */
const rawSocket = (fd: Fd): RawSocket => ({
  fd: fd.num,
  read: (buf) => bsd(libc.read(fd.num, buf)),
  write: (buf) => bsd(libc.write(fd.num, buf)),
  wait: (writable) => Effect.asVoid(pollWait(fd, writable, Infinity)),
  waitFor: (writable, ms) => pollWait(fd, writable, ms),
  block: (writable, ms) => libc.pollOne(fd.num, writable, ms) > 0
})

const socketpair = (label: string): Effect.Effect<readonly [Fd, Fd], ChannelError> =>
  Effect.suspend(() => {
    const r = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC)
    if (typeof r === "number") {
      const errno = fromHostErrno(-r)
      return Effect.fail(new ChannelError({ reason: "Io", message: `socketpair (${label}): ${errnoName(errno)}`, errno }))
    }
    return Effect.succeed([libc.nativeFd(r[0], `${label}[0]`), libc.nativeFd(r[1], `${label}[1]`)] as const)
  })

const service: ImsgChannelService = {
  open: (fd) => openChannel(fd),
  openOwned: (fd, options) => openOwned(fd, options),
  socketpair,
  writeRaw: (fd, bytes, timeoutMs) =>
    Effect.suspend(() => (fd.isOpen ? writeAll(rawSocket(fd), bytes, timeoutMs) : Effect.fail(closedError(fd)))),
  readRaw: (fd, n, timeoutMs, blockMs) =>
    Effect.suspend(() => (fd.isOpen ? readExactly(rawSocket(fd), n, timeoutMs, blockMs) : Effect.fail(closedError(fd))))
}

export class ImsgChannelNative {
  /** The ImsgChannel service on real sockets. */
  static readonly layer: Layer.Layer<ImsgChannel> = Layer.succeed(ImsgChannel, service)
  /** `open` with options, e.g. `{ format: "legacy" }` to pass fds to an old libutil peer (imsg.md, sections 1.3 and 5.4). */
  static readonly open = openChannel
  static readonly service = service
}

export const layer = ImsgChannelNative.layer

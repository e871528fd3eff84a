/** Test helpers on real descriptors: raw sendmsg/recvmsg at the far end of a socket, fd counts, unix listeners. */
import { readdirSync } from "node:fs"
import { Effect } from "effect"
import koffi from "koffi"
import * as libc from "../../src/native/libc.ts"

const EAGAIN = 11

/** Open fds of this process. */
export const fdCount = (): number => readdirSync("/proc/self/fd").length

/** One recvmsg of at most `cap` bytes, polling until data (or EOF) arrives. */
export const recvRaw = (fd: number, cap: number, timeoutMs = 5000) =>
  Effect.gen(function* () {
    const buf = new libc.ScmBuffer()
    const into = new Uint8Array(cap)
    try {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const n = buf.recv(fd, into)
        if (n >= 0) return { bytes: into.slice(0, n), fds: [...buf.fds] }
        if (n !== -EAGAIN) return yield* Effect.die(new Error(`recvmsg: errno ${-n}`))
        if (Date.now() > deadline) return yield* Effect.die(new Error("recvRaw: timeout"))
        yield* Effect.sleep("1 millis")
      }
    } finally {
      buf.free()
    }
  })

/** One sendmsg of `bytes` with `fd` attached (-1: none). */
export const sendRaw = (sock: number, bytes: Uint8Array, fd = -1): number => {
  const buf = new libc.ScmBuffer()
  const n = buf.send(sock, bytes, fd)
  buf.free()
  return n
}

const c = {
  socket: libc.self.func("int socket(int domain, int type, int protocol)"),
  bind: libc.self.func("int bind(int fd, const void *addr, uint32_t len)"),
  listen: libc.self.func("int listen(int fd, int backlog)"),
  accept4: libc.self.func("int accept4(int fd, void *addr, void *len, int flags)")
}

const sockaddrUn = (path: string): Uint8Array => {
  const b = new Uint8Array(110)
  b[0] = 1 // AF_UNIX, sa_family_t little-endian
  b.set(new TextEncoder().encode(path), 2)
  return b
}

/** A listening AF_UNIX stream socket bound to `path` (non-blocking, close-on-exec). */
export const unixListen = (path: string): number => {
  const fd = c.socket(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC, 0) as number
  if (fd < 0) throw new Error(`socket: errno ${koffi.errno()}`)
  if ((c.bind(fd, sockaddrUn(path), 110) as number) < 0) throw new Error(`bind ${path}: errno ${koffi.errno()}`)
  if ((c.listen(fd, 4) as number) < 0) throw new Error(`listen: errno ${koffi.errno()}`)
  return fd
}

/** Accept one connection, polling until one arrives. */
export const unixAccept = (fd: number, timeoutMs = 5000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const s = c.accept4(fd, null, null, libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC) as number
      if (s >= 0) return s
      if (koffi.errno() !== EAGAIN) return yield* Effect.die(new Error(`accept4: errno ${koffi.errno()}`))
      if (Date.now() > deadline) return yield* Effect.die(new Error("accept: timeout"))
      yield* Effect.sleep("2 millis")
    }
  })

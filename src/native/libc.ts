/**
 * libc through koffi: small typed wrappers that never throw.
 *
 * Every call returns a non-negative result or the **host** errno negated
 * (-11 for Linux EAGAIN). Translate with fromHostErrno (schema/errno.ts) at
 * the service boundary, not here. New fds are close-on-exec from birth.
 *
 * Constants and struct offsets are Linux LP64 (x86_64, aarch64).
 */
import koffi from "koffi"
import { errnoName, fromHostErrno } from "../schema/errno.ts"
import type { FdBackend } from "../services/Fd.ts"
import { Fd } from "../services/Fd.ts"

/** The process itself: libc and, inside Node, libuv (see uvpoll.ts). */
export const self = koffi.load(null)

/**
 * Constants that differ between the hosts we run on. Linux (x86_64,
 * aarch64) is what the tests run on; OpenBSD amd64's values are from its
 * headers (sys/socket.h, sys/fcntl.h) and have not been run yet.
 */
const IS_OPENBSD = process.platform === "openbsd"
const PLATFORM = IS_OPENBSD
  ? {
      SOCK_NONBLOCK: 0x4000,
      SOCK_CLOEXEC: 0x8000,
      O_CREAT: 0x200,
      O_NONBLOCK: 0x4,
      O_CLOEXEC: 0x10000,
      F_DUPFD_CLOEXEC: 10,
      MSG_CTRUNC: 0x20,
      MSG_NOSIGNAL: 0x400,
      MSG_CMSG_CLOEXEC: 0x800,
      SOL_SOCKET: 0xffff,
      SO_TYPE: 0x1008
    }
  : {
      SOCK_NONBLOCK: 0o4000,
      SOCK_CLOEXEC: 0o2000000,
      O_CREAT: 0o100,
      O_NONBLOCK: 0o4000,
      O_CLOEXEC: 0o2000000,
      F_DUPFD_CLOEXEC: 1030,
      MSG_CTRUNC: 0x8,
      MSG_NOSIGNAL: 0x4000,
      MSG_CMSG_CLOEXEC: 0x40000000,
      SOL_SOCKET: 1,
      SO_TYPE: 3
    }

export const AF_UNIX = 1
export const SOCK_STREAM = 1
export const SOCK_NONBLOCK = PLATFORM.SOCK_NONBLOCK
export const SOCK_CLOEXEC = PLATFORM.SOCK_CLOEXEC
export const O_RDONLY = 0
export const O_WRONLY = 1
export const O_RDWR = 2
export const O_CREAT = PLATFORM.O_CREAT
export const O_NONBLOCK = PLATFORM.O_NONBLOCK
export const O_CLOEXEC = PLATFORM.O_CLOEXEC
export const F_GETFD = 1
export const F_SETFD = 2
export const F_GETFL = 3
export const F_SETFL = 4
export const F_DUPFD_CLOEXEC = PLATFORM.F_DUPFD_CLOEXEC
export const FD_CLOEXEC = 1
export const MSG_CTRUNC = PLATFORM.MSG_CTRUNC
export const MSG_NOSIGNAL = PLATFORM.MSG_NOSIGNAL
export const MSG_CMSG_CLOEXEC = PLATFORM.MSG_CMSG_CLOEXEC
export const SOL_SOCKET = PLATFORM.SOL_SOCKET
export const SO_TYPE = PLATFORM.SO_TYPE
export const SCM_RIGHTS = 1

const EINTR = 4
/** recvmsg's "no room for the passed fd" on OpenBSD (40; Linux's 90 never comes from a stream recvmsg). */
const EMSGSIZE = IS_OPENBSD ? 40 : 90

const c = {
  socketpair: self.func("int socketpair(int domain, int type, int protocol, _Out_ int *sv)"),
  sendmsg: self.func("intptr_t sendmsg(int fd, void *msg, int flags)"),
  recvmsg: self.func("intptr_t recvmsg(int fd, void *msg, int flags)"),
  read: self.func("intptr_t read(int fd, void *buf, size_t count)"),
  write: self.func("intptr_t write(int fd, const void *buf, size_t count)"),
  close: self.func("int close(int fd)"),
  fcntl: self.func("int fcntl(int fd, int cmd, ...)"),
  fstat: self.func("int fstat(int fd, void *statbuf)"),
  open: self.func("int open(const char *path, int flags, ...)"),
  getpid: self.func("int getpid(void)"),
  poll: self.func("int poll(_Inout_ uint8_t *fds, uint64_t nfds, int timeout)"),
  getsockopt: self.func("int getsockopt(int fd, int level, int name, _Out_ int *value, _Inout_ uint32_t *len)")
}

const ret = (r: number | bigint): number => {
  const n = Number(r)
  return n < 0 ? -koffi.errno() : n
}

/** Run a syscall wrapper again while it fails with EINTR. */
const retry = (f: () => number): number => {
  for (;;) {
    const r = f()
    if (r !== -EINTR) return r
  }
}

/** socketpair(2); returns the two fds or -errno. */
export const socketpair = (domain: number, type: number, protocol = 0): readonly [number, number] | number => {
  const sv = [-1, -1]
  const r = ret(c.socketpair(domain, type, protocol, sv))
  return r < 0 ? r : [sv[0] ?? -1, sv[1] ?? -1]
}

/** sendmsg(2) with a native struct msghdr (see ScmBuffer). Bytes sent or -errno. */
export const sendmsg = (fd: number, msghdr: unknown, flags: number): number =>
  retry(() => ret(c.sendmsg(fd, msghdr, flags)))

/** recvmsg(2) with a native struct msghdr (see ScmBuffer). Bytes read (0 = EOF) or -errno. */
export const recvmsg = (fd: number, msghdr: unknown, flags: number): number =>
  retry(() => ret(c.recvmsg(fd, msghdr, flags)))

/** read(2) into `buf` (JS memory, passed without copy). Bytes read or -errno. */
export const read = (fd: number, buf: Uint8Array): number => retry(() => ret(c.read(fd, buf, buf.length)))

/** write(2) from `buf`. Bytes written or -errno. */
export const write = (fd: number, buf: Uint8Array): number => retry(() => ret(c.write(fd, buf, buf.length)))

const POLLIN = 0x001
const POLLOUT = 0x004
const pollfd = new Uint8Array(8)
const pollfdView = new DataView(pollfd.buffer)

/**
 * poll(2) on one fd, blocking this thread (and so Node's loop) for at most
 * `ms`: 1 when it is readable (or writable; an error or hang-up counts, the
 * next read or write reports it), 0 when the time ran out, or -errno (EINTR
 * included: the caller waits on the loop instead).
 */
export const pollOne = (fd: number, writable: boolean, ms: number): number => {
  pollfdView.setInt32(0, fd, true)
  pollfdView.setInt16(4, writable ? POLLOUT : POLLIN, true)
  pollfdView.setInt16(6, 0, true)
  return ret(c.poll(pollfd, 1, Math.max(0, Math.ceil(ms))))
}

/** close(2); 0 or -errno. Not retried on EINTR (the fd is gone on Linux). */
export const close = (fd: number): number => ret(c.close(fd))

/**
 * Why fd is not a stream socket ("ENOTSOCK", "EBADF", "socket type 2"), or
 * null if it is one (getsockopt SO_TYPE): for an fd number this process was
 * told to use (the parent's fd 3, a VM's -V), which may be no socket at all.
 */
export const notStreamSocket = (fd: number): string | null => {
  const value = [0]
  const len = [4]
  const r = ret(c.getsockopt(fd, SOL_SOCKET, SO_TYPE, value, len))
  if (r < 0) return errnoName(fromHostErrno(-r))
  return value[0] === SOCK_STREAM ? null : `socket type ${value[0]}`
}

/** fcntl(2) with an int argument (every variadic argument is typed for koffi). */
export const fcntl = (fd: number, cmd: number, arg = 0): number => retry(() => ret(c.fcntl(fd, cmd, "int", arg)))

/** A close-on-exec duplicate (F_DUPFD_CLOEXEC). */
export const dup = (fd: number): number => fcntl(fd, F_DUPFD_CLOEXEC, 0)

/** open(2), always O_CLOEXEC. */
export const open = (path: string, flags: number, mode = 0o600): number =>
  retry(() => ret(c.open(path, flags | O_CLOEXEC, "uint32", mode)))

export const getpid = (): number => c.getpid() as number

/** Set O_NONBLOCK and FD_CLOEXEC on an fd (an inherited fd may have neither). 0 or -errno. */
export const setNonblockCloexec = (fd: number): number => {
  const fl = fcntl(fd, F_GETFL)
  if (fl < 0) return fl
  if ((fl & O_NONBLOCK) === 0) {
    const r = fcntl(fd, F_SETFL, fl | O_NONBLOCK)
    if (r < 0) return r
  }
  const fdfl = fcntl(fd, F_GETFD)
  if (fdfl < 0) return fdfl
  return (fdfl & FD_CLOEXEC) !== 0 ? 0 : Math.min(0, fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC))
}

export interface FileId {
  readonly dev: bigint
  readonly ino: bigint
}

const statBuf = new BigUint64Array(32) // struct stat is 144 (x86_64) or 128 (aarch64) bytes

// OpenBSD: st_mode (u32) at 0, st_dev (int32 dev_t) at 4; native byte order.
const statDevOpenBSD = new Int32Array(statBuf.buffer, 4, 1)

/**
 * st_dev and st_ino from fstat(2), or -errno. st_ino (u64) is at offset 8
 * everywhere we run; st_dev is a u64 at 0 on Linux (x86_64, aarch64) but an
 * int32 at 4 on OpenBSD (after st_mode).
 */
export const fstatId = (fd: number): FileId | number => {
  const r = ret(c.fstat(fd, statBuf))
  if (r < 0) return r
  const dev = IS_OPENBSD ? BigInt(statDevOpenBSD[0] ?? 0) : (statBuf[0] ?? 0n)
  return { dev, ino: statBuf[1] ?? 0n }
}

/** Count of double closes seen by the native backend (a bug if non-zero). */
export let nativeDoubleCloses = 0

/** The FdBackend of real descriptors: close(2). */
export const nativeFdBackend: FdBackend = {
  name: "native",
  closeNumber: (num) => {
    const r = close(num)
    return r < 0 ? -r : 0
  },
  onDoubleClose: () => {
    nativeDoubleCloses++
  }
}

/** Wrap a real fd number in an owned Fd. */
export const nativeFd = (num: number, label = ""): Fd => new Fd(num, nativeFdBackend, label)

// struct msghdr (LP64). Linux: name@0 namelen@8 iov@16 iovlen@24 (size_t)
// control@32 controllen@40 (size_t) flags@48, 56 bytes. OpenBSD amd64: the
// same up to control@32, then controllen@40 (socklen_t) flags@44, 48 bytes.
// iovlen and controllen are written as 32-bit little-endian values into
// zeroed memory, which is right on both. struct iovec: base@0 len@8.
// struct cmsghdr: Linux len@0 (size_t) level@8 type@12 data@16; OpenBSD
// len@0 (socklen_t) level@4 type@8 data@16 (CMSG_DATA aligned to 8).
const MSGHDR = 0
const MSG_FLAGS = IS_OPENBSD ? 44 : 48
/** Offsets of cmsg_level and cmsg_type in struct cmsghdr. */
export const CMSG_LEVEL = IS_OPENBSD ? 4 : 8
export const CMSG_TYPE = IS_OPENBSD ? 8 : 12
const IOV = 56
const CMSG = 72
/** CMSG_SPACE(sizeof(int)): room for one fd (padding leaves room for a second, as in libutil). */
const CMSG_SPACE_1 = 24
const CMSG_LEN_1 = 20
/** The iovec array of sendPieces (struct iovec: 16 bytes). */
const IOVS = CMSG + CMSG_SPACE_1

const setPtr = (dv: DataView, off: number, addr: number): void => {
  dv.setUint32(off, addr % 0x100000000, true)
  dv.setUint32(off + 4, Math.floor(addr / 0x100000000), true)
}

/**
 * Where a Uint8Array's bytes are. Asking for `.buffer` first moves a small
 * on-heap typed array off the V8 heap, where memory never moves; the
 * address stays valid while the array is referenced.
 */
const addressOf = (bytes: Uint8Array): number => {
  void bytes.buffer
  return Number(koffi.address(bytes))
}

/**
 * A native struct msghdr with one iovec and one SCM_RIGHTS slot, reused for
 * every sendmsg/recvmsg: the data itself stays in JS memory and is passed
 * by address, without a copy. Nothing is allocated per call. `free` once.
 * With `iovecs` > 1, `sendPieces` gathers up to that many pieces in one
 * sendmsg (msgbuf_write's iovec list).
 */
export class ScmBuffer {
  /** fds received by the last `recv` (the caller owns them). */
  readonly fds: Array<number> = []
  /** msg_flags of the last `recv` (MSG_CTRUNC: fds beyond the slot were discarded by the kernel). */
  flags = 0
  readonly #mem: unknown
  readonly #dv: DataView
  readonly #base: number
  readonly #iovecs: number
  #freed = false

  constructor(iovecs = 1) {
    const size = IOVS + 16 * Math.max(1, iovecs)
    this.#iovecs = Math.max(1, iovecs)
    this.#mem = koffi.alloc("uint8_t", size)
    const ab = koffi.view(this.#mem, size)
    this.#dv = new DataView(ab)
    new Uint8Array(ab).fill(0)
    this.#base = Number(koffi.address(this.#mem))
    setPtr(this.#dv, MSGHDR + 16, this.#base + IOV)
    this.#dv.setUint32(MSGHDR + 24, 1, true) // msg_iovlen
    setPtr(this.#dv, MSGHDR + 32, this.#base + CMSG)
  }

  /**
   * msg_control and msg_controllen for a send: the one-fd control area, or
   * none at all. With no fd, msg_control must be NULL, as libutil's
   * msgbuf_write leaves it: OpenBSD's sendit() refuses a non-NULL
   * msg_control shorter than a cmsghdr with EINVAL (Linux ignores it).
   */
  #setFd(fd: number): void {
    const dv = this.#dv
    if (fd >= 0) {
      setPtr(dv, MSGHDR + 32, this.#base + CMSG)
      dv.setUint32(MSGHDR + 40, CMSG_SPACE_1, true)
      dv.setUint32(CMSG, CMSG_LEN_1, true)
      dv.setUint32(CMSG + 4, 0, true)
      dv.setUint32(CMSG + 12, 0, true)
      dv.setInt32(CMSG + CMSG_LEVEL, SOL_SOCKET, true)
      dv.setInt32(CMSG + CMSG_TYPE, SCM_RIGHTS, true)
      dv.setInt32(CMSG + 16, fd, true)
      dv.setInt32(CMSG + 20, 0, true)
    } else {
      setPtr(dv, MSGHDR + 32, 0)
      dv.setUint32(MSGHDR + 40, 0, true)
    }
  }

  /** A copy of the struct msghdr as the last call left it (tests). */
  get msghdr(): Uint8Array {
    return new Uint8Array(this.#dv.buffer, this.#dv.byteOffset + MSGHDR, 56).slice()
  }

  /**
   * One sendmsg of pieces first..count-1, piece i being bufs[i][offs[i], offs[i] +
   * lens[i]) (an iovec each, no copy), with `fd` attached unless it is -1.
   * MSG_NOSIGNAL. Bytes sent or -errno. At most the `iovecs` of the constructor.
   */
  sendPieces(
    sock: number,
    first: number,
    count: number,
    bufs: ReadonlyArray<Uint8Array>,
    offs: ReadonlyArray<number>,
    lens: ReadonlyArray<number>,
    fd: number
  ): number {
    if (count - first > this.#iovecs) throw new RangeError(`sendPieces: ${count - first} pieces > ${this.#iovecs} iovecs`)
    const dv = this.#dv
    let last: Uint8Array | null = null
    let addr = 0
    for (let i = first; i < count; i++) {
      const b = bufs[i] as Uint8Array
      if (b !== last) {
        last = b
        addr = addressOf(b)
      }
      const at = IOVS + 16 * (i - first)
      setPtr(dv, at, addr + (offs[i] as number))
      dv.setUint32(at + 8, lens[i] as number, true)
      dv.setUint32(at + 12, 0, true)
    }
    setPtr(dv, MSGHDR + 16, this.#base + IOVS)
    dv.setUint32(MSGHDR + 24, count - first, true)
    this.#setFd(fd)
    const n = sendmsg(sock, this.#mem, MSG_NOSIGNAL)
    setPtr(dv, MSGHDR + 16, this.#base + IOV)
    dv.setUint32(MSGHDR + 24, 1, true)
    return n
  }

  /**
   * sendmsg of `data` with `fd` attached unless it is -1. MSG_NOSIGNAL: a
   * closed peer is EPIPE, not SIGPIPE. Bytes sent or -errno.
   */
  send(sock: number, data: Uint8Array, fd: number): number {
    const dv = this.#dv
    setPtr(dv, IOV, addressOf(data))
    dv.setUint32(IOV + 8, data.length, true)
    this.#setFd(fd)
    return sendmsg(sock, this.#mem, MSG_NOSIGNAL)
  }

  /**
   * recvmsg into `into` with MSG_CMSG_CLOEXEC. Received fds land in `fds`
   * (cleared first). Bytes read (0 = EOF) or -errno.
   */
  recv(sock: number, into: Uint8Array): number {
    const dv = this.#dv
    this.fds.length = 0
    setPtr(dv, IOV, addressOf(into))
    dv.setUint32(IOV + 8, into.length, true)
    setPtr(dv, MSGHDR + 32, this.#base + CMSG)
    let n: number
    do {
      dv.setUint32(MSGHDR + 40, CMSG_SPACE_1, true)
      dv.setUint32(MSGHDR + 44, 0, true)
      dv.setInt32(MSGHDR + MSG_FLAGS, 0, true)
      n = recvmsg(sock, this.#mem, MSG_CMSG_CLOEXEC)
      // OpenBSD: no fd slot left for a passed fd; as libutil's msgbuf_read, read again,
      // and the message comes without its fd (Linux sets MSG_CTRUNC instead)
    } while (n === -EMSGSIZE)
    if (n < 0) return n
    this.flags = dv.getInt32(MSGHDR + MSG_FLAGS, true)
    const controllen = dv.getUint32(MSGHDR + 40, true)
    // CMSG_FIRSTHDR/CMSG_NXTHDR over the control area we handed in.
    let off = 0
    while (off + 16 <= controllen) {
      const len = dv.getUint32(CMSG + off, true)
      if (len < 16 || off + len > controllen) break
      if (dv.getInt32(CMSG + off + CMSG_LEVEL, true) === SOL_SOCKET && dv.getInt32(CMSG + off + CMSG_TYPE, true) === SCM_RIGHTS) {
        for (let p = 16; p + 4 <= len; p += 4) this.fds.push(dv.getInt32(CMSG + off + p, true))
      }
      off += (len + 7) & ~7
    }
    return n
  }

  free(): void {
    if (this.#freed) return
    this.#freed = true
    koffi.free(this.#mem)
  }
}

/**
 * ImsgChannel in memory, for tests: a tiny fake kernel of fds and stream
 * sockets. The framing, queueing and fd rules are the real ones
 * (src/imsg/channel.ts); only the byte moving is simulated:
 *
 * - fds get fake numbers (from 1000) in a table that records which are open
 *   and counts double closes;
 * - a socketpair is two endpoints with a bounded receive buffer each, so a
 *   slow reader pushes back on the writer (EAGAIN, then writability);
 * - an fd sent with a write travels as the same Fd object; a read picks it
 *   up and stops after the bytes that carried it (as Linux does), a raw read
 *   closes it (read(2) discards SCM_RIGHTS);
 * - closing an end gives the peer EOF after the buffered bytes and EPIPE on
 *   write;
 * - faults for property tests: fail the next write with an errno, short
 *   writes, short reads.
 *
 * Readiness is delivered on microtasks, never timers, so TestClock drives
 * every timeout.
 */
import { Context, Effect, Layer } from "effect"
import type { Scope } from "effect"
import { makeChannel } from "../imsg/channel.ts"
import type { ChannelOptions, DriverEvents, SocketDriver } from "../imsg/channel.ts"
import type { RawSocket } from "../imsg/raw.ts"
import { readExactly, writeAll } from "../imsg/raw.ts"
import { batchBytes } from "../imsg/writer.ts"
import { Errno } from "../schema/errno.ts"
import type { FdBackend } from "../services/Fd.ts"
import { Fd } from "../services/Fd.ts"
import type { Channel, ImsgChannelService } from "../services/ImsgChannel.ts"
import { ChannelError, ImsgChannel } from "../services/ImsgChannel.ts"

/** Receive buffer of an in-memory socket end (Linux's default is about 208 KiB). */
const DEFAULT_CAPACITY = 64 * 1024
const HOST_EBADF = 9

interface Segment {
  readonly bytes: Uint8Array
  off: number
  fd: Fd | null
}

class Endpoint {
  peer: Endpoint | null = null
  open = true
  readonly inbox: Array<Segment> = []
  buffered = 0
  /** Bytes read from this end so far. */
  readTotal = 0
  capacity = DEFAULT_CAPACITY
  /** Faults: errno for the next write (0: none), bytes per write and per read. */
  failNextWrite = 0
  maxWrite = Infinity
  maxRead = Infinity
  events: DriverEvents | null = null
  watchRead = false
  watchWrite = false
  readonly waiters: Array<{ readonly writable: boolean; readonly fire: () => void }> = []
  #scheduled = false

  constructor(readonly num: number) {}

  get readable(): boolean {
    return this.inbox.length > 0 || this.peer === null || !this.peer.open
  }

  get writable(): boolean {
    const p = this.peer
    return p === null || !p.open || p.buffered < p.capacity
  }

  /** write(2)/sendmsg(2) into the peer's receive buffer: bytes or -errno (OpenBSD). */
  write(bytes: Uint8Array, fd: Fd | null): number {
    if (this.failNextWrite !== 0) {
      const e = this.failNextWrite
      this.failNextWrite = 0
      return -e
    }
    const p = this.peer
    if (p === null || !p.open) return -Errno.EPIPE
    const n = Math.min(bytes.length, p.capacity - p.buffered, this.maxWrite)
    if (n <= 0) return -Errno.EAGAIN
    p.inbox.push({ bytes: bytes.slice(0, n), off: 0, fd })
    p.buffered += n
    p.poke()
    return n
  }

  /** read(2)/recvmsg(2) into buf: bytes, 0 at EOF, or -errno. A received fd goes to `fds`. */
  read(buf: Uint8Array, fds: Array<Fd>): number {
    if (this.inbox.length === 0) return this.readable ? 0 : -Errno.EAGAIN
    const limit = Math.min(buf.length, this.maxRead)
    let n = 0
    while (n < limit && this.inbox.length > 0) {
      const s = this.inbox[0] as Segment
      const k = Math.min(limit - n, s.bytes.length - s.off)
      buf.set(s.bytes.subarray(s.off, s.off + k), n)
      n += k
      s.off += k
      const hadFd = s.fd !== null
      if (s.fd !== null) {
        fds.push(s.fd)
        s.fd = null
      }
      if (s.off < s.bytes.length) break
      this.inbox.shift()
      if (hadFd) break // Linux: a read ends with the bytes that carried fds
    }
    this.buffered -= n
    this.readTotal += n
    this.peer?.poke()
    return n
  }

  /** This end is closed: drop what it buffered, wake the peer. */
  shut(): void {
    this.open = false
    this.events = null
    for (const s of this.inbox.splice(0)) s.fd?.closeSync()
    this.buffered = 0
    this.peer?.poke()
  }

  /** Deliver readiness on a microtask (level-triggered, like uv_poll). */
  poke(): void {
    if (this.#scheduled || !this.open) return
    this.#scheduled = true
    queueMicrotask(() => {
      this.#scheduled = false
      this.#dispatch()
    })
  }

  #dispatch(): void {
    if (!this.open) return
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i] as { readonly writable: boolean; readonly fire: () => void }
      if (w.writable ? this.writable : this.readable) {
        this.waiters.splice(i, 1)
        w.fire()
      } else i++
    }
    if (this.watchRead && this.readable) this.events?.readable()
    if (this.watchWrite && this.writable) this.events?.writable()
    if ((this.watchRead && this.readable) || (this.watchWrite && this.writable)) this.poke()
  }
}

export interface OpenFd {
  readonly num: number
  readonly label: string
}

/** The fake kernel: fd table, socket ends, fault hooks. One per layer instance. */
export class MemorySocketTable {
  #next = 1000
  readonly #open = new Map<number, { readonly label: string; readonly endpoint: Endpoint | null }>()
  #doubleCloses = 0
  readonly backend: FdBackend = {
    name: "memory",
    closeNumber: (num) => {
      const e = this.#open.get(num)
      if (e === undefined) return HOST_EBADF
      this.#open.delete(num)
      e.endpoint?.shut()
      return 0
    },
    onDoubleClose: () => {
      this.#doubleCloses++
    }
  }

  #alloc(label: string, endpoint: Endpoint | null): Fd {
    const num = endpoint?.num ?? this.#next++
    this.#open.set(num, { label, endpoint })
    return new Fd(num, this.backend, label)
  }

  /** A plain open fd (a file, a device) for tests. */
  makeFd(label: string): Fd {
    return this.#alloc(label, null)
  }

  /** Two connected stream socket ends. */
  socketpair(label: string): readonly [Fd, Fd] {
    const a = new Endpoint(this.#next++)
    const b = new Endpoint(this.#next++)
    a.peer = b
    b.peer = a
    return [this.#alloc(`${label}[0]`, a), this.#alloc(`${label}[1]`, b)]
  }

  /** Fds not closed yet, lowest number first. */
  openFds(): ReadonlyArray<OpenFd> {
    return [...this.#open].map(([num, e]) => ({ num, label: e.label })).sort((x, y) => x.num - y.num)
  }

  isOpen(fd: Fd | number): boolean {
    return this.#open.has(typeof fd === "number" ? fd : fd.num)
  }

  /** Bytes read so far from the socket end open as fd `num` (0 if it is none). */
  bytesRead(num: number): number {
    return this.#open.get(num)?.endpoint?.readTotal ?? 0
  }

  /** close() calls on an already closed Fd (each one a bug). */
  get doubleCloses(): number {
    return this.#doubleCloses
  }

  /** The socket end behind an Fd of this table, if it is one. */
  endpoint(fd: Fd): Endpoint | undefined {
    if (fd.backend !== this.backend || !fd.isOpen) return undefined
    return this.#open.get(fd.num)?.endpoint ?? undefined
  }

  #faults(fd: Fd): Endpoint {
    const e = this.endpoint(fd)
    if (e === undefined) throw new Error(`${fd} is not an open in-memory socket`)
    return e
  }

  /** The next write on this end fails with `errno` (OpenBSD numbering; EPIPE by default). */
  failNextWrite(fd: Fd, errno: number = Errno.EPIPE): void {
    this.#faults(fd).failNextWrite = errno
  }

  /** Every write on this end moves at most `bytes` (Infinity to stop). */
  shortWrites(fd: Fd, bytes: number): void {
    this.#faults(fd).maxWrite = bytes
  }

  /** Every read on this end returns at most `bytes` (Infinity to stop). */
  shortReads(fd: Fd, bytes: number): void {
    this.#faults(fd).maxRead = bytes
  }

  /** Receive buffer size of this end (backpressure on its peer). */
  setCapacity(fd: Fd, bytes: number): void {
    this.#faults(fd).capacity = bytes
  }
}

export class MemorySockets extends Context.Tag("vmd-vmm/MemorySockets")<MemorySockets, MemorySocketTable>() {}

const notSocket = (fd: Fd): ChannelError =>
  new ChannelError({
    reason: fd.isOpen ? "Io" : "Closed",
    message: `${fd} is not an open in-memory socket`,
    errno: fd.isOpen ? Errno.ENOTSOCK : Errno.EBADF
  })

const memoryDriver = (fd: Fd, end: Endpoint, events: DriverEvents): SocketDriver => {
  end.events = events
  return {
    fd: fd.num,
    recv: (into, fds) => end.read(into, fds),
    // one write of the pieces, as sendmsg with an iovec each (write copies what it takes)
    send: (batch) => end.write(batchBytes(batch), batch.fd),
    watch: (readable, writable) => {
      end.watchRead = readable
      end.watchWrite = writable
      end.poke()
    },
    close: (done) => {
      end.watchRead = end.watchWrite = false
      end.events = null
      fd.closeSync()
      done()
    }
  }
}

const rawSocket = (fd: Fd, end: Endpoint): RawSocket => ({
  fd: fd.num,
  read: (buf) => {
    const fds: Array<Fd> = []
    const n = end.read(buf, fds)
    for (const f of fds) f.closeSync() // read(2) has no control buffer: the kernel drops them
    return n
  },
  write: (buf) => end.write(buf, null),
  wait: (writable) =>
    Effect.async<void, ChannelError>((resume) => {
      const w = { writable, fire: () => resume(Effect.void) }
      end.waiters.push(w)
      end.poke()
      return Effect.sync(() => {
        const i = end.waiters.indexOf(w)
        if (i >= 0) end.waiters.splice(i, 1)
      })
    })
})

const withEndpoint = <A>(
  table: MemorySocketTable,
  fd: Fd,
  f: (end: Endpoint) => Effect.Effect<A, ChannelError>
): Effect.Effect<A, ChannelError> =>
  Effect.suspend(() => {
    const end = table.endpoint(fd)
    return end === undefined ? Effect.fail(notSocket(fd)) : f(end)
  })

/** `open` with options (see ChannelOptions). */
const openOwned = (table: MemorySocketTable, fd: Fd, options: ChannelOptions = {}): Effect.Effect<Channel, ChannelError> =>
  withEndpoint(table, fd, (end) => Effect.sync(() => makeChannel((events) => memoryDriver(fd, end, events), options)))

const openChannel = (
  table: MemorySocketTable,
  fd: Fd,
  options: ChannelOptions = {}
): Effect.Effect<Channel, ChannelError, Scope.Scope> =>
  Effect.acquireRelease(openOwned(table, fd, options), (channel) => channel.close)

const make = (table: MemorySocketTable): ImsgChannelService => ({
  open: (fd) => openChannel(table, fd),
  openOwned: (fd, options) => openOwned(table, fd, options),
  socketpair: (label) => Effect.sync(() => table.socketpair(label)),
  writeRaw: (fd, bytes, timeoutMs) => withEndpoint(table, fd, (end) => writeAll(rawSocket(fd, end), bytes, timeoutMs)),
  readRaw: (fd, n, timeoutMs) => withEndpoint(table, fd, (end) => readExactly(rawSocket(fd, end), n, timeoutMs))
})

export class ImsgChannelMemory {
  /** A fresh fake kernel per build: ImsgChannel plus MemorySockets for inspection and faults. */
  static readonly layer: Layer.Layer<ImsgChannel | MemorySockets> = Layer.effectContext(
    Effect.sync(() => {
      const table = new MemorySocketTable()
      return Context.make(MemorySockets, table).pipe(Context.add(ImsgChannel, make(table)))
    })
  )
  /** The service over a given table (to share one table between layers). */
  static readonly make = make
  /** `open` with options, e.g. `{ highWaterBytes }` or `{ format: "legacy" }`. */
  static readonly open = openChannel
}

export const layer = ImsgChannelMemory.layer

/**
 * Real processes through a small C helper, the spawner (c/spawner.c), that
 * this layer starts once; it forks and execs each VM
 * process from its own tiny address space. Node's spawn forks all of Node
 * (1-6 ms, growing with its RSS); this costs about what C fork+exec costs
 * plus one round trip on a socket (scripts/bench-spawn.ts measures it).
 *
 * Same semantics as ProcessNode (test/process/ProcessSpawner.test.ts runs
 * ProcessNode's tests against both builds of the spawner):
 *  - the child: own session, every given fd at its own number, nothing else
 *    open but 0-2 (on /dev/null, or this process's for "inherit");
 *  - spawn fails with SpawnError and the OpenBSD errno, including the
 *    child's execve errno (ENOENT, EACCES);
 *  - except an `early` spawn (SpawnRequest.early, which ProcessNode
 *    ignores): it returns once the spawner has forked, with the pid, while
 *    the child is still exec'ing, as vmm.c's fork does; a failed setup or
 *    exec is then only the child's exit, Exited 127, in `exits` and
 *    `Child.exit` like any other (the pid is in `children` and `isAlive`
 *    from the moment spawn returns until that exit is reported);
 *  - `exits` is a queue with every reaped child exactly once, in the order
 *    reaped; `Child.exit` completes for each;
 *  - `kill` never signals a reaped pid: a pid not in the table is ESRCH at
 *    once, and a pid in it is signalled by the spawner, which has not reaped
 *    it yet (its EXIT would have come first), so the pid cannot be reused;
 *  - the scope's end SIGKILLs and reaps every child, and waits for the
 *    spawner to exit.
 *
 * Unlike Node's spawn, ours waits for a reply, so it can be interrupted
 * while the request is in flight; the child it still starts is then
 * SIGKILLed when the reply comes (its exit is in `exits`, under a pid that
 * no caller learnt).
 *
 * Wire: one end of an AF_UNIX SOCK_SEQPACKET socketpair, at fd 3 in the
 * spawner; the protocol is described at the top of c/spawner.c. Requests go
 * out with sendmsg (fds by SCM_RIGHTS, one message per request, up to 128
 * fds); replies (16 bytes each) are read when a libuv poll handle on Node's
 * loop says the socket is readable. A request the socket cannot take now
 * (EAGAIN) is queued with duplicates of its fds and sent when writable.
 *
 * If the vmm process dies, the spawner reads EOF and kills and reaps every
 * child before it exits; if the spawner is SIGKILLed, its children get
 * SIGKILL too (PR_SET_PDEATHSIG) and are reported here as Signaled SIGKILL.
 * The spawner is not restarted: spawns after its death fail with EIO.
 *
 * Children inherit the environment and working directory of this process
 * as they were when the layer was built (when `env` is given, the whole
 * environment is sent with the request).
 *
 * The binary is build/spawner (scripts/build-spawner.mjs), or the path in
 * $VMD_VMM_SPAWNER. `spawnerAvailable()` says whether it is there;
 * `layerOrNode` falls back to ProcessNode when it is not.
 */
import { spawn as nodeSpawn } from "node:child_process"
import { accessSync, constants as fsConstants } from "node:fs"
import { constants as osConstants, endianness } from "node:os"
import { fileURLToPath } from "node:url"
import { Deferred, Duration, Effect, Exit, FiberId, Layer, Option } from "effect"
import type { Scope } from "effect"
import koffi from "koffi"
import * as libc from "../native/libc.ts"
import * as spawn from "../native/spawn.ts"
import { ChildWatch } from "../native/childWatch.ts"
import { closePoll, UV_DISCONNECT, UV_READABLE, UV_WRITABLE, UvPoll } from "../native/uvpoll.ts"
import { Errno, errnoName, fromErrorCode, fromHostErrno } from "../schema/errno.ts"
import { childNumbers, ExitBox, makeOr, Process, SpawnError, tableService, waitAtMost } from "../services/Process.ts"
import type { Child, ExitStatus, ProcessService, SignalName, SpawnRequest } from "../services/Process.ts"
import * as ProcessNode from "./ProcessNode.ts"

// ---- the protocol (c/spawner.c) ----

/** 2: SPAWN's flag F_EARLY (a version-1 spawner would ignore it and answer after the exec). */
export const VERSION = 2
export const T_HELLO = 0
export const T_SPAWN = 1
export const T_SPAWNED = 2
export const T_KILL = 3
export const T_KILLED = 4
export const T_EXIT = 5
export const T_SHUTDOWN = 6
export const F_INHERIT = 1
export const F_ENV = 2
/** Answer the SPAWN right after the fork, before the exec (SpawnRequest.early). */
export const F_EARLY = 4
/** The SPAWN request's fixed header (type, seq, flags and three counts). */
export const HDR_BYTES = 24
/** Largest request the spawner reads (MAX_REQ) and most fds per request (MAX_FDS). */
export const MAX_REQUEST = 64 * 1024
export const MAX_FDS = 128

const SOCK_SEQPACKET = 5

/** How long the finalizer waits for the spawner to kill and reap everything. */
const REAP_TIMEOUT = Duration.seconds(10)
/** How long the layer waits for the spawner's HELLO. */
const HELLO_TIMEOUT = Duration.seconds(5)

// ---- where the binary is ----

/**
 * The spawner binary: $VMD_VMM_SPAWNER, else build/spawner at the repository
 * root (this file is src/layers/, the bundle is dist/).
 */
export const spawnerPath = (): string => {
  const env = process.env["VMD_VMM_SPAWNER"]
  if (env !== undefined && env !== "") return env
  const candidates = ["../../build/spawner", "../build/spawner"].map((rel) => fileURLToPath(new URL(rel, import.meta.url)))
  return candidates.find(isExecutable) ?? candidates[0] ?? "build/spawner"
}

const isExecutable = (path: string): boolean => {
  try {
    accessSync(path, fsConstants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * Whether this layer can run here: the binary exists and is executable, and
 * the host is the one the native structs are written for (Linux, 64-bit,
 * little-endian). If not, use ProcessNode (`layerOrNode` does).
 */
export const spawnerAvailable = (binary: string = spawnerPath()): boolean =>
  process.platform === "linux" &&
  (process.arch === "x64" || process.arch === "arm64") &&
  endianness() === "LE" &&
  isExecutable(binary)

// ---- native send buffer: msghdr, iovec, cmsg with up to MAX_FDS fds, data ----

// struct msghdr (LP64): name@0 namelen@8 iov@16 iovlen@24 control@32 controllen@40 flags@48.
const MSGHDR = 0
const IOV = 56
const CMSG = 72
const CMSG_HDR = 16
const CMSG_CAP = CMSG_HDR + 4 * MAX_FDS
const DATA = CMSG + CMSG_CAP

const setPtr = (dv: DataView, off: number, addr: number): void => {
  dv.setUint32(off, addr % 0x100000000, true)
  dv.setUint32(off + 4, Math.floor(addr / 0x100000000), true)
}

class SendBuffer {
  readonly data: Uint8Array
  readonly view: DataView
  readonly #mem: unknown
  readonly #dv: DataView
  #freed = false

  constructor() {
    const size = DATA + MAX_REQUEST
    this.#mem = koffi.alloc("uint8_t", size)
    const ab = koffi.view(this.#mem, size)
    this.#dv = new DataView(ab)
    this.data = new Uint8Array(ab, DATA, MAX_REQUEST)
    this.view = new DataView(ab, DATA, MAX_REQUEST)
    new Uint8Array(ab, 0, DATA).fill(0)
    const base = Number(koffi.address(this.#mem))
    setPtr(this.#dv, MSGHDR + 16, base + IOV)
    this.#dv.setUint32(MSGHDR + 24, 1, true) // msg_iovlen
    setPtr(this.#dv, MSGHDR + 32, base + CMSG)
    setPtr(this.#dv, IOV, base + DATA)
  }

  /** sendmsg of data[0, length) with `fds` attached; bytes sent or -(host errno). */
  send(sock: number, length: number, fds: ReadonlyArray<number>): number {
    const dv = this.#dv
    dv.setUint32(IOV + 8, length, true)
    if (fds.length > 0) {
      const len = CMSG_HDR + 4 * fds.length
      dv.setUint32(MSGHDR + 40, (len + 7) & ~7, true) // CMSG_SPACE
      dv.setUint32(CMSG, len, true) // cmsg_len (size_t)
      dv.setUint32(CMSG + 4, 0, true)
      dv.setInt32(CMSG + 8, libc.SOL_SOCKET, true)
      dv.setInt32(CMSG + 12, libc.SCM_RIGHTS, true)
      for (const [i, fd] of fds.entries()) dv.setInt32(CMSG + CMSG_HDR + 4 * i, fd, true)
      if (fds.length % 2 === 1) dv.setInt32(CMSG + CMSG_HDR + 4 * fds.length, 0, true)
    } else {
      dv.setUint32(MSGHDR + 40, 0, true)
    }
    return libc.sendmsg(sock, this.#mem, libc.MSG_NOSIGNAL)
  }

  free(): void {
    if (this.#freed) return
    this.#freed = true
    koffi.free(this.#mem)
  }
}

// ---- requests ----

const encoder = new TextEncoder()

/** Encode a SPAWN request into `buf`; its length, or an OpenBSD errno (negated) if it cannot be sent. */
const encodeSpawn = (
  buf: SendBuffer,
  seq: number,
  req: SpawnRequest,
  targets: ReadonlyArray<number>
): number => {
  const env =
    req.env === undefined
      ? null
      : Object.entries({ ...process.env, ...req.env }).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]))
  const strings = [req.command, ...req.args, ...(env ?? [])]
  if (targets.length > MAX_FDS) return -Errno.EMFILE
  const v = buf.view
  v.setUint32(0, T_SPAWN, true)
  v.setUint32(4, seq, true)
  v.setUint32(
    8,
    (req.stdio === "inherit" ? F_INHERIT : 0) | (env !== null ? F_ENV : 0) | (req.early === true ? F_EARLY : 0),
    true
  )
  v.setUint32(12, targets.length, true)
  v.setUint32(16, 1 + req.args.length, true)
  v.setUint32(20, env?.length ?? 0, true)
  let off = HDR_BYTES
  for (const t of targets) {
    v.setInt32(off, t, true)
    off += 4
  }
  for (const s of strings) {
    // no room left for even an empty string's NUL (the last one filled the request)
    if (off >= MAX_REQUEST) return -Errno.E2BIG
    if (s.includes("\0")) return -Errno.EINVAL
    const { read, written } = encoder.encodeInto(s, buf.data.subarray(off, MAX_REQUEST - 1))
    if (read < s.length) return -Errno.E2BIG
    off += written
    buf.data[off++] = 0
  }
  return off
}

interface Reply {
  readonly type: number
  readonly a: number
  readonly b: number
  readonly c: number
}

type Waiter = (reply: Reply | null) => void

interface Queued {
  readonly bytes: Uint8Array
  /** Duplicates, closed once sent (or dropped). */
  readonly fds: ReadonlyArray<number>
  readonly seq: number
}

interface LiveChild {
  readonly exit: Deferred.Deferred<ExitStatus>
}

/** The Process service plus what the tests and the benchmark need. */
export interface SpawnerProcess extends ProcessService {
  /** The spawner's pid. */
  readonly spawnerPid: number
  /** spawn with explicit child fd numbers: `req.fds[i]` lands at `targets[i]`. */
  readonly spawnAt: (req: SpawnRequest, targets: ReadonlyArray<number>) => Effect.Effect<Child, SpawnError>
}

export interface SpawnerOptions {
  /** The binary (default `spawnerPath()`). */
  readonly binary?: string
  /** How long the finalizer waits for the spawner to kill and reap everything. */
  readonly reapTimeout?: Duration.DurationInput
}

const spawnError = (errno: number, message: string): SpawnError =>
  new SpawnError({ reason: ProcessNode.reasonOf(errno), errno, message })

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const signalNumber = (name: SignalName): number => signals[name] ?? 0
const SIGKILL = signalNumber("SIGKILL")

const codeOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

// ---- starting the spawner ----
//
// With posix_spawn (vfork+exec: ~1 ms; src/native/spawn.ts, the bindings and
// attributes ProcessDirect uses) rather than Node's spawn, which forks the
// whole Node process and loads child_process (~10-20 ms of bin/vmm's
// start-up). Node's libuv does not know this child, so we reap it: a pidfd
// (Linux 5.3) becomes readable when it exits, and then waitpid. Where those
// cannot be used (spawnUnavailable), Node's spawn (libuv reaps). Either way
// the child gets what Node's spawn gave it: stdio inherited, our end at fd 3,
// its own session, every signal at its default and none blocked, process.env.

const startSpawnerProcess = (binary: string, theirs: number, onExit: () => void): number => {
  if (spawn.spawnUnavailable() !== null) {
    // Own session: a terminal's ^C reaches the vmm, which decides; the spawner only follows its socket.
    const proc = nodeSpawn(binary, [], { stdio: ["inherit", "inherit", "inherit", theirs], detached: true })
    proc.on("error", () => {})
    proc.once("exit", onExit)
    proc.unref()
    return proc.pid ?? -2 // ENOENT (the host's; 'error' says why)
  }
  // The attributes ProcessDirect's children get (own session, signals default and unblocked).
  const fa = new spawn.FileActions()
  const attr = new spawn.SpawnAttr()
  let r = attr.init()
  if (r === 0) r = fa.init()
  let spawnedOrErr: number
  try {
    // Inherited stdio, as Node's "inherit": dup2(n, n) clears close-on-exec (glibc 2.29), as libuv does.
    for (const n of [0, 1, 2]) if (r === 0 && libc.fcntl(n, libc.F_GETFD) >= 0) r = fa.dup2(n, n)
    // Onto 3 (if theirs is 3 already, dup2 only clears close-on-exec).
    if (r === 0) r = fa.dup2(theirs, 3)
    spawnedOrErr = r < 0 ? r : spawn.posixSpawnp(binary, fa, attr, [binary], null)
  } finally {
    fa.destroy()
    attr.destroy()
  }
  if (spawnedOrErr < 0) return spawnedOrErr
  const spawned = spawnedOrErr
  const watch = ChildWatch.open(spawned, () => onExit())
  if (typeof watch === "number") {
    // Cannot watch it (no fd left?): end it now rather than leave a zombie behind.
    try {
      process.kill(spawned, "SIGKILL")
    } catch {
      // gone
    }
    spawn.waitpid(spawned, true)
    onExit()
    return -24 // EMFILE (the host's)
  }
  return spawned
}

/** Start the spawner; the service lives until the scope ends. */
export const make = (options: SpawnerOptions = {}): Effect.Effect<SpawnerProcess, SpawnError, Scope.Scope> =>
  // Uninterruptible until the finalizer owns the spawner and the socket; only the HELLO wait is `restore`d.
  Effect.uninterruptibleMask((restore) =>
    Effect.gen(function* () {
      const binary = options.binary ?? spawnerPath()
      const reapTimeout = options.reapTimeout ?? REAP_TIMEOUT
      if (!spawnerAvailable(binary)) {
        return yield* Effect.fail(spawnError(Errno.ENOENT, `spawner ${binary}: not available`))
      }

      // The socket: ours non-blocking, the spawner's end at its fd 3.
      const pair = libc.socketpair(libc.AF_UNIX, SOCK_SEQPACKET | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC)
      if (typeof pair === "number") {
        const errno = fromHostErrno(-pair)
        return yield* Effect.fail(spawnError(errno, `spawner socketpair: ${errnoName(errno)}`))
      }
      const [sock, theirs] = pair
      const exited = yield* Deferred.make<void>()
      let started: number
      try {
        started = startSpawnerProcess(binary, theirs, () => Deferred.unsafeDone(exited, Exit.void))
      } catch (e) {
        libc.close(sock)
        libc.close(theirs)
        const errno = fromErrorCode(codeOf(e))
        return yield* Effect.fail(spawnError(errno, `spawner ${binary}: ${codeOf(e) ?? String(e)}`))
      }
      libc.close(theirs)
      if (started < 0) {
        libc.close(sock)
        const errno = fromHostErrno(-started)
        return yield* Effect.fail(spawnError(errno, `spawner ${binary}: could not be started (${errnoName(errno)})`))
      }
      const spawnerPid = started

      const live = new Map<number, LiveChild>()
      const exits = new ExitBox()
      const waiters = new Map<number, Waiter>()
      const outq: Array<Queued> = []
      const sendBuf = new SendBuffer()
      const readBuf = new Uint8Array(16)
      const readView = new DataView(readBuf.buffer)
      const hello = yield* Deferred.make<Reply>()
      const eof = yield* Deferred.make<void>()
      let seq = 0
      let dead = false
      let closing = false
      let sockOpen = true

      const nextSeq = (): number => {
        seq = (seq + 1) & 0x7fffffff || 1 // read back as int32
        return seq
      }

      const childGone = (pid: number, status: ExitStatus): void => {
        const c = live.get(pid)
        if (c === undefined) return
        live.delete(pid)
        exits.push({ pid, status })
        Deferred.unsafeDone(c.exit, Exit.succeed(status))
      }

      /** The spawner is gone (EOF, error): fail what waits, report what it did not. */
      const onDead = (): void => {
        if (dead) return
        dead = true
        poll.stop()
        for (const [, w] of [...waiters]) w(null)
        waiters.clear()
        for (const q of outq.splice(0)) for (const fd of q.fds) libc.close(fd)
        // Its children got SIGKILL from PR_SET_PDEATHSIG (or it reaped them and said so).
        for (const pid of [...live.keys()]) childGone(pid, { _tag: "Signaled", signal: SIGKILL })
        Deferred.unsafeDone(eof, Exit.void)
      }

      const dispatch = (r: Reply): void => {
        switch (r.type) {
          case T_HELLO:
            Deferred.unsafeDone(hello, Exit.succeed(r))
            return
          case T_EXIT:
            childGone(r.a, r.b === 0 ? { _tag: "Exited", code: r.c } : { _tag: "Signaled", signal: r.c })
            return
          case T_SPAWNED:
          case T_KILLED: {
            const w = waiters.get(r.a)
            if (w !== undefined) {
              waiters.delete(r.a)
              w(r)
            }
            return
          }
        }
      }

      const onReadable = (): void => {
        for (let i = 0; i < 256 && !dead; i++) {
          const n = libc.read(sock, readBuf)
          if (n === 16) {
            dispatch({
              type: readView.getInt32(0, true),
              a: readView.getInt32(4, true),
              b: readView.getInt32(8, true),
              c: readView.getInt32(12, true)
            })
          } else if (n === 0) {
            return onDead()
          } else if (n < 0) {
            if (fromHostErrno(-n) === Errno.EAGAIN) return
            return onDead()
          }
          // any other length: not from our spawner; skipped
        }
      }

      const flush = (): void => {
        while (outq.length > 0 && !dead) {
          const q = outq[0]
          if (q === undefined) break
          sendBuf.data.set(q.bytes)
          const n = sendBuf.send(sock, q.bytes.length, q.fds)
          if (n < 0 && fromHostErrno(-n) === Errno.EAGAIN) break
          outq.shift()
          for (const fd of q.fds) libc.close(fd)
          if (n < 0) failWaiter(q.seq, fromHostErrno(-n))
        }
        if (!dead) poll.start(UV_READABLE | (outq.length > 0 ? UV_WRITABLE : 0))
      }

      const failWaiter = (s: number, errno: number): void => {
        const w = waiters.get(s)
        if (w === undefined) return
        waiters.delete(s)
        w({ type: -1, a: s, b: -1, c: errno })
      }

      const polled = UvPoll.open(sock, (status, events) => {
        if (status < 0) return onDead()
        if ((events & (UV_READABLE | UV_DISCONNECT)) !== 0) onReadable()
        if ((events & UV_WRITABLE) !== 0) flush()
      })
      if (typeof polled === "number") {
        libc.close(sock)
        sendBuf.free()
        process.kill(spawnerPid, "SIGKILL")
        return yield* Effect.fail(spawnError(fromHostErrno(-polled), `spawner: uv_poll_init failed`))
      }
      const poll: UvPoll = polled
      poll.start(UV_READABLE)

      /**
       * Send data[0, length) with `fds` (now, or queued with duplicates); the
       * waiter gets the reply, or null if the spawner died, or a synthetic
       * failure reply {type -1, c: errno} if the send failed.
       */
      const submit = (s: number, length: number, fds: ReadonlyArray<number>, waiter: Waiter | null): number => {
        if (waiter !== null) waiters.set(s, waiter)
        if (outq.length === 0) {
          const n = sendBuf.send(sock, length, fds)
          if (n >= 0) return 0
          const errno = fromHostErrno(-n)
          if (errno !== Errno.EAGAIN) {
            waiters.delete(s)
            return errno
          }
        }
        const dups: Array<number> = []
        for (const fd of fds) {
          const d = libc.dup(fd)
          if (d < 0) {
            for (const x of dups) libc.close(x)
            waiters.delete(s)
            return fromHostErrno(-d)
          }
          dups.push(d)
        }
        outq.push({ bytes: sendBuf.data.slice(0, length), fds: dups, seq: s })
        poll.start(UV_READABLE | UV_WRITABLE)
        return 0
      }

      const gone = (what: string): SpawnError => spawnError(Errno.EIO, `${what}: spawner ${closing ? "closed" : "gone"}`)

      // The end: SHUTDOWN (it SIGKILLs and reaps every child, sends their EXITs,
      // exits), read until EOF, then wait for its exit.
      yield* Effect.addFinalizer(() =>
        Effect.gen(function* () {
          closing = true
          if (!dead) {
            const s = nextSeq()
            const v = sendBuf.view
            if (outq.length === 0) {
              v.setUint32(0, T_SHUTDOWN, true)
              v.setUint32(4, 0, true)
              v.setUint32(8, 0, true)
              v.setUint32(12, 0, true)
              const r = submit(s, 16, [], null)
              if (r !== 0) onDead()
            } else {
              const bytes = new Uint8Array(16)
              new DataView(bytes.buffer).setUint32(0, T_SHUTDOWN, true)
              outq.push({ bytes, fds: [], seq: s })
            }
          }
          const done = yield* waitAtMost(Deferred.await(eof).pipe(Effect.zipRight(Deferred.await(exited))), reapTimeout)
          if (Option.isNone(done)) {
            yield* Effect.logWarning(`spawner ${spawnerPid} did not finish in time; SIGKILL (its children follow it)`)
            try {
              process.kill(spawnerPid, "SIGKILL")
            } catch {
              // gone
            }
            onDead()
            yield* waitAtMost(Deferred.await(exited), reapTimeout)
          }
          onDead()
          yield* closePoll(poll)
          if (sockOpen) {
            sockOpen = false
            libc.close(sock)
          }
          sendBuf.free()
        })
      )

      // Wait for HELLO: the binary runs and speaks our version. (On failure the
      // finalizer above still closes the socket and waits for the spawner's exit.)
      const greeting = yield* restore(
        Deferred.await(hello).pipe(
          Effect.raceFirst(Deferred.await(eof).pipe(Effect.as(null))),
          Effect.timeout(HELLO_TIMEOUT),
          Effect.option,
          Effect.map(Option.getOrNull)
        )
      )
      if (greeting === null || greeting.a !== VERSION) {
        try {
          process.kill(spawnerPid, "SIGKILL")
        } catch {
          // already gone
        }
        const why = greeting === null ? "no HELLO" : `protocol version ${greeting.a}, want ${VERSION}`
        return yield* Effect.fail(spawnError(Errno.EIO, `spawner ${binary}: ${why}`))
      }

      const spawnAt = (req: SpawnRequest, targets: ReadonlyArray<number>): Effect.Effect<Child, SpawnError> =>
        // Checked, encoded and sent in one synchronous step: nothing else can use sendBuf in between.
        Effect.async<Child, SpawnError>((resume) => {
          const fail = (errno: number, why: string = errnoName(errno)) =>
            resume(Effect.fail(spawnError(errno, `spawn ${req.command}: ${why}`)))
          const closed = req.fds.find((fd) => !fd.isOpen)
          if (closed !== undefined) return fail(Errno.EBADF, `${closed.toString()} is closed`)
          if (targets.length !== req.fds.length) return fail(Errno.EINVAL, "one target per fd")
          if (dead || closing) return resume(Effect.fail(gone(`spawn ${req.command}`)))
          const s = nextSeq()
          const length = encodeSpawn(sendBuf, s, req, targets)
          if (length < 0) return fail(-length)
          let abandoned = false
          const err = submit(
            s,
            length,
            req.fds.map((fd) => fd.num),
            (r) => {
              if (r === null) {
                if (!abandoned) resume(Effect.fail(gone(`spawn ${req.command}`)))
              } else if (r.type !== T_SPAWNED || r.b <= 0) {
                if (!abandoned) fail(r.type === T_SPAWNED ? fromHostErrno(r.c) : r.c)
              } else {
                const pid = r.b
                const exit = Deferred.unsafeMake<ExitStatus>(FiberId.none)
                live.set(pid, { exit })
                // Nobody will learn this pid: it must not outlive the request.
                if (abandoned) sendKill(pid, SIGKILL, null)
                else resume(Effect.succeed({ pid, exit: Deferred.await(exit) }))
              }
            }
          )
          if (err !== 0) return fail(err)
          return Effect.sync(() => {
            abandoned = true
          })
        })

      const sendKill = (pid: number, signo: number, waiter: Waiter | null): number => {
        const s = nextSeq()
        const v = sendBuf.view
        if (outq.length === 0) {
          v.setUint32(0, T_KILL, true)
          v.setUint32(4, s, true)
          v.setInt32(8, pid, true)
          v.setInt32(12, signo, true)
          return submit(s, 16, [], waiter)
        }
        const bytes = new Uint8Array(16)
        const bv = new DataView(bytes.buffer)
        bv.setUint32(0, T_KILL, true)
        bv.setUint32(4, s, true)
        bv.setInt32(8, pid, true)
        bv.setInt32(12, signo, true)
        if (waiter !== null) waiters.set(s, waiter)
        outq.push({ bytes, fds: [], seq: s })
        return 0
      }

      const kill = (pid: number, sig: SignalName): Effect.Effect<void, SpawnError> =>
        Effect.suspend(() => {
          const esrch = () => spawnError(Errno.ESRCH, `kill ${pid} ${sig}: ${errnoName(Errno.ESRCH)}`)
          if (!live.has(pid) || dead) return Effect.fail(esrch())
          return Effect.async<void, SpawnError>((resume) => {
            const err = sendKill(pid, signalNumber(sig), (r) => {
              const errno = r === null ? Errno.ESRCH : r.type === T_KILLED ? fromHostErrno(r.c) : r.c
              resume(
                r !== null && r.type === T_KILLED && r.c === 0
                  ? Effect.void
                  : Effect.fail(spawnError(errno, `kill ${pid} ${sig}: ${errnoName(errno)}`))
              )
            })
            if (err !== 0) resume(Effect.fail(spawnError(err, `kill ${pid} ${sig}: ${errnoName(err)}`)))
          })
        })

      const service: SpawnerProcess = {
        spawnerPid,
        spawnAt,
        spawn: (req) => {
          const at = childNumbers(req)
          return typeof at === "string" ? Effect.fail(spawnError(Errno.EINVAL, `spawn ${req.command}: ${at}`)) : spawnAt(req, at)
        },
        kill,
        ...tableService(live, exits)
      }
      return service
    })
  )

/** The Process service on the spawner; fails if it cannot be started (see `layerOrNode`). */
export const layerWith = (options: SpawnerOptions = {}): Layer.Layer<Process, SpawnError> =>
  Layer.scoped(Process, Effect.map(make(options), (s) => Process.of(s)))

export const layer: Layer.Layer<Process, SpawnError> = layerWith()

/** The spawner's service when it is available and starts, else ProcessNode's (with a warning). */
export const makeOrNode: Effect.Effect<ProcessService, never, Scope.Scope> = makeOr(
  Effect.suspend(() => make()),
  ProcessNode.make,
  (e) => `process spawner unavailable (${e.message}); using Node's spawn`
)

/** The spawner when it is available and starts, else ProcessNode (with a warning). */
export const layerOrNode: Layer.Layer<Process> = Layer.scoped(Process, makeOrNode)

/**
 * Benchmarks of bin/vmm (the build `npm run build` made), each figure beside
 * a C reference measured in the same run (scripts/c/*.c):
 *
 *   start latency      START_VM_END sent -> START_VM_RESPONSE received, with
 *                      the C VM program (c/vmprog.c); C: fork+exec of the
 *                      same program and the same handshake (bench-start.c);
 *                      beside it, as a second reference, the same start done
 *                      by a minimal C vmm on fd 3 (bench-vmmc.c) and timed
 *                      through these same messages, as bin/vmm's is
 *   exit notification  SIGKILL of a VM process -> TERMINATE_VM_EVENT received;
 *                      and, in a second row, the VM's own exit -> the event
 *                      (SIGTERM, the VM program's clock read just before its
 *                      _exit: c/vmprog.c's VMM_TEST_VM_EXIT_STAMP);
 *                      C: SIGCHLD -> waitpid -> write on a socket (bench-exit.c)
 *   info, N VMs        GET_INFO_VM_REQUEST -> GET_INFO_VM_END_DATA; C: statm
 *                      of the same N processes and N DATA imsgs (bench-info.c);
 *                      the replies are read on this thread (poll, read, a
 *                      scan of the headers) for both, so the figure is the
 *                      responder's, not this driver's message handling
 *   start-up           posix_spawn -> first reply to a GET_INFO_VM_REQUEST
 *                      (and, in a second row, Node's spawn -> first reply);
 *                      C: bench-info.c with no VM, alternating with ours
 *   start-up floors    the same start-up of programs that answer that request
 *                      with nothing of the vmm (scripts/floors/): Node alone
 *                      under bin/vmm's #! line; the same through bin/vmm's
 *                      loader (code cache, koffi); + Effect's runtime; + the
 *                      imsg channel. Where bin/vmm's start-up goes, on this host
 *   resident memory    VmRSS of the vmm, idle and with N VMs; C: bench-info.c's
 *
 * Every process gets its channel on fd 3 from this process, and every time
 * is taken here with performance.now(). A timed request is timed from its
 * sendmsg (made on this thread at once, `sendTimed`), not from when this
 * process's fibers queue it; start and exit replies when they arrive on the
 * socket (this thread blocks in poll(2) for them), not when this process's
 * fibers get to them: the C references for those are timed in C. Info is
 * timed through the same driver for both sides.
 *
 *   npx tsx scripts/bench-vmm.ts [--quick] [--spread] [--vms N] [--only start,exit,info,startup]
 *                                [--spawn spawner,direct,node] [--vmm "command args" [--label name]]
 *                                [--samples start=N,exit=N,info=N,ready=N,warm=N]
 *
 * --vmm runs another build of the vmm program instead of bin/vmm (for
 * comparing builds; --label names it in the table); --vms sets the largest
 * VM count (512).
 *
 * Start and exit are measured with each way bin/vmm can start VM processes
 * (--spawn direct: ProcessDirect, the default; --spawn spawner:
 * ProcessSpawner; --spawn node: ProcessNode);
 * the other cases with bin/vmm's default. They are taken in rounds: every
 * vmm (one per Process layer, and the C vmm) runs at once and gives one
 * sample per round, the C references too (bench-start.c in a block of 10
 * between rounds), so that ours and C's are measured across the same
 * stretch of time: the speed of a shared machine drifts by tens of per cent
 * within minutes, and a ratio of figures taken one after the other carries
 * that drift.
 */
import { spawn, execFile } from "node:child_process"
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { loadavg, cpus } from "node:os"
import { promisify } from "node:util"
import { Cause, Deferred, Duration, Effect, Either, Exit, Fiber, Queue, Stream } from "effect"
import type { Scope } from "effect"
import koffi from "koffi"
import { parseArgs } from "../src/cli/args.ts"
import * as ImsgChannelNative from "../src/layers/ImsgChannelNative.ts"
import * as ProcessDirect from "../src/layers/ProcessDirect.ts"
import { spawnerAvailable, spawnerPath } from "../src/layers/ProcessSpawner.ts"
import * as libc from "../src/native/libc.ts"
import { sealInheritedFds } from "../src/native/sys.ts"
import * as M from "../src/parent/messages.ts"
import { openPty } from "../src/parent/pty.ts"
import { createParams } from "../src/parent/spec.ts"
import { binVmm } from "../src/parent/vmmProcess.ts"
import * as T from "../src/schema/imsgTypes.ts"
import { decodeVmopResult, encodeVmopCreateParams } from "../src/schema/structs.ts"
import type { Fd } from "../src/services/Fd.ts"
import type { ProcessService } from "../src/services/Process.ts"
import { ImsgChannel, type Channel, type Imsg, type OutgoingImsg } from "../src/services/ImsgChannel.ts"
import { buildDir, compileVmprog, repoRoot } from "../src/vm/build.ts"
import { defaultVmdConfig } from "../src/vmm/defaults.ts"

// ---------------------------------------------------------------------------
// Options

const argv = process.argv.slice(2)
const quick = argv.includes("--quick")
const optionValue = (name: string): string | undefined => {
  const i = argv.indexOf(name)
  return i < 0 ? undefined : argv[i + 1]
}
const MAX_VMS = Number(optionValue("--vms") ?? 512)
/** --only start,exit,info,startup: run some of the cases. */
const ONLY = new Set((optionValue("--only") ?? "start,exit,info,startup").split(","))
const VMM_COMMAND = (optionValue("--vmm") ?? binVmm.command).split(" ").filter((s) => s !== "")
const SPAWN_METHODS = (optionValue("--spawn") ?? "spawner,direct").split(",")
const N = {
  start: quick ? 30 : 100,
  exit: quick ? 20 : 60,
  info: quick ? 10 : 40,
  ready: quick ? 5 : 15,
  warm: quick ? 3 : 10
}
/** --samples start=500,info=2000: more (or fewer) samples of some cases. */
for (const kv of (optionValue("--samples") ?? "").split(",").filter((s) => s !== "")) {
  const [k, v] = kv.split("=")
  if (k === undefined || !(k in N) || !(Number(v) > 0)) throw new Error(`--samples: bad ${kv}`)
  N[k as keyof typeof N] = Number(v)
}

// ---------------------------------------------------------------------------
// Figures

const sorted = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)
const quantile = (xs: ReadonlyArray<number>, q: number): number => {
  const s = sorted(xs)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN
}
const median = (xs: ReadonlyArray<number>) => quantile(xs, 0.5)

/** --spread: the distribution of each set of samples, on stderr. */
const spread = (what: string, xs: ReadonlyArray<number>) => {
  if (!argv.includes("--spread")) return
  const q = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1].map((p) => quantile(xs, p).toFixed(3))
  console.error(`${what}: min/p10/p25/p50/p75/p90/max ${q.join(" ")} ms`)
}

interface Row {
  readonly name: string
  readonly ours: number
  readonly c: number | null
  readonly unit: "ms" | "MiB"
  readonly goal: string
  readonly met: boolean | null
}

const rows: Array<Row> = []
const notes: Array<string> = []

const fmt = (v: number | null, unit: Row["unit"]) =>
  v === null || Number.isNaN(v) ? "-" : unit === "ms" ? `${v < 10 ? v.toFixed(3) : v.toFixed(1)} ms` : `${v.toFixed(1)} MiB`

const printTable = () => {
  const header = ["case", "ours", "C", "ratio", "goal", "met?"]
  const body = rows.map((r) => [
    r.name,
    fmt(r.ours, r.unit),
    fmt(r.c, r.unit),
    r.c === null || r.c === 0 ? "-" : `${(r.ours / r.c).toFixed(2)}x`,
    r.goal,
    r.met === null ? "-" : r.met ? "yes" : "NO"
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    "| " + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ") + " |"
  console.log(line(header))
  console.log("|" + widths.map((w, i) => (i === 0 ? ":" : "-") + "-".repeat(w) + (i === 0 ? "-" : ":")).join("|") + "|")
  for (const b of body) console.log(line(b))
}

// ---------------------------------------------------------------------------
// Host limits and files

/** 512 VMs need a few thousand fds here and in the vmm: raise the soft RLIMIT_NOFILE to the hard one. */
const raiseNofile = (): number => {
  const RLIMIT_NOFILE = 7
  const getrlimit = libc.self.func("int getrlimit(int resource, _Out_ uint64_t *rlim)")
  const setrlimit = libc.self.func("int setrlimit(int resource, const uint64_t *rlim)")
  const lim = new BigUint64Array(2)
  if ((getrlimit(RLIMIT_NOFILE, lim) as number) !== 0) return -1
  if ((lim[0] ?? 0n) < (lim[1] ?? 0n)) {
    lim[0] = lim[1]!
    if ((setrlimit(RLIMIT_NOFILE, lim) as number) !== 0) notes.push(`setrlimit(RLIMIT_NOFILE): errno ${koffi.errno()}`)
  }
  return Number(lim[0])
}

/** CPU time (user + system, all threads) a process has used, in ms (/proc/<pid>/stat; 10 ms ticks). */
const cpuMs = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) * 10
}

const rssMiB = (pid: number): number => {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"))
  return m === null ? NaN : Number(m[1]) / 1024
}

// ---------------------------------------------------------------------------
// Processes with a channel on fd 3, as vmd's parent starts the vmm

/**
 * Every process started here inherits this one's environment, without
 * NODE_EXTRA_CA_CERTS: vmd's parent would not pass it, and Node reads that
 * file at start-up (50-200 ms on this machine), which is not the vmm's cost.
 */
const extraCaCertsRemoved = process.env["NODE_EXTRA_CA_CERTS"] !== undefined
delete process.env["NODE_EXTRA_CA_CERTS"]

/** A peer still running when its scope ends: SIGTERM, then SIGKILL if it has not exited within 5 s; until it has. */
const stopPeer = (exitedYet: Effect.Effect<boolean>, kill: (sig: "SIGTERM" | "SIGKILL") => Effect.Effect<void>, exited: Effect.Effect<unknown>) =>
  Effect.gen(function* () {
    if (yield* exitedYet) return
    yield* kill("SIGTERM")
    const gone = yield* exited.pipe(Effect.timeout("5 seconds"), Effect.option)
    if (gone._tag === "None") {
      yield* kill("SIGKILL")
      yield* exited
    }
  })

/**
 * spawnPeer, through ProcessDirect (posix_spawn, glibc's CLONE_VFORK: the
 * parent's memory is not copied, and the spawn returns once the child has
 * exec'd), as vmd's parent, a small C process, starts the vmm with
 * fork+exec. Node's spawn (spawnPeer) forks this whole benchmark process
 * first: on this machine that takes 4-10 ms, growing with the benchmark's
 * own memory, and was counted in every start-up figure before session 14,
 * C's included.
 */
const spawnPeerDirect =
  (proc: ProcessService) =>
  (command: string, args: ReadonlyArray<string>): Effect.Effect<Peer, unknown, Scope.Scope | ImsgChannel> =>
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const [ours, theirs] = yield* imsg.socketpair("bench peer")
      const child = yield* Effect.acquireRelease(proc.spawn({ command, args, fds: [theirs], at: [3], stdio: "null" }), (c) =>
        stopPeer(
          Effect.negate(proc.isAlive(c.pid)),
          (sig) => Effect.ignore(proc.kill(c.pid, sig)),
          c.exit
        )
      )
      theirs.closeSync()
      yield* Effect.addFinalizer(() => Effect.sync(() => ours.isOpen && ours.closeSync()))
      return { pid: child.pid, sock: ours, exited: Effect.asVoid(child.exit) }
    })

interface Stamped {
  readonly m: Imsg
  /** performance.now() when the reader got it. */
  readonly at: number
}

interface Peer {
  readonly pid: number
  /** Our end of the socket (raw I/O), until `channel` takes it. */
  readonly sock: Fd
  readonly exited: Effect.Effect<void>
}

/** `command args...` with its end of a socketpair on fd 3; killed (SIGTERM, then SIGKILL) and reaped when the scope ends. */
const spawnPeer = (command: string, args: ReadonlyArray<string>): Effect.Effect<Peer, unknown, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const [ours, theirs] = yield* imsg.socketpair("bench peer")
    const done = yield* Deferred.make<void>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        sealInheritedFds()
        const c = spawn(command, [...args], { stdio: ["ignore", "ignore", "ignore", theirs.num] })
        c.once("exit", () => Deferred.unsafeDone(done, Effect.void))
        c.on("error", (e) => {
          console.error(`${command}: ${e.message}`)
          Deferred.unsafeDone(done, Effect.void)
        })
        return c
      }),
      (c) => stopPeer(Deferred.isDone(done), (sig) => Effect.sync(() => void c.kill(sig)), Deferred.await(done))
    )
    theirs.closeSync()
    yield* Effect.addFinalizer(() => Effect.sync(() => ours.isOpen && ours.closeSync()))
    return { pid: child.pid ?? -1, sock: ours, exited: Deferred.await(done) }
  })

interface Talk {
  readonly channel: Channel
  /** The next message that satisfies `pred`, with the time it arrived. */
  readonly next: (pred: (m: Imsg) => boolean, ms?: number) => Effect.Effect<Stamped, Error>
  /**
   * Queue `msg` and write it now, on this thread (with anything queued
   * before it); the time just before its sendmsg: when the request was sent.
   */
  readonly sendTimed: (msg: OutgoingImsg) => Effect.Effect<number, Error>
  /**
   * Write what is queued, then block this thread in poll(2) until the peer's
   * next bytes arrive, and return that time: the arrival without this
   * process's event loop and fibers in it (the C references time themselves).
   */
  readonly arrival: (ms?: number) => Effect.Effect<number, Error>
  /** The next message, which must satisfy `pred` (nothing else may have come first). */
  readonly only: (pred: (m: Imsg) => boolean, ms?: number) => Effect.Effect<Stamped, Error>
  /**
   * Write what is queued, then read the peer's replies on this thread
   * (poll(2) and read(2), no event loop, fibers or message objects) up to
   * and including the first message of `type` for `peerid`, and return the
   * time its last byte arrived. The replies must carry no fd and nothing may
   * follow that message (info: GET_INFO_VM_DATA... then END_DATA).
   */
  readonly drainUntil: (type: number, peerid: number, ms?: number) => Effect.Effect<number, Error>
}

/** poll(2) for readable on `fd`, blocking this thread; the time it returned. */
const blockUntilReadable = (fd: number, ms: number): number => {
  const r = libc.pollOne(fd, false, ms)
  const at = performance.now()
  if (r <= 0) throw new Error(r === 0 ? `nothing arrived within ${ms} ms` : `poll: errno ${-r}`)
  return at
}

const talk = (peer: Peer): Effect.Effect<Talk, unknown, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const channel = yield* imsg.open(peer.sock)
    const inbox = yield* Queue.unbounded<Stamped>()
    yield* channel.messages.pipe(
      Stream.runForEach((m) => {
        m.fd?.closeSync()
        return Queue.offer(inbox, { m, at: performance.now() })
      }),
      Effect.ignore,
      Effect.forkScoped
    )
    const next = (pred: (m: Imsg) => boolean, ms = 30_000) =>
      Effect.gen(function* () {
        for (;;) {
          const s = yield* Queue.take(inbox).pipe(
            Effect.timeoutFail({ duration: Duration.millis(ms), onTimeout: () => new Error(`no reply within ${ms} ms`) })
          )
          if (pred(s.m)) return s
        }
      })
    const arrival = (ms = 30_000) =>
      Effect.zipRight(
        channel.flush,
        Effect.try({ try: () => blockUntilReadable(peer.sock.num, ms), catch: (e) => e as Error })
      )
    const only = (pred: (m: Imsg) => boolean, ms = 30_000) =>
      Effect.flatMap(next(() => true, ms), (s) =>
        pred(s.m) ? Effect.succeed(s) : Effect.fail(new Error(`unexpected ${T.imsgTypeName(s.m.type)} first`))
      )
    const drainUntil = (type: number, peerid: number, ms = 30_000) =>
      Effect.zipRight(
        channel.flush,
        Effect.try({ try: () => drainFrames(peer.sock.num, type, peerid, ms), catch: (e) => e as Error })
      )
    const sendTimed = (msg: OutgoingImsg) =>
      Effect.suspend(() => {
        const e = channel.unsafeSend(msg)
        if (e !== null) return Effect.fail(new Error(`send: ${e.message}`))
        const t0 = performance.now()
        channel.unsafeWritePending()
        return Effect.succeed(t0)
      })
    return { channel, next, sendTimed, arrival, only, drainUntil }
  })

const drainBuf = new Uint8Array(1 << 20)
const drainView = new DataView(drainBuf.buffer)

/** talk's drainUntil, on the socket itself. */
const drainFrames = (fd: number, type: number, peerid: number, ms: number): number => {
  const deadline = performance.now() + ms
  let have = 0
  let off = 0
  for (;;) {
    const n = libc.read(fd, drainBuf.subarray(have))
    if (n === 0) throw new Error("EOF while draining replies")
    if (n < 0) {
      if (n !== -11) throw new Error(`read: errno ${-n}`)
      blockUntilReadable(fd, Math.max(1, Math.ceil(deadline - performance.now())))
      continue
    }
    const at = performance.now()
    have += n
    while (have - off >= 16) {
      const len = drainView.getUint32(off + 4, true) & 0x7fffffff
      if (len < 16) throw new Error(`bad imsg length ${len}`)
      if (have - off < len) break
      if (drainView.getUint32(off, true) === type && drainView.getUint32(off + 8, true) === peerid) {
        if (off + len !== have) throw new Error("bytes after the awaited message")
        return at
      }
      off += len
    }
    drainBuf.copyWithin(0, off, have)
    have -= off
    off = 0
  }
}

const isType = (type: number) => (m: Imsg) => m.type === type
const resultOf = (m: Imsg) => Either.getOrThrow(decodeVmopResult(m.data))

// ---------------------------------------------------------------------------
// Driving bin/vmm

interface Files {
  readonly dir: string
  readonly vmprog: string
  readonly kernel: string
  readonly disk: string
  readonly cStart: string
  readonly cExit: string
  readonly cInfo: string
  readonly cVmm: string
}

const vmmArgs = (files: Files, extra: ReadonlyArray<string>) => [
  ...extra,
  "-P",
  "vmm",
  "--backend",
  "process",
  "--vm-exec",
  files.vmprog
]

const owned = (n: number, what: string): Fd => {
  if (n < 0) throw new Error(`${what}: errno ${-n}`)
  return libc.nativeFd(n, what)
}

/** A started bin/vmm (or `command`, a C reference on fd 3) with CONFIG sent. */
const vmmUnderTest = (files: Files, extra: ReadonlyArray<string> = [], command: ReadonlyArray<string> = VMM_COMMAND) =>
  Effect.gen(function* () {
    const peer = yield* spawnPeer(command[0]!, [...command.slice(1), ...vmmArgs(files, extra)])
    const t = yield* talk(peer)
    yield* t.channel.send(M.config(defaultVmdConfig()))
    let peerid = 1000
    const info = Effect.gen(function* () {
      const id = ++peerid
      const t0 = performance.now()
      yield* t.channel.send(M.getInfo(id))
      const end = yield* t.next((m) => m.type === T.IMSG_VMDOP_GET_INFO_VM_END_DATA && m.peerid === id)
      return end.at - t0
    })
    /** `info` timed by reading the replies on this thread (talk's drainUntil): when nothing else is in flight. */
    const infoDrained = Effect.gen(function* () {
      const id = ++peerid
      const t0 = yield* t.sendTimed(M.getInfo(id))
      const at = yield* t.drainUntil(T.IMSG_VMDOP_GET_INFO_VM_END_DATA, id)
      return at - t0
    })
    return { peer, t, info, infoDrained, peerid: () => ++peerid }
  })

type Vmm = Effect.Effect.Success<ReturnType<typeof vmmUnderTest>>

const paramsFor = (name: string, files: Files, full: boolean) =>
  Either.getOrThrow(
    encodeVmopCreateParams(
      createParams(full ? { name, kernel: files.kernel, disks: [[files.disk]], nics: 1 } : { name, kernel: files.kernel }, full ? ["tap0"] : [])
    )
  )

/**
 * config_setvm for VM `vmid`; the time from START_VM_END sent to
 * START_VM_RESPONSE received, after a barrier (an info round trip) so that
 * the earlier messages are handled before the clock starts. `full`: kernel,
 * disk, tap and pty (as bench-start.c); else kernel and /dev/null as tty.
 */
const startOne = (vmm: Vmm, files: Files, vmid: number, full: boolean) =>
  Effect.gen(function* () {
    const kernel = owned(libc.open(files.kernel, libc.O_RDONLY), "kernel")
    let disks: Array<Array<Fd>> = []
    let taps: Array<Fd> = []
    let hostTap: Fd | null = null
    let tty: Fd
    if (full) {
      disks = [[owned(libc.open(files.disk, libc.O_RDWR), "disk")]]
      const pair = libc.socketpair(libc.AF_UNIX, libc.SOCK_STREAM | libc.SOCK_CLOEXEC)
      if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
      taps = [libc.nativeFd(pair[0], "tap")]
      hostTap = libc.nativeFd(pair[1], "tap host")
      tty = Either.getOrThrow(openPty("tty")).master
    } else {
      tty = owned(libc.open("/dev/null", libc.O_RDWR), "tty")
    }
    const messages = M.startVm(vmid, paramsFor(`vm${vmid}`, files, full), { kernel, cdrom: null, disks, taps, tty })
    for (const m of messages.slice(0, -1)) yield* vmm.t.channel.send(m)
    yield* vmm.info
    const t0 = yield* vmm.t.sendTimed(messages.at(-1)!)
    const at = yield* vmm.t.arrival()
    const reply = yield* vmm.t.only(isType(T.IMSG_VMDOP_START_VM_RESPONSE))
    hostTap?.closeSync()
    const r = resultOf(reply.m)
    if (r.vmr_result !== 0) throw new Error(`start of vm${vmid}: result ${r.vmr_result}`)
    return { ms: at - t0, pid: r.vmr_pid }
  })

const stopForced = (vmm: Vmm, vmid: number) =>
  Effect.gen(function* () {
    yield* vmm.t.channel.send(M.terminateVm(vmm.peerid(), vmid, true))
    yield* vmm.t.next((m) => m.type === T.IMSG_VMDOP_TERMINATE_VM_EVENT && resultOf(m).vmr_id === vmid)
  })

// ---------------------------------------------------------------------------
// The cases

interface Subject {
  readonly label: string
  readonly flag: ReadonlyArray<string>
}

/** Each round visits its subjects in a rotated order, so that none is always first after the others. */
const rotated = <A>(xs: ReadonlyArray<A>, round: number): Array<A> => xs.map((_, k) => xs[(round + k) % xs.length]!)

/** C's fork+exec and handshake per block of the start rounds (bench-start.c, a process per block: its first, colder start is dropped). */
const C_BLOCK = 10

const cStartBlock = (files: Files, n: number) =>
  Effect.promise(async () => {
    const { stdout } = await promisify(execFile)(files.cStart, [files.vmprog, files.kernel, files.disk, String(n + 1)])
    return stdout
      .trim()
      .split("\n")
      .map((l) => Number(l) / 1000)
      .slice(1)
  })

/**
 * Start latency of bin/vmm with each Process layer and of the C vmm
 * (bench-vmmc.c), all running at once: each round starts and stops a VM in
 * each of them in turn, and C's bare fork+exec and handshake (bench-start.c)
 * run in blocks between rounds, so that every figure is taken across the
 * same stretch of the machine's load rather than one after the other.
 */
const startLatencies = (files: Files, layers: ReadonlyArray<Subject>) =>
  Effect.scoped(
    Effect.gen(function* () {
      const all = [{ label: "C vmm", flag: [], command: [files.cVmm, files.vmprog] }, ...layers.map((l) => ({ ...l, command: VMM_COMMAND }))]
      const subjects: Array<(typeof all)[number] & { vmm: Vmm; samples: Array<number>; cpu: number }> = []
      for (const s of all) subjects.push({ ...s, vmm: yield* vmmUnderTest(files, s.flag, s.command), samples: [], cpu: 0 })
      const c: Array<number> = []
      for (let i = 1; i <= N.warm + N.start; i++) {
        if (i > N.warm && (i - N.warm - 1) % C_BLOCK === 0) c.push(...(yield* cStartBlock(files, Math.min(C_BLOCK, N.warm + N.start - i + 1))))
        for (const s of rotated(subjects, i)) {
          // each vmm's CPU over its own start and stop only (not while it idles through the others')
          const cpu0 = cpuMs(s.vmm.peer.pid)
          const { ms } = yield* startOne(s.vmm, files, i, true)
          yield* stopForced(s.vmm, i)
          if (i > N.warm) {
            s.samples.push(ms)
            s.cpu += cpuMs(s.vmm.peer.pid) - cpu0
          }
        }
      }
      for (const s of subjects)
        if (s.command === VMM_COMMAND)
          notes.push(`vmm CPU per start + forced stop (${s.label}): ${(s.cpu / N.start).toFixed(3)} ms (user+system, all threads, over ${N.start} cycles)`)
      return { c, cVmm: subjects[0]!.samples, ours: subjects.slice(1).map((s) => ({ label: s.label, samples: s.samples })) }
    })
  )

/**
 * performance.now() at CLOCK_MONOTONIC 0, in ns (Node's performance.now()
 * and process.hrtime both read CLOCK_MONOTONIC): to set a VM's exit stamp on
 * this process's clock. The pair read closest together of a few.
 */
const monotonicOriginNs = (): bigint => {
  let best = -1n
  let gap = Infinity
  for (let i = 0; i < 20; i++) {
    const a = performance.now()
    const ns = process.hrtime.bigint()
    const b = performance.now()
    if (b - a < gap) {
      gap = b - a
      best = ns - BigInt(Math.round(((a + b) / 2) * 1e6))
    }
  }
  return best
}

/**
 * Exit notification of bin/vmm with each Process layer and of C
 * (bench-exit.c: SIGCHLD -> waitpid -> write), all running at once, a sample
 * of each per round, two ways:
 *  - from the kill: SIGKILL of the VM process, the clock read before kill(2);
 *  - from the VM's exit: SIGTERM, whose handler in the VM program writes
 *    CLOCK_MONOTONIC into a mapped file just before _exit (c/vmprog.c,
 *    VMM_TEST_VM_EXIT_STAMP). This leaves out what the kill adds: the kernel
 *    waking the VM process, asleep in its read, for the signal (~0.2 ms here,
 *    session 14's trace). A VM process that exits on its own (its guest
 *    halted, or it failed) is running when it does.
 * Both end when the event's first byte can be read.
 */
const exitLatencies = (files: Files, layers: ReadonlyArray<Subject>) =>
  Effect.scoped(
    Effect.gen(function* () {
      const imsg = yield* ImsgChannel
      const stampDir = join(files.dir, "exit-stamps")
      mkdirSync(stampDir)
      // inherited by bench-exit and the vmms started here, and by their VM processes
      const before = process.env["VMM_TEST_VM_EXIT_STAMP"]
      process.env["VMM_TEST_VM_EXIT_STAMP"] = stampDir
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          if (before === undefined) delete process.env["VMM_TEST_VM_EXIT_STAMP"]
          else process.env["VMM_TEST_VM_EXIT_STAMP"] = before
        })
      )
      const origin = monotonicOriginNs()
      /** The VM's exit stamp, on performance.now()'s clock; checked to lie between the signal and the event. */
      const exitedAt = (pid: number, signalled: number, at: number): number => {
        const file = join(stampDir, String(pid))
        const bytes = readFileSync(file)
        rmSync(file)
        const ns = bytes.length === 8 ? bytes.readBigUInt64LE(0) : 0n
        if (ns === 0n) throw new Error(`VM ${pid} left no exit stamp`)
        const ms = Number(ns - origin) / 1e6
        if (ms < signalled - 0.01 || ms > at + 0.01) throw new Error(`VM ${pid}: exit stamp ${ms} outside ${signalled}..${at}`)
        return ms
      }
      /** A sample's figure: from the kill (SIGKILL), or from the VM's exit stamp (SIGTERM), to `at`. */
      const latency = (signal: "SIGKILL" | "SIGTERM", pid: number, t0: number, at: number): number =>
        signal === "SIGKILL" ? at - t0 : at - exitedAt(pid, t0, at)
      type Sample = { readonly kill: number; readonly exit: number }
      const peer = yield* spawnPeer(files.cExit, [files.vmprog])
      const cOne = (signal: "SIGKILL" | "SIGTERM") =>
        Effect.gen(function* () {
          yield* imsg.writeRaw(peer.sock, Uint8Array.of(1), 5000)
          const raw = yield* imsg.readRaw(peer.sock, 4, 5000)
          const pid = new DataView(raw.buffer, raw.byteOffset, 4).getInt32(0, true)
          // bench-exit writes the pid before the exec: a SIGTERM must wait for the handler,
          // which the program installs before it makes its stamp file
          if (signal === "SIGTERM") {
            const deadline = performance.now() + 5000
            while (!existsSync(join(stampDir, String(pid)))) {
              if (performance.now() > deadline) return yield* Effect.die(new Error(`VM ${pid} made no exit stamp file`))
              yield* Effect.sleep("1 millis")
            }
          }
          yield* Effect.sleep("5 millis") // let it settle in its read
          const t0 = performance.now()
          process.kill(pid, signal)
          const at = blockUntilReadable(peer.sock.num, 5000)
          yield* imsg.readRaw(peer.sock, 16 + 28, 5000)
          return latency(signal, pid, t0, at)
        })
      const cSample = Effect.gen(function* () {
        return { kill: yield* cOne("SIGKILL"), exit: yield* cOne("SIGTERM") }
      })
      const ourOne = (vmm: Vmm, vmid: number, signal: "SIGKILL" | "SIGTERM") =>
        Effect.gen(function* () {
          const { pid } = yield* startOne(vmm, files, vmid, false)
          yield* Effect.sleep("5 millis")
          const t0 = performance.now()
          process.kill(pid, signal)
          const at = yield* vmm.t.arrival()
          yield* vmm.t.only(isType(T.IMSG_VMDOP_TERMINATE_VM_EVENT))
          return latency(signal, pid, t0, at)
        })
      const ourSample = (vmm: Vmm, i: number) =>
        Effect.gen(function* () {
          return { kill: yield* ourOne(vmm, 2 * i, "SIGKILL"), exit: yield* ourOne(vmm, 2 * i + 1, "SIGTERM") }
        })
      const subjects: Array<{ label: string; sample: (i: number) => Effect.Effect<Sample, unknown>; samples: Array<Sample> }> = [
        { label: "C", sample: () => cSample, samples: [] }
      ]
      for (const l of layers) {
        const vmm = yield* vmmUnderTest(files, l.flag)
        subjects.push({ label: l.label, sample: (i) => ourSample(vmm, i), samples: [] })
      }
      for (let i = 1; i <= N.warm + N.exit; i++) {
        for (const s of rotated(subjects, i)) {
          const ms = yield* s.sample(i)
          if (i > N.warm) s.samples.push(ms)
        }
      }
      const split = (samples: ReadonlyArray<Sample>) => ({ kill: samples.map((x) => x.kill), exit: samples.map((x) => x.exit) })
      return { c: split(subjects[0]!.samples), ours: subjects.slice(1).map((s) => ({ label: s.label, ...split(s.samples) })) }
    })
  )

/** Info at 1, 64 and MAX_VMS VMs (vmprog), ours and C on the same VM processes; RSS of both at the largest. */
const infoAndRss = (files: Files) =>
  Effect.scoped(
    Effect.gen(function* () {
      const vmm = yield* vmmUnderTest(files)
      const levels = [1, 64, MAX_VMS].filter((n, i, a) => n <= MAX_VMS && a.indexOf(n) === i)
      const pids: Array<number> = []
      const out: Array<{ vms: number; ours: Array<number>; c: Array<number>; rssOurs: number; rssC: number }> = []
      for (const level of levels) {
        while (pids.length < level) pids.push((yield* startOne(vmm, files, pids.length + 1, false)).pid)
        const ours: Array<number> = []
        let cpu0 = 0
        for (let i = 0; i < N.warm + N.info; i++) {
          if (i === N.warm) cpu0 = cpuMs(vmm.peer.pid)
          const ms = yield* vmm.infoDrained
          if (i >= N.warm) ours.push(ms)
        }
        notes.push(
          `vmm CPU per info at ${level} VM${level === 1 ? "" : "s"}: ${((cpuMs(vmm.peer.pid) - cpu0) / N.info).toFixed(3)} ms (user+system, all threads, over ${N.info} requests)`
        )
        const { c, rssC } = yield* Effect.scoped(
          Effect.gen(function* () {
            const peer = yield* spawnPeer(files.cInfo, pids.map(String))
            const t = yield* talk(peer)
            const c: Array<number> = []
            for (let i = 0; i < N.warm + N.info; i++) {
              const t0 = yield* t.sendTimed(M.getInfo(i + 1))
              const at = yield* t.drainUntil(T.IMSG_VMDOP_GET_INFO_VM_END_DATA, i + 1)
              if (i >= N.warm) c.push(at - t0)
            }
            return { c, rssC: rssMiB(peer.pid) }
          })
        )
        out.push({ vms: level, ours, c, rssOurs: rssMiB(vmm.peer.pid), rssC })
      }
      return out
    })
  )

type SpawnPeer = typeof spawnPeer

/**
 * One start-up of `command`, started by `spawnWith`: spawn -> the first
 * GET_INFO_VM_END_DATA; with `rss`, its VmRSS after a second idle.
 */
const startUpOnce = (command: ReadonlyArray<string>, rss: boolean, spawnWith: SpawnPeer) =>
  Effect.scoped(
    Effect.gen(function* () {
      const t0 = performance.now()
      const peer = yield* spawnWith(command[0]!, command.slice(1))
      const t = yield* talk(peer)
      yield* t.channel.send(M.getInfo(1))
      const end = yield* t.next(isType(T.IMSG_VMDOP_GET_INFO_VM_END_DATA))
      let mib = NaN
      if (rss) {
        yield* Effect.sleep("1 second")
        mib = rssMiB(peer.pid)
      }
      // close fd 3: the vmm exits 0
      yield* t.channel.close
      yield* peer.exited.pipe(Effect.timeout("10 seconds"), Effect.ignore)
      return { ms: end.at - t0, rss: mib }
    })
  )

/** A start-up floor: a program that answers the request with nothing of the vmm (scripts/floors/). */
interface Floor {
  readonly name: string
  readonly command: ReadonlyArray<string>
}

/**
 * The start-up floors, built into `dir`. scripts/floors/node.ts bundled
 * alone under bin/vmm's #! line (Node's start-up and the answer), then
 * node.ts, effect.ts and channel.ts each as bin/vmm's program is: bundled
 * by scripts/build.mjs --out, beside a copy of bin/vmm (its loader), with a
 * code cache trained by scripts/train-vmm-cache.mjs --root.
 */
const buildFloors = async (dir: string): Promise<ReadonlyArray<Floor>> => {
  const run = promisify(execFile)
  const { build } = await import("esbuild")
  const alone = join(dir, "floor-node.cjs")
  await build({
    entryPoints: [join(repoRoot, "scripts/floors/node.ts")],
    outfile: alone,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "cjs",
    minifyWhitespace: true,
    banner: { js: readFileSync(join(repoRoot, "bin", "vmm"), "utf8").split("\n")[0]! },
    logLevel: "warning"
  })
  chmodSync(alone, 0o755)
  const throughLoader = async (program: string, name: string): Promise<Floor> => {
    const root = join(dir, `floor-${program}`)
    mkdirSync(join(root, "bin"), { recursive: true })
    for (const f of ["vmm", "package.json"]) copyFileSync(join(repoRoot, "bin", f), join(root, "bin", f))
    symlinkSync(join(repoRoot, "node_modules"), join(root, "node_modules"))
    await run(process.execPath, [join(repoRoot, "scripts", "build.mjs"), "--entry", join(repoRoot, "scripts", "floors", `${program}.ts`), "--out", join(root, "dist")])
    await run(process.execPath, [join(repoRoot, "scripts", "train-vmm-cache.mjs"), "--root", root])
    if (!existsSync(join(root, "dist", "vmm.cache"))) throw new Error(`start-up floor ${program}: no code cache was made`)
    return { name, command: [join(root, "bin", "vmm")] }
  }
  return [
    { name: "Node alone (bin/vmm's #! line)", command: [alone] },
    await throughLoader("node", "+ bin/vmm's loader, code cache, koffi"),
    await throughLoader("effect", "+ Effect's runtime (a fiber answers)"),
    await throughLoader("channel", "+ the imsg channel (ImsgChannelNative)")
  ]
}

interface StartUps {
  readonly samples: Array<number>
  /** Started with Node's spawn (as before session 14), in the same rounds. */
  readonly viaNode: Array<number>
  rss: number
}

/**
 * Start-up of ours and of C, alternating, each started both ways in every
 * round (the first round is not counted); RSS idle after the second. The
 * floors in the same rounds, started the first way only.
 */
const startUps = (ours: ReadonlyArray<string>, c: ReadonlyArray<string>, floors: ReadonlyArray<Floor>) =>
  Effect.scoped(
    Effect.gen(function* () {
      // Where posix_spawn cannot be used, both rows are Node's spawn (a note says so).
      const viaDirect = DIRECT_UNAVAILABLE === null ? spawnPeerDirect(yield* ProcessDirect.make()) : spawnPeer
      const out: { ours: StartUps; c: StartUps; floors: Array<Array<number>> } = {
        ours: { samples: [], viaNode: [], rss: NaN },
        c: { samples: [], viaNode: [], rss: NaN },
        floors: floors.map(() => [])
      }
      const floorOrder = floors.map((_, k) => k)
      for (let i = 0; i < N.ready + 1; i++) {
        // the floors first, in turns, then ours and C's alternating as they always have
        for (const k of rotated(floorOrder, i)) {
          const r = yield* startUpOnce(floors[k]!.command, false, viaDirect)
          if (i > 0) out.floors[k]!.push(r.ms)
        }
        for (const [which, command] of rotated([["ours", ours], ["c", c]] as const, i)) {
          for (const direct of i % 2 === 0 ? [true, false] : [false, true]) {
            const r = yield* startUpOnce(command, i === 1 && direct, direct ? viaDirect : spawnPeer)
            if (i > 0) (direct ? out[which].samples : out[which].viaNode).push(r.ms)
            if (i === 1 && direct) out[which].rss = r.rss
          }
        }
      }
      return out
    })
  )

/** Why start-up cannot be timed from a posix_spawn here, or null. */
const DIRECT_UNAVAILABLE = ProcessDirect.directUnavailable()

// ---------------------------------------------------------------------------

const compile = (src: string, out: string) =>
  promisify(execFile)("gcc", ["-O2", "-Wall", "-o", out, join(repoRoot, src)]).then(() => out)

const setup = Effect.promise(async (): Promise<Files> => {
  const dir = buildDir("bench")
  const kernel = join(dir, "bsd")
  const disk = join(dir, "disk.img")
  writeFileSync(kernel, "kernel")
  writeFileSync(disk, "disk")
  const [vmprog, cStart, cExit, cInfo, cVmm] = await Promise.all([
    compileVmprog(dir),
    compile("scripts/c/bench-start.c", join(dir, "bench-start")),
    compile("scripts/c/bench-exit.c", join(dir, "bench-exit")),
    compile("scripts/c/bench-info.c", join(dir, "bench-info")),
    compile("scripts/c/bench-vmmc.c", join(dir, "bench-vmmc"))
  ])
  return { dir, vmprog, kernel, disk, cStart, cExit, cInfo, cVmm }
})

/** Whether bin/vmm takes this flag (its own parser says so). */
const accepts = (flag: ReadonlyArray<string>) => flag.length > 0 && Either.isRight(parseArgs([...flag, "-P", "vmm"]))

const main = Effect.gen(function* () {
  const nofile = raiseNofile()
  const files = yield* Effect.acquireRelease(setup, (f) => Effect.sync(() => rmSync(f.dir, { recursive: true, force: true })))
  console.log(`bench-vmm: node ${process.version}, ${cpus().length} cpus, load ${loadavg().map((l) => l.toFixed(2)).join(" ")}, RLIMIT_NOFILE ${nofile}`)
  if (optionValue("--vmm") !== undefined) console.log(`vmm program: ${VMM_COMMAND.join(" ")}`)
  console.log("The machine is shared and noisy: compare each figure with the C reference beside it, taken in the same run.\n")

  const layerName = (method: string) =>
    method === "spawner" ? "ProcessSpawner" : method === "direct" ? "ProcessDirect" : method === "node" ? "ProcessNode" : method
  const defaults = parseArgs(["-P", "vmm"])
  const defaultMethod = Either.isRight(defaults) && defaults.right.mode === "vmm" ? defaults.right.spawn : "?"
  const methods = SPAWN_METHODS.filter((m) => accepts(["--spawn", m]))
  const layers: Array<{ label: string; flag: ReadonlyArray<string> }> =
    optionValue("--vmm") !== undefined || methods.length === 0
      ? [{ label: optionValue("--label") ?? "default", flag: [] }]
      : methods.map((m) => ({ label: layerName(m), flag: ["--spawn", m] }))
  notes.push(`info, start-up and memory: bin/vmm's default Process layer (${layerName(defaultMethod)})`)
  if (!spawnerAvailable()) notes.push(`${spawnerPath()} is missing: --spawn spawner fell back to ProcessNode (run npm run build)`)

  if (ONLY.has("start")) {
    console.error("start latency ...")
    const { c: cStart, cVmm: cVmmStart, ours } = yield* startLatencies(files, layers)
    spread("start C", cStart)
    spread("start C vmm", cVmmStart)
    for (const { label, samples } of ours) {
      spread(`start ${label}`, samples)
      rows.push({ name: `start latency, median (${label})`, ours: median(samples), c: median(cStart), unit: "ms", goal: "<= 1.5x C", met: median(samples) <= 1.5 * median(cStart) })
      rows.push({
        name: `start latency, p90 (${label})`,
        ours: quantile(samples, 0.9),
        c: quantile(cStart, 0.9),
        unit: "ms",
        goal: "<= 1.5x C",
        met: quantile(samples, 0.9) <= 1.5 * quantile(cStart, 0.9)
      })
      rows.push({
        name: `start latency, median (${label}) beside a C vmm through the same messages`,
        ours: median(samples),
        c: median(cVmmStart),
        unit: "ms",
        goal: "-",
        met: null
      })
    }
  }

  if (ONLY.has("exit")) {
    console.error("exit notification ...")
    const { c: cExit, ours } = yield* exitLatencies(files, layers)
    spread("exit C, from the kill", cExit.kill)
    spread("exit C, from the VM's exit", cExit.exit)
    for (const { label, kill, exit } of ours) {
      spread(`exit ${label}, from the kill`, kill)
      spread(`exit ${label}, from the VM's exit`, exit)
      rows.push({ name: `exit notification from the kill, median (${label})`, ours: median(kill), c: median(cExit.kill), unit: "ms", goal: "< 1 ms", met: median(kill) < 1 })
      rows.push({ name: `exit notification from the VM's exit, median (${label})`, ours: median(exit), c: median(cExit.exit), unit: "ms", goal: "< 1 ms", met: median(exit) < 1 })
    }
    notes.push(
      "exit notification: from the kill = SIGKILL of the VM process (as every session before 15); from the VM's exit = SIGTERM, timed from the VM program's CLOCK_MONOTONIC just before its _exit (c/vmprog.c), without the kernel's wake-up of the sleeping VM process for the signal"
    )
  }

  if (ONLY.has("info")) console.error(`info with 1, 64 and ${MAX_VMS} VMs ...`)
  const info = ONLY.has("info") ? yield* infoAndRss(files) : []
  for (const level of info) {
    spread(`info ${level.vms} ours`, level.ours)
    spread(`info ${level.vms} C`, level.c)
    const atMax = level.vms === MAX_VMS
    rows.push({
      name: `info, ${level.vms} VM${level.vms === 1 ? "" : "s"}, median`,
      ours: median(level.ours),
      c: median(level.c),
      unit: "ms",
      goal: atMax ? "< 5 ms" : "-",
      met: atMax ? median(level.ours) < 5 : null
    })
  }

  if (ONLY.has("startup")) {
    console.error("start-up ...")
    const floors = yield* Effect.promise(() => buildFloors(files.dir))
    const { ours: oursReady, c: cReady, floors: floorSamples } = yield* startUps([...VMM_COMMAND, ...vmmArgs(files, [])], [files.cInfo], floors)
    rows.push({ name: "start-up to ready, median", ours: median(oursReady.samples), c: median(cReady.samples), unit: "ms", goal: "< 100 ms", met: median(oursReady.samples) < 100 })
    rows.push({ name: "start-up, started by Node's spawn", ours: median(oursReady.viaNode), c: median(cReady.viaNode), unit: "ms", goal: "-", met: null })
    floors.forEach((f, k) => {
      spread(`start-up floor ${f.name}`, floorSamples[k]!)
      rows.push({ name: `start-up floor: ${f.name}`, ours: median(floorSamples[k]!), c: null, unit: "ms", goal: "-", met: null })
    })
    notes.push(
      "start-up floors: programs that answer the same request with nothing of the vmm (scripts/floors/), in the same rounds, started as the first row; each row adds to the one above it, and the vmm adds its own services to the last"
    )
    notes.push(
      DIRECT_UNAVAILABLE === null
        ? "start-up: started with posix_spawn, as vmd's C parent starts the vmm (fork+exec); the row after it starts the same programs with Node's spawn, which forks this benchmark process first (every start-up figure before session 14)"
        : `start-up: posix_spawn cannot be used here (${DIRECT_UNAVAILABLE}): both start-up rows are started with Node's spawn, which forks this benchmark process first`
    )
    rows.push({ name: "resident memory, idle", ours: oursReady.rss, c: cReady.rss, unit: "MiB", goal: "< 80 MiB", met: oursReady.rss < 80 })
  }
  const largest = info.at(-1)
  if (largest !== undefined)
    rows.push({
      name: `resident memory, ${largest.vms} VMs`,
      ours: largest.rssOurs,
      c: largest.rssC,
      unit: "MiB",
      goal: "< 80 MiB",
      met: largest.rssOurs < 80
    })

  console.log()
  printTable()
  console.log(
    `\nsamples: start ${N.start}, exit ${N.exit}, info ${N.info} per size, start-up ${N.ready} (after ${N.warm} warm-up rounds; start-up after 1)`
  )
  if (extraCaCertsRemoved) notes.push("NODE_EXTRA_CA_CERTS was removed from the vmm's environment (Node reads it at start-up)")
  for (const n of notes) console.log(`note: ${n}`)
  console.log(`load average after: ${loadavg().map((l) => l.toFixed(2)).join(" ")}`)
})

// Interrupted (Ctrl-C, a closed pipe): the scopes still close, so the vmm, its VMs and the build directory go.
const fiber = Effect.runFork(main.pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer)))
const stop = () => Effect.runFork(Fiber.interrupt(fiber))
process.once("SIGINT", stop)
process.once("SIGTERM", stop)
process.stdout.on("error", stop)
fiber.addObserver((exit) => {
  if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) console.error("bench-vmm:", Cause.pretty(exit.cause))
  process.exit(Exit.isSuccess(exit) ? 0 : 1)
})

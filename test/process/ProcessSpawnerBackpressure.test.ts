/**
 * The spawner (c/spawner.c) driven directly over its socket, with a peer
 * that does not read: dead children must still be reaped at once (no zombie
 * waits for the vmm to read its EXIT), every reply must come later, in
 * order, and an EXIT must come before any later reply that depends on it.
 *
 * The spawner's end of the socket gets the smallest send buffer the kernel
 * allows (SO_SNDBUF, a few KiB: a handful of 16-byte replies, as each one
 * costs a whole skb), so almost all of the 400 replies of 200 spawns have
 * to wait in the spawner's own queue. A spawner that sends its replies
 * blocking (as it did before) stops in send after a few of them and leaves
 * every child that exits meanwhile a zombie: this test fails on it.
 *
 * And a SPAWN whose child is slow to exec must not stop the spawner: a
 * fanotify permission mark (FAN_OPEN_EXEC_PERM, root only; skipped without
 * it) holds the child in execve for as long as the test likes, and meanwhile
 * another child is killed, reaped and reported. A spawner that waits for
 * the exec (vfork, or fork and a blocking read of the exec pipe, as it did
 * before) reads nothing meanwhile: this test fails on it.
 */
import { F_EARLY, T_EXIT, T_HELLO, T_KILL, T_KILLED, T_SHUTDOWN, T_SPAWN, T_SPAWNED, VERSION } from "../../src/layers/ProcessSpawner.ts"
import { procStat } from "../e2e/proc.ts"
import { describe, expect, it } from "vitest"
import { execFileSync, spawn } from "node:child_process"
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { constants as osConstants, tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import koffi from "koffi"
import * as libc from "../../src/native/libc.ts"
import { FAN_ALLOW, FAN_DENY, fanotifyWorks, holdExecs, type ExecGate } from "./execGate.ts"

const root = join(import.meta.dirname, "..", "..")
const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-spawner-bp-"))
const child = join(dir, "child")
/** The same program under another inode, for the fanotify mark. */
const slowChild = join(dir, "slow-child")
const builds = [{ name: "fork", binary: join(dir, "spawner") }]

beforeAll(() => {
  execFileSync("gcc", ["-O1", "-Wall", "-o", child, join(import.meta.dirname, "c", "child.c")])
  copyFileSync(child, slowChild)
  chmodSync(slowChild, 0o755)
  for (const b of builds) {
    execFileSync(process.execPath, [join(root, "scripts", "build-spawner.mjs"), "--strict", "--out", b.binary])
  }
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

// ---- the wire (c/spawner.c; message numbers from ProcessSpawner.ts) ----
const SOCK_SEQPACKET = 5
const SO_SNDBUF = 7 // Linux
const TIOCOUTQ = 0x5411 // SIOCOUTQ: bytes not yet taken by the peer (Linux)
const HOST_ESRCH = osConstants.errno.ESRCH
const SIGTERM = osConstants.signals.SIGTERM

const c = koffi.load(null)
const setsockopt = c.func("int setsockopt(int fd, int level, int name, const void *val, uint32_t len)")
const getsockopt = c.func("int getsockopt(int fd, int level, int name, _Out_ void *val, _Inout_ uint32_t *len)")
const ioctl = c.func("int ioctl(int fd, unsigned long req, ...)")

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

interface Reply {
  readonly type: number
  readonly a: number
  readonly b: number
  readonly c: number
}


/** [pid, state] of every child of `ppid`. */
const childrenOf = (ppid: number): Array<[number, string]> => {
  const out: Array<[number, string]> = []
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue
    const st = procStat(Number(name))
    if (st?.ppid === ppid) out.push([Number(name), st.state])
  }
  return out
}

const encoder = new TextEncoder()

const spawnRequest = (seq: number, args: ReadonlyArray<string>, program: string = child, flags = 0): Uint8Array => {
  const strings = [program, ...args].map((s) => encoder.encode(`${s}\0`))
  const bytes = new Uint8Array(24 + strings.reduce((n, s) => n + s.length, 0))
  const v = new DataView(bytes.buffer)
  v.setUint32(0, T_SPAWN, true)
  v.setUint32(4, seq, true)
  v.setUint32(8, flags, true) // 0: stdio on /dev/null, the spawner's environment
  v.setUint32(12, 0, true) // no fds
  v.setUint32(16, strings.length, true)
  v.setUint32(20, 0, true)
  let off = 24
  for (const s of strings) {
    bytes.set(s, off)
    off += s.length
  }
  return bytes
}

const words = (...w: Array<number>): Uint8Array => {
  const bytes = new Uint8Array(4 * w.length)
  const v = new DataView(bytes.buffer)
  w.forEach((x, i) => v.setInt32(4 * i, x, true))
  return bytes
}

/** A spawner on a socketpair, its end with the smallest send buffer; ours non-blocking. */
const startSpawner = async (binary: string) => {
  const pair = libc.socketpair(libc.AF_UNIX, SOCK_SEQPACKET | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC)
  if (typeof pair === "number") throw new Error(`socketpair: ${pair}`)
  const [ours, theirs] = pair
  expect(setsockopt(theirs, libc.SOL_SOCKET, SO_SNDBUF, Buffer.from(words(1)), 4)).toBe(0)
  const got = Buffer.alloc(4)
  const len = [4]
  expect(getsockopt(theirs, libc.SOL_SOCKET, SO_SNDBUF, got, len)).toBe(0)
  const sndbuf = got.readInt32LE(0)
  const proc = spawn(binary, [], { stdio: ["ignore", "inherit", "inherit", theirs] })
  libc.close(theirs)
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)))
  const pid = proc.pid ?? -1
  const buf = new Uint8Array(16)
  const view = new DataView(buf.buffer)
  /** One reply, or null when there is none now. */
  const readOne = (): Reply | null => {
    const n = libc.read(ours, buf)
    if (n === 16) return { type: view.getInt32(0, true), a: view.getInt32(4, true), b: view.getInt32(8, true), c: view.getInt32(12, true) }
    if (n < 0 && n !== -osConstants.errno.EAGAIN) throw new Error(`read: ${n}`)
    if (n >= 0) throw new Error(`read: ${n} bytes`)
    return null
  }
  /** Wait for `n` replies. */
  const readN = async (n: number, timeoutMs = 20_000): Promise<Array<Reply>> => {
    const out: Array<Reply> = []
    const until = Date.now() + timeoutMs
    while (out.length < n) {
      const r = readOne()
      if (r !== null) out.push(r)
      else if (Date.now() > until) throw new Error(`only ${out.length} of ${n} replies`)
      else await sleep(2)
    }
    return out
  }
  const send = async (bytes: Uint8Array): Promise<void> => {
    for (;;) {
      const n = libc.write(ours, bytes)
      if (n === bytes.length) return
      if (n !== -osConstants.errno.EAGAIN) throw new Error(`write: ${n}`)
      await sleep(1)
    }
  }
  /** Bytes we sent that the spawner has not read yet. */
  const unread = (): number => {
    const b = Buffer.alloc(4)
    expect(ioctl(ours, TIOCOUTQ, "void *", b)).toBe(0)
    return b.readInt32LE(0)
  }
  const [hello] = await readN(1)
  expect(hello).toEqual({ type: T_HELLO, a: VERSION, b: pid, c: 128 })
  const shutdown = async (): Promise<void> => {
    await send(words(T_SHUTDOWN, 0, 0, 0))
    for (;;) {
      const r = libc.read(ours, buf)
      if (r === 0) break
      if (r < 0 && r !== -osConstants.errno.EAGAIN) break
      if (r < 0) await sleep(2)
    }
    expect(await exited).toBe(0)
    libc.close(ours)
  }
  return { pid, sndbuf, readN, send, unread, shutdown }
}

describe.each(builds)("the spawner with a peer that does not read ($name)", ({ binary }) => {
  it("200 children exit while nobody reads: none stays a zombie; all 400 replies come after, in order", async () => {
    const n = 200
    const s = await startSpawner(binary)
    // A few 16-byte replies fit in the socket; the rest must wait in the spawner.
    expect(s.sndbuf).toBeLessThanOrEqual(8192)
    for (let i = 1; i <= n; i++) await s.send(spawnRequest(i, ["exit", String(i % 100)]))
    // Every request read (and so every child forked: 200 pending spawns are within the bound).
    for (let i = 0; s.unread() > 0; i++) {
      if (i > 2000) throw new Error("the spawner stopped reading requests")
      await sleep(5)
    }
    // Until all are reaped: no zombie lives longer than the bound (lenient for a
    // loaded CI machine; the soak holds the real one, 100 ms).
    const firstSeen = new Map<number, number>()
    let longest = 0
    const t0 = Date.now()
    for (;;) {
      const now = Date.now()
      const kids = childrenOf(s.pid)
      for (const [pid, state] of kids) {
        if (state !== "Z") continue
        const since = firstSeen.get(pid) ?? now
        firstSeen.set(pid, since)
        longest = Math.max(longest, now - since)
      }
      if (kids.length === 0) break
      if (now - t0 > 5000) break
      await sleep(2)
    }
    expect(childrenOf(s.pid)).toEqual([]) // a blocked spawner leaves zombies here for good
    expect(longest).toBeLessThan(500)
    // Nothing was read until now: all 400 replies are queued, in order.
    const replies = await s.readN(2 * n)
    const spawned = new Map<number, number>() // pid -> seq
    const exited = new Set<number>()
    const seqs = new Set<number>()
    for (const r of replies) {
      if (r.type === T_SPAWNED) {
        // each request answered once (in the order the execs were seen, not necessarily the requests')
        expect(r.a).toBeGreaterThanOrEqual(1)
        expect(r.a).toBeLessThanOrEqual(n)
        expect(seqs.has(r.a)).toBe(false)
        seqs.add(r.a)
        expect(r.b).toBeGreaterThan(0)
        spawned.set(r.b, r.a)
      } else {
        expect(r.type).toBe(T_EXIT)
        const seq = spawned.get(r.a)
        expect(seq).toBeDefined() // its SPAWNED came first
        expect(exited.has(r.a)).toBe(false) // once
        exited.add(r.a)
        expect([r.b, r.c]).toEqual([0, (seq ?? 0) % 100])
      }
    }
    expect(spawned.size).toBe(n)
    expect(exited.size).toBe(n)
    await s.shutdown()
  }, 60_000)

  it("an EXIT comes before a later KILLED for its pid (ESRCH), though nobody read it", async () => {
    const s = await startSpawner(binary)
    await s.send(spawnRequest(1, ["sleep"]))
    const [sp] = await s.readN(1)
    expect(sp?.type).toBe(T_SPAWNED)
    const victim = sp?.b ?? -1
    expect(victim).toBeGreaterThan(0)
    // Fill the socket and the spawner's queue, and stop reading.
    for (let i = 2; i <= 60; i++) await s.send(spawnRequest(i, ["exit", "3"]))
    // The victim dies behind our back; the spawner reaps it and queues its EXIT.
    process.kill(victim, "SIGKILL")
    for (let i = 0; procStat(victim) !== null; i++) {
      if (i > 1000) throw new Error(`${victim} not reaped`)
      await sleep(5)
    }
    // We still think it alive and ask for a kill: the spawner must answer ESRCH,
    // after the EXIT we have not read yet.
    await s.send(words(T_KILL, 1000, victim, SIGTERM))
    const replies = await s.readN(1 + 59 * 2 + 1)
    const exitAt = replies.findIndex((r) => r.type === T_EXIT && r.a === victim)
    const killedAt = replies.findIndex((r) => r.type === T_KILLED && r.a === 1000)
    expect(exitAt).toBeGreaterThanOrEqual(0)
    expect(replies[exitAt]).toEqual({ type: T_EXIT, a: victim, b: 1, c: osConstants.signals.SIGKILL })
    expect(killedAt).toBeGreaterThan(exitAt)
    expect(replies[killedAt]?.c).toBe(HOST_ESRCH)
    await s.shutdown()
  }, 60_000)

  it.skipIf(!fanotifyWorks)(
    "a child held in execve does not hold the spawner: another is killed, reaped and reported meanwhile; then SPAWNED, or the exec's errno",
    async () => {
      const s = await startSpawner(binary)
      let gate: ExecGate | null = null
      try {
        await s.send(spawnRequest(1, ["sleep"]))
        const [a] = await s.readN(1)
        expect(a).toMatchObject({ type: T_SPAWNED, a: 1, c: 0 })
        const victim = a?.b ?? -1
        expect(victim).toBeGreaterThan(0)

        gate = holdExecs(slowChild)
        const { nextExec, answer } = gate

        // Two children held in execve (one to succeed, one to fail).
        await s.send(spawnRequest(2, ["sleep"], slowChild))
        const [ev2, pid2] = await nextExec()
        await s.send(spawnRequest(3, ["exit", "0"], slowChild))
        const [ev3, pid3] = await nextExec()
        expect(childrenOf(s.pid).map(([pid]) => pid).sort()).toEqual([victim, pid2, pid3].sort())

        // Meanwhile: kill the first. Its KILLED and EXIT come, and it is reaped,
        // while both SPAWNs are still in flight (a spawner stuck in the exec reads nothing).
        await s.send(words(T_KILL, 4, victim, osConstants.signals.SIGKILL))
        const during = await s.readN(2, 3000)
        expect(during).toContainEqual({ type: T_KILLED, a: 4, b: 0, c: 0 })
        expect(during).toContainEqual({ type: T_EXIT, a: victim, b: 1, c: osConstants.signals.SIGKILL })
        expect(procStat(victim)).toBeNull()
        expect(s.unread()).toBe(0)

        // Let one exec through and refuse the other: SPAWNED, and the exec's errno (EPERM).
        answer(ev3, FAN_DENY)
        answer(ev2, FAN_ALLOW)
        const after = await s.readN(2)
        expect(after).toContainEqual({ type: T_SPAWNED, a: 2, b: pid2, c: 0 })
        expect(after).toContainEqual({ type: T_SPAWNED, a: 3, b: -1, c: osConstants.errno.EPERM })
        // The failed one is reaped without an EXIT; the other runs the program.
        for (let i = 0; procStat(pid3) !== null; i++) {
          if (i > 1000) throw new Error(`${pid3} not reaped`)
          await sleep(5)
        }
        expect(childrenOf(s.pid).map(([pid]) => pid)).toEqual([pid2])
        await s.send(words(T_KILL, 5, pid2, SIGTERM))
        const end = await s.readN(2)
        expect(end).toContainEqual({ type: T_KILLED, a: 5, b: 0, c: 0 })
        expect(end).toContainEqual({ type: T_EXIT, a: pid2, b: 1, c: SIGTERM })
        expect(end.findIndex((r) => r.type === T_EXIT)).toBe(1) // KILLED first: the EXIT is of a later reap
      } finally {
        gate?.release()
      }
      await s.shutdown()
    },
    60_000
  )

  it("early SPAWNs: each SPAWNED (with its pid) before its child's EXIT, though the children exit at once; a failed exec is an EXIT 127", async () => {
    const n = 100
    const missing = join(dir, "no-such-program")
    const s = await startSpawner(binary)
    // Even seqs: exit at once after the exec; odd: the exec fails (ENOENT). Nothing is read meanwhile.
    for (let i = 1; i <= n; i++) {
      await s.send(i % 2 === 0 ? spawnRequest(i, ["exit", String(i % 100)], child, F_EARLY) : spawnRequest(i, [], missing, F_EARLY))
    }
    for (let i = 0; childrenOf(s.pid).length > 0 || s.unread() > 0; i++) {
      if (i > 2000) throw new Error("children not reaped")
      await sleep(5)
    }
    const replies = await s.readN(2 * n)
    const seqOf = new Map<number, number>() // pid -> seq
    const exited = new Set<number>()
    for (const r of replies) {
      if (r.type === T_SPAWNED) {
        expect(r.b).toBeGreaterThan(0) // never a failure: the exec's result is not waited for
        expect(r.c).toBe(0)
        expect([...seqOf.values()]).not.toContain(r.a) // each request answered once
        seqOf.set(r.b, r.a)
      } else {
        expect(r.type).toBe(T_EXIT)
        const seq = seqOf.get(r.a)
        expect(seq).toBeDefined() // its SPAWNED came first
        expect(exited.has(r.a)).toBe(false) // once
        exited.add(r.a)
        expect([r.b, r.c]).toEqual([0, (seq ?? 0) % 2 === 0 ? (seq ?? 0) % 100 : 127])
      }
    }
    expect(seqOf.size).toBe(n)
    expect(exited.size).toBe(n)
    // Nothing more: no late failure reply for the failed execs.
    await sleep(50)
    expect(await s.readN(1, 100).catch(() => [])).toEqual([])
    await s.shutdown()
  }, 60_000)

  it.skipIf(!fanotifyWorks)(
    "an early SPAWN is answered while its child is held in execve; a refused exec is then only an EXIT 127",
    async () => {
      const s = await startSpawner(binary)
      const gate = holdExecs(slowChild)
      try {
        const { nextExec, answer } = gate
        // Both held in execve: their SPAWNEDs come anyway (a non-early one would wait for the exec).
        await s.send(spawnRequest(1, ["sleep"], slowChild, F_EARLY))
        const [ev1, pid1] = await nextExec()
        await s.send(spawnRequest(2, ["exit", "0"], slowChild, F_EARLY))
        const [ev2, pid2] = await nextExec()
        const during = await s.readN(2, 3000)
        expect(during).toEqual([
          { type: T_SPAWNED, a: 1, b: pid1, c: 0 },
          { type: T_SPAWNED, a: 2, b: pid2, c: 0 }
        ])
        // A live child at once: KILL reaches it even while it is in execve (after the exec is let through).
        answer(ev2, FAN_DENY)
        const [refused] = await s.readN(1)
        expect(refused).toEqual({ type: T_EXIT, a: pid2, b: 0, c: 127 })
        answer(ev1, FAN_ALLOW)
        await s.send(words(T_KILL, 3, pid1, SIGTERM))
        const end = await s.readN(2)
        expect(end).toContainEqual({ type: T_KILLED, a: 3, b: 0, c: 0 })
        expect(end).toContainEqual({ type: T_EXIT, a: pid1, b: 1, c: SIGTERM })
        expect(childrenOf(s.pid)).toEqual([])
      } finally {
        gate.release()
      }
      await s.shutdown()
    },
    60_000
  )
})

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
 */
import { describe, expect, it } from "vitest"
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { constants as osConstants, tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import koffi from "koffi"
import * as libc from "../../src/native/libc.ts"

const root = join(import.meta.dirname, "..", "..")
const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-spawner-bp-"))
const child = join(dir, "child")
const builds = [
  { name: "vfork", binary: join(dir, "spawner"), flags: [] as Array<string> },
  { name: "fork", binary: join(dir, "spawner-fork"), flags: ["--fork"] }
]

beforeAll(() => {
  execFileSync("gcc", ["-O1", "-Wall", "-o", child, join(import.meta.dirname, "c", "child.c")])
  for (const b of builds) {
    execFileSync(process.execPath, [join(root, "scripts", "build-spawner.mjs"), "--strict", "--out", b.binary, ...b.flags])
  }
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

// ---- the wire (c/spawner.c) ----
const T_HELLO = 0
const T_SPAWN = 1
const T_SPAWNED = 2
const T_KILL = 3
const T_KILLED = 4
const T_EXIT = 5
const T_SHUTDOWN = 6
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

const procStat = (pid: number): { readonly state: string; readonly ppid: number } | null => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1")
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return { state: rest[0] ?? "?", ppid: Number(rest[1]) }
  } catch {
    return null
  }
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

const spawnRequest = (seq: number, args: ReadonlyArray<string>): Uint8Array => {
  const strings = [child, ...args].map((s) => encoder.encode(`${s}\0`))
  const bytes = new Uint8Array(24 + strings.reduce((n, s) => n + s.length, 0))
  const v = new DataView(bytes.buffer)
  v.setUint32(0, T_SPAWN, true)
  v.setUint32(4, seq, true)
  v.setUint32(8, 0, true) // stdio on /dev/null, the spawner's environment
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
  expect(hello).toEqual({ type: T_HELLO, a: 1, b: pid, c: 128 })
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
    // Every request read (and so every child started: a spawn completes before the next read).
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
    let nextSeq = 1
    for (const r of replies) {
      if (r.type === T_SPAWNED) {
        expect(r.a).toBe(nextSeq++) // requests are answered in order
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
})

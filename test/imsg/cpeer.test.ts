/**
 * Real C imsg peers from Debian (imsg.md §5): bgpctl against our channel as
 * its fake bgpd control socket, and bgpd's session engine with our channel
 * as its parent, passing it a listening socket (fd passing, legacy fd flag).
 * Skipped, with the reason in the title, when package openbgpd is missing.
 */
import { spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Deferred, Effect, Stream } from "effect"
import type { Scope } from "effect"
import { ImsgChannelNative } from "../../src/layers/ImsgChannelNative.ts"
import * as libc from "../../src/native/libc.ts"
import type { Imsg } from "../../src/services/ImsgChannel.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { hex, toHex } from "./frames.ts"
import { unixAccept, unixListen } from "./sockets.ts"

const BGPCTL = "/usr/sbin/bgpctl"
const BGPD = "/usr/sbin/bgpd"
const haveBgp = existsSync(BGPCTL) && existsSync(BGPD)
const isRoot = process.getuid?.() === 0
/** bgpd chroots to _openbgpd's home; systemd's RuntimeDirectory= normally makes it. */
const CHROOT = "/run/openbgpd"

// openbgpd enum imsg_type (src/bgpd/bgpd.h, 7.7)
const IMSG_CTL_END = 1
const IMSG_CTL_RELOAD = 2
const IMSG_CTL_RESULT = 12
const IMSG_RECONF_CTRL = 44

const le32 = (n: number) => toHex(Uint8Array.of(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24))

interface Child {
  readonly pid: number
  readonly done: Effect.Effect<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>
  readonly stderr: () => string
  readonly kill: () => void
}

/** Poll a condition every 10 ms. */
const waitFor = (cond: () => boolean, timeoutMs: number) =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!cond()) {
      if (Date.now() > deadline) return yield* Effect.die(new Error("waitFor: timeout"))
      yield* Effect.sleep("10 millis")
    }
  })

/** Spawn a program; its exit (with all output) is awaited by `done`; killed if the scope ends first. */
const run = (argv: ReadonlyArray<string>, fd3?: number): Effect.Effect<Child, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const exited = yield* Deferred.make<{ code: number | null; stdout: string; stderr: string }>()
      const stdio: Array<"ignore" | "pipe" | number> = ["ignore", "pipe", "pipe"]
      if (fd3 !== undefined) stdio.push(fd3)
      const p = spawn(argv[0] ?? "", argv.slice(1), { stdio })
      let stdout = ""
      let stderr = ""
      p.stdout?.on("data", (d: Buffer) => (stdout += d.toString()))
      p.stderr?.on("data", (d: Buffer) => (stderr += d.toString()))
      p.on("close", (code) => Deferred.unsafeDone(exited, Effect.succeed({ code, stdout, stderr })))
      const child: Child = {
        pid: p.pid ?? -1,
        done: Deferred.await(exited),
        stderr: () => stderr,
        kill: () => {
          if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL")
        }
      }
      return child
    }),
    (c) => Effect.sync(() => c.kill())
  )

const take = (messages: Stream.Stream<Imsg, unknown>, n: number) =>
  messages.pipe(Stream.take(n), Stream.runCollect, Effect.map(Chunk.toArray))

/** A fake bgpd control socket: capture the request raw, then answer through a channel. */
const bgpctl = (args: ReadonlyArray<string>, requestLen: number, reply: (pid: number) => ReadonlyArray<Imsg> | null) =>
  Effect.gen(function* () {
    const svc = yield* ImsgChannel
    const dir = mkdtempSync(join(tmpdir(), "bgpctl-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
    const path = join(dir, "s")
    const listener = libc.nativeFd(unixListen(path), "control listener")
    yield* Effect.addFinalizer(() => listener.close)
    const client = yield* run([BGPCTL, "-s", path, ...args])
    const conn = libc.nativeFd(yield* unixAccept(listener.num), "control conn")
    const request = yield* svc.readRaw(conn, requestLen, 5000)
    const channel = yield* svc.open(conn)
    for (const m of reply(client.pid) ?? []) yield* channel.send(m)
    const out = yield* client.done
    return { request: toHex(request), pid: client.pid, ...out }
  })

const native = <A, E>(body: Effect.Effect<A, E, ImsgChannel | Scope.Scope>) =>
  Effect.scoped(body).pipe(Effect.provide(ImsgChannelNative.layer))

describe.skipIf(!haveBgp)(`C imsg peers: bgpctl/bgpd (Debian package openbgpd${haveBgp ? "" : " NOT INSTALLED: skipped"})`, () => {
  it.live("bgpctl show: the request is IMSG_CTL_SHOW_NEIGHBOR, our IMSG_CTL_END makes it print the header", () =>
    native(
      Effect.gen(function* () {
        const r = yield* bgpctl(["show"], 16, () => [{ type: IMSG_CTL_END, peerid: 0, pid: 1, data: new Uint8Array(0), fd: null }])
        // type 13 IMSG_CTL_SHOW_NEIGHBOR, len 16
        expect(r.request).toBe(`0d 00 00 00 10 00 00 00 00 00 00 00 ${le32(r.pid)}`)
        expect(r.code).toBe(0)
        expect(r.stdout).toMatch(/^Neighbor\s+AS\s+MsgRcvd\s+MsgSent/m)
      })
    )
  )

  it.live("bgpctl reload: a 272-byte IMSG_CTL_RELOAD, our IMSG_CTL_RESULT 0 prints 'request processed'", () =>
    native(
      Effect.gen(function* () {
        const r = yield* bgpctl(["reload"], 272, () => [
          { type: IMSG_CTL_RESULT, peerid: 0, pid: 1, data: new Uint8Array(4), fd: null }
        ])
        expect(r.request).toBe(`02 00 00 00 10 01 00 00 00 00 00 00 ${le32(r.pid)}${" 00".repeat(256)}`)
        expect(r.stdout).toContain("reload request sent.")
        expect(r.stdout).toContain("request processed")
        expect(r.code).toBe(0)
      })
    )
  )

  it.live("bgpctl reload answered with result 2 prints 'permission denied'", () =>
    native(
      Effect.gen(function* () {
        const r = yield* bgpctl(["reload"], 272, () => [
          { type: IMSG_CTL_RESULT, peerid: 0, pid: 1, data: hex("02 00 00 00"), fd: null }
        ])
        expect(r.stdout + r.stderr).toContain("permission denied")
      })
    )
  )

  it.live("bgpctl log verbose: IMSG_CTL_LOG_VERBOSE with int 1, no reply awaited", () =>
    native(
      Effect.gen(function* () {
        const r = yield* bgpctl(["log", "verbose"], 20, () => null)
        // type 24 IMSG_CTL_LOG_VERBOSE, len 20, int 1
        expect(r.request).toBe(`18 00 00 00 14 00 00 00 00 00 00 00 ${le32(r.pid)} 01 00 00 00`)
        expect(r.stdout).toContain("logging request sent.")
        expect(r.code).toBe(0)
      })
    )
  )

  it.live.skipIf(!isRoot && !existsSync(CHROOT))(
    `as bgpd's parent: pass the SE a listening socket (legacy fd flag), relay bgpctl reload (needs ${CHROOT} or root)`,
    () =>
      native(
        Effect.gen(function* () {
          const svc = yield* ImsgChannel
          if (!existsSync(CHROOT)) mkdirSync(CHROOT, { mode: 0o755 })
          const [parentEnd, childEnd] = yield* svc.socketpair("bgpd SE")
          const se = yield* run([BGPD, "-S", "-d", "-v"], childEnd.num)
          childEnd.closeSync()
          // bgpd's imsg is the legacy layout: the fd flag lives in the flags field (imsg.md §1.3)
          const parent = yield* ImsgChannelNative.open(parentEnd, { format: "legacy" })
          yield* waitFor(() => se.stderr().includes("session engine ready"), 10_000)

          const dir = mkdtempSync(join(tmpdir(), "bgpd-"))
          yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
          const path = join(dir, "ctl")
          const listener = libc.nativeFd(unixListen(path), "control listener")
          yield* parent.send({ type: IMSG_RECONF_CTRL, peerid: 0, pid: 0, data: new Uint8Array(4), fd: listener })
          yield* parent.flush
          expect(listener.isOpen).toBe(false) // sent, our copy closed

          const client = yield* run([BGPCTL, "-s", path, "reload"])
          const [forwarded] = yield* take(
            parent.messages.pipe(Stream.filter((m) => m.type === IMSG_CTL_RELOAD)),
            1
          )
          expect([forwarded?.type, forwarded?.peerid, forwarded?.pid, forwarded?.data.length]).toEqual([
            IMSG_CTL_RELOAD,
            0,
            client.pid,
            256
          ])
          yield* parent.send({ type: IMSG_CTL_RESULT, peerid: 0, pid: client.pid, data: new Uint8Array(4) })
          const out = yield* client.done
          expect(out.stdout).toContain("request processed")

          yield* parent.close
          const seOut = yield* se.done
          expect(seOut.code).toBe(0)
          expect(seOut.stderr).toContain("session engine exiting")
        })
      ),
    30_000
  )
})

/**
 * fd hygiene of the VM process: after the handshake it holds exactly the
 * fds it was given (each at its number, the same open file as ours) plus
 * what every Node process holds.
 *
 * What Node holds by itself is measured, not listed: a bare `node -e` that
 * stays alive (and handles SIGTERM, as the VM does) is spawned the same way,
 * and its /proc/<pid>/fd is the baseline. On Node 20 / Linux that is
 * 0-2 plus 14 fds: three epoll instances, four eventfds and three pipe pairs
 * (libuv's loop and signal pipe, and the loops of V8's platform threads).
 * Kinds are compared without inode numbers ("pipe", "anon_inode:[eventfd]").
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Stream } from "effect"
import { rmSync } from "node:fs"
import { afterAll, beforeAll } from "vitest"
import * as T from "../../src/schema/imsgTypes.ts"
import { emptyVmopId, encodeVmopId } from "../../src/schema/structs.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { Process } from "../../src/services/Process.ts"
import { buildDir, bundleVmProgram } from "../../src/vm/build.ts"
import { fdKind, fdLinks, givenFds, handshake, launch, TestLayers, vmFiles, vmStruct, VMID } from "./harness.ts"

let dir = ""
let bundle = ""

beforeAll(async () => {
  dir = buildDir("vm-fds")
  bundle = await bundleVmProgram(dir)
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const BASELINE = "process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1 << 30)"

const kinds = (links: ReadonlyMap<number, string>, except: ReadonlySet<number>): Array<string> =>
  [...links].filter(([n]) => !except.has(n)).map(([, link]) => fdKind(link)).sort()

describe("VM process fds", () => {
  it.scopedLive("holds the fds it was given and otherwise only what a bare Node process holds", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const imsg = yield* ImsgChannel
      const baseline = yield* proc.spawn({ command: process.execPath, args: ["-e", BASELINE], fds: [], stdio: "null" })

      const files = yield* vmFiles(dir)
      const given = givenFds(files)
      const vm = yield* launch({ name: "node", command: process.execPath, args: [bundle] }, given)
      expect(yield* handshake(vm, vmStruct(files))).toBe(VMID)
      // some traffic first: a pause and an unpause answered
      const channel = yield* imsg.open(vm.sock)
      const vid = Either.getOrThrow(encodeVmopId({ ...emptyVmopId(), vid_id: VMID }))
      yield* channel.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 0xffffffff, pid: 1, data: vid })
      yield* channel.send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: 0xffffffff, pid: 1, data: vid })
      yield* channel.messages.pipe(Stream.take(2), Stream.runDrain)

      const mine = fdLinks(process.pid)
      const theirs = fdLinks(vm.child.pid)
      // every given fd is at its number and is our open file (same inode for sockets and the pty)
      for (const fd of given) expect(theirs.get(fd.num)).toBe(mine.get(fd.num))
      // the -V socket is the peer of ours: the one socket left over
      const givenNums = new Set(given.map((fd) => fd.num))
      const socketsLeft = [...theirs].filter(([n, l]) => !givenNums.has(n) && fdKind(l) === "socket")
      expect(socketsLeft).toHaveLength(1)
      const vSocket = socketsLeft[0]![0]
      // nothing else but Node's own
      const expected = kinds(fdLinks(baseline.pid), new Set())
      expect(kinds(theirs, new Set([...givenNums, vSocket]))).toEqual(expected)
      yield* proc.kill(baseline.pid, "SIGTERM")
    }).pipe(Effect.provide(TestLayers))
  )
})

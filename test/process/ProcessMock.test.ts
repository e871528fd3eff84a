import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Layer, Option, Scope, Stream, TestClock, TestContext } from "effect"
import fc from "fast-check"
import { constants as osConstants } from "node:os"
import * as ProcessMock from "../../src/layers/ProcessMock.ts"
import { ProcessMockControl } from "../../src/layers/ProcessMock.ts"
import type { MockProgram } from "../../src/layers/ProcessMock.ts"
import { MemorySocketTable } from "../../src/layers/ImsgChannelMemory.ts"
import { Errno } from "../../src/schema/errno.ts"
import { Process } from "../../src/services/Process.ts"
import type { ExitStatus, SpawnRequest } from "../../src/services/Process.ts"

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const SIGTERM = signals["SIGTERM"] ?? 15
const SIGKILL = signals["SIGKILL"] ?? 9

/**
 * The test program: args are [exit code, seconds to run, "trap" to ignore
 * SIGTERM | "graceful" to exit 0 on SIGTERM | "-"].
 */
const program: MockProgram = (req, ctx) =>
  Effect.gen(function* () {
    const [code = "0", seconds = "0", mode = "-"] = req.args
    if (mode === "trap") yield* ctx.trap("SIGTERM")
    if (mode === "graceful") {
      yield* ctx.trap("SIGTERM")
      return yield* Effect.race(
        Effect.as(ctx.nextSignal, 0),
        Effect.as(Effect.sleep(`${Number(seconds)} seconds`), Number(code))
      )
    }
    yield* Effect.sleep(`${Number(seconds)} seconds`)
    return Number(code)
  })

const req = (code: number, seconds: number, mode = "-"): SpawnRequest => ({
  command: "/usr/sbin/vmd",
  args: [String(code), String(seconds), mode],
  fds: [],
  stdio: "null"
})

const mock = ProcessMock.layer(program, { firstPid: 500 })

describe("ProcessMock", () => {
  it.effect("pids count up; exit codes reach exit and the exits stream; time is the Clock's", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const a = yield* proc.spawn(req(7, 5))
      const b = yield* proc.spawn(req(300, 1))
      expect([a.pid, b.pid]).toEqual([500, 501])
      expect(yield* proc.children).toEqual([500, 501])
      yield* TestClock.adjust("4 seconds")
      expect(yield* proc.isAlive(a.pid)).toBe(true)
      expect(yield* proc.isAlive(b.pid)).toBe(false)
      yield* TestClock.adjust("1 second")
      expect(yield* a.exit).toEqual({ _tag: "Exited", code: 7 })
      const exits = yield* proc.exits.pipe(Stream.take(2), Stream.runCollect)
      expect(Chunk.toReadonlyArray(exits)).toEqual([
        { pid: 501, status: { _tag: "Exited", code: 300 & 0xff } },
        { pid: 500, status: { _tag: "Exited", code: 7 } }
      ])
      expect(yield* proc.children).toEqual([])
      const control = yield* ProcessMockControl
      expect((yield* control.spawned).map((s) => s.pid)).toEqual([500, 501])
    }).pipe(Effect.provide(mock))
  )

  it.effect("takeExits waits for the first exit, then hands over every exit queued, in order, once", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const waiting = yield* Effect.fork(proc.takeExits)
      yield* proc.spawn(req(1, 1))
      yield* proc.spawn(req(2, 2))
      yield* proc.spawn(req(3, 3))
      yield* TestClock.adjust("2 seconds")
      const first = yield* Fiber.join(waiting)
      yield* TestClock.adjust("1 second")
      const second = yield* proc.takeExits
      const all = [...first, ...second].map((e) => [e.pid, e.status._tag === "Exited" ? e.status.code : -1])
      expect(all).toEqual([
        [500, 1],
        [501, 2],
        [502, 3]
      ])
      expect(first.length).toBeGreaterThanOrEqual(1)
      const none = yield* proc.takeExits.pipe(Effect.timeout("1 second"), Effect.option, Effect.fork)
      yield* TestClock.adjust("1 second")
      expect(Option.isNone(yield* Fiber.join(none))).toBe(true)
    }).pipe(Effect.provide(mock))
  )

  it.effect("listenExits: exits reaped before are handed over at once, later ones as each is reaped, in order, once; then no other consumer", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const heard: Array<readonly [number, number]> = []
      yield* proc.spawn(req(1, 1))
      yield* proc.spawn(req(2, 2))
      yield* TestClock.adjust("1 second")
      const a = yield* proc.spawn(req(3, 2))
      yield* proc.listenExits((e) => heard.push([e.pid, e.status._tag === "Exited" ? e.status.code : -1]))
      const atOnce = [...heard]
      yield* TestClock.adjust("1 second")
      const afterOne = [...heard]
      yield* TestClock.adjust("1 second")
      yield* a.exit
      expect(atOnce).toEqual([[500, 1]])
      expect(afterOne).toEqual([
        [500, 1],
        [501, 2]
      ])
      expect(heard).toEqual([
        [500, 1],
        [501, 2],
        [502, 3]
      ])
      expect(Exit.isFailure(yield* Effect.exit(proc.takeExits))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(proc.listenExits(() => {})))).toBe(true)
    }).pipe(Effect.provide(mock))
  )

  it.effect("SIGTERM and SIGKILL end a program with that signal", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const a = yield* proc.spawn(req(0, 100))
      const b = yield* proc.spawn(req(0, 100))
      yield* proc.kill(a.pid, "SIGTERM")
      yield* proc.kill(b.pid, "SIGKILL")
      expect(yield* a.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      expect(yield* b.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
    }).pipe(Effect.provide(mock))
  )

  it.effect("a program that traps SIGTERM ignores it until SIGKILL", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn(req(0, 1_000_000, "trap"))
      yield* TestClock.adjust("1 second")
      yield* proc.kill(c.pid, "SIGTERM")
      yield* TestClock.adjust("1 hour")
      expect(yield* proc.isAlive(c.pid)).toBe(true)
      yield* proc.kill(c.pid, "SIGKILL")
      expect(yield* c.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
      const control = yield* ProcessMockControl
      expect(yield* control.signalsSent).toEqual([
        { pid: c.pid, signal: "SIGTERM", at: 1000 },
        { pid: c.pid, signal: "SIGKILL", at: 3_601_000 }
      ])
    }).pipe(Effect.provide(mock))
  )

  it.effect("a program that handles SIGTERM exits as it chooses", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const c = yield* proc.spawn(req(9, 100, "graceful"))
      yield* TestClock.adjust("1 second")
      yield* proc.kill(c.pid, "SIGTERM")
      expect(yield* c.exit).toEqual({ _tag: "Exited", code: 0 })
    }).pipe(Effect.provide(mock))
  )

  it.effect("injected spawn failures, closed fds and ESRCH", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const control = yield* ProcessMockControl
      yield* control.failNextSpawn(Errno.ENOENT)
      yield* control.failNextSpawn(Errno.EAGAIN)
      yield* control.failNextSpawn(Errno.ENOMEM)
      const errors = yield* Effect.forEach([1, 2, 3], () => Effect.flip(proc.spawn(req(0, 0))))
      expect(errors.map((e) => [e.reason, e.errno])).toEqual([
        ["NotFound", Errno.ENOENT],
        ["Resources", Errno.EAGAIN],
        ["Resources", Errno.ENOMEM]
      ])
      const table = new MemorySocketTable()
      const fd = table.makeFd("tty")
      fd.closeSync()
      const badf = yield* Effect.flip(proc.spawn({ ...req(0, 0), fds: [fd] }))
      expect(badf.errno).toBe(Errno.EBADF)
      const c = yield* proc.spawn(req(0, 0))
      expect(c.pid).toBe(500) // failures consume no pid
      yield* c.exit
      expect((yield* Effect.flip(proc.kill(c.pid, "SIGKILL"))).errno).toBe(Errno.ESRCH)
      expect((yield* Effect.flip(proc.kill(12345, "SIGTERM"))).errno).toBe(Errno.ESRCH)
    }).pipe(Effect.provide(mock))
  )

  it.effect("the layer's end SIGKILLs every program still running", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(mock, scope)
      const [a, b] = yield* Effect.gen(function* () {
        const proc = yield* Process
        return [yield* proc.spawn(req(0, 100)), yield* proc.spawn(req(0, 100, "trap"))] as const
      }).pipe(Effect.provide(context))
      yield* Scope.close(scope, Exit.void)
      expect(yield* a.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
      expect(yield* b.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
    })
  )
})

describe("ProcessMock properties", () => {
  const child = fc.record({
    code: fc.integer({ min: 0, max: 255 }),
    seconds: fc.integer({ min: 1, max: 20 }),
    trap: fc.boolean(),
    // A kill at half a second, so it never ties with an exit.
    kill: fc.option(
      fc.record({ at: fc.integer({ min: 0, max: 25 }), signal: fc.constantFrom("SIGTERM" as const, "SIGKILL" as const) }),
      { nil: null }
    )
  })

  it("every child is reaped exactly once, with the status its program and signals imply", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(child, { maxLength: 8 }), async (children) => {
        const run = Effect.gen(function* () {
          const proc = yield* Process
          const spawned = yield* Effect.forEach(children, (c) =>
            proc.spawn(req(c.code, c.seconds, c.trap ? "trap" : "-"))
          )
          const kills = children
            .flatMap((c, i) => (c.kill === null ? [] : [{ ...c.kill, pid: spawned[i]?.pid ?? -1 }]))
            .sort((x, y) => x.at - y.at)
          let now = 0
          for (const k of kills) {
            yield* TestClock.adjust(`${k.at * 1000 + 500 - now} millis`)
            now = k.at * 1000 + 500
            yield* Effect.ignore(proc.kill(k.pid, k.signal))
          }
          yield* TestClock.adjust("30 seconds")
          const statuses: Array<ExitStatus> = yield* Effect.forEach(spawned, (s) => s.exit)
          const exits = yield* proc.exits.pipe(Stream.take(children.length), Stream.runCollect)
          // and no exit after those (a child reaped twice would show here)
          const more = yield* Effect.fork(proc.exits.pipe(Stream.take(1), Stream.runCollect))
          yield* TestClock.adjust("1 minute")
          const extra = yield* Fiber.poll(more)
          yield* Fiber.interrupt(more)
          return { spawned, statuses, exits: Chunk.toReadonlyArray(exits), left: yield* proc.children, extra }
        }).pipe(Effect.provide(mock), Effect.provide(TestContext.TestContext))
        const { spawned, statuses, exits, left, extra } = await Effect.runPromise(run)
        expect(Option.isNone(extra), "an exit beyond one per child").toBe(true)
        const expected = children.map((c): ExitStatus => {
          const killed = c.kill !== null && c.kill.at < c.seconds
          if (killed && c.kill?.signal === "SIGKILL") return { _tag: "Signaled", signal: SIGKILL }
          if (killed && !c.trap) return { _tag: "Signaled", signal: SIGTERM }
          return { _tag: "Exited", code: c.code }
        })
        expect(statuses).toEqual(expected)
        expect(left).toEqual([])
        expect([...exits].map((e) => e.pid).sort((x, y) => x - y)).toEqual(spawned.map((s) => s.pid))
        for (const e of exits) expect(e.status).toEqual(expected[e.pid - 500])
      }),
      { numRuns: 30 }
    )
  })
})

import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Logger, Scope, TestClock } from "effect"
import { spawn, spawnSync } from "node:child_process"
import { readdirSync } from "node:fs"
import { constants as osConstants } from "node:os"
import { MemorySocketTable } from "../../src/layers/ImsgChannelMemory.ts"
import * as ProcessMock from "../../src/layers/ProcessMock.ts"
import { ProcessMockControl } from "../../src/layers/ProcessMock.ts"
import type { MockProgram } from "../../src/layers/ProcessMock.ts"
import * as ProcessNode from "../../src/layers/ProcessNode.ts"
import * as VmmDeviceProcess from "../../src/layers/VmmDeviceProcess.ts"
import { StatmFiles, VmSource } from "../../src/layers/VmmDeviceProcess.ts"
import type { ProcessBackendVm } from "../../src/layers/VmmDeviceProcess.ts"
import { pageSize } from "../../src/native/sys.ts"
import { Errno } from "../../src/schema/errno.ts"
import { Process } from "../../src/services/Process.ts"
import { VmmDevice, VmmError } from "../../src/services/VmmDevice.ts"

const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
const SIGTERM = signals["SIGTERM"] ?? 15
const SIGKILL = signals["SIGKILL"] ?? 9

/** A VM program: args[0] "ignore" traps SIGTERM and never reads it; otherwise SIGTERM ends it. */
const vmProgram: MockProgram = (req, ctx) =>
  Effect.gen(function* () {
    if (req.args[0] === "ignore") yield* ctx.trap("SIGTERM")
    return yield* Effect.never
  })

const vmReq = (mode: "ignore" | "plain") => ({ command: "/usr/sbin/vmd", args: [mode], fds: [], stdio: "null" as const })

/** The VM list the registry would give; tests push into it. */
const registry: Array<ProcessBackendVm> = []
const source = Layer.succeed(VmSource, Effect.sync(() => [...registry]))

const vm = (vmmId: number, pid: number, name: string): ProcessBackendVm => ({
  vmmId,
  pid,
  name,
  memorySize: 1024n * 1024n * 1024n,
  ncpus: 2n
})

const resident = (pid: number) => (pid === 1002 ? null : BigInt(pid) * 4096n)

const mockDevice = (options: VmmDeviceProcess.VmmDeviceProcessOptions = {}) =>
  VmmDeviceProcess.layerWith({ residentBytes: resident, ...options }).pipe(
    Layer.provideMerge(ProcessMock.layer(vmProgram)),
    Layer.provide(source)
  )

const reset = Effect.sync(() => {
  registry.length = 0
})

/** A registered VM (id 1) that ignores SIGTERM, just terminated: its SIGKILL is armed. */
const stubbornTerminated = Effect.gen(function* () {
  const proc = yield* Process
  const device = yield* VmmDevice
  const child = yield* proc.spawn(vmReq("ignore"))
  yield* reset
  registry.push(vm(1, child.pid, "stubborn"))
  yield* device.terminate({ vmmId: 1, pid: child.pid })
  return child
})

describe("VmmDeviceProcess terminate (ProcessMock, TestClock)", () => {
  it.effect("a VM that ignores SIGTERM gets SIGKILL exactly 10 s later, not before", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const control = yield* ProcessMockControl
      const child = yield* stubbornTerminated
      yield* TestClock.adjust("9999 millis")
      expect(yield* proc.isAlive(child.pid)).toBe(true)
      expect((yield* control.signalsSent).map((s) => s.signal)).toEqual(["SIGTERM"])
      yield* TestClock.adjust("1 millis")
      expect(yield* child.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
      expect(yield* control.signalsSent).toEqual([
        { pid: child.pid, signal: "SIGTERM", at: 0 },
        { pid: child.pid, signal: "SIGKILL", at: 10_000 }
      ])
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("the SIGKILL follows the process, not the registry: a VM removed while running is still killed at 10 s", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const control = yield* ProcessMockControl
      const child = yield* stubbornTerminated
      yield* TestClock.adjust("5 seconds")
      yield* reset // removed from the registry, still running
      yield* TestClock.adjust("5 seconds")
      expect(yield* child.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
      expect((yield* control.signalsSent).map((s) => [s.signal, s.at])).toEqual([
        ["SIGTERM", 0],
        ["SIGKILL", 10_000]
      ])
      expect(yield* proc.children).toEqual([])
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("a VM that ends on SIGTERM is not sent SIGKILL", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const device = yield* VmmDevice
      const control = yield* ProcessMockControl
      const child = yield* proc.spawn(vmReq("plain"))
      yield* device.terminate({ vmmId: 1, pid: child.pid })
      expect(yield* child.exit).toEqual({ _tag: "Signaled", signal: SIGTERM })
      yield* TestClock.adjust("1 minute")
      expect((yield* control.signalsSent).map((s) => s.signal)).toEqual(["SIGTERM"])
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("a second terminate re-arms the timer", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const device = yield* VmmDevice
      const control = yield* ProcessMockControl
      const child = yield* stubbornTerminated
      yield* TestClock.adjust("4 seconds")
      yield* device.terminate({ vmmId: 1, pid: child.pid })
      yield* TestClock.adjust("6 seconds")
      expect(yield* proc.isAlive(child.pid)).toBe(true)
      yield* TestClock.adjust("4 seconds")
      yield* child.exit
      expect((yield* control.signalsSent).map((s) => [s.signal, s.at])).toEqual([
        ["SIGTERM", 0],
        ["SIGTERM", 4_000],
        ["SIGKILL", 14_000]
      ])
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("the kill errno is the result: ESRCH for a gone pid, EINVAL for pid ≤ 0", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const device = yield* VmmDevice
      const child = yield* proc.spawn(vmReq("plain"))
      yield* proc.kill(child.pid, "SIGKILL")
      yield* child.exit
      const gone = yield* Effect.flip(device.terminate({ vmmId: 1, pid: child.pid }))
      expect(gone).toBeInstanceOf(VmmError)
      expect(gone.errno).toBe(Errno.ESRCH)
      expect((yield* Effect.flip(device.terminate({ vmmId: 1, pid: 0 }))).errno).toBe(Errno.EINVAL)
      expect((yield* Effect.flip(device.terminate({ vmmId: 1, pid: -1 }))).errno).toBe(Errno.EINVAL)
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("a pending escalation ends with the layer", () =>
    Effect.gen(function* () {
      const proc = yield* Process
      const control = yield* ProcessMockControl
      const child = yield* proc.spawn(vmReq("ignore"))
      const scope = yield* Scope.make()
      const device = yield* Layer.buildWithScope(VmmDeviceProcess.layerWith({ residentBytes: resident }), scope).pipe(
        Effect.map((ctx) => Context.get(ctx, VmmDevice))
      )
      yield* device.terminate({ vmmId: 1, pid: child.pid })
      yield* TestClock.adjust("5 seconds")
      yield* Scope.close(scope, Exit.void)
      yield* TestClock.adjust("1 minute")
      expect(yield* proc.isAlive(child.pid)).toBe(true)
      expect((yield* control.signalsSent).map((s) => s.signal)).toEqual(["SIGTERM"])
    }).pipe(Effect.provide(Layer.merge(ProcessMock.layer(vmProgram), source)))
  )
})

describe("VmmDeviceProcess info", () => {
  it.effect("one entry per VM whose process is alive, from the registry and resident memory", () =>
    Effect.gen(function* () {
      yield* reset
      const proc = yield* Process
      const device = yield* VmmDevice
      const a = yield* proc.spawn(vmReq("plain")) // 1000
      const b = yield* proc.spawn(vmReq("plain")) // 1001
      const c = yield* proc.spawn(vmReq("plain")) // 1002: gone from /proc meanwhile
      registry.push(vm(1, a.pid, "alpha"), vm(2, -1, "not started"), vm(3, b.pid, "bravo"), vm(4, c.pid, "charlie"))
      yield* proc.kill(b.pid, "SIGKILL")
      yield* b.exit
      expect(yield* device.info).toEqual([
        {
          vir_memory_size: 1024n * 1024n * 1024n,
          vir_used_size: BigInt(a.pid) * 4096n,
          vir_ncpus: 2n,
          vir_vcpu_state: new Uint8Array(64),
          vir_creator_pid: a.pid,
          vir_id: 1,
          vir_name: "alpha"
        }
      ])
    }).pipe(Effect.provide(mockDevice()))
  )

  it.effect("a resident-memory read error is the result", () =>
    Effect.gen(function* () {
      yield* reset
      const proc = yield* Process
      const device = yield* VmmDevice
      const a = yield* proc.spawn(vmReq("plain"))
      registry.push(vm(1, a.pid, "alpha"))
      expect((yield* Effect.flip(device.info)).errno).toBe(Errno.EACCES)
    }).pipe(
      Effect.provide(
        mockDevice({ residentBytes: () => new VmmError({ errno: Errno.EACCES, message: "statm" }) })
      )
    )
  )

  it.effect("out of fds to read a VM's statm with: that VM is still listed, its memory in use 0, and a warning says so", () =>
    Effect.gen(function* () {
      yield* reset
      const proc = yield* Process
      const device = yield* VmmDevice
      const a = yield* proc.spawn(vmReq("plain"))
      const b = yield* proc.spawn(vmReq("plain"))
      registry.push(vm(1, a.pid, "alpha"), vm(2, b.pid, "beta"))
      const warnings: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") warnings.push(String(message))
      })
      const info = yield* device.info.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(info.map((e) => [e.vir_name, e.vir_used_size])).toEqual([
        ["alpha", 0n],
        ["beta", BigInt(b.pid) * 4096n]
      ])
      expect(warnings).toEqual(["info: out of file descriptors: memory in use of 1 VM(s) reported as 0"])
    }).pipe(Effect.provide(mockDevice({ residentBytes: (pid) => (pid === 1000 ? VmmDeviceProcess.NO_FD : BigInt(pid) * 4096n) })))
  )

  it.effect("attach keeps the fd and closes it once at the layer's end", () =>
    Effect.gen(function* () {
      const table = new MemorySocketTable()
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(mockDevice(), scope)
      yield* Effect.flatMap(VmmDevice, (d) => d.attach(table.makeFd("/dev/vmm"))).pipe(Effect.provide(context))
      expect(table.openFds()).toHaveLength(1)
      yield* Scope.close(scope, Exit.void)
      expect(table.openFds()).toEqual([])
      expect(table.doubleCloses).toBe(0)
    })
  )
})

describe.runIf(process.platform === "linux")("VmmDeviceProcess on real processes", () => {
  it("statm: resident bytes are whole pages; a pid that does not exist is null; one descriptor per pid, closed by forget/retain/closeAll", () => {
    const fdCount = () => readdirSync("/proc/self/fd").length
    const before = fdCount()
    const statm = new StatmFiles()
    const mine = statm.read(process.pid)
    expect(typeof mine).toBe("bigint")
    expect((mine as bigint) > 0n).toBe(true)
    expect((mine as bigint) % BigInt(pageSize())).toBe(0n)
    expect(statm.read(0x3ffffff)).toBeNull()
    expect(statm.open).toBe(1)
    expect(statm.read(process.pid)).not.toBeNull() // pread on the same descriptor
    expect(fdCount()).toBe(before + 1)
    const child = spawnSync("true") // a pid that existed and is gone now
    expect(child.pid).toBeGreaterThan(0)
    expect(statm.read(child.pid!)).toBeNull()
    statm.retain(new Set([process.pid]))
    expect(statm.open).toBe(1)
    statm.retain(new Set())
    expect(statm.open).toBe(0)
    expect(fdCount()).toBe(before)
    statm.read(process.pid)
    statm.forget(process.pid)
    statm.read(process.pid)
    statm.closeAll()
    expect(fdCount()).toBe(before)
  })

  it.scoped("statm: a child read while alive reads as gone once it is reaped, and its descriptor is closed", () =>
    Effect.gen(function* () {
      const statm = new StatmFiles()
      const c = spawn("sleep", ["5"], { stdio: "ignore" })
      yield* Effect.addFinalizer(() => Effect.sync(() => c.kill("SIGKILL")))
      const pid = c.pid!
      expect(typeof statm.read(pid)).toBe("bigint")
      const exited = Effect.async<void>((resume) => {
        c.once("exit", () => resume(Effect.void))
      })
      c.kill("SIGKILL")
      yield* exited
      expect(statm.read(pid)).toBeNull()
      expect(statm.open).toBe(0)
    })
  )

  it.scopedLive("info reads a live child's resident memory; SIGTERM ignored → SIGKILL after the delay", () =>
    Effect.gen(function* () {
      yield* reset
      const proc = yield* Process
      const device = yield* VmmDevice
      const vmChild = yield* proc.spawn({
        command: "/bin/sh",
        args: ["-c", "trap '' TERM; exec sleep 30"],
        fds: [],
        stdio: "null"
      })
      registry.push(vm(7, vmChild.pid, "real"))
      yield* Effect.sleep("100 millis") // let sh exec sleep with SIGTERM ignored
      const [entry] = yield* device.info
      expect(entry?.vir_id).toBe(7)
      expect(entry?.vir_creator_pid).toBe(vmChild.pid)
      expect((entry?.vir_used_size ?? 0n) > 0n).toBe(true)
      const started = Date.now()
      yield* device.terminate({ vmmId: 7, pid: vmChild.pid })
      expect(yield* vmChild.exit).toEqual({ _tag: "Signaled", signal: SIGKILL })
      expect(Date.now() - started).toBeGreaterThanOrEqual(280)
      expect(yield* device.info).toEqual([])
    }).pipe(
      Effect.provide(
        VmmDeviceProcess.layerWith({ killAfter: "300 millis" }).pipe(
          Layer.provideMerge(ProcessNode.layer),
          Layer.provide(source)
        )
      )
    )
  )
})

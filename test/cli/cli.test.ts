import { spawn } from "node:child_process"
import { copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Duplex } from "node:stream"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Option } from "effect"
import { parseArgs } from "../../src/cli/args.ts"
import { ImsgChannelMemory } from "../../src/layers/ImsgChannelMemory.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { logState } from "../../src/vmm/log.ts"
import { describeImsg, withTrace } from "../../src/vmm/trace.ts"
import { vmChannels } from "../../src/vm/main.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import { emptyVmdVm, encodeVmdVm, encodeVmopResult, SIZEOF } from "../../src/schema/structs.ts"
import { defaultLocalPrefix } from "../../src/vmm/defaults.ts"
import { localPrefixBytes } from "../../src/vmm/wire.ts"
import { repoRoot } from "../../src/vm/build.ts"
import { IMSG_HEADER_SIZE, readType, writeHeader } from "../../src/schema/imsgHeader.ts"

describe("bin/vmm flags", () => {
  it("accepts the argv vmd's proc_exec builds for the vmm child, ignoring the other children's flags", () => {
    const args = parseArgs(["-P", "vmm", "-d", "-vv", "-f", "/etc/vm.conf", "-D", "a=b", "-n"])
    expect(Either.getOrThrow(args)).toMatchObject({ mode: "vmm", debug: true, verbose: 2, vmExec: null, trace: false, spawn: "direct" })
  })

  it("parses our long options", () => {
    const args = parseArgs(["-Pvmm", "--backend", "mock", "--vm-exec", "/x/vm", "--trace", "--spawn", "node"])
    expect(Either.getOrThrow(args)).toMatchObject({ backend: "mock", vmExec: "/x/vm", trace: true, spawn: "node" })
  })

  it("parses the VM process argv vmm_start_vm builds (psp fd -1 allowed)", () => {
    const args = parseArgs(["-V", "7", "-i", "5", "-j", "-1", "-d", "-v"])
    expect(Either.getOrThrow(args)).toEqual({ mode: "vm", vmFd: 7, vmmFd: 5, pspFd: -1, debug: true, verbose: 1, trace: false })
  })

  it("refuses other process titles, unknown options and bad fds with a message", () => {
    const message = (argv: ReadonlyArray<string>) => Either.getLeft(parseArgs(argv)).pipe(Option.getOrElse(() => "(accepted)"))
    expect(message(["-P", "priv"])).toBe('invalid process name priv: only "vmm" is implemented')
    expect(message(["-P", "vmm", "-z"])).toMatch(/^unknown option -z\nusage: vmm -P vmm /)
    expect(message(["-P", "vmm", "--bogus"])).toMatch(/^unknown option --bogus\nusage: /)
    expect(message(["-V", "x"])).toBe("invalid vm fd")
    // vm.c's strtonum bounds
    expect(message(["-V", "128", "-i", "128", "-j", "128"])).toBe("(accepted)")
    expect(message(["-V", "129"])).toBe("invalid vm fd")
    expect(message(["-V", "3", "-i", "129"])).toBe("invalid vmm fd")
    expect(message(["-V", "3", "-j", "-2"])).toBe("invalid psp fd")
    expect(message(["-P", "vmm", "--backend", "kvm"])).toMatch(/^unknown backend kvm\nusage: /)
  })
})

describe("--trace", () => {
  it("names the message and decodes its payload fields", () => {
    const data = Either.getOrThrow(encodeVmopResult({ vmr_result: 35, vmr_id: 4, vmr_pid: 0, vmr_ttyname: "" }))
    expect(describeImsg(T.IMSG_VMDOP_TERMINATE_VM_EVENT, 0xffffffff, 1, data, false)).toBe(
      "IMSG_VMDOP_TERMINATE_VM_EVENT peerid=-1 pid=1 len=28 {vmr_result=35 vmr_id=4 vmr_pid=0}"
    )
  })

  it("says when a payload does not decode, and shows unknown types in hex", () => {
    expect(describeImsg(T.IMSG_VMDOP_PAUSE_VM, 1, 1, new Uint8Array(3), true)).toMatch(
      /^IMSG_VMDOP_PAUSE_VM peerid=1 pid=1 len=3 fd \(undecodable: /
    )
    expect(describeImsg(99, 0, 0, Uint8Array.of(1, 2), false)).toBe("type 99 peerid=0 pid=0 len=2 data=0102")
  })
})

/** Run `body` with the vmm's log sink capturing: the "trace fd N" lines it logged, from the direction on. */
const traceOf = <A, E, R>(body: Effect.Effect<A, E, R>): Effect.Effect<ReadonlyArray<string>, E, R> =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const lines: Array<string> = []
      const sink = logState.sink
      logState.sink = (_level, line) => void lines.push(line)
      return { lines, sink }
    }),
    ({ lines }) => Effect.as(body, lines),
    ({ sink }) => Effect.sync(() => void (logState.sink = sink))
  ).pipe(Effect.map((lines) => lines.filter((l) => l.includes("trace fd")).map((l) => l.replace(/^.*trace fd \d+ /, ""))))

describe("--trace on every channel", () => {
  it.effect("traces a channel from open and one from openOwned consumed by listen, both ways, sent by send, unsafeSend or unsafeSendNow", () =>
    Effect.gen(function* () {
      const exchange = Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("t")
        const parent = yield* svc.open(a)
        const vm = yield* svc.openOwned(b)
        const heard: Array<number> = []
        yield* vm.listen({ messages: (ms) => heard.push(...ms.map((m) => m.type)), end: () => {} })
        yield* parent.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 1, pid: 0 })
        yield* vm.send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: 2, pid: 0 })
        // the vmm's replies to its parent go this way
        expect(vm.unsafeSend({ type: T.IMSG_VMDOP_START_VM_RESPONSE, peerid: 3, pid: 0 })).toBeNull()
        // and TERMINATE_VM_EVENT this way
        expect(vm.unsafeSendNow({ type: T.IMSG_VMDOP_TERMINATE_VM_EVENT, peerid: 4, pid: 0 })).toBeNull()
        yield* parent.flush
        yield* vm.flush
        const back: Array<number> = []
        while (back.length < 3) back.push(...((yield* parent.receive) ?? []).map((m) => m.type))
        for (let i = 0; i < 10 && heard.length === 0; i++) yield* Effect.yieldNow()
        expect(heard).toEqual([T.IMSG_VMDOP_PAUSE_VM])
        expect(back).toEqual([T.IMSG_VMDOP_UNPAUSE_VM, T.IMSG_VMDOP_START_VM_RESPONSE, T.IMSG_VMDOP_TERMINATE_VM_EVENT])
        yield* vm.close
      })
      const traced = yield* traceOf(Effect.scoped(exchange).pipe(Effect.provide(withTrace.pipe(Layer.provide(ImsgChannelMemory.layer)))))
      for (const dir of [">", "<"])
        for (const name of ["IMSG_VMDOP_PAUSE_VM", "IMSG_VMDOP_UNPAUSE_VM", "IMSG_VMDOP_START_VM_RESPONSE", "IMSG_VMDOP_TERMINATE_VM_EVENT"])
          expect(traced.filter((l) => l.startsWith(`${dir} ${name} `)), `${dir} ${name}`).toHaveLength(1)
    })
  )
})

describe("--trace of the raw start handshake", () => {
  it.effect("shows struct vmd_vm's ids, name and fd numbers, the prefix, the id, and a read that failed, on each side", () =>
    Effect.gen(function* () {
      const base = emptyVmdVm()
      const vm = {
        ...base,
        vm_params: { ...base.vm_params, vmc_name: "web", vmc_ncpus: 2n, vmc_ndisks: 1n, vmc_nnics: 1n },
        vm_vmid: 7,
        vm_pid: 4242,
        vm_state: 1,
        vm_kernel: 5,
        vm_cdrom: -1,
        vm_disks: base.vm_disks.map((layers, d) => layers.map((_, l) => (d === 0 && l < 2 ? 6 + l : -1))),
        vm_ifs: base.vm_ifs.map((vif, i) => ({ ...vif, vif_fd: i === 0 ? 8 : -1 })),
        vm_tty: 9
      }
      const handshake = Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [vmm, child] = yield* svc.socketpair("t")
        yield* svc.writeRaw(vmm, Either.getOrThrow(encodeVmdVm(vm)), 1000)
        yield* svc.readRaw(child, SIZEOF.vmd_vm, 1000)
        yield* svc.writeRaw(vmm, localPrefixBytes(defaultLocalPrefix()), 1000)
        yield* svc.readRaw(child, SIZEOF.local_prefix, 1000)
        yield* svc.writeRaw(child, Uint8Array.of(3, 0, 0, 0), 1000)
        yield* svc.readRaw(vmm, 4, 1000)
        child.closeSync()
        expect(Either.isLeft(yield* Effect.either(svc.readRaw(vmm, 4, 1000)))).toBe(true)
      })
      const traced = yield* traceOf(Effect.scoped(handshake).pipe(Effect.provide(withTrace.pipe(Layer.provide(ImsgChannelMemory.layer)))))
      const struct =
        'raw struct vmd_vm len=13352 {vm_vmid=7 vm_pid=4242 vm_state=1 vmc_name="web" vmc_ncpus=2 vmc_ndisks=1 vmc_nnics=1' +
        " vm_kernel=5 vm_cdrom=-1 vm_disks=[[6,7],[],[],[]] vif_fd=[8] vm_tty=9}"
      const prefix = "raw struct local_prefix len=40 {lp_in=100.64.0.0 lp_mask=255.192.0.0 lp_in6=fd00:0:0:0:0:0:0:0 lp_mask6=ff00:0:0:0:0:0:0:0}"
      expect(traced.slice(0, 6)).toEqual([`> ${struct}`, `< ${struct}`, `> ${prefix}`, `< ${prefix}`, "> raw vm id 3", "< raw vm id 3"])
      expect(traced[6]).toMatch(/^< raw 4 bytes: /)
      expect(traced).toHaveLength(7)
    })
  )
})

describe("--trace in our VM process (bin/vmm -V ... --trace)", () => {
  it.scoped("its channels are traced, the raw handshake included; without the flag nothing is", () =>
    Effect.gen(function* () {
      const idOnce = Effect.gen(function* () {
        const svc = yield* ImsgChannel
        const [a, b] = yield* svc.socketpair("t")
        yield* svc.writeRaw(a, Uint8Array.of(9, 0, 0, 0), 1000)
        yield* svc.readRaw(b, 4, 1000)
        a.closeSync()
        b.closeSync()
      })
      expect(yield* traceOf(idOnce.pipe(Effect.provide(vmChannels({ trace: false }))))).toEqual([])
      expect(yield* traceOf(idOnce.pipe(Effect.provide(vmChannels({ trace: true }))))).toEqual(["> raw vm id 9", "< raw vm id 9"])
    })
  )
})

describe("bin/vmm start-up", () => {
  /** bin/vmm `args` with a socket on fd 3, once its loader has said whether it used the code cache (and before its program runs). */
  const startLoaded = async (args: ReadonlyArray<string>) => {
    const child = spawn(join(repoRoot, "bin/vmm"), [...args], {
      stdio: ["ignore", "ignore", "pipe", "pipe"],
      env: { ...process.env, VMD_VMM_CACHE_REPORT: "1", NODE_OPTIONS: "" }
    })
    let stderr = ""
    child.stderr!.setEncoding("utf8")
    const loaded = new Promise<void>((resolve) =>
      child.stderr!.on("data", (d: string) => {
        stderr += d
        if (stderr.includes("code cache")) resolve()
      })
    )
    const exited = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
    await loaded
    return { child, stderr: () => stderr, exited }
  }

  it.runIf(process.platform === "linux")("runs its bundle from the code cache the build trained (same V8, same flags)", async () => {
    const child = spawn(join(repoRoot, "bin/vmm"), ["-P", "vmm", "--backend", "process"], {
      stdio: ["ignore", "ignore", "pipe", "pipe"],
      env: { ...process.env, VMD_VMM_CACHE_REPORT: "1", NODE_OPTIONS: "" }
    })
    let stderr = ""
    child.stderr!.setEncoding("utf8")
    child.stderr!.on("data", (d: string) => {
      stderr += d
      // Once it has loaded, close fd 3: EOF from the parent, the vmm exits 0.
      if (stderr.includes("code cache")) (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy()
    })
    const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
    expect(stderr).toContain("vmm: code cache accepted (mapped: vmm.cjs vmm.cache)")
    expect(code).toBe(0)
  }, 30_000)

  it.runIf(process.platform === "linux")("maps the bundle and its cache to load them, and unmaps both before the program runs", async () => {
    const { child, stderr, exited } = await startLoaded(["-P", "vmm", "--backend", "process"])
    // The report comes after the unmap, and before the program runs.
    const maps = readFileSync(`/proc/${child.pid}/maps`, "latin1")
    const fds = readdirSync(`/proc/${child.pid}/fd`).map((n) => {
      try {
        return readlinkSync(`/proc/${child.pid}/fd/${n}`)
      } catch {
        return ""
      }
    })
    ;(child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy()
    expect(stderr()).toContain("(mapped: vmm.cjs vmm.cache)")
    expect(maps).toContain("koffi") // the same process, loaded through the mapping's koffi
    expect(maps).not.toMatch(/dist\/vmm\.(cjs|cache)( \(deleted\))?$/m)
    expect(fds.filter((f) => /dist\/vmm\./.test(f))).toEqual([])
    expect(await exited).toBe(0)
  }, 30_000)

  /** A new directory holding a copy of bin/vmm (its loader) and an empty dist/; the caller removes it. */
  const loaderCopy = (prefix: string): string => {
    const dir = mkdtempSync(join(tmpdir(), prefix))
    mkdirSync(join(dir, "bin"))
    mkdirSync(join(dir, "dist"))
    for (const f of ["bin/vmm", "bin/package.json"]) copyFileSync(join(repoRoot, f), join(dir, f))
    return dir
  }

  it.runIf(process.platform === "linux")("a code cache damaged in its body is rejected, and the bundle runs from source (V8 aborted on it)", async () => {
    const dir = loaderCopy("vmm-cache-")
    try {
      copyFileSync(join(repoRoot, "dist/vmm.cjs"), join(dir, "dist/vmm.cjs"))
      symlinkSync(join(repoRoot, "node_modules"), join(dir, "node_modules"))
      // the build's own cache, its id and V8's header intact, 64 bytes in the middle inverted
      const cache = readFileSync(join(repoRoot, "dist/vmm.cache"))
      const at = cache.length >> 1
      for (let i = at; i < at + 64; i++) cache[i] = cache[i]! ^ 0xff
      writeFileSync(join(dir, "dist/vmm.cache"), cache)
      const child = spawn(join(dir, "bin/vmm"), ["-P", "vmm", "--backend", "process"], {
        stdio: ["ignore", "ignore", "pipe", "pipe"],
        env: { ...process.env, VMD_VMM_CACHE_REPORT: "1", NODE_OPTIONS: "" }
      })
      let stderr = ""
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (d: string) => (stderr += d))
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
        child.once("exit", (code, signal) => resolve({ code, signal }))
      )
      // the program answers a request: it runs, compiled from source
      const parent = child.stdio[3] as Duplex
      const answer = new Promise<number | null>((resolve) => {
        let got = Buffer.alloc(0)
        parent.on("data", (d: Buffer) => {
          got = Buffer.concat([got, d])
          if (got.length >= IMSG_HEADER_SIZE) resolve(readType(got, 0))
        })
        parent.on("error", () => resolve(null))
        parent.on("close", () => resolve(null))
      })
      const request = Buffer.alloc(IMSG_HEADER_SIZE)
      writeHeader(request, 0, T.IMSG_VMDOP_GET_INFO_VM_REQUEST, IMSG_HEADER_SIZE, false, 0, 0)
      parent.write(request)
      expect(await answer, stderr).toBe(T.IMSG_VMDOP_GET_INFO_VM_END_DATA)
      parent.destroy()
      expect(await exited, stderr).toEqual({ code: 0, signal: null })
      expect(stderr).toContain("vmm: code cache rejected (mapped: vmm.cjs vmm.cache)")
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 30_000)

  /**
   * bin/vmm copied into a directory of its own, with `bundle` as its dist/vmm.cjs
   * (`prepare` adds to the directory), run by node with `args`: its exit code and stderr.
   */
  const runLoaderCopy = async (bundle: string, args: ReadonlyArray<string>, env: Record<string, string>, prepare: (dir: string) => void = () => {}) => {
    const dir = loaderCopy("vmm-loader-")
    try {
      writeFileSync(join(dir, "dist/vmm.cjs"), bundle)
      prepare(dir)
      const child = spawn(process.execPath, [join(dir, "bin/vmm"), ...args], {
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, NODE_OPTIONS: "", ...env },
        cwd: dir
      })
      let stderr = ""
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (d: string) => (stderr += d))
      const code = await new Promise<number | null>((resolve) => child.once("close", (c) => resolve(c)))
      return { code, stderr }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }

  it.runIf(process.platform === "linux")("reads the bundle with read(2) where it cannot map it (no koffi to load), and runs it the same", async () => {
    // a bundle of the build's layout that names a native module which is not there
    const bundle =
      `(function (exports, require, module, __filename, __dirname) {// vmm-build ${"0".repeat(64)} koffi nowhere%2Fkoffi.node 0\n` +
      `process.stderr.write("bundle ran: " + typeof require + "\\n")\n})`
    const r = await runLoaderCopy(bundle, [], { VMD_VMM_CACHE_REPORT: "1", NODE_PATH: "" }, (dir) => {
      // a koffi that cannot load, found before any other (global folders, a node_modules above)
      mkdirSync(join(dir, "node_modules/koffi"), { recursive: true })
      writeFileSync(join(dir, "node_modules/koffi/package.json"), `{"name":"koffi","main":"index.js"}`)
      writeFileSync(join(dir, "node_modules/koffi/index.js"), `throw new Error("no koffi here")\n`)
    })
    expect(r.stderr).toContain("vmm: code cache absent (mapped: none)")
    expect(r.stderr).toContain("bundle ran: function")
    expect(r.code).toBe(0)
  }, 30_000)

  it("dist/vmm.cjs is the bundle inside its CommonJS wrapper, the build id on its first line, ASCII only (bin/vmm reads it as latin1)", () => {
    const bytes = readFileSync(join(repoRoot, "dist/vmm.cjs"))
    const text = bytes.toString("latin1")
    expect(text).toMatch(/^\(function \(exports, require, module, __filename, __dirname\) \{\/\/ vmm-build [0-9a-f]{64}( koffi \S+ \S+)?\n/)
    expect(text.endsWith("\n})")).toBe(true)
    expect(bytes.findIndex((b) => b > 0x7f)).toBe(-1)
  })

  it.runIf(process.platform === "linux")("a dist/vmm.cjs without the build header (another layout) fails at once with exit 1 and says why", async () => {
    // the layout before the wrapper moved into the file: the id line first
    const r = await runLoaderCopy(`// vmm-build ${"0".repeat(64)}\n"use strict";\n`, ["-P", "vmm"], {})
    expect(r.stderr).toContain("vmm: cannot load dist/vmm.cjs (run npm ci or npm run build): dist/vmm.cjs has no build header")
    expect(r.code).toBe(1)
  }, 30_000)

  const runBin = (args: ReadonlyArray<string>, fd3: "none" | "devnull") =>
    new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(join(repoRoot, "bin/vmm"), [...args], {
        stdio: fd3 === "none" ? ["ignore", "ignore", "pipe"] : ["ignore", "ignore", "pipe", openSync("/dev/null", "r")],
        env: { ...process.env, VMD_VMM_LOG_STDERR: "1", NODE_OPTIONS: "" }
      })
      let stderr = ""
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (d: string) => (stderr += d))
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000)
      child.once("close", (code) => {
        clearTimeout(timer)
        resolve({ code, stderr })
      })
    })

  it.runIf(process.platform === "linux")("-P vmm without the parent's socket on fd 3 (none, or a file) exits 1 and says so, rather than serving Node's own fd", async () => {
    for (const fd3 of ["none", "devnull"] as const) {
      const r = await runBin(["-P", "vmm", "--backend", "mock"], fd3)
      expect(r.stderr).toContain("fatal: fd 3 is not the parent's stream socket (ENOTSOCK)")
      expect(r.code).toBe(1)
    }
  }, 45_000)

  it.runIf(process.platform === "linux")("a VM process whose -V fd is not a stream socket exits EBADF and says so", async () => {
    const r = await runBin(["-V", "3", "-i", "-1", "-j", "-1", "-d"], "devnull")
    expect(r.stderr).toContain("vm socket 3: not a stream socket (ENOTSOCK)")
    expect(r.code).toBe(9)
  }, 30_000)

  it.runIf(process.platform === "linux")("SIGUSR1 is ignored, as proc.c does: no Node inspector opens, the vmm serves on and exits 0 at EOF", async () => {
    const { child, stderr, exited } = await startLoaded(["-P", "vmm", "-d", "--backend", "process"])
    child.kill("SIGUSR1")
    child.kill("SIGUSR1")
    await new Promise((r) => setTimeout(r, 500))
    expect(child.exitCode).toBe(null)
    ;(child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy()
    expect(await exited).toBe(0)
    expect(stderr()).not.toContain("Debugger listening")
    expect(stderr()).not.toContain("inspector")
  }, 30_000)
})

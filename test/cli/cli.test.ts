import { spawn } from "node:child_process"
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import { parseArgs } from "../../src/cli/args.ts"
import { ImsgChannelMemory } from "../../src/layers/ImsgChannelMemory.ts"
import { ImsgChannel } from "../../src/services/ImsgChannel.ts"
import { logState } from "../../src/vmm/log.ts"
import { describeImsg, withTrace } from "../../src/vmm/trace.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import { encodeVmopResult } from "../../src/schema/structs.ts"

describe("bin/vmm flags", () => {
  it("accepts the argv vmd's proc_exec builds for the vmm child, ignoring the other children's flags", () => {
    const args = parseArgs(["-P", "vmm", "-d", "-vv", "-f", "/etc/vm.conf", "-D", "a=b", "-n"])
    expect(Either.getOrThrow(args)).toMatchObject({ mode: "vmm", debug: true, verbose: 2, vmExec: null, trace: false })
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
    expect(Either.isLeft(parseArgs(["-P", "priv"]))).toBe(true)
    expect(Either.isLeft(parseArgs(["-P", "vmm", "-z"]))).toBe(true)
    expect(Either.isLeft(parseArgs(["-V", "x"]))).toBe(true)
    expect(Either.isLeft(parseArgs(["-P", "vmm", "--backend", "kvm"]))).toBe(true)
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

describe("--trace on every channel", () => {
  it.effect("traces a channel from open and one from openOwned consumed by listen, both ways, sent by send or unsafeSend", () =>
    Effect.gen(function* () {
      const lines: Array<string> = []
      const sink = logState.sink
      logState.sink = (_level, line) => void lines.push(line)
      try {
        yield* Effect.scoped(
          Effect.gen(function* () {
            const svc = yield* ImsgChannel
            const [a, b] = yield* svc.socketpair("t")
            const parent = yield* svc.open(a)
            const vm = yield* svc.openOwned(b)
            const heard: Array<number> = []
            yield* vm.listen({ messages: (ms) => heard.push(...ms.map((m) => m.type)), end: () => {} })
            yield* parent.send({ type: T.IMSG_VMDOP_PAUSE_VM, peerid: 1, pid: 0 })
            yield* vm.send({ type: T.IMSG_VMDOP_UNPAUSE_VM, peerid: 2, pid: 0 })
            // the vmm's replies to its parent and TERMINATE_VM_EVENT go this way
            expect(vm.unsafeSend({ type: T.IMSG_VMDOP_TERMINATE_VM_EVENT, peerid: 3, pid: 0 })).toBeNull()
            yield* parent.flush
            yield* vm.flush
            const back: Array<number> = []
            while (back.length < 2) back.push(...((yield* parent.receive) ?? []).map((m) => m.type))
            for (let i = 0; i < 10 && heard.length === 0; i++) yield* Effect.yieldNow()
            expect(heard).toEqual([T.IMSG_VMDOP_PAUSE_VM])
            expect(back).toEqual([T.IMSG_VMDOP_UNPAUSE_VM, T.IMSG_VMDOP_TERMINATE_VM_EVENT])
            yield* vm.close
          })
        ).pipe(Effect.provide(withTrace.pipe(Layer.provide(ImsgChannelMemory.layer))))
      } finally {
        logState.sink = sink
      }
      const traced = lines.filter((l) => l.includes("trace fd"))
      expect(traced.filter((l) => l.includes("> IMSG_VMDOP_PAUSE_VM")).length).toBe(1)
      expect(traced.filter((l) => l.includes("< IMSG_VMDOP_PAUSE_VM")).length).toBe(1)
      expect(traced.filter((l) => l.includes("> IMSG_VMDOP_UNPAUSE_VM")).length).toBe(1)
      expect(traced.filter((l) => l.includes("< IMSG_VMDOP_UNPAUSE_VM")).length).toBe(1)
      expect(traced.filter((l) => l.includes("> IMSG_VMDOP_TERMINATE_VM_EVENT")).length).toBe(1)
      expect(traced.filter((l) => l.includes("< IMSG_VMDOP_TERMINATE_VM_EVENT")).length).toBe(1)
    })
  )
})

describe("bin/vmm start-up", () => {
  const root = fileURLToPath(new URL("../../", import.meta.url))

  /**
   * bin/vmm -P vmm (in `dir`, the repository by default) with `env` laid
   * over ours; once it has said how it loaded (a line with `until`), fd 3 is
   * closed: EOF from the parent, and the vmm exits 0. Its stderr and exit code.
   */
  const runUntil = async (env: Record<string, string>, until: string, dir = root) => {
    const child = spawn(join(dir, "bin/vmm"), ["-P", "vmm", "--backend", "process"], {
      stdio: ["ignore", "ignore", "pipe", "pipe"],
      env: { ...process.env, NODE_OPTIONS: "", ...env }
    })
    let stderr = ""
    child.stderr!.setEncoding("utf8")
    child.stderr!.on("data", (d: string) => {
      stderr += d
      if (stderr.includes(until)) (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy()
    })
    const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
    return { stderr, code }
  }
  const report = { VMD_VMM_SNAPSHOT_REPORT: "1", VMD_VMM_CACHE_REPORT: "1" }

  it.runIf(process.platform === "linux")("starts from the snapshot the build made, with the code cache it trained compiled into it", async () => {
    const { stderr, code } = await runUntil(report, "vmm: ")
    expect(stderr).toContain("vmm: started from the snapshot (code cache accepted)")
    expect(stderr).not.toContain("code cache accepted\n")
    expect(code).toBe(0)
  }, 30_000)

  it("bin/vmm.js's #! line has bin/vmm's V8 flags (the code cache is trained under them, the snapshot built under them)", () => {
    const flags = /^flags="([^"]*)"$/m.exec(readFileSync(join(root, "bin/vmm"), "utf8"))?.[1]
    expect(flags).toMatch(/^--/)
    expect(readFileSync(join(root, "bin/vmm.js"), "utf8").split("\n")[0]).toBe(`#!/usr/bin/env -S node ${flags}`)
  })

  it.runIf(process.platform === "linux")("with NODE_OPTIONS (other V8 flags), it loads the bundle with its code cache instead", async () => {
    const { stderr, code } = await runUntil({ ...report, NODE_OPTIONS: "--no-warnings" }, "code cache")
    expect(stderr).toContain("vmm: code cache accepted")
    expect(stderr).not.toContain("snapshot")
    expect(code).toBe(0)
  }, 30_000)

  it.runIf(process.platform === "linux")("a snapshot of another build of the bundle, or a node newer than it, is not used", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vmm-snapshot-"))
    try {
      // A copy of bin/ and dist/ (node_modules linked: koffi), whose snapshot is of another bundle.
      cpSync(join(root, "bin"), join(dir, "bin"), { recursive: true })
      cpSync(join(root, "dist"), join(dir, "dist"), { recursive: true })
      symlinkSync(join(root, "node_modules"), join(dir, "node_modules"))
      const copy = await runUntil(report, "vmm: ", dir)
      expect(copy.stderr).toContain("vmm: started from the snapshot")
      const sidecar = join(dir, "dist", "vmm.blob.node")
      const [node, built] = readFileSync(sidecar, "latin1").split("\n")
      writeFileSync(sidecar, `${node}\n${built!.replace(/[0-9a-f]{64}/, "0".repeat(64))}\n`)
      const otherBuild = await runUntil(report, "code cache", dir)
      expect(otherBuild.stderr).toContain("vmm: code cache accepted")
      expect(otherBuild.stderr).not.toContain("snapshot")
      expect(otherBuild.code).toBe(0)
      // The blob's own build again, but a node newer than the blob (an upgrade in place).
      writeFileSync(sidecar, `${node}\n${built}\n`)
      utimesSync(join(dir, "dist", "vmm.blob"), new Date(0), new Date(0))
      const newerNode = await runUntil(report, "code cache", dir)
      expect(newerNode.stderr).toContain("vmm: code cache accepted")
      expect(newerNode.stderr).not.toContain("snapshot")
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})

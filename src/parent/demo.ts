/**
 * The main job: the vmm process deployed as vmd deploys it, on a plain
 * Linux machine. A stand-in for vmd's parent starts `bin/vmm -P vmm
 * --backend process` with its channel on fd 3 and walks through a VM's
 * life, printing `vmctl status` tables as it goes:
 *
 *   start 4 VMs -> pause one and resume it -> reset one guest (it is
 *   restarted with a new VM process) -> stop one gracefully and one by
 *   force -> close fd 3 (bin/vmm ends every VM and exits 0).
 *
 * Every step is checked; the first one that does not behave ends the demo
 * with exit 1.
 *
 *   npx tsx src/parent/demo.ts [-v] [-d] [--vmm PATH] [--vm-exec PATH]
 *
 * --vmm: the vmm program (default bin/vmm; a .mjs/.js file runs with node).
 */
import { Data, Effect, Either, Exit, Fiber } from "effect"
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, ftruncateSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import * as ImsgChannelNative from "../layers/ImsgChannelNative.ts"
import type { ExitStatus } from "../services/Process.ts"
import { makeVmdParent, type VmdParent } from "./parent.ts"
import type { TrackedVm } from "./records.ts"
import type { VmSpec } from "./spec.ts"
import { statusTable, vmStateName } from "./status.ts"
import { binVmm, type VmmCommand } from "./vmmProcess.ts"

class DemoError extends Data.TaggedError("DemoError")<{ readonly message: string }> {}

interface DemoArgs {
  readonly verbose: number
  readonly debug: boolean
  readonly vmm: VmmCommand
  readonly vmExec: string | undefined
}

const usage = "usage: demo [-v] [-d] [--vmm PATH] [--vm-exec PATH]"

const parseDemoArgs = (argv: ReadonlyArray<string>): Either.Either<DemoArgs, string> => {
  let verbose = 0
  let debug = false
  let vmm = binVmm
  let vmExec: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? ""
    if (/^-v+$/.test(a)) verbose += a.length - 1
    else if (a === "-d") debug = true
    else if (a === "--vmm" || a === "--vm-exec") {
      const v = argv[++i]
      if (v === undefined) return Either.left(`${a} needs a value\n${usage}`)
      if (a === "--vm-exec") vmExec = resolve(v)
      else vmm = /\.m?js$/.test(v) ? { command: process.execPath, args: [resolve(v)] } : { command: resolve(v), args: [] }
    } else return Either.left(`unknown argument ${a}\n${usage}`)
  }
  return Either.right({ verbose, debug, vmm, vmExec })
}

const say = (line: string) => Effect.sync(() => process.stdout.write(`${line}\n`))
const step = (title: string) => say(`\n==> ${title}`)

const check = (ok: boolean, message: string) => (ok ? Effect.void : Effect.fail(new DemoError({ message })))

const GiB = 1024n * 1024n * 1024n
const MiB = 1024n * 1024n

/** Kernel, cdrom and disk images for the guests, in a temporary directory removed at the end. */
const guestFiles = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-demo-"))
    const image = (name: string, size: bigint) => {
      const path = join(dir, name)
      const fd = openSync(path, "w")
      ftruncateSync(fd, Number(size)) // sparse
      closeSync(fd)
      return path
    }
    const kernel = join(dir, "bsd.rd")
    writeFileSync(kernel, Buffer.from("\x7fELF null guest kernel\n"))
    // what vmd sends as the kernel of a VM that boots from its disk (VM_DEFAULT_BIOS)
    const bios = join(dir, "vmm-bios")
    writeFileSync(bios, Buffer.from("null guest BIOS\n"))
    return {
      dir,
      kernel,
      bios,
      cdrom: image("install78.iso", 600n * MiB),
      disk: (name: string, size: bigint) => image(name, size)
    }
  }),
  (f) => Effect.sync(() => rmSync(f.dir, { recursive: true, force: true }))
)

const stateOf = (parent: VmdParent, name: string) =>
  Effect.gen(function* () {
    const rows = yield* parent.info
    const row = rows.find((r) => r.vir_name === name)
    return row === undefined ? "absent" : vmStateName(row.vir_state)
  })

const status = (parent: VmdParent) =>
  Effect.gen(function* () {
    yield* say(statusTable(yield* parent.info).replace(/^/gm, "    "))
  })

const expectState = (parent: VmdParent, name: string, want: string) =>
  Effect.gen(function* () {
    const got = yield* stateOf(parent, name)
    yield* check(got === want, `${name} is ${got}, expected ${want}`)
  })

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

const exitText = (s: ExitStatus) => (s._tag === "Exited" ? `exit ${s.code}` : `signal ${s.signal}`)

const demo = (args: DemoArgs) =>
  Effect.gen(function* () {
    const files = yield* guestFiles
    yield* say("vmd-vmm demo: OpenBSD vmd's vmm process, driven the way vmd's parent drives it")

    yield* step(`starting ${[args.vmm.command, ...args.vmm.args].join(" ")} -P vmm --backend process`)
    const parent = yield* makeVmdParent({
      command: args.vmm,
      backend: "process",
      debug: args.debug,
      verbose: args.verbose,
      bios: files.bios,
      ...(args.vmExec === undefined ? {} : { vmExec: args.vmExec })
    })
    yield* say(`    vmm is pid ${parent.vmmPid}, talking imsg on its fd 3; sent CONFIG (struct vmd_config)`)
    yield* say("    (no RECEIVE_VMM_FD: Linux has no /dev/vmm, and the process backend needs none)")

    yield* step("starting 4 VMs: START_VM_REQUEST (+kernel), CDROM, DISK per image layer, IF per nic, END (+pty)")
    const specs: ReadonlyArray<VmSpec> = [
      { name: "alpine", memory: 512n * MiB, vcpus: 1, kernel: files.kernel, disks: [[files.disk("alpine.img", 4n * GiB)]], nics: 1 },
      {
        name: "openbsd",
        memory: GiB,
        vcpus: 2,
        kernel: files.kernel,
        cdrom: files.cdrom,
        disks: [[files.disk("openbsd.qcow2", 20n * GiB), files.disk("openbsd-base.qcow2", 20n * GiB)]],
        nics: 2
      },
      { name: "web", memory: 2n * GiB, vcpus: 4, kernel: files.kernel, disks: [[files.disk("web.img", 8n * GiB)]], nics: 1 },
      { name: "db", memory: 1536n * MiB, vcpus: 2, disks: [[files.disk("db.img", 16n * GiB)], [files.disk("dbdata.img", 64n * GiB)]] }
    ]
    const vms = new Map<string, TrackedVm>()
    for (const spec of specs) {
      const vm = yield* parent.startVm(spec)
      vms.set(vm.name, vm)
      yield* say(`    ${vm.name.padEnd(8)} id ${vm.id}, VM process pid ${vm.pid}, console ${vm.tty}`)
    }
    yield* status(parent)
    for (const spec of specs) yield* expectState(parent, spec.name, "running")

    const vm = (name: string) => {
      const v = vms.get(name)
      return v === undefined ? Effect.fail(new DemoError({ message: `no vm ${name}` })) : Effect.succeed(v)
    }

    yield* step("pausing web (PAUSE_VM, answered by the VM process through the vmm)")
    const web = yield* vm("web")
    yield* parent.pause(web.id)
    yield* status(parent)
    yield* expectState(parent, "web", "paused")
    yield* step("resuming web (UNPAUSE_VM)")
    yield* parent.unpause(web.id)
    yield* expectState(parent, "web", "running")
    yield* say("    web is running again")

    yield* step("resetting db's guest (its VM process exits 35, EAGAIN, as on a triple fault)")
    const db = yield* vm("db")
    const mark = yield* parent.mark
    yield* Effect.sync(() => process.kill(db.pid, "SIGHUP"))
    const restarted = yield* parent.waitFor((e) => e._tag === "Started" && e.id === db.id && e.restart, mark)
    const newPid = restarted._tag === "Started" ? restarted.pid : -1
    yield* say(`    TERMINATE_VM_EVENT result EAGAIN: the parent started db again, pid ${db.pid} -> ${newPid}`)
    yield* check(newPid > 0 && newPid !== db.pid && !alive(db.pid), "db was not restarted with a new VM process")
    yield* expectState(parent, "db", "running")
    yield* status(parent)

    yield* step("stopping alpine gracefully (TERMINATE_VM_REQUEST; the vmm asks the VM with VM_REBOOT)")
    const alpine = yield* vm("alpine")
    yield* parent.stopVm(alpine.id, { wait: true })
    yield* check(!alive(alpine.pid), "alpine's VM process is still alive")
    yield* say(`    alpine stopped (VM process ${alpine.pid} exited)`)
    yield* step("stopping openbsd by force (TERMINATE_VM_REQUEST with VMOP_FORCE)")
    const openbsd = yield* vm("openbsd")
    yield* parent.stopVm(openbsd.id, { force: true, wait: true })
    yield* check(!alive(openbsd.pid), "openbsd's VM process is still alive")
    yield* say(`    openbsd stopped (VM process ${openbsd.pid} terminated)`)
    yield* status(parent)
    yield* expectState(parent, "alpine", "stopped")
    yield* expectState(parent, "openbsd", "stopped")

    yield* step("shutting down: closing fd 3, as vmd's parent does when it exits")
    const running = (yield* parent.vms).filter((v) => v.pid > 0)
    const exit = yield* parent.close
    yield* say(`    bin/vmm ended: ${exitText(exit)}`)
    yield* check(exit._tag === "Exited" && exit.code === 0, `bin/vmm ended with ${exitText(exit)}, expected exit 0`)
    const left = running.filter((v) => alive(v.pid))
    yield* check(left.length === 0, `VM processes left behind: ${left.map((v) => v.pid).join(" ")}`)
    yield* say(`    every VM process is gone (${running.map((v) => `${v.name} ${v.pid}`).join(", ")})`)
    yield* say("\ndemo: every step behaved")
  }).pipe(Effect.scoped)

const main = Effect.gen(function* () {
  const args = parseDemoArgs(process.argv.slice(2))
  if (Either.isLeft(args)) return yield* Effect.fail(new DemoError({ message: args.left }))
  return yield* demo(args.right)
}).pipe(
  Effect.provide(ImsgChannelNative.layer),
  Effect.tapError((e) => Effect.sync(() => process.stderr.write(`demo: FAILED: ${e.message}\n`)))
)

// Run it so that Ctrl-C still cleans up: the first SIGINT or SIGTERM interrupts the demo,
// whose scopes then end the vmm (and with it every VM) and remove the guest files; a
// second one (under `npm run demo`, tsx relays the terminal's SIGINT to node as well)
// must not cut that short. Exit 0 when every step behaved, 1 on a failure, 130 when
// interrupted.
const fiber = Effect.runFork(main)
let interrupted = false
const interrupt = () => {
  if (interrupted) return
  interrupted = true
  process.stderr.write("demo: interrupted; ending the vmm and removing the guest files\n")
  Effect.runFork(Fiber.interrupt(fiber))
}
process.on("SIGINT", interrupt)
process.on("SIGTERM", interrupt)
fiber.addObserver((exit) => process.exit(Exit.isSuccess(exit) ? 0 : Exit.isInterrupted(exit) ? 130 : 1))

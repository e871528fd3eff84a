/**
 * A real vmm process (bin/vmm, or a bundle of the current sources) with its
 * imsg channel on fd 3, as vmd's parent starts it, for the fuzzing parent
 * and the soak: our end of the channel as an ImsgChannel, the vmm's log
 * lines (on stderr whether or not the host has a syslog: VMD_VMM_LOG_STDERR,
 * since without it a host with /dev/log would take them and the checks on
 * them would see nothing; without -d the VMs' stdio is /dev/null) counted by
 * pattern, and a scope that makes sure it is gone.
 */
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { Deferred, Duration, Effect, Exit } from "effect"
import type { Scope } from "effect"
import * as libc from "../../../src/native/libc.ts"
import type { Fd } from "../../../src/services/Fd.ts"
import { ImsgChannel, type Channel } from "../../../src/services/ImsgChannel.ts"
import type { ExitStatus } from "../../../src/services/Process.ts"
import type { VmmProgram } from "./build.ts"

export interface LogCounts {
  /** A payload of the wrong size refused (SchemaError "expected N bytes"), or a bad index/fd. */
  decodeErrors: number
  /** An unknown message type, from the parent or a VM. */
  invalidTypes: number
  /** A VM ended for breaking the protocol ("terminating it"). */
  vmsEnded: number
  /** A defect caught by the event loop, or a fatal error: must stay 0. */
  crashes: number
  lines: number
}

export interface RealVmm {
  readonly pid: number
  readonly channel: Channel
  readonly exit: Effect.Effect<ExitStatus>
  readonly logs: LogCounts
  /** The last log lines (for failure reports). */
  readonly recent: Array<string>
}

export interface RealVmmOptions {
  readonly program: VmmProgram
  readonly vmExec: string
  readonly env?: Readonly<Record<string, string>>
  readonly verbose?: number
  /** bin/vmm --spawn: posix_spawn with pidfds, the C spawner helper (its default), or Node's spawn. */
  readonly spawn?: "direct" | "spawner" | "node"
}

const countLine = (c: LogCounts, line: string): void => {
  c.lines++
  if (/expected \d+ bytes, got \d+|with \d+ bytes \(want|invalid disk id|invalid interface id/.test(line)) c.decodeErrors++
  if (line.includes("got invalid imsg")) c.invalidTypes++
  if (line.includes("terminating it")) c.vmsEnded++
  if (/internal error|fatal|Unhandled|uncaught|TypeError|RangeError/.test(line)) c.crashes++
}

const owned = (num: number, label: string): Fd => {
  if (num < 0) throw new Error(`${label}: errno ${-num}`)
  return libc.nativeFd(num, label)
}

/** An fd on /dev/null to send with a message (the channel owns it once sent). */
export const devNull = (label = "/dev/null"): Fd => owned(libc.open("/dev/null", libc.O_RDWR | libc.O_CLOEXEC), label)

export const startRealVmm = (o: RealVmmOptions): Effect.Effect<RealVmm, never, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const [ours, theirs] = yield* Effect.orDie(imsg.socketpair("vmm fd 3"))
    const logs: LogCounts = { decodeErrors: 0, invalidTypes: 0, vmsEnded: 0, crashes: 0, lines: 0 }
    const recent: Array<string> = []
    const exit = yield* Deferred.make<ExitStatus>()
    const args = [...o.program.args, "-P", "vmm", "--backend", "process", "--vm-exec", o.vmExec, ...(o.spawn === undefined ? [] : ["--spawn", o.spawn]), ...Array.from({ length: o.verbose ?? 0 }, () => "-v")]
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const c = spawn(o.program.command, args, {
          stdio: ["ignore", "ignore", "pipe", theirs.num],
          env: { ...process.env, VMD_VMM_LOG_STDERR: "1", ...o.env }
        })
        c.once("exit", (code, sig) =>
          Deferred.unsafeDone(exit, Exit.succeed<ExitStatus>(code !== null ? { _tag: "Exited", code } : { _tag: "Signaled", signal: sig === "SIGKILL" ? 9 : 15 }))
        )
        c.on("error", () => {})
        const rl = createInterface({ input: c.stderr! })
        rl.on("line", (line) => {
          countLine(logs, line)
          recent.push(line)
          if (recent.length > 60) recent.shift()
        })
        return c
      }),
      (c) =>
        Effect.gen(function* () {
          if (c.exitCode !== null || c.signalCode !== null) return
          c.kill("SIGTERM")
          const gone = yield* Deferred.await(exit).pipe(Effect.timeout(Duration.seconds(15)), Effect.option)
          if (gone._tag === "None") {
            c.kill("SIGKILL")
            yield* Deferred.await(exit)
          }
        })
    )
    theirs.closeSync()
    if (child.pid === undefined) return yield* Effect.dieMessage(`cannot start ${o.program.command}`)
    const channel = yield* Effect.orDie(imsg.open(ours))
    return { pid: child.pid, channel, exit: Deferred.await(exit), logs, recent }
  })

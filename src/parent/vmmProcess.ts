/**
 * Starting the vmm process as vmd's parent does (proc.c proc_exec, imsg.md
 * §4.2): a socketpair, the child's end on fd 3 (PROC_PARENT_SOCK_FILENO),
 * argv `<vmm> -P vmm` plus the parent's flags. Node's spawn puts a stdio
 * slot's fd at that slot's number in the child and clears its
 * close-on-exec there only, so slot 3 is the socket; every other fd we hold
 * is close-on-exec and stays behind.
 *
 * The scope's end makes sure the process is gone: SIGTERM, then SIGKILL
 * after a grace period, and waits for it.
 */
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Deferred, Duration, Effect, Exit } from "effect"
import type { Scope } from "effect"
import { fromErrorCode } from "../schema/errno.ts"
import type { ExitStatus } from "../services/Process.ts"
import type { Fd } from "../services/Fd.ts"
import { constants as osConstants } from "node:os"
import { parentError, type ParentError } from "./errors.ts"

/** How to run the vmm program: `command args... -P vmm ...`. */
export interface VmmCommand {
  readonly command: string
  readonly args: ReadonlyArray<string>
}

/** bin/vmm of this checkout (it loads dist/vmm.mjs, built by `npm ci` / `npm run build`). */
export const binVmm: VmmCommand = { command: fileURLToPath(new URL("../../bin/vmm", import.meta.url)), args: [] }

export interface VmmSpawnOptions {
  readonly command?: VmmCommand
  /** --backend; "process" (the default) on Linux. */
  readonly backend?: "process" | "mock" | "vmm"
  /** -d: VM processes keep stdio, logs on stderr. */
  readonly debug?: boolean
  /** -v count. */
  readonly verbose?: number
  /** --vm-exec: the VM program (default: bin/vmm itself, as vmd execs argv0). */
  readonly vmExec?: string
  /** Extra environment for the vmm, inherited by its VMs (VMM_TEST_VM_MODE). */
  readonly env?: Readonly<Record<string, string>>
  /** The vmm's stdout and stderr: ours, or /dev/null. */
  readonly output?: "inherit" | "ignore"
  /** How long close waits after SIGTERM before SIGKILL. */
  readonly graceMs?: number
}

export const vmmArgv = (o: VmmSpawnOptions): ReadonlyArray<string> => [
  ...(o.command ?? binVmm).args,
  "-P",
  "vmm",
  "--backend",
  o.backend ?? "process",
  ...(o.debug === true ? ["-d"] : []),
  ...Array.from({ length: o.verbose ?? 0 }, () => "-v"),
  ...(o.vmExec === undefined ? [] : ["--vm-exec", o.vmExec])
]

export interface VmmChild {
  readonly pid: number
  /** Completes when the vmm process has exited. */
  readonly exit: Effect.Effect<ExitStatus>
  readonly signal: (sig: "SIGTERM" | "SIGKILL") => Effect.Effect<void>
}

const signalNumber = (name: string | null): number => {
  const signals: Readonly<Record<string, number | undefined>> = osConstants.signals
  return (name === null ? undefined : signals[name]) ?? 0
}

const errorCode = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

/** Start the vmm with `childEnd` as its fd 3. The caller still owns (and should close) its copy of childEnd. */
export const spawnVmm = (o: VmmSpawnOptions, childEnd: Fd): Effect.Effect<VmmChild, ParentError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const cmd = o.command ?? binVmm
      const out = o.output ?? "inherit"
      const exit = yield* Deferred.make<ExitStatus>()
      /** How a spawn that returned no pid failed (its 'error' event, a nextTick later). */
      const failed = yield* Deferred.make<never, ParentError>()
      const child = yield* Effect.try({
        try: () => {
          const c = spawn(cmd.command, [...vmmArgv(o)], {
            stdio: ["ignore", out, out, childEnd.num],
            env: { ...process.env, ...o.env }
          })
          // listened for in the same synchronous step (see ProcessNode's spawn): the fiber
          // may yield before its next effect, and an 'error' nobody hears is thrown, uncaught
          c.once("error", (e) =>
            Deferred.unsafeDone(failed, Exit.fail(parentError("spawn", fromErrorCode(errorCode(e)), `${cmd.command}: ${e.message}`)))
          )
          return c
        },
        catch: (e) => parentError("spawn", fromErrorCode(errorCode(e)), `${cmd.command}: ${String(e)}`)
      })
      child.once("exit", (code, sig) =>
        Deferred.unsafeDone(
          exit,
          Exit.succeed<ExitStatus>(code !== null ? { _tag: "Exited", code } : { _tag: "Signaled", signal: signalNumber(sig) })
        )
      )
      const pid = child.pid
      if (pid === undefined) return yield* Deferred.await(failed)
      child.on("error", () => {})
      const done = Deferred.isDone(exit)
      const signal = (sig: "SIGTERM" | "SIGKILL") =>
        Effect.flatMap(done, (gone) =>
          gone
            ? Effect.void
            : Effect.sync(() => {
                child.kill(sig)
              })
        )
      return { pid, exit: Deferred.await(exit), signal }
    }),
    (vmm) =>
      Effect.gen(function* () {
        yield* vmm.signal("SIGTERM")
        const grace = Duration.millis(o.graceMs ?? 10_000)
        const gone = yield* vmm.exit.pipe(Effect.timeout(grace), Effect.option)
        if (gone._tag === "None") {
          yield* vmm.signal("SIGKILL")
          yield* vmm.exit
        }
      })
  )

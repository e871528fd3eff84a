/**
 * bin/vmm -P vmm: the vmm process, started by vmd's parent with its channel
 * on fd 3 (imsg.md §4.2). Wires the layers for the chosen backend and runs
 * the event loop until the parent goes away or a signal asks us to stop;
 * every VM process is ended before we exit.
 */
import { Context, Effect, Exit, Layer, Runtime } from "effect"
import { resolve } from "node:path"
import type { VmmArgs } from "./args.ts"
import { nativeFd, notStreamSocket } from "../native/libc.ts"
import { openSyslog } from "../native/syslog.ts"
import { PROC_PARENT_SOCK_FILENO } from "../schema/imsgTypes.ts"
import * as ImsgChannelNative from "../layers/ImsgChannelNative.ts"
import { logState, logWarnx, withVmdLogger } from "../vmm/log.ts"
import { privsepOrExit } from "../native/privsep.ts"
import { startVmmServer } from "../vmm/server.ts"
import { withTrace } from "../vmm/trace.ts"
import { vmmServices } from "./layers.ts"
import { ImsgChannel } from "../services/ImsgChannel.ts"
import { HANDSHAKE_TIMEOUT_MS, type VmmOptions } from "../vmm/context.ts"

/**
 * The program exec'd for each VM: --vm-exec, or this program itself (vmd
 * execs its own argv0): Node with this process's V8 flags and script
 * (bin/vmm, dist/vmm.mjs, or a .ts under tsx), not the script as a program:
 * bin/vmm's `#!/usr/bin/env -S node ...` needs env's -S, which OpenBSD's env
 * does not have.
 */
export const vmExecOf = (args: VmmArgs): { command: string; prefix: ReadonlyArray<string> } => {
  if (args.vmExec !== null) return { command: resolve(args.vmExec), prefix: [] }
  const self = process.argv[1] ?? ""
  return { command: process.execPath, prefix: [...process.execArgv, resolve(self)] }
}

/**
 * The vmm process. `handshakeTimeoutMs` (bin/vmm always runs with the default) is for
 * tests that need a hung start handshake to give up sooner.
 */
export const runVmm = async (args: VmmArgs, handshakeTimeoutMs = HANDSHAKE_TIMEOUT_MS): Promise<number> => {
  logState.title = "vmm"
  // VMD_VMM_LOG_STDERR=1: logs on stderr without -d (which would also give
  // the VMs this process's stdio), e.g. for a supervisor or a test reading them.
  if (!args.debug && process.env["VMD_VMM_LOG_STDERR"] !== "1") {
    const syslog = openSyslog("vmd")
    if (syslog !== null) logState.sink = (level, line) => syslog(level, line)
  }
  // proc.c gives the vmm its end of a socketpair on fd 3. Without it, the number
  // is Node's own (libuv's epoll fd lands on the lowest free one): reading that
  // as the parent's channel would hang, and closing it at exit abort Node.
  const what = notStreamSocket(PROC_PARENT_SOCK_FILENO)
  if (what !== null) {
    await Effect.runPromise(
      logWarnx(`fatal: fd ${PROC_PARENT_SOCK_FILENO} is not the parent's stream socket (${what}): bin/vmm -P vmm is started by vmd`)
    )
    return 1
  }
  const exec = vmExecOf(args)
  const options: VmmOptions = {
    debug: args.debug,
    verbose: args.verbose,
    vmExec: exec.command,
    vmExecArgs: exec.prefix,
    handshakeTimeoutMs
  }

  const serve = Effect.gen(function* () {
    const runtime = yield* Effect.runtime<never>()
    // A failed drop, unveil or pledge is fatal before serving anything.
    const privsepExit = yield* privsepOrExit(options.vmExec)
    if (privsepExit !== null) return privsepExit
    const handle = yield* startVmmServer(nativeFd(PROC_PARENT_SOCK_FILENO, "parent"), options)
    const stop = (sig: string) => () => {
      Runtime.runFork(runtime)(handle.shutdown(`received ${sig}`))
    }
    // proc_run: SIGINT/SIGTERM shut down; SIGHUP and SIGPIPE are ignored.
    process.on("SIGTERM", stop("SIGTERM"))
    process.on("SIGINT", stop("SIGINT"))
    process.on("SIGHUP", () => {})
    return yield* handle.done
  })

  // The services' context, built and provided without a layer (see vmmServices).
  const program = Effect.gen(function* () {
    const services = yield* vmmServices(args.backend, args.spawn)
    const imsg = args.trace
      ? yield* Layer.build(withTrace.pipe(Layer.provide(ImsgChannelNative.layer)))
      : Context.make(ImsgChannel, ImsgChannelNative.ImsgChannelNative.service)
    return yield* serve.pipe(Effect.provide(Context.merge(services, imsg)))
  })

  // The services' scope closes when the program ends: the Process service's
  // finalizer kills and reaps every VM process still alive, channels close.
  // vmd's log format for everything, the services' construction included.
  const exit = await Effect.runPromiseExit(program.pipe(Effect.scoped, withVmdLogger))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(logWarnx(`fatal: ${String(exit.cause)}`))
    return 1
  }
  return exit.value
}

/**
 * Entry of the VM process: `bin/vmm -V fd -i vmmfd -j pspfd [-d] [-v|-vv] [--trace]`
 * (src/cli/vmm.ts parses the flags and calls runVmProcess). Resolves with
 * the exit code; the caller exits with it.
 */
import { Effect, Either, Layer } from "effect"
import { parseArgs, type VmArgs } from "../cli/args.ts"
import * as ImsgChannelNative from "../layers/ImsgChannelNative.ts"
import { logState } from "../vmm/log.ts"
import { withTrace } from "../vmm/trace.ts"
import type { ImsgChannel } from "../services/ImsgChannel.ts"
import { vmProcess } from "./program.ts"

export { vmProcess } from "./program.ts"

const isArgv = (input: VmArgs | ReadonlyArray<string>): input is ReadonlyArray<string> => Array.isArray(input)

const toArgs = (input: VmArgs | ReadonlyArray<string>): Either.Either<VmArgs, string> =>
  isArgv(input)
    ? Either.flatMap(parseArgs(input), (a) => (a.mode === "vm" ? Either.right(a) : Either.left("not a VM process: -V fd is required")))
    : Either.right(input)

/** The VM process on real sockets; takes parsed flags or the argv after the program name. */
export const runVmProcess = (input: VmArgs | ReadonlyArray<string>): Promise<number> => {
  const args = toArgs(input)
  if (Either.isLeft(args)) {
    process.stderr.write(`vm: ${args.left}\n`)
    return Promise.resolve(1)
  }
  logState.title = "vm"
  return Effect.runPromise(vmProcess(args.right).pipe(Effect.provide(vmChannels(args.right))))
}

/** The VM process's ImsgChannel service: native, traced under --trace (the raw handshake included). */
export const vmChannels = (args: Pick<VmArgs, "trace">): Layer.Layer<ImsgChannel> =>
  args.trace ? withTrace.pipe(Layer.provide(ImsgChannelNative.layer)) : ImsgChannelNative.layer

/**
 * bin/vmm: `-P vmm` runs the vmm process (vmd's parent starts it with its
 * channel on fd 3); `-V fd` runs our VM process (the vmm process execs it
 * for each VM, as vmd execs itself).
 */
import { Either } from "effect"
import { parseArgs } from "./args.ts"
import { runVmm } from "./vmmMain.ts"

// SIGUSR1 ignored as proc.c does, not Node's inspector: bin/vmm does this first; here for runs
// without it (tsx, node dist/vmm.mjs).
if (process.listenerCount("SIGUSR1") === 0) process.on("SIGUSR1", () => {})

const main = async (): Promise<number> => {
  const args = parseArgs(process.argv.slice(2))
  if (Either.isLeft(args)) {
    process.stderr.write(`vmm: ${args.left}\n`)
    return 1
  }
  if (args.right.mode === "vmm") return runVmm(args.right)
  const { runVmProcess } = await import("../vm/main.ts")
  return runVmProcess(args.right)
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`vmm: fatal: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exit(1)
  }
)

/**
 * The VM process on its own (`node vm.mjs -V fd ...`), for tests and for a
 * vmm started with `--vm-exec` pointing at a bundle of this file. bin/vmm
 * -V runs the same code.
 */
import { runVmProcess } from "./main.ts"

runVmProcess(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`vm: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exit(1)
  }
)

/**
 * Building the VM programs for tests and benchmarks: the Node VM process
 * bundled into one file (start-up reads one module, as dist/vmm.mjs does),
 * and c/vmprog.c compiled with gcc. Outputs go under the checkout's build/
 * (ignored by git) so that the bundle resolves koffi from node_modules.
 */
import { execFile } from "node:child_process"
import { mkdirSync, mkdtempSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url))

/** A fresh directory under build/ for one test run's programs. */
export const buildDir = (prefix: string): string => {
  mkdirSync(join(repoRoot, "build"), { recursive: true })
  return mkdtempSync(join(repoRoot, "build", `${prefix}-`))
}

/** `entry` (relative to the checkout) as one ESM file in `dir`, koffi external (a native addon). Returns its path. */
export const bundle = async (entry: string, dir: string, name: string): Promise<string> => {
  const { build } = await import("esbuild")
  const outfile = join(dir, name)
  await build({
    entryPoints: [join(repoRoot, entry)],
    outfile,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "esm",
    external: ["koffi"],
    banner: { js: "import { createRequire as __vmCreateRequire } from 'node:module'; const require = __vmCreateRequire(import.meta.url);" },
    logLevel: "warning"
  })
  return outfile
}

/** The VM process alone (src/vm/bin.ts). */
export const bundleVmProgram = (dir: string): Promise<string> => bundle("src/vm/bin.ts", dir, "vm.mjs")

/** bin/vmm's program (src/cli/vmm.ts), as scripts/build.mjs makes dist/vmm.mjs, from the current sources. */
export const bundleVmmProgram = (dir: string): Promise<string> => bundle("src/cli/vmm.ts", dir, "vmm.mjs")

/** c/vmprog.c compiled with gcc -O2. Returns the executable's path. */
export const compileVmprog = async (dir: string): Promise<string> => {
  const out = join(dir, "vmprog")
  await promisify(execFile)("gcc", ["-O2", "-Wall", "-o", out, join(repoRoot, "c/vmprog.c")])
  return out
}

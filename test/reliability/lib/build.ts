/**
 * The programs the reliability runs need, built into a fresh directory
 * under build/ (ignored by git): the C VM program (c/vmprog.c), the hostile
 * VM program (scripts/c/vmfuzz.c), the /proc watcher (scripts/c/procwatch.c)
 * and, for tests, bin/vmm's program bundled from the current sources.
 */
import { execFile } from "node:child_process"
import { join } from "node:path"
import { promisify } from "node:util"
import { buildDir, bundleVmmProgram, compileVmprog, repoRoot } from "../../../src/vm/build.ts"

export { buildDir, repoRoot }

const cc = async (dir: string, name: string): Promise<string> => {
  const out = join(dir, name)
  await promisify(execFile)("gcc", ["-O2", "-Wall", "-Wextra", "-o", out, join(repoRoot, "scripts/c", `${name}.c`)])
  return out
}

export interface Programs {
  readonly dir: string
  readonly vmprog: string
  readonly vmfuzz: string
  readonly procwatch: string
}

export const buildPrograms = async (prefix: string): Promise<Programs> => {
  const dir = buildDir(prefix)
  const [vmprog, vmfuzz, procwatch] = await Promise.all([compileVmprog(dir), cc(dir, "vmfuzz"), cc(dir, "procwatch")])
  return { dir, vmprog, vmfuzz, procwatch }
}

/** How to run the vmm: bin/vmm (scripts), or a bundle of the current sources (tests). */
export interface VmmProgram {
  readonly command: string
  readonly args: ReadonlyArray<string>
}

export const binVmmProgram: VmmProgram = { command: join(repoRoot, "bin/vmm"), args: [] }

export const bundledVmm = async (dir: string): Promise<VmmProgram> => ({
  command: process.execPath,
  args: [await bundleVmmProgram(dir)]
})

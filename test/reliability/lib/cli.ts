/**
 * What scripts/fuzz.ts and scripts/soak.ts share: flags, and which vmm
 * program to run (bin/vmm, warning when dist/ is older than src/, or a
 * bundle of the current sources with --fresh).
 */
import { readdirSync, statSync } from "node:fs"
import { join } from "node:path"
import { binVmmProgram, bundledVmm, repoRoot, type VmmProgram } from "./build.ts"

/** --name N as a number (1_000_000 and 1e6 accepted), else the default. */
export const numberFlag = (argv: ReadonlyArray<string>, name: string, fallback: number): number => {
  const at = argv.indexOf(`--${name}`)
  if (at < 0) return fallback
  const v = Number((argv[at + 1] ?? "").replace(/_/g, ""))
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a number`)
  return Math.floor(v)
}

export const hasFlag = (argv: ReadonlyArray<string>, name: string): boolean => argv.includes(`--${name}`)

const newest = (dir: string): number => {
  let t = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return t
}

/** bin/vmm, or the current sources bundled into `dir` (--fresh). */
export const vmmProgram = async (argv: ReadonlyArray<string>, dir: string, say: (s: string) => void): Promise<VmmProgram> => {
  if (hasFlag(argv, "fresh")) {
    say("vmm: the current sources, bundled (--fresh)")
    return bundledVmm(dir)
  }
  let dist = 0
  try {
    dist = statSync(join(repoRoot, "dist/vmm.mjs")).mtimeMs
  } catch {
    throw new Error("dist/vmm.mjs is missing: run npm run build (or pass --fresh)")
  }
  if (newest(join(repoRoot, "src")) > dist) say("warning: dist/vmm.mjs is older than src/: run npm run build, or pass --fresh")
  say("vmm: bin/vmm")
  return binVmmProgram
}

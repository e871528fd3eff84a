#!/usr/bin/env node
// Compiles the process spawner (c/spawner.c) into build/spawner for the
// ProcessSpawner layer. Without a C compiler (or off Linux) it says so and
// exits 0: the layer is then unavailable (spawnerAvailable() is false) and
// layerOrNode uses ProcessNode.
//
//   node scripts/build-spawner.mjs [--out PATH] [--strict]
//
// $CC picks the compiler (default: cc, then gcc, then clang). --strict fails
// (exit 1) when it cannot build.
import { execFileSync } from "node:child_process"
import { mkdirSync, renameSync, rmSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const args = process.argv.slice(2)
const outAt = args.indexOf("--out")
const out = resolve(outAt >= 0 && args[outAt + 1] ? args[outAt + 1] : join(root, "build", "spawner"))
const strict = args.includes("--strict")

const giveUp = (why) => {
  process.stderr.write(`build-spawner: ${why}; the process spawner is unavailable (Node's spawn is used)\n`)
  process.exit(strict ? 1 : 0)
}

if (process.platform !== "linux") giveUp(`${process.platform} is not supported yet`)

const compilers = process.env.CC ? [process.env.CC] : ["cc", "gcc", "clang"]
const cc = compilers.find((c) => {
  try {
    execFileSync(c, ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})
if (cc === undefined) giveUp(`no C compiler (${compilers.join(", ")})`)

mkdirSync(dirname(out), { recursive: true })
const tmp = `${out}.tmp-${process.pid}`
try {
  execFileSync(cc, ["-O2", "-Wall", "-Wextra", "-o", tmp, join(root, "c", "spawner.c")], {
    stdio: ["ignore", "inherit", "inherit"]
  })
  renameSync(tmp, out) // atomic: a running spawner keeps its old inode
} catch (e) {
  rmSync(tmp, { force: true })
  giveUp(`${cc} failed: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`)
}

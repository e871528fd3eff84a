#!/usr/bin/env node
// Makes dist/vmm.cache, V8's code cache of dist/vmm.cjs (see bin/vmm), from a
// training run: bin/vmm -P vmm starts on a socketpair, answers one
// GET_INFO_VM_REQUEST and exits when its channel closes; at exit it writes
// the cache with every function compiled by then, i.e. what start-up runs
// (through a descriptor it opened before it ran anything: on OpenBSD the
// run unveils and pledges, and as root drops to _vmd, like the real vmm).
// Run after scripts/build.mjs and scripts/build-spawner.mjs (npm run build):
// the run starts the spawner as bin/vmm does by default.
//
// It never fails the build: without a cache bin/vmm compiles from source.
import { spawn } from "node:child_process"
import { existsSync, rmSync, statSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { binVmmV8Flags } from "./vmm-flags.mjs"

// --root DIR: the bin/vmm and dist/ of another program built by scripts/build.mjs --out DIR/dist
// (scripts/bench-vmm.ts's start-up floors, which answer the same request and ignore the arguments).
const root = (() => {
  try {
    const given = parseArgs({ options: { root: { type: "string" } } }).values.root
    return given === undefined ? join(dirname(fileURLToPath(import.meta.url)), "..") : resolve(given)
  } catch {
    process.stderr.write("usage: node scripts/train-vmm-cache.mjs [--root DIR]\n")
    process.exit(2)
  }
})()
const cache = join(root, "dist", "vmm.cache")
// vmd's message numbers (src/schema/imsgTypes.ts, IMSG_PROC_MAX = 5).
const IMSG_VMDOP_GET_INFO_VM_REQUEST = 19
const IMSG_VMDOP_GET_INFO_VM_END_DATA = 21
const IMSG_HEADER_SIZE = 16
const TIMEOUT_MS = 30_000

const giveUp = (why, detail = "") => {
  rmSync(cache, { force: true })
  process.stderr.write(`train-vmm-cache: ${why}; bin/vmm runs without a code cache (slower start-up)\n${detail}`)
  process.exit(0)
}

if (!existsSync(join(root, "dist", "vmm.cjs"))) giveUp("dist/vmm.cjs is missing (run node scripts/build.mjs)")
rmSync(cache, { force: true })

const env = { ...process.env, VMD_VMM_CACHE_OUT: cache }
delete env.NODE_OPTIONS // the cache is for the flags bin/vmm runs with
// bin/vmm under the V8 flags of its #! line (the cache is only accepted under
// them), run by this Node rather than through the #! line: OpenBSD's env(1)
// has no -S, so bin/vmm cannot be run as a program there.
const child = spawn(
  process.execPath,
  [...binVmmV8Flags(join(root, "bin", "vmm")), join(root, "bin", "vmm"), "-P", "vmm", "-d", "--backend", "process", "--vm-exec", process.execPath],
  { stdio: ["ignore", "ignore", "pipe", "pipe"], env }
)
let stderr = ""
child.stderr.setEncoding("utf8")
child.stderr.on("data", (s) => (stderr += s))
const timer = setTimeout(() => {
  child.kill("SIGKILL")
  giveUp(`bin/vmm did not answer in ${TIMEOUT_MS / 1000} s`, stderr)
}, TIMEOUT_MS)

const channel = child.stdio[3]
const request = Buffer.alloc(IMSG_HEADER_SIZE)
request.writeUInt32LE(IMSG_VMDOP_GET_INFO_VM_REQUEST, 0) // type
request.writeUInt16LE(IMSG_HEADER_SIZE, 4) // len
request.writeUInt32LE(1, 8) // peerid
request.writeUInt32LE(process.pid, 12) // pid
channel.on("error", () => {})
channel.write(request)
let pending = Buffer.alloc(0)
let answered = false
channel.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk])
  while (pending.length >= IMSG_HEADER_SIZE) {
    const type = pending.readUInt32LE(0)
    const len = pending.readUInt16LE(4)
    if (len < IMSG_HEADER_SIZE || pending.length < len) break
    pending = pending.subarray(len)
    if (type === IMSG_VMDOP_GET_INFO_VM_END_DATA && !answered) {
      answered = true
      channel.end() // fd 3 closes: the vmm exits 0, writing the cache
    }
  }
})
child.on("error", (err) => {
  clearTimeout(timer)
  giveUp(`cannot run bin/vmm: ${err.message}`)
})
child.on("exit", (code, signal) => {
  clearTimeout(timer)
  if (!answered || code !== 0) giveUp(`bin/vmm ${signal === null ? `exited ${code}` : `was killed by ${signal}`}${answered ? "" : " before answering"}`, stderr)
  if (!existsSync(cache) || statSync(cache).size <= 64) giveUp("bin/vmm wrote no cache", stderr)
})

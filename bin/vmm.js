#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size
// --max-semi-space-size=1 (MiB): V8's young generation otherwise grows to
// 16 MiB semispaces under the allocation of hundreds of VM starts, +25 MiB
// of resident memory with 512 VMs for scavenges the vmm does not need.
// --optimize-for-size: V8 grows the old generation less eagerly; without it
// the soak's resident memory climbs 12% after warm-up (95 -> 107 MiB), with
// it it stays flat (74 MiB), and 512 VMs take 80 MiB instead of 84 (bench-vmm,
// scripts/soak.ts); latencies unchanged within noise. The code cache is
// trained with the same flags (V8 rejects a cache made under other flags).
// vmd-vmm: OpenBSD vmd's vmm process (and our VM process with -V).
//
// bin/vmm runs this file when it cannot start from the start-up snapshot
// (dist/vmm.blob; see bin/vmm), and scripts/train-vmm-cache.mjs runs it to
// make the code cache. The program is bundled into dist/vmm.cjs by `npm ci`
// (scripts/build.mjs).
// This loader compiles it with V8's code cache, dist/vmm.cache (made by
// scripts/train-vmm-cache.mjs from a start-up run), so start-up neither
// parses nor compiles what it runs. The cache is used only when it carries
// the bundle's build id (the bundle's first line) and V8 accepts it (same
// V8, same flags); otherwise the bundle is compiled from source, with the
// same result, a little slower. This file is CommonJS (bin/package.json):
// Node starts a CommonJS entry faster than an ES module.
//
// VMD_VMM_CACHE_OUT=path (scripts/train-vmm-cache.mjs): write the code
// cache, with everything compiled by then, to path at exit.
"use strict"
// The program is bin/vmm, however it was started: process.argv[1] is what
// the vmm execs for each VM by default (src/cli/vmmMain.ts), as vmd execs itself.
process.argv[1] = require("node:path").join(__dirname, "vmm")
const { readFileSync, renameSync, writeFileSync } = require("node:fs")
const { join } = require("node:path")
const { Script } = require("node:vm")

const dist = join(__dirname, "..", "dist")
const file = join(dist, "vmm.cjs")
const ID_LENGTH = 64

const fail = (err) => {
  process.stderr.write(`vmm: cannot load dist/vmm.cjs (run npm ci or npm run build): ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
}

let source
try {
  source = readFileSync(file, "utf8")
} catch (err) {
  fail(err)
}
const header = /^\/\/ vmm-build ([0-9a-f]{64})(?: koffi (\S+) (\S+))?\n/.exec(source.slice(0, 4096))
const id = header === null ? null : header[1]
const cacheOut = process.env.VMD_VMM_CACHE_OUT
delete process.env.VMD_VMM_CACHE_OUT // not for the VM processes

let cachedData
if (id !== null && cacheOut === undefined) {
  try {
    const cache = readFileSync(join(dist, "vmm.cache"))
    if (cache.length > ID_LENGTH && cache.toString("latin1", 0, ID_LENGTH) === id) cachedData = cache.subarray(ID_LENGTH)
  } catch {
    // no cache: compile from source
  }
}

let script
try {
  // The CommonJS wrapper, on the bundle's first line: line numbers stay the file's.
  script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: file,
    ...(cachedData === undefined ? {} : { cachedData })
  })
} catch (err) {
  fail(err)
}
// VMD_VMM_CACHE_REPORT=1: say on stderr whether the code cache was used (test/cli).
if (process.env.VMD_VMM_CACHE_REPORT === "1") {
  delete process.env.VMD_VMM_CACHE_REPORT
  process.stderr.write(`vmm: code cache ${cachedData === undefined ? "absent" : script.cachedDataRejected ? "rejected" : "accepted"}\n`)
}
if (cacheOut !== undefined && id !== null) {
  process.once("exit", () => {
    const tmp = `${cacheOut}.${process.pid}`
    writeFileSync(tmp, Buffer.concat([Buffer.from(id, "latin1"), script.createCachedData()]))
    renameSync(tmp, cacheOut)
  })
}
// koffi: its native module straight away when the build recorded it (see
// scripts/build.mjs, koffiNative), else (moved, another version) koffi's loader.
// This file's own require resolves as one made for dist/vmm.cjs would (node:
// builtins, and koffi from the repository's node_modules, above both bin/ and
// dist/), without loading node:module for createRequire (~2-4 ms of start-up).
const bundleRequire = require
let koffi
const requireKoffi = () => {
  if (koffi !== undefined) return koffi
  if (header !== null && header[2] !== undefined) {
    try {
      const native = { exports: {} }
      process.dlopen(native, join(dist, decodeURIComponent(header[2])))
      if (native.exports.version === header[3]) return (koffi = native.exports)
    } catch {
      // koffi's loader below
    }
  }
  return (koffi = bundleRequire("koffi"))
}
const mod = { exports: {} }
try {
  script.runInThisContext().call(mod.exports, mod.exports, (id) => (id === "koffi" ? requireKoffi() : bundleRequire(id)), mod, file, dist)
} catch (err) {
  fail(err)
}

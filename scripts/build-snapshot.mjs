#!/usr/bin/env node
// Makes dist/vmm.blob, bin/vmm's V8 start-up snapshot: the heap as it is
// once dist/vmm.cjs has been evaluated (effect's modules and ours, every
// codec compiled), so that a process started from it skips reading,
// compiling and evaluating the bundle (`node --snapshot-blob`, Node >= 18.20;
// see bin/vmm). Run after scripts/build.mjs.
//
// The snapshot holds no native state: no module of ours touches koffi while
// it is evaluated (native/libc.ts's `self`), and the entry below hands the
// bundle a koffi whose members are looked up, in the native module loaded
// then, when first read at run time. dist/vmm.blob.node names the node that
// built it: bin/vmm runs the snapshot with that node only, and only while
// the blob is newer than it.
//
// It never fails the build: without a snapshot bin/vmm loads the bundle
// with its code cache (bin/vmm.js).
import { execFileSync } from "node:child_process"
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const dist = join(root, "dist")
const bundle = join(dist, "vmm.cjs")
const entry = join(dist, "vmm.snapshot.cjs")
const blob = join(dist, "vmm.blob")
const nodeFile = join(dist, "vmm.blob.node")
/** The V8 flags bin/vmm runs with (its `flags=` line): node loads a snapshot only under the flags it was built with. */
const flagsLine = /^flags="([^"]*)"$/m.exec(readFileSync(join(root, "bin", "vmm"), "utf8"))

const giveUp = (why) => {
  for (const f of [blob, nodeFile, entry]) rmSync(f, { force: true })
  process.stderr.write(`build-snapshot: ${why}; bin/vmm starts without a snapshot (slower start-up)\n`)
  process.exit(0)
}

for (const f of [blob, nodeFile, entry]) rmSync(f, { force: true })
if (flagsLine === null) giveUp("bin/vmm has no flags= line")
const v8Flags = flagsLine[1].split(" ").filter((f) => f !== "")
if (!existsSync(bundle)) giveUp("dist/vmm.cjs is missing (run node scripts/build.mjs)")
const source = readFileSync(bundle, "utf8")
const header = /^\/\/ vmm-build ([0-9a-f]{64}) koffi (\S+) (\S+)\n/.exec(source)
if (header === null) giveUp("dist/vmm.cjs does not say where koffi's native module is")
let names
try {
  names = Object.keys(createRequire(bundle)("koffi"))
} catch (err) {
  giveUp(`cannot load koffi: ${err.message}`)
}

const prelude = `"use strict"
// Made by scripts/build-snapshot.mjs: the entry of bin/vmm's start-up snapshot.
const { join, dirname, resolve } = require("node:path")
/** dist/, found at run time from bin/vmm's path (process.argv[1]). */
const distDir = () => resolve(dirname(process.argv[1]), "..", "dist")
const KOFFI_NATIVE = ${JSON.stringify(decodeURIComponent(header[2]))}
const KOFFI_VERSION = ${JSON.stringify(header[3])}
let koffiLoaded
const loadKoffi = () => {
  if (koffiLoaded !== undefined) return koffiLoaded
  const native = { exports: {} }
  process.dlopen(native, join(distDir(), KOFFI_NATIVE))
  if (native.exports.version !== KOFFI_VERSION) throw new Error("koffi " + native.exports.version + " is not the " + KOFFI_VERSION + " this snapshot was built with")
  return (koffiLoaded = native.exports)
}
/** koffi for the bundle: each member read from the native module when first used (then a plain property). */
const koffi = {}
for (const name of ${JSON.stringify(names)}) {
  Object.defineProperty(koffi, name, {
    configurable: true,
    enumerable: true,
    get() {
      const value = loadKoffi()[name]
      Object.defineProperty(koffi, name, { value, enumerable: true })
      return value
    }
  })
}
globalThis.__vmmSnapshotMain = (run) => {
  delete globalThis.__vmmSnapshotMain
  require("node:v8").startupSnapshot.setDeserializeMainFunction(() => {
    globalThis.__vmmBundleFile = join(distDir(), "vmm.cjs")
    // VMD_VMM_SNAPSHOT_REPORT=1: say so on stderr (test/cli).
    if (process.env.VMD_VMM_SNAPSHOT_REPORT === "1") {
      delete process.env.VMD_VMM_SNAPSHOT_REPORT
      process.stderr.write("vmm: started from the snapshot (code cache " + codeCache + ")\\n")
    }
    run()
  })
}
`
const wrapped =
  prelude +
  `
// The bundle, compiled with its code cache (dist/vmm.cache, trained on a start-up run): the functions
// start-up runs are compiled now, into the snapshot, instead of at run time.
const { readFileSync } = require("node:fs")
const { Script } = require("node:vm")
const source = readFileSync(${JSON.stringify(bundle)}, "utf8")
let cachedData
try {
  const cache = readFileSync(${JSON.stringify(join(dist, "vmm.cache"))})
  if (cache.toString("latin1", 0, 64) === ${JSON.stringify(header[1])}) cachedData = cache.subarray(64)
} catch {}
const script = new Script("(function (exports, require, module, __filename, __dirname) {" + source + "\\n})", { filename: ${JSON.stringify(bundle)}, cachedData })
const codeCache = cachedData === undefined ? "absent" : script.cachedDataRejected ? "rejected" : "accepted"
cachedData = undefined // not into the snapshot
script.runInThisContext()({}, (id) => (id === "koffi" ? koffi : require(id)), { exports: {} }, ${JSON.stringify(bundle)}, ${JSON.stringify(dist)})
`
writeFileSync(entry, wrapped)
try {
  const tmp = `${blob}.${process.pid}.tmp`
  execFileSync(process.execPath, [...v8Flags, "--snapshot-blob", tmp, "--build-snapshot", entry], { stdio: ["ignore", "ignore", "pipe"] })
  renameSync(tmp, blob)
} catch (err) {
  giveUp(`node --build-snapshot failed: ${String(err.stderr ?? err.message).trim().split("\n").slice(-3).join(" ")}`)
}
rmSync(entry, { force: true })
// bin/vmm reads this: the node that built the blob, and the build line of the bundle in it.
writeFileSync(nodeFile, `${process.execPath}\n${source.slice(0, source.indexOf("\n"))}\n`)

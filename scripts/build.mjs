#!/usr/bin/env node
// Bundles bin/vmm's program into dist/ (one file: start-up reads one module
// instead of hundreds). koffi stays external: it is a native addon.
//
//   dist/vmm.cjs    the program, a CommonJS bundle inside the module wrapper
//                   `(function (exports, require, module, __filename, __dirname) {...})`
//                   whose first line ends with
//                   `// vmm-build <sha256 of the bundle> [koffi <path> <version>]`
//                   (the build id, and koffi's native module: see koffiNative)
//   dist/vmm.mjs    `node dist/vmm.mjs` runs it (through bin/vmm's loader)
//   dist/vmm.cache  V8's code cache of dist/vmm.cjs, made afterwards by
//                   scripts/train-vmm-cache.mjs; this script removes it, so a
//                   cache never outlives the bundle it was made from
//
// Start-up (issue 4): bin/vmm compiles dist/vmm.cjs with vm.Script and the
// code cache, so V8 neither parses nor compiles what start-up runs, and loads
// koffi's native module without koffi's JS loader. The bundle is kept small,
// so there is less to read, compile and evaluate: `import { Effect } from
// "effect"` in src/ is bundled as `import * as Effect from "effect/Effect"`
// (through the barrel, esbuild keeps every export of each module named:
// 1.47 MB; directly, 0.65 MB); node:child_process is loaded when first used;
// the VM-process mode (-V) is only evaluated when it runs (esbuild wraps the
// dynamic import).
import { build } from "esbuild"
import { createHash } from "node:crypto"
import { mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { readFile } from "node:fs/promises"
import { createRequire } from "node:module"
import { dirname, join, relative, resolve, sep } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
/**
 * No arguments: bin/vmm's program into dist/. `--entry FILE --out DIR`, both:
 * another program bundled as bin/vmm's is, into DIR, with a bin/vmm beside DIR
 * to load it (scripts/bench-vmm.ts's start-up floors). Anything else is refused,
 * so that a mistyped option never rebuilds dist/ with another program.
 */
const options = (() => {
  try {
    const { entry, out } = parseArgs({ options: { entry: { type: "string" }, out: { type: "string" } } }).values
    if (entry === undefined && out === undefined) return { entry: join(root, "src/cli/vmm.ts"), out: join(root, "dist") }
    if (entry !== undefined && out !== undefined) return { entry, out }
  } catch {
    // an unknown option, or one without its value: the usage below
  }
  process.stderr.write("usage: node scripts/build.mjs [--entry FILE --out DIR]\n")
  process.exit(2)
})()
const entry = resolve(options.entry)
const dist = resolve(options.out)

/**
 * `import { Effect, Layer, type Scope } from "effect"` -> one
 * `import * as Effect from "effect/Effect"` per value (lower-case names are
 * effect/Function's: pipe, flow, ...). Type-only names are dropped (esbuild
 * erases them anyway). Only src/; the sources themselves are unchanged.
 */
export const effectDirect = {
  name: "effect-direct",
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
      const source = await readFile(args.path, "utf8")
      const contents = source.replace(/import\s*\{([^}]*)\}\s*from\s*"effect"/g, (_all, names) => {
        const out = []
        for (const raw of names.split(",")) {
          const n = raw.trim()
          if (n === "" || /^type\s/.test(n)) continue
          const m = /^([A-Za-z_$][\w$]*)(?:\s+as\s+([A-Za-z_$][\w$]*))?$/.exec(n)
          if (m === null) throw new Error(`${args.path}: cannot rewrite the effect import of "${n}"`)
          const [, name, alias] = m
          out.push(
            /^[A-Z]/.test(name)
              ? `import * as ${alias ?? name} from "effect/${name}"`
              : `import { ${name}${alias === undefined ? "" : ` as ${alias}`} } from "effect/Function"`
          )
        }
        return out.join("; ")
      })
      return { contents, loader: "ts" }
    })
  }
}

/**
 * node:child_process, required when first used rather than at start-up
 * (loading it costs a few ms): bin/vmm starts the spawner with posix_spawn
 * and only --spawn node (ProcessNode) spawns with it. Add a name here if
 * src/ imports another one (the build fails until then).
 */
export const lazyChildProcess = {
  name: "lazy-child-process",
  setup(b) {
    b.onResolve({ filter: /^node:child_process$/ }, (args) =>
      /[\\/]src[\\/]/.test(args.importer) ? { path: "node:child_process", namespace: "lazy-child-process" } : undefined
    )
    b.onLoad({ filter: /.*/, namespace: "lazy-child-process" }, () => ({
      contents: `let cp\nexport const spawn = (...args) => (cp ??= require("node:child_process")).spawn(...args)\n`,
      loader: "js"
    }))
  }
}

/**
 * Two of effect's modules touch Node globals when they are evaluated, and
 * each first touch builds something bin/vmm's start-up then pays for:
 *  - internal/logger.js reads `process.stdout` (to pick its pretty logger's
 *    mode): Node builds the stdout stream, and for a pipe or socket loads
 *    node:net and node:stream, ~15-20 ms, for a stream the vmm never writes
 *    to. The three constants become one function, read when a pretty logger
 *    is made (never, in bin/vmm).
 *  - internal/clock.js reads `performance` (to anchor Clock's nanoseconds to
 *    the wall clock): Node loads perf_hooks, ~4-6 ms. The anchor is now taken
 *    at the first Clock reading, from Date.now() and process.hrtime (what the
 *    performance-based anchor amounts to: Date.now() - performance.now() +
 *    performance.now() - hrtime), and the performance-based fallback for
 *    hosts without hrtime is made when first used.
 * Each replacement must match exactly once: the build fails if effect's
 * sources change under it.
 */
const EFFECT_PATCHES = {
  "internal/logger.js": [
    [
      `const hasProcessStdout = typeof process === "object" && process !== null && typeof process.stdout === "object" && process.stdout !== null;
const processStdoutIsTTY = hasProcessStdout && process.stdout.isTTY === true;
const hasProcessStdoutOrDeno = hasProcessStdout || "Deno" in globalThis;
`,
      `let stdoutFacts;
const processStdout = () => {
  if (stdoutFacts === undefined) {
    const has = typeof process === "object" && process !== null && typeof process.stdout === "object" && process.stdout !== null;
    stdoutFacts = { has, tty: has && process.stdout.isTTY === true, hasOrDeno: has || "Deno" in globalThis };
  }
  return stdoutFacts;
};
`
    ],
    ['mode_ === "auto" ? hasProcessStdoutOrDeno ?', 'mode_ === "auto" ? processStdout().hasOrDeno ?'],
    [": processStdoutIsTTY || isBrowser", ": processStdout().tty || isBrowser"]
  ],
  "internal/clock.js": [
    [
      "const performanceNowNanos = /*#__PURE__*/function () {",
      "let performanceNowNanosMade;\nconst performanceNowNanos = () => (performanceNowNanosMade ??= function () {"
    ],
    [
      `    return origin + BigInt(Math.round(performance.now() * 1000000));
  };
}();`,
      `    return origin + BigInt(Math.round(performance.now() * 1000000));
  };
}())();`
    ],
    [
      `  const origin = /*#__PURE__*/performanceNowNanos() - /*#__PURE__*/processHrtime.bigint();
  return () => origin + processHrtime.bigint();`,
      `  let origin;
  return () => {
    if (origin === undefined) origin = BigInt(Date.now()) * BigInt(1_000_000) - processHrtime.bigint();
    return origin + processHrtime.bigint();
  };`
    ]
  ]
}
export const effectStartupPatches = {
  name: "effect-startup-patches",
  setup(b) {
    b.onLoad({ filter: /[\\/]effect[\\/]dist[\\/]esm[\\/]internal[\\/](logger|clock)\.js$/ }, async (args) => {
      const name = `internal/${args.path.split(/[\\/]/).pop()}`
      let contents = await readFile(args.path, "utf8")
      for (const [from, to] of EFFECT_PATCHES[name]) {
        if (contents.split(from).length !== 2) throw new Error(`${args.path}: expected "${from.split("\n")[0]}" once (effect-startup-patches)`)
        contents = contents.replace(from, to)
      }
      if (/hasProcessStdout|processStdoutIsTTY/.test(contents)) throw new Error(`${args.path}: a use of process.stdout left (effect-startup-patches)`)
      return { contents, loader: "js" }
    })
  }
}

mkdirSync(dist, { recursive: true })
rmSync(join(dist, "vmm.cache"), { force: true })
const result = await build({
  entryPoints: [entry],
  outfile: join(dist, "vmm.cjs"),
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  external: ["koffi"],
  sourcemap: "linked",
  minifySyntax: true,
  // Whitespace too (0.68 -> 0.49 MB; names are kept, so stack traces still name
  // their functions; dist/vmm.cjs.map maps a position back to src/): start-up
  // reads, copies and faults in less text, ~3 ms on the machines measured.
  minifyWhitespace: true,
  plugins: [effectDirect, lazyChildProcess, effectStartupPatches],
  // ESM's import.meta.url (ProcessSpawner finds build/spawner with it), in CommonJS.
  define: { "import.meta.url": "__vmmImportMetaUrl" },
  banner: { js: `"use strict"; var __vmmImportMetaUrl = require("node:url").pathToFileURL(__filename).href;` },
  write: false,
  logLevel: "warning"
})
/**
 * koffi's native module as koffi's own loader finds it here, and its
 * version: bin/vmm loads it directly (koffi's JS loader costs ~10 ms of
 * start-up: resolving two packages, reading the ELF header of node, util
 * deprecations) and falls back to require("koffi") if the file is gone or
 * its version differs. Null if it cannot be found (then always the fallback).
 */
const koffiNative = () => {
  try {
    const req = createRequire(join(dist, "vmm.cjs"))
    const koffi = req("koffi")
    const file = Object.keys(req.cache).find((f) => /[\\/]koffi\.node$/.test(f))
    if (file === undefined || typeof koffi.version !== "string" || /\s/.test(koffi.version)) return null
    return { path: encodeURIComponent(relative(dist, file).split(sep).join("/")), version: koffi.version }
  } catch {
    return null
  }
}
/** The CommonJS module wrapper around the program in dist/vmm.cjs (bin/vmm calls the function). */
const WRAPPER_OPEN = "(function (exports, require, module, __filename, __dirname) {"
const WRAPPER_CLOSE = "\n})"
/** Whole or not at all: a bin/vmm starting meanwhile (tests, a VM) never reads half a file. */
const writeAtomically = (path, contents) => {
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, contents)
  renameSync(tmp, path)
}
for (const file of result.outputFiles) {
  if (file.path.endsWith(".cjs")) {
    const id = createHash("sha256").update(file.contents).digest("hex")
    const k = koffiNative()
    // The CommonJS wrapper is written into the file, the build id after it on the
    // first line: bin/vmm compiles the file's text as it is, with no second copy
    // of it made by a concatenation, and decodes it as latin1 (a plain copy, no
    // UTF-8 scan): esbuild writes ASCII only (its default charset), checked here.
    const at = file.contents.findIndex((b) => b > 0x7f)
    if (at >= 0) {
      const near = Buffer.from(file.contents.subarray(Math.max(0, at - 60), at + 20)).toString("utf8")
      throw new Error(`${file.path}: a non-ASCII byte at offset ${at} (bin/vmm reads the bundle as latin1), near: ${JSON.stringify(near)}`)
    }
    const header = `${WRAPPER_OPEN}// vmm-build ${id}${k === null ? "" : ` koffi ${k.path} ${k.version}`}\n`
    writeAtomically(file.path, Buffer.concat([Buffer.from(header), file.contents, Buffer.from(WRAPPER_CLOSE)]))
  } else if (file.path.endsWith(".map")) {
    // The build-id line shifts the program down one line.
    const map = JSON.parse(file.text)
    map.mappings = `;${map.mappings}`
    writeAtomically(file.path, JSON.stringify(map))
  } else writeAtomically(file.path, file.contents)
}
writeAtomically(
  join(dist, "vmm.mjs"),
  `// Made by scripts/build.mjs: \`node dist/vmm.mjs\` runs the program (dist/vmm.cjs) as bin/vmm does.\n` +
    `import { createRequire } from "node:module"\ncreateRequire(import.meta.url)("../bin/vmm")\n`
)
// The previous ESM bundle's source map, if any.
rmSync(join(dist, "vmm.mjs.map"), { force: true })

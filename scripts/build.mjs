#!/usr/bin/env node
// Bundles bin/vmm's program into dist/vmm.mjs (one file: start-up reads one
// module instead of hundreds). koffi stays external: it is a native addon.
import { build } from "esbuild"
import { mkdirSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
mkdirSync(join(root, "dist"), { recursive: true })
await build({
  entryPoints: [join(root, "src/cli/vmm.ts")],
  outfile: join(root, "dist/vmm.mjs"),
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  external: ["koffi"],
  sourcemap: "linked",
  minifySyntax: true,
  banner: { js: "import { createRequire as __vmmCreateRequire } from 'node:module'; const require = __vmmCreateRequire(import.meta.url);" },
  logLevel: "warning"
})

// The V8 flags on bin/vmm's #! line (the words after "node" that start
// with --): what bin/vmm runs under, and so what its code cache is made and
// accepted under. For whatever runs bin/vmm through node rather than as a
// program (the cache training, bench-imsg --vmm-flags, the OpenBSD
// dispatcher's test).
import { readFileSync } from "node:fs"

/** The V8 flags of the #! line of the bin/vmm at `path`. */
export const binVmmV8Flags = (path) => {
  const words = (readFileSync(path, "utf8").split("\n")[0] ?? "").split(/\s+/)
  return words.slice(words.indexOf("node") + 1).filter((w) => w.startsWith("--"))
}

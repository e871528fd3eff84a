/**
 * The pidfds a process holds (Linux: /proc/<pid>/fd links to
 * anon_inode:[pidfd]), each as the pid it refers to (the "Pid:" line of its
 * /proc/<pid>/fdinfo): what tells ProcessDirect (one pidfd per live child)
 * from ProcessSpawner (one, for its helper: the children are the helper's)
 * and ProcessNode (none).
 * Used by test/cli/layers.test.ts and test/e2e/wire.test.ts.
 */
import { readFileSync } from "node:fs"
import { fdLinks } from "./proc.ts"

/** The pids that `pid`'s pidfds refer to, in fd order (-1: the process is gone). */
export const pidfdTargets = (pid: number): ReadonlyArray<number> => {
  const targets: Array<number> = []
  for (const [n, link] of [...fdLinks(pid)].sort(([x], [y]) => x - y)) {
    if (link !== "anon_inode:[pidfd]") continue
    try {
      const m = /^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${n}`, "utf8"))
      targets.push(m === null ? Number.NaN : Number(m[1]))
    } catch {
      // closed while listing
    }
  }
  return targets
}

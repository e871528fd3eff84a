/**
 * c/vmd-dispatch.c, the /usr/sbin/vmd the README installs in front of the C
 * vmd on OpenBSD, run here with stand-ins: a "C vmd" that records its argv
 * and, as vmd's proc_exec does, starts its vmm child by executing its own
 * argv[0] with -P vmm; and a "node" that records the argv it was given.
 */
import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Either } from "effect"
import { parseArgs } from "../../src/cli/args.ts"
import { binVmmV8Flags } from "../../scripts/vmm-flags.mjs"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
let dir = ""
let dispatcher = ""

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "vmd-dispatch-"))
  // the C vmd's stand-in (compiled: a script would not see its own argv[0]): records argv; without
  // -P it is the parent and starts its vmm child as proc_exec does, executing argv[0] with -P vmm
  writeFileSync(
    join(dir, "vmdc.c"),
    `#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  char path[512]; FILE *f; int i, child = 0;
  snprintf(path, sizeof(path), "${dir}/vmd-c.%d", (int)getpid());
  if ((f = fopen(path, "w")) == NULL) return 2;
  for (i = 0; i < argc; i++) { fprintf(f, "%s\\n", argv[i]); if (strcmp(argv[i], "-P") == 0) child = 1; }
  fclose(f);
  if (child) return 0;
  { /* proc_exec: argv[0] -P vmm, then the parent's own argv[1..] */
    char *nargv[64]; int n = 0;
    nargv[n++] = argv[0]; nargv[n++] = "-P"; nargv[n++] = "vmm";
    for (i = 1; i < argc && n < 63; i++) nargv[n++] = argv[i];
    nargv[n] = NULL;
    execv(argv[0], nargv);
  }
  return 3;
}
`
  )
  execFileSync("gcc", ["-O2", "-o", join(dir, "vmd.c"), join(dir, "vmdc.c")])
  writeFileSync(join(dir, "node.sh"), `#!/bin/sh\nprintf '%s\\n' "$0" "$@" > "${dir}/node.out"\n`)
  chmodSync(join(dir, "node.sh"), 0o755)
  dispatcher = join(dir, "vmd")
  execFileSync("gcc", [
    "-O2", "-Wall", "-Werror",
    `-DVMD_C="${join(dir, "vmd.c")}"`, `-DNODE="${join(dir, "node.sh")}"`, `-DVMM="/opt/vmd-vmm/bin/vmm"`,
    "-o", dispatcher, join(root, "c", "vmd-dispatch.c")
  ])
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const lines = (path: string) => readFileSync(path, "utf8").trimEnd().split("\n")

describe("c/vmd-dispatch.c (OpenBSD deployment)", () => {
  it.each([
    [["-f", "/etc/vm.conf"]],
    [["-d", "-v", "--"]]
  ])("the parent (argv %j) runs as the C vmd with argv[0] kept, and its -P vmm child reaches node with bin/vmm and our flags, which bin/vmm parses", (parentArgs) => {
    rmSync(join(dir, "node.out"), { force: true })
    execFileSync("sh", ["-c", `rm -f ${dir}/vmd-c.*`])
    const r = spawnSync(dispatcher, parentArgs, { encoding: "utf8" })
    expect(r.status, r.stderr).toBe(0)
    // the C vmd saw argv[0] = the dispatcher, so its proc_exec came back through it
    const parents = execFileSync("sh", ["-c", `cat ${dir}/vmd-c.*`], { encoding: "utf8" }).trimEnd().split("\n")
    expect(parents).toEqual([dispatcher, ...parentArgs])
    const argv = lines(join(dir, "node.out"))
    expect(argv).toEqual([
      join(dir, "node.sh"),
      "--max-semi-space-size=1",
      "--optimize-for-size",
      "--verify-snapshot-checksum",
      "/opt/vmd-vmm/bin/vmm",
      "--backend", "vmm", "--spawn", "node", "--vm-exec", join(dir, "vmd.c"),
      "-P", "vmm", ...parentArgs
    ])
    // what bin/vmm makes of it: a `--` from the parent's argv must not hide our flags
    expect(parseArgs(argv.slice(argv.indexOf("/opt/vmd-vmm/bin/vmm") + 1))).toMatchObject(Either.right({ mode: "vmm", backend: "vmm", spawn: "node", vmExec: join(dir, "vmd.c") }))
  })

  it("its V8 flags are bin/vmm's #! line's (the code cache is accepted only under them)", () => {
    const binFlags = binVmmV8Flags(join(root, "bin", "vmm"))
    const source = readFileSync(join(root, "c", "vmd-dispatch.c"), "utf8")
    const cFlags = [...(/v8flags\[\] = \{([^}]*)\}/.exec(source)?.[1] ?? "").matchAll(/"([^"]*)"/g)].map((m) => m[1])
    expect(cFlags).toEqual(binFlags)
  })
})

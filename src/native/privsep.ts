/**
 * What proc_run and vmm_run do to the vmm process before it serves: drop
 * to the _vmd user, then (OpenBSD) unveil the VM program for exec only and
 * pledge. Node needs a few promises the C does not: "rpath" (it may still
 * read its own files) and "prot_exec" (V8's JIT).
 *
 * Only on OpenBSD; the drop only when started as root. On Linux the process
 * backend runs as whoever started it (there is no _vmd), which the README
 * states as a limit. Untested on a real OpenBSD host (see README).
 *
 * Once attempted, a failure is fatal, as in the C (proc_run's
 * fatal("cannot drop privileges"), vmm_run's fatal("unveil")/fatal("pledge")):
 * the vmm must not serve as root or unpledged.
 */
import { Effect } from "effect"
import koffi from "koffi"
import { logDebug, logWarnx } from "../vmm/log.ts"

export const VMD_USER = "_vmd"

export interface PrivsepResult {
  readonly dropped: boolean
  readonly pledged: boolean
  /** Privsep was attempted and failed: the vmm must exit 1 (fatal). */
  readonly failed: boolean
  readonly note: string
}

/** What applyPrivsep uses; the defaults are the real ones (injectable for tests). */
export interface PrivsepDeps {
  readonly platform: NodeJS.Platform
  readonly getuid: () => number
  readonly setgroups: (groups: Array<string>) => void
  readonly setgid: (id: string) => void
  readonly setuid: (id: string) => void
  /** unveil(2): 0 or -1 (errno set). */
  readonly unveil: (path: string | null, permissions: string | null) => number
  /** pledge(2): 0 or -1 (errno set). */
  readonly pledge: (promises: string, execpromises: string | null) => number
  readonly errno: () => number
}

/** unveil(2) and pledge(2) from libc, bound on first use (they exist only on OpenBSD). */
type CFunction = ReturnType<ReturnType<typeof koffi.load>["func"]>
let bound: { readonly unveil: CFunction; readonly pledge: CFunction } | undefined
const native = () => {
  if (bound === undefined) {
    const c = koffi.load(null)
    bound = {
      unveil: c.func("int unveil(const char *path, const char *permissions)"),
      pledge: c.func("int pledge(const char *promises, const char *execpromises)")
    }
  }
  return bound
}

export const realPrivsepDeps: PrivsepDeps = {
  platform: process.platform,
  getuid: () => process.getuid?.() ?? -1,
  setgroups: (groups) => process.setgroups?.(groups),
  setgid: (id) => process.setgid?.(id),
  setuid: (id) => process.setuid?.(id),
  unveil: (path, permissions) => native().unveil(path, permissions) as number,
  pledge: (promises, execpromises) => native().pledge(promises, execpromises) as number,
  errno: () => koffi.errno()
}

/** setgroups/setgid/setuid to _vmd (proc_run). Called as root only. */
const dropPrivileges = (d: PrivsepDeps): string | null => {
  try {
    // Node has no getpwnam; setuid/setgid/setgroups accept the user name.
    d.setgroups([VMD_USER])
    d.setgid(VMD_USER)
    d.setuid(VMD_USER)
  } catch (e) {
    return `cannot drop privileges to ${VMD_USER}: ${e instanceof Error ? e.message : String(e)}`
  }
  return d.getuid() === 0 ? `cannot drop privileges: still root after setuid(${VMD_USER})` : null
}

/**
 * unveil(exec, "x") for each program; unveil(NULL, NULL); pledge (vmm_run).
 * Only the programs execve'd are unveiled: the VM program and node itself
 * (the VM program when the vmm runs as a script, or a script VM program's
 * interpreter). A script given to node as an argument is read by the child
 * after execve, where the unveil no longer applies (no execpromises).
 */
const pledgeAndUnveil = (d: PrivsepDeps, vmExec: string): string | null => {
  for (const path of new Set([vmExec, process.execPath])) {
    if (d.unveil(path, "x") === -1) return `unveil ${path}: errno ${d.errno()}`
  }
  if (d.unveil(null, null) === -1) return `unveil lock: errno ${d.errno()}`
  if (d.pledge("stdio rpath prot_exec vmm sendfd recvfd proc exec", null) === -1) return `pledge: errno ${d.errno()}`
  return null
}

export const applyPrivsep = (vmExec: string, deps: Partial<PrivsepDeps> = {}): PrivsepResult => {
  const d: PrivsepDeps = { ...realPrivsepDeps, ...deps }
  if (d.platform !== "openbsd") {
    return { dropped: false, pledged: false, failed: false, note: "not OpenBSD: no privilege drop" }
  }
  // Not root: nothing to drop, but still unveil and pledge (vmm_run does regardless).
  const root = d.getuid() === 0
  const dropErr = root ? dropPrivileges(d) : null
  if (dropErr !== null) return { dropped: false, pledged: false, failed: true, note: dropErr }
  const pledgeErr = pledgeAndUnveil(d, vmExec)
  return pledgeErr === null
    ? { dropped: root, pledged: true, failed: false, note: `${root ? "dropped to _vmd, " : "not root, "}unveiled and pledged` }
    : { dropped: root, pledged: false, failed: true, note: pledgeErr }
}

/**
 * applyPrivsep, logged: null to go on serving, or the exit code (1, as
 * fatal()) after a warning when privsep was attempted and failed.
 */
export const privsepOrExit = (vmExec: string, deps: Partial<PrivsepDeps> = {}): Effect.Effect<1 | null> =>
  Effect.gen(function* () {
    const privsep = applyPrivsep(vmExec, deps)
    if (privsep.failed) {
      yield* logWarnx(`fatal: privsep: ${privsep.note}`)
      return 1 as const
    }
    yield* logDebug(`privsep: ${privsep.note}`)
    return null
  })

/**
 * What proc_run and vmm_run do to the vmm process before it serves: drop
 * to the _vmd user, then (OpenBSD) unveil the VM program for exec only and
 * pledge. Node needs a few promises the C does not: "rpath" (it may still
 * read its own files) and "prot_exec" (V8's JIT).
 *
 * Only on OpenBSD, and only when started as root. On Linux the process
 * backend runs as whoever started it (there is no _vmd), which the README
 * states as a limit. Untested on a real OpenBSD host (see README).
 */
import koffi from "koffi"

export const VMD_USER = "_vmd"

export interface PrivsepResult {
  readonly dropped: boolean
  readonly pledged: boolean
  readonly note: string
}

const errno = (): number => koffi.errno()

/** setgroups/setresgid/setresuid to _vmd (proc_run). */
const dropPrivileges = (): string | null => {
  if (process.getuid?.() !== 0) return null
  let ids: { uid: number; gid: number }
  try {
    // Node has no getpwnam; setuid/setgid/setgroups accept the user name.
    process.setgroups?.([VMD_USER])
    process.setgid?.(VMD_USER)
    process.setuid?.(VMD_USER)
    ids = { uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1 }
  } catch (e) {
    return `cannot drop privileges to ${VMD_USER}: ${e instanceof Error ? e.message : String(e)}`
  }
  return ids.uid === 0 ? `still root after setuid(${VMD_USER})` : null
}

/** unveil(vmExec, "x"); unveil(NULL, NULL); pledge(...) (vmm_run). */
const pledgeAndUnveil = (vmExec: string): string | null => {
  const c = koffi.load(null)
  const unveil = c.func("int unveil(const char *path, const char *permissions)")
  const pledge = c.func("int pledge(const char *promises, const char *execpromises)")
  // The VM program, and what a script VM program (our bin/vmm) is run by.
  for (const path of [vmExec, process.execPath, "/usr/bin/env"]) {
    if (unveil(path, "x") === -1) return `unveil ${path}: errno ${errno()}`
  }
  if (unveil(null, null) === -1) return `unveil lock: errno ${errno()}`
  if (pledge("stdio rpath prot_exec vmm sendfd recvfd proc exec", null) === -1) return `pledge: errno ${errno()}`
  return null
}

export const applyPrivsep = (vmExec: string): PrivsepResult => {
  if (process.platform !== "openbsd") return { dropped: false, pledged: false, note: "not OpenBSD: no privilege drop" }
  const dropErr = dropPrivileges()
  if (dropErr !== null) return { dropped: false, pledged: false, note: dropErr }
  const pledgeErr = pledgeAndUnveil(vmExec)
  return { dropped: true, pledged: pledgeErr === null, note: pledgeErr ?? "dropped to _vmd, unveiled and pledged" }
}

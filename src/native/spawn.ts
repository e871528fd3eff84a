/**
 * posix_spawn(3), pidfds and waitpid(2) through koffi, for ProcessDirect
 * (src/layers/ProcessDirect.ts): starting a process from this one without
 * copying Node's address space, and learning of its exit on Node's loop.
 *
 * glibc's posix_spawn runs the child on clone(CLONE_VM|CLONE_VFORK): the
 * calling thread waits until the child has exec'd (or failed to, and then
 * posix_spawn returns the child's execve errno), and nothing of this
 * process is copied. Safe in a multi-threaded process.
 *
 * Conventions as in libc.ts: wrappers never throw, return a non-negative
 * result or the **host** errno negated; new fds are close-on-exec from birth
 * (pidfd_open's always are). Linux only (x86_64, aarch64: the syscall
 * numbers below are the generic ones both share); `spawnUnavailable()` says
 * why not here, before anything is bound.
 */
import koffi from "koffi"
import { close as closeFd, self } from "./libc.ts"
import { asPollCallback } from "./uvpoll.ts"

// <spawn.h> (glibc)
export const POSIX_SPAWN_SETSIGDEF = 0x04
export const POSIX_SPAWN_SETSIGMASK = 0x08
/** glibc 2.26. */
export const POSIX_SPAWN_SETSID = 0x80

// asm-generic/unistd.h: the same number on x86_64 and aarch64 (Linux 5.1 and 5.3).
const SYS_pidfd_send_signal = 424
const SYS_pidfd_open = 434

const WNOHANG = 1
const WEXITED = 4
/** waitid's idtype for a pidfd (Linux >= 5.4). */
const P_PIDFD = 3
/** siginfo_t's si_code for a child's exit (CLD_*). */
const CLD_EXITED = 1
const CLD_KILLED = 2
const CLD_DUMPED = 3
const EINTR = 4
const EINVAL = 22
const ENOSYS = 38
const HOST_EIO = 5

/**
 * Room for posix_spawnattr_t (336 bytes on glibc LP64),
 * posix_spawn_file_actions_t (80) and sigset_t (128), rounded up generously.
 */
const STRUCT_BYTES = 512

/** The oldest glibc whose adddup2(fd, fd) clears FD_CLOEXEC on the child's copy (2.29). */
export const MIN_GLIBC: readonly [number, number] = [2, 29]

type CFunction = ReturnType<typeof self.func>

interface Bindings {
  readonly spawnp: CFunction
  readonly spawnpEnviron: CFunction
  readonly faInit: CFunction
  readonly faDup2: CFunction
  readonly faDestroy: CFunction
  readonly attrInit: CFunction
  readonly attrSetflags: CFunction
  readonly attrSetsigmask: CFunction
  readonly attrSetsigdefault: CFunction
  readonly attrDestroy: CFunction
  readonly sigemptyset: CFunction
  readonly sigfillset: CFunction
  readonly syscall: CFunction
  readonly waitpid: CFunction
  readonly waitid: CFunction
  readonly faClosefrom: CFunction | null
  /** The address of libc's `environ` variable (char **environ). */
  readonly environ: unknown
}

let bindings: Bindings | null | undefined
let bindError = ""

const bind = (): Bindings | null => {
  if (bindings !== undefined) return bindings
  bindings = null
  try {
    const f = (proto: string) => self.func(proto)
    // glibc >= 2.34; null before (the layer then seals every fd before each spawn).
    const optional = (proto: string) => {
      try {
        return self.func(proto)
      } catch {
        return null
      }
    }
    bindings = {
      spawnp: f("int posix_spawnp(int *pid, const char *file, void *fa, void *attr, const char **argv, const char **envp)"),
      // The same function, handed this process's environ itself (no copy of it per spawn).
      spawnpEnviron: self.func("posix_spawnp", "int", ["int *", "const char *", "void *", "void *", "const char **", "void *"]),
      faInit: f("int posix_spawn_file_actions_init(void *fa)"),
      faDup2: f("int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)"),
      faDestroy: f("int posix_spawn_file_actions_destroy(void *fa)"),
      faClosefrom: optional("int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)"),
      attrInit: f("int posix_spawnattr_init(void *attr)"),
      attrSetflags: f("int posix_spawnattr_setflags(void *attr, short flags)"),
      attrSetsigmask: f("int posix_spawnattr_setsigmask(void *attr, const void *set)"),
      attrSetsigdefault: f("int posix_spawnattr_setsigdefault(void *attr, const void *set)"),
      attrDestroy: f("int posix_spawnattr_destroy(void *attr)"),
      sigemptyset: f("int sigemptyset(void *set)"),
      sigfillset: f("int sigfillset(void *set)"),
      syscall: f("long syscall(long nr, ...)"),
      waitpid: f("int waitpid(int pid, int *status, int options)"),
      waitid: f("int waitid(int idtype, int id, void *infop, int options)"),
      environ: self.symbol("environ")
    }
  } catch (e) {
    bindError = e instanceof Error ? e.message : String(e)
  }
  return bindings
}

const gnuGetLibcVersion = (): string | null => {
  try {
    return String(self.func("const char *gnu_get_libc_version(void)")())
  } catch {
    return null // not glibc
  }
}

/** Whether posix_spawn_file_actions_addclosefrom_np is there (glibc >= 2.34). */
export const closefromAvailable = (): boolean => (bind()?.faClosefrom ?? null) !== null

let unavailable: string | null | undefined

/**
 * Why posix_spawn + pidfds cannot be used here, or null if they can: Linux
 * on x86_64 or aarch64, glibc >= 2.29 (POSIX_SPAWN_SETSID, and adddup2(fd,
 * fd) clearing close-on-exec), the functions bound, and pidfd_open working
 * (Linux >= 5.3). Asked once.
 */
export const spawnUnavailable = (): string | null => {
  if (unavailable !== undefined) return unavailable
  unavailable = probe()
  return unavailable
}

const probe = (): string | null => {
  if (process.platform !== "linux") return `not Linux (${process.platform})`
  if (process.arch !== "x64" && process.arch !== "arm64") return `architecture ${process.arch}`
  const version = gnuGetLibcVersion()
  if (version === null) return "not glibc"
  const [major = 0, minor = 0] = version.split(".").map(Number)
  if (major < MIN_GLIBC[0] || (major === MIN_GLIBC[0] && minor < MIN_GLIBC[1])) {
    return `glibc ${version} < ${MIN_GLIBC.join(".")}`
  }
  if (bind() === null) return `libc functions: ${bindError}`
  const fd = pidfdOpen(process.pid)
  if (fd < 0) return `pidfd_open: errno ${-fd}`
  const r = pidfdSendSignal(fd, 0)
  closeFd(fd)
  if (r < 0) return `pidfd_send_signal: errno ${-r}`
  return null
}

const b = (): Bindings => {
  const x = bind()
  if (x === null) throw new Error(`posix_spawn bindings: ${bindError}`)
  return x
}

const ret = (r: number | bigint): number => {
  const n = Number(r)
  return n < 0 ? -koffi.errno() : n
}

/** pidfd_open(pid, 0): a close-on-exec fd that polls readable once the process has exited. fd or -errno. */
export const pidfdOpen = (pid: number): number =>
  ret(b().syscall(SYS_pidfd_open, "int", pid, "unsigned int", 0) as number | bigint)

/** pidfd_send_signal(pidfd, signo, NULL, 0): 0 or -errno (-ENOSYS before Linux 5.1). */
export const pidfdSendSignal = (pidfd: number, signo: number): number =>
  ret(b().syscall(SYS_pidfd_send_signal, "int", pidfd, "int", signo, "void *", null, "unsigned int", 0) as number | bigint)

export { ENOSYS as HOST_ENOSYS }

const statusBuf = new Int32Array(1)

/**
 * waitpid(pid, &status, WNOHANG), or without WNOHANG when `block`: the pid
 * reaped (its raw status in `waitStatus()`), 0 if it is still running, or
 * -errno (-ECHILD: not a child of ours, or reaped already).
 */
export const waitpid = (pid: number, block = false): number => {
  for (;;) {
    const r = ret(b().waitpid(pid, statusBuf, block ? 0 : WNOHANG) as number)
    if (r !== -EINTR) return r
  }
}

/** The raw status of the last `waitpid` that reaped a pid. */
export const waitStatus = (): number => statusBuf[0] ?? 0

/** siginfo_t (128 bytes): si_code at 8, si_pid at 16, si_status at 24 (x86_64 and aarch64). */
const siginfo = new Int32Array(32)
/** Whether waitid(P_PIDFD) works (false before Linux 5.4: EINVAL); asked on first use. */
let pidfdWait: boolean | undefined

/**
 * Reap the child `pidfd` names, if it has exited: waitid(P_PIDFD, pidfd,
 * WEXITED | WNOHANG), whose status `waitStatus()` then gives. The pid
 * reaped, 0 if it is still running, or -errno (-ECHILD: something else
 * reaped it). The pidfd, not the pid: a pid reaped elsewhere and taken by
 * another child of ours names that child, and waitpid would ask about it.
 * Before Linux 5.4, waitpid(pid) instead.
 */
export const reapChild = (pid: number, pidfd: number): number => {
  if (pidfdWait !== false) {
    for (;;) {
      siginfo[4] = 0 // si_pid: still 0 after WNOHANG if the child has not exited
      const r = ret(b().waitid(P_PIDFD, pidfd, siginfo, WEXITED | WNOHANG) as number)
      if (r === -EINTR) continue
      if (r === -EINVAL && pidfdWait === undefined) break
      pidfdWait = true
      if (r < 0) return r
      const reaped = siginfo[4] ?? 0
      if (reaped !== 0) statusBuf[0] = encodeWaitStatus(siginfo[2] ?? 0, siginfo[6] ?? 0)
      return reaped
    }
    pidfdWait = false
  }
  return waitpid(pid)
}

/** si_code and si_status as waitpid's status word (so `waitStatus()` serves both). */
const encodeWaitStatus = (code: number, status: number): number =>
  code === CLD_EXITED ? (status & 0xff) << 8 : code === CLD_KILLED || code === CLD_DUMPED ? status & 0x7f : 0xffff

export type WaitStatus =
  | { readonly _tag: "Exited"; readonly code: number }
  | { readonly _tag: "Signaled"; readonly signal: number }

/** WIFEXITED/WEXITSTATUS, WIFSIGNALED/WTERMSIG (Linux's encoding); null for a stopped or continued status. */
export const decodeWaitStatus = (status: number): WaitStatus | null => {
  const low = status & 0x7f
  if (low === 0) return { _tag: "Exited", code: (status >> 8) & 0xff }
  if (low !== 0x7f && status !== 0xffff) return { _tag: "Signaled", signal: low }
  return null
}

/**
 * A posix_spawnattr_t, built once and used for every spawn: own session
 * (SETSID), an empty signal mask (SETSIGMASK) and every signal at its
 * default disposition (SETSIGDEF with a full set: Node ignores SIGPIPE,
 * which exec would otherwise carry over). `destroy` once.
 */
export class SpawnAttr {
  readonly buf = Buffer.alloc(STRUCT_BYTES)
  #live = false

  /** 0 or the error number posix_spawnattr_* returned, negated. */
  init(): number {
    const c = b()
    const sigs = Buffer.alloc(STRUCT_BYTES)
    const r0 = c.attrInit(this.buf) as number
    if (r0 !== 0) return -r0
    this.#live = true
    const steps = [
      () => c.attrSetflags(this.buf, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF),
      () => c.sigfillset(sigs),
      () => {
        // Signals 1-64 (glibc's child goes through 1 to _NSIG - 1), with glibc's
        // internal 32 and 33 that sigfillset leaves out: its child would set
        // those to SIG_IGN, which the exec keeps.
        sigs.fill(0xff, 0, 8)
        return 0
      },
      () => c.attrSetsigdefault(this.buf, sigs),
      () => c.sigemptyset(sigs),
      () => c.attrSetsigmask(this.buf, sigs)
    ]
    for (const step of steps) {
      const r = step() as number
      if (r !== 0) return r < 0 ? -koffi.errno() : -r
    }
    return 0
  }

  destroy(): void {
    if (!this.#live) return
    this.#live = false
    b().attrDestroy(this.buf)
  }
}

/**
 * A posix_spawn_file_actions_t: `init`, `dup2` for each fd the child gets,
 * then `spawn` with it, then `destroy` (glibc allocates the list of actions
 * as they are added). dup2(fd, fd) clears FD_CLOEXEC on the child's copy
 * (glibc >= 2.29), which is how an fd keeps its own number.
 */
export class FileActions {
  readonly buf = Buffer.alloc(STRUCT_BYTES)
  #live = false

  init(): number {
    const r = b().faInit(this.buf) as number
    if (r !== 0) return -r
    this.#live = true
    return 0
  }

  /** The child gets `fd` at `target`. 0 or -error (EBADF for a number out of range, ENOMEM). */
  dup2(fd: number, target: number): number {
    const r = b().faDup2(this.buf, fd, target) as number
    return r === 0 ? 0 : -r
  }

  /** The child closes every fd from `from` up, after the dup2s. -ENOSYS without glibc 2.34's addclosefrom_np. */
  closefrom(from: number): number {
    const f = b().faClosefrom
    if (f === null) return -ENOSYS
    const r = f(this.buf, from) as number
    return r === 0 ? 0 : -r
  }

  destroy(): void {
    if (!this.#live) return
    this.#live = false
    b().faDestroy(this.buf)
  }
}

/** posix_spawnp's C function and its arguments, the pid written to `pid[0]`: the same for both calls below. */
const spawnpCall = (
  pid: Int32Array,
  file: string,
  fa: FileActions,
  attr: SpawnAttr,
  argv: ReadonlyArray<string>,
  envp: ReadonlyArray<string> | null
): [CFunction, Array<unknown>] => {
  const c = b()
  const args: Array<string | null> = [...argv, null]
  return envp === null
    ? [c.spawnpEnviron, [pid, file, fa.buf, attr.buf, args, koffi.decode(c.environ, "void *")]]
    : [c.spawnp, [pid, file, fa.buf, attr.buf, args, [...envp, null]]]
}

/** posix_spawnp's result as posixSpawnp returns it. */
const spawnResult = (r: number, pid: Int32Array): number => (r === 0 ? (pid[0] ?? -1) : -r)

const pidBuf = new Int32Array(1)

/**
 * posix_spawnp: `file` searched in PATH when it has no '/', argv as given
 * (argv[0] first), `envp` the environment ("K=V" strings) or null for this
 * process's own (libc's `environ`, which Node's process.env writes through
 * to). Returns the child's pid, or -errno: the fork's (EAGAIN, ENOMEM) or
 * the child's execve's (ENOENT, EACCES, ...), reported by glibc itself;
 * after a failed exec the child has already been reaped by glibc.
 */
export const posixSpawnp = (
  file: string,
  fa: FileActions,
  attr: SpawnAttr,
  argv: ReadonlyArray<string>,
  envp: ReadonlyArray<string> | null
): number => {
  const [f, args] = spawnpCall(pidBuf, file, fa, attr, argv, envp)
  return spawnResult(f(...args) as number, pidBuf)
}

/**
 * posixSpawnp on one of libuv's pool threads (koffi's async call): glibc's
 * posix_spawn holds its calling thread in the kernel (CLONE_VFORK) until the
 * child has exec'd, and that is then a pool thread, not this one, whose
 * event loop goes on meanwhile. `done` gets what posixSpawnp returns, on
 * this thread, as a poll callback (uvpoll's asPollCallback). Everything
 * passed must stay as it is until then (`fa`, `attr`, the environment: this
 * process's `environ` is read by the pool thread while the child starts).
 */
export const posixSpawnpAsync = (
  file: string,
  fa: FileActions,
  attr: SpawnAttr,
  argv: ReadonlyArray<string>,
  envp: ReadonlyArray<string> | null,
  done: (r: number) => void
): void => {
  const pid = new Int32Array(1)
  const [f, args] = spawnpCall(pid, file, fa, attr, argv, envp)
  // err: koffi could not make the call (it converts the arguments before); EIO.
  f.async(...args, (err: unknown, r: number) => asPollCallback(() => done(err != null ? -HOST_EIO : spawnResult(r, pid))))
}

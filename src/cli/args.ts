/**
 * bin/vmm's command line: vmd's getopt string "D:P:V:X:df:i:j:nt:vp:" (the
 * flags vmd passes to all its children are accepted and ignored) plus our
 * long options. Pure: argv in, a typed value or an error message out.
 */
import { Either } from "effect"

export type Backend = "vmm" | "process" | "mock"

/**
 * How VM processes are started: posix_spawn straight from the vmm, on a
 * thread-pool thread, with pidfds (ProcessDirect: the default, Linux with
 * glibc >= 2.29 and pidfd_open), a small C spawner process that forks them
 * (ProcessSpawner, Linux; the fallback), or Node's spawn (the last resort,
 * and OpenBSD's).
 */
export type SpawnMethod = "spawner" | "direct" | "node"

export interface VmmArgs {
  readonly mode: "vmm"
  readonly spawn: SpawnMethod
  readonly debug: boolean
  readonly verbose: number
  readonly backend: Backend
  readonly vmExec: string | null
  readonly trace: boolean
}

export interface VmArgs {
  readonly mode: "vm"
  readonly vmFd: number
  readonly vmmFd: number
  readonly pspFd: number
  readonly debug: boolean
  readonly verbose: number
  readonly trace: boolean
}

export type Args = VmmArgs | VmArgs

export const usage =
  "usage: vmm -P vmm [-dv] [--backend vmm|process|mock] [--vm-exec path] [--spawn spawner|direct|node] [--trace]\n" +
  "       vmm -V fd -i vmmfd -j pspfd [-dv] [--trace]"

const WITH_ARG = new Set(["D", "P", "V", "X", "f", "i", "j", "t", "p"])
const NO_ARG = new Set(["d", "n", "v"])

/** strtonum(s, min, max) */
const num = (s: string, min: number, max: number): number | null => {
  if (!/^-?\d+$/.test(s)) return null
  const n = Number(s)
  return n >= min && n <= max ? n : null
}

export const parseArgs = (argv: ReadonlyArray<string>): Either.Either<Args, string> => {
  const opts = new Map<string, string>()
  let debug = false
  let verbose = 0
  let backend: Backend = process.platform === "openbsd" ? "vmm" : "process"
  let vmExec: string | null = null
  let trace = false
  let spawn: SpawnMethod = "direct"

  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === "--trace") {
      trace = true
      continue
    }
    if (a === "--backend" || a === "--vm-exec" || a === "--spawn") {
      const v = argv[++i]
      if (v === undefined) return Either.left(`${a} needs a value\n${usage}`)
      if (a === "--vm-exec") vmExec = v
      else if (a === "--spawn") {
        if (v !== "spawner" && v !== "direct" && v !== "node") return Either.left(`unknown spawn method ${v}\n${usage}`)
        spawn = v
      }
      else if (v === "vmm" || v === "process" || v === "mock") backend = v
      else return Either.left(`unknown backend ${v}\n${usage}`)
      continue
    }
    if (a === "--") break
    if (a.startsWith("--")) return Either.left(`unknown option ${a}\n${usage}`)
    if (!a.startsWith("-") || a === "-") return Either.left(`unexpected argument ${a}\n${usage}`)
    // a cluster of short options, getopt style: -dvv, -P vmm, -Pvmm
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!
      if (NO_ARG.has(c)) {
        if (c === "d") debug = true
        else if (c === "v") verbose++
        continue
      }
      if (WITH_ARG.has(c)) {
        const rest = a.slice(j + 1)
        const v = rest.length > 0 ? rest : argv[++i]
        if (v === undefined) return Either.left(`option -${c} needs an argument\n${usage}`)
        opts.set(c, v)
        break
      }
      return Either.left(`unknown option -${c}\n${usage}`)
    }
  }

  const vmFd = opts.get("V")
  if (vmFd !== undefined) {
    // vm.c: -V and -i by strtonum(0..128), -j (-1..128); -i -1 here is the process backend's "no device"
    const vm = num(vmFd, 0, 128)
    const vmm = num(opts.get("i") ?? "-1", -1, 128)
    const psp = num(opts.get("j") ?? "-1", -1, 128)
    if (vm === null) return Either.left("invalid vm fd")
    if (vmm === null) return Either.left("invalid vmm fd")
    if (psp === null) return Either.left("invalid psp fd")
    return Either.right({ mode: "vm", vmFd: vm, vmmFd: vmm, pspFd: psp, debug, verbose, trace })
  }
  const title = opts.get("P")
  if (title === undefined) return Either.left(`only the vmm process and VM processes are implemented\n${usage}`)
  if (title !== "vmm") return Either.left(`invalid process name ${title}: only "vmm" is implemented`)
  return Either.right({ mode: "vmm", debug, verbose, backend, vmExec, trace, spawn })
}

/**
 * fd hygiene of the real vmm process (the current sources bundled as bin/vmm
 * runs them, process backend) and of the VM processes it starts (the C VM
 * program), under the parent stand-in with real files, taps and ptys:
 *
 *  - every fd the vmm creates is close-on-exec (fdinfo flags & O_CLOEXEC),
 *    fd 3 included once its channel is open; sampled again and again while
 *    VMs start and stop, so that an fd born without the flag and fixed
 *    later has a window to be caught in (fds 0-2 and what it inherited at
 *    exec are not its own);
 *  - each VM process holds exactly 0-2 (/dev/null), its -V socket, the -i
 *    device fd, and the fds named in its struct vmd_vm: the kernel, every
 *    disk layer, one socket per tap, the tty; nothing of the vmm's.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { closeSync, ftruncateSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import { makeVmdParent } from "../../src/parent/parent.ts"
import type { VmSpec } from "../../src/parent/spec.ts"
import { buildPrograms, bundledVmm, type Programs, type VmmProgram } from "./lib/build.ts"
import { fdFlags, fdLinks, O_CLOEXEC_FLAG, procStat } from "./lib/proc.ts"

let programs: Programs
let vmm: VmmProgram
let kernel = ""
let disks: Array<string> = []
/** The vmm device the first test passes: a file of its own, which nothing above the vmm can hold open. */
let device = ""

beforeAll(async () => {
  programs = await buildPrograms("reliability-hygiene")
  vmm = await bundledVmm(programs.dir)
  kernel = join(programs.dir, "bsd")
  writeFileSync(kernel, "kernel")
  disks = ["disk0.img", "disk0-base.img", "disk1.img"].map((n) => join(programs.dir, n))
  for (const d of disks) {
    const fd = openSync(d, "w")
    ftruncateSync(fd, 1 << 20)
    closeSync(fd)
  }
  device = join(programs.dir, "vmm-device")
  writeFileSync(device, "")
}, 60_000)
afterAll(() => rmSync(programs.dir, { recursive: true, force: true }))

const spec = (name: string): VmSpec => ({
  name,
  kernel,
  cdrom: kernel,
  disks: [[disks[0]!, disks[1]!], [disks[2]!]],
  nics: 2
})

/**
 * fds of a process without O_CLOEXEC, but 0-2: "fd link (flags)". An fd
 * opened between the two reads of /proc has its link read again (it was
 * once taken for an unknown fd of the vmm's: Node reading
 * NODE_EXTRA_CA_CERTS, which is no fd of its making); one closed meanwhile
 * is left out: it can no longer be inherited.
 */
const inheritable = (pid: number): Array<string> => {
  const links = fdLinks(pid)
  const out: Array<string> = []
  for (const [fd, flags] of fdFlags(pid)) {
    if (fd <= 2 || (flags & O_CLOEXEC_FLAG) !== 0) continue
    const link = links.get(fd) ?? fdLinks(pid).get(fd)
    if (link !== undefined) out.push(`${fd} ${link} (flags 0${flags.toString(8)})`)
  }
  return out
}

/** What this process and its ancestors hold open ("pipe:[123]", paths): what a child of ours can inherit. */
const ancestorLinks = (): Set<string> => {
  const links = new Set<string>()
  for (let pid = process.pid; pid > 1; ) {
    for (const l of fdLinks(pid).values()) links.add(l)
    const st = procStat(pid)
    if (st === null) break
    pid = st.ppid
  }
  return links
}

/**
 * Not created by the vmm: what it inherited at exec from the processes
 * above it (e.g. a pipe of the test runner's or of the shell at fd 251; the
 * vmm seals those before it spawns anything, checked at the end), and what
 * Node opens and closes without O_CLOEXEC at start-up, before any of the
 * program runs: OpenSSL's /etc/ssl/openssl.cnf and
 * /etc/ssl/certs/ca-certificates.crt, and V8's /proc/self/maps (read twice
 * while the isolate is set up, by CodeRange::InitReservation via
 * OS::GetFreeMemoryRangesWithin and by RemapEmbeddedBuiltins, with
 * fopen(..., "r"); strace -k of bin/vmm shows no other open of it).
 */
const notCreatedByVmm = (entry: string, inherited: ReadonlySet<string>, pid: number): boolean => {
  const link = entry.replace(/^\d+ /, "").replace(/ \(flags [0-7]+\)$/, "")
  return inherited.has(link) || link.startsWith("/etc/ssl/") || link === `/proc/${pid}/maps`
}

const argOf = (pid: number, flag: string): number => {
  const argv = readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0")
  return Number(argv[argv.indexOf(flag) + 1])
}

describe("fd hygiene of bin/vmm and its VM processes", () => {
  it.scopedLive("every vmm fd but 0-2 is close-on-exec, sampled throughout VM starts and stops", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent({
        command: vmm,
        vmExec: programs.vmprog,
        // not /dev/null: some ancestor always holds that, and the received device fd would pass for inherited
        vmmDevice: device,
        output: "ignore",
        timeoutMs: 20_000
      })
      const pid = parent.vmmPid
      // Sampling starts once the vmm answers: before that it is Node booting, not the vmm
      // (Node marks the fds it inherits close-on-exec as it starts, and the program marks fd 3
      // when it opens the channel; a loaded machine once had a sample land before both).
      yield* parent.info
      const inherited = ancestorLinks()
      // the vmm cannot have inherited it: it was opened (by the parent stand-in, in this process) after the vmm started
      inherited.delete(device)
      const seen = new Set<string>()
      let inheritedSeen = 0
      let samples = 0
      const sample = () => {
        samples++
        for (const s of inheritable(pid)) {
          if (notCreatedByVmm(s, inherited, pid)) inheritedSeen++
          else seen.add(s)
        }
      }
      // a sampler on a timer while the vmm works
      const timer = setInterval(sample, 2)
      try {
        for (let round = 0; round < 3; round++) {
          const vms = yield* Effect.forEach([1, 2, 3, 4], (i) => parent.startVm(spec(`h${round}-${i}`)))
          sample()
          yield* parent.pause(vms[0]!.id)
          yield* parent.unpause(vms[0]!.id)
          yield* parent.stopVm(vms[1]!.id, { wait: true })
          yield* parent.stopVm(vms[2]!.id, { force: true, wait: true })
          yield* parent.reset(1)
          sample()
        }
      } finally {
        clearInterval(timer)
      }
      expect(samples).toBeGreaterThan(10)
      expect([...seen]).toEqual([])
      // fds inherited from above without the flag may stay so: no VM gets them (the spawner closes
      // everything at its start, ProcessNode seals them before each spawn; the next test checks the VMs)
      console.log(`vmm fd samples: ${samples}; fds not of its making (inherited, or opened by Node before the program runs) seen without close-on-exec: ${inheritedSeen}`)
      // the received device fd was there to be sampled (the check above is not vacuous for it) and is close-on-exec
      const deviceFds = [...fdLinks(pid)].filter(([, l]) => l === device).map(([fd]) => fd)
      expect(deviceFds).toHaveLength(1)
      expect((fdFlags(pid).get(deviceFds[0]!) ?? 0) & O_CLOEXEC_FLAG).toBe(O_CLOEXEC_FLAG)
      // fd 3, the parent channel, is close-on-exec once the channel is open
      expect((fdFlags(pid).get(3) ?? 0) & O_CLOEXEC_FLAG).toBe(O_CLOEXEC_FLAG)
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  , 120_000)

  it.scopedLive("each VM process holds exactly 0-2, its socket, the device fd and the fds its struct names", () =>
    Effect.gen(function* () {
      const parent = yield* makeVmdParent({
        command: vmm,
        vmExec: programs.vmprog,
        vmmDevice: "/dev/null",
        output: "ignore",
        timeoutMs: 20_000
      })
      const vms = yield* Effect.forEach(["a", "b", "c"], (n) => parent.startVm(spec(`fds-${n}`)))
      for (const vm of vms) {
        const links = fdLinks(vm.pid)
        const vSock = argOf(vm.pid, "-V")
        const vmmFd = argOf(vm.pid, "-i")
        const counted = new Map<string, number>()
        const unexpected: Array<string> = []
        for (const [fd, link] of links) {
          let kind: string
          if (fd <= 2) kind = link === "/dev/null" ? "stdio" : `stdio ${link}`
          else if (fd === vSock) kind = link.startsWith("socket:") ? "vm socket" : `vm socket ${link}`
          else if (fd === vmmFd) kind = link === "/dev/null" ? "device" : `device ${link}`
          else if (link === kernel) kind = "kernel or cdrom"
          else if (disks.includes(link)) kind = "disk layer"
          else if (link.startsWith("socket:")) kind = "tap"
          else if (link === "/dev/ptmx" || link.startsWith("/dev/pts/")) kind = "tty"
          else {
            unexpected.push(`${fd} -> ${link}`)
            continue
          }
          counted.set(kind, (counted.get(kind) ?? 0) + 1)
        }
        expect(unexpected).toEqual([])
        expect(Object.fromEntries(counted)).toEqual({
          stdio: 3,
          "vm socket": 1,
          device: 1,
          "kernel or cdrom": 2,
          "disk layer": 3,
          tap: 2,
          tty: 1
        })
      }
      expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
    }).pipe(Effect.provide(ImsgChannelNative.layer))
  , 120_000)
})

/**
 * The commands of the model-based properties, as plain data fast-check can
 * generate and shrink: parent requests (starts with random disks, layers,
 * nics, cdrom and at most one fault; stops; info; pause; verbose; reset;
 * config; addresses; malformed payloads) and VM-side events (exits, signals,
 * VM_SHUTDOWN / VM_REBOOT, forwarded answers, garbage, broken framing).
 *
 * Commands name their VM by an index into what exists when they run, so a
 * shrunk scenario stays meaningful (scenario.ts resolves them).
 */
import fc from "fast-check"
import type { VmBehaviour } from "./simVm.ts"
import { E, PEERID_NONE } from "./wire.ts"

// ---------------------------------------------------------------------------
// Commands

/** At most one thing wrong with a start sequence (or nothing). */
export type StartFault =
  | "none"
  | "flagsZero"
  | "badSize"
  | "cpus65"
  | "disks5"
  | "nics5"
  | "layer5"
  | "extraDisk"
  | "diskNoFd"
  | "diskbase3"
  | "dupNic"
  | "nicNoFd"
  | "badName"
  | "noBoot"
  | "cdromNoFd"
  | "notty"
  | "dieAfterStruct"
  | "answerZero"
  | "shortId"
  | "spawnFail"
  | "exitAfterId"

const FAULTS: ReadonlyArray<StartFault> = [
  "flagsZero",
  "badSize",
  "cpus65",
  "disks5",
  "nics5",
  "layer5",
  "extraDisk",
  "diskNoFd",
  "diskbase3",
  "dupNic",
  "nicNoFd",
  "badName",
  "noBoot",
  "cdromNoFd",
  "notty",
  "dieAfterStruct",
  "answerZero",
  "shortId",
  "spawnFail",
  "exitAfterId"
]

export interface StartCmd {
  readonly t: "start"
  /** Start under the id of a VM that is gone (the parent restarting it), by index; else a new id. */
  readonly reuse: number | null
  /** Take the name of a registered VM (EALREADY), by index; else a new name. */
  readonly dupName: number | null
  readonly ncpus: number
  readonly memory: bigint
  readonly kernel: boolean
  readonly cdrom: boolean
  readonly cdromPath: boolean
  readonly ndisks: number
  readonly layers: ReadonlyArray<number>
  readonly nnics: number
  /** Leave START_VM_END for a later "end" command. */
  readonly hold: boolean
  readonly fault: StartFault
  readonly badName: number
  readonly dieCode: number
  readonly behaviour: VmBehaviour
}

export type Cmd =
  | StartCmd
  | { readonly t: "end"; readonly target: number; readonly tty: boolean }
  | { readonly t: "stray"; readonly target: number; readonly kind: "cdrom" | "disk" | "if"; readonly index: number; readonly fd: boolean }
  | { readonly t: "stop"; readonly target: number; readonly force: boolean; readonly id0: boolean; readonly peerid: number }
  | { readonly t: "info"; readonly peerid: number }
  | { readonly t: "pause"; readonly target: number; readonly unpause: boolean; readonly pid: number; readonly peerid: number; readonly withFd: boolean }
  | { readonly t: "verbose"; readonly level: number }
  | { readonly t: "reset"; readonly vms: boolean; readonly other: number }
  | { readonly t: "config"; readonly prefix: ReadonlyArray<number> }
  | { readonly t: "addr"; readonly target: number; readonly nic: number; readonly pid: number; readonly withFd: boolean }
  | { readonly t: "junk"; readonly kind: "type" | "verbose" | "reset" | "pause" | "stop" | "config" }
  | { readonly t: "vmExit"; readonly target: number; readonly code: number }
  | { readonly t: "vmKill"; readonly target: number; readonly sig: "SIGKILL" | "SIGTERM" }
  | {
      readonly t: "vmSend"
      readonly target: number
      readonly what: "shutdown" | "reboot" | "response" | "garbage" | "badResponse" | "raw"
      readonly withFd: boolean
      readonly peerid: number
      readonly payload: ReadonlyArray<number>
    }

export interface Scenario {
  /** VMs left in vmm(4) by an earlier vmd, swept at RECEIVE_VMM_FD. */
  readonly leftovers: number
  readonly psp: boolean
  readonly config: ReadonlyArray<number> | null
  readonly cmds: ReadonlyArray<Cmd>
}

// ---------------------------------------------------------------------------
// Arbitraries

const target = fc.nat(50)
/** true about once in n. */
const rarely = (n: number) => fc.oneof({ weight: n - 1, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) })
const behaviourArb: fc.Arbitrary<VmBehaviour> = fc.record({
  onReboot: fc.constantFrom<VmBehaviour["onReboot"]>("exit", "exit", "exit", "ignore"),
  termCode: fc.oneof(fc.constantFrom(0, E.EAGAIN, 1), fc.nat(255)),
  sigterm: fc.constant<VmBehaviour["sigterm"]>("default")
})

export const BAD_NAMES = ["", "-x", ".x", "_x", "a b", "a/b", "a:b"]

const startArb: fc.Arbitrary<StartCmd> = fc.record({
  t: fc.constant("start" as const),
  reuse: fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(20) }),
  dupName: fc.oneof({ weight: 14, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(20) }),
  ncpus: fc.constantFrom(0, 1, 2, 4, 64),
  memory: fc.constantFrom(0n, 256n << 20n, 2n << 30n),
  kernel: rarely(10).map((b) => !b),
  cdrom: rarely(4),
  cdromPath: fc.boolean(),
  ndisks: fc.integer({ min: 0, max: 4 }),
  layers: fc.array(fc.integer({ min: 1, max: 2 }), { minLength: 4, maxLength: 4 }),
  nnics: fc.integer({ min: 0, max: 4 }),
  hold: rarely(7),
  fault: fc.oneof(
    { weight: FAULTS.length * 2, arbitrary: fc.constant<StartFault>("none") },
    { weight: FAULTS.length, arbitrary: fc.constantFrom(...FAULTS) }
  ),
  badName: fc.nat(BAD_NAMES.length - 1),
  dieCode: fc.constantFrom(1, E.EIO, E.EINVAL, E.ENOMEM),
  behaviour: behaviourArb
})

const exitCode = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(0, E.EAGAIN, 1) }, { weight: 1, arbitrary: fc.nat(255) })
const peerid = fc.oneof(fc.constant(PEERID_NONE), fc.nat(1000))

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 8, arbitrary: startArb },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("end" as const), target, tty: rarely(8).map((b) => !b) }) },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant("stray" as const), target, kind: fc.constantFrom("cdrom" as const, "disk" as const, "if" as const), index: fc.nat(4), fd: fc.boolean() })
  },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("stop" as const), target, force: fc.boolean(), id0: rarely(10), peerid }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("info" as const), peerid }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("pause" as const), target, unpause: fc.boolean(), pid: fc.integer({ min: 1, max: 99999 }), peerid, withFd: rarely(5) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("verbose" as const), level: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("reset" as const), vms: fc.boolean(), other: fc.constantFrom(0, 2) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("config" as const), prefix: fc.array(fc.nat(255), { minLength: 40, maxLength: 40 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("addr" as const), target, nic: fc.nat(3), pid: fc.integer({ min: 1, max: 99999 }), withFd: rarely(5) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("junk" as const), kind: fc.constantFrom("type" as const, "verbose" as const, "reset" as const, "pause" as const, "stop" as const, "config" as const) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("vmExit" as const), target, code: exitCode }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("vmKill" as const), target, sig: fc.constantFrom("SIGKILL" as const, "SIGTERM" as const) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("vmSend" as const),
      target,
      what: fc.constantFrom("shutdown" as const, "shutdown" as const, "reboot" as const, "reboot" as const, "response" as const, "garbage" as const, "badResponse" as const, "raw" as const),
      withFd: rarely(5),
      peerid,
      payload: fc.array(fc.nat(255), { minLength: 28, maxLength: 28 })
    })
  }
)

export const scenarioArb = (maxCommands: number): fc.Arbitrary<Scenario> =>
  fc.record({
    leftovers: fc.nat(2),
    psp: fc.boolean(),
    config: fc.option(fc.array(fc.nat(255), { minLength: 40, maxLength: 40 })),
    cmds: fc.array(cmdArb, { minLength: Math.min(10, maxCommands), maxLength: maxCommands })
  })

/** Runs per property: VMM_PROP_RUNS, or the CI default. */
export const propRuns = (fallback: number): number => {
  const n = Number(process.env["VMM_PROP_RUNS"])
  return Number.isInteger(n) && n > 0 ? n : fallback
}

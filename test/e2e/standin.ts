/**
 * The parent stand-in as a process of its own, for the test that kills it
 * (shutdown.test.ts): starts bin/vmm under /bin/sh, which writes the vmm's
 * exit status to $VMM_E2E_STATUS when it ends; starts the VMs named in
 * argv; prints one JSON line {sh, vms}; then waits to be killed.
 *
 *   node standin.mjs '{"vmm": ".../bin/vmm", "kernel": "...", "names": ["a"]}'
 *
 * (the test bundles this file with src/vm/build.ts: loading the sources
 * through tsx takes seconds).
 */
import { Effect } from "effect"
import * as ImsgChannelNative from "../../src/layers/ImsgChannelNative.ts"
import { makeVmdParent } from "../../src/parent/parent.ts"

interface Config {
  /** bin/vmm */
  readonly vmm: string
  readonly kernel: string
  readonly names: ReadonlyArray<string>
  readonly vmExec?: string
}

const config = JSON.parse(process.argv[2] ?? "{}") as Config

const program = Effect.gen(function* () {
  const parent = yield* makeVmdParent({
    command: { command: "/bin/sh", args: ["-c", '"$0" "$@"; echo $? > "$VMM_E2E_STATUS"', config.vmm] },
    output: "ignore",
    timeoutMs: 20_000,
    ...(config.vmExec === undefined ? {} : { vmExec: config.vmExec })
  })
  const vms = yield* Effect.forEach(config.names, (name) => parent.startVm({ name, kernel: config.kernel }))
  process.stdout.write(`${JSON.stringify({ sh: parent.vmmPid, vms: vms.map((vm) => vm.pid) })}\n`)
  return yield* Effect.never
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(ImsgChannelNative.layer))).catch((e: unknown) => {
  process.stderr.write(`standin: ${String(e)}\n`)
  process.exit(1)
})

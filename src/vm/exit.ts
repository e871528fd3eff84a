/**
 * How the VM process ends: an exit status, as vm.c's `_exit(errno)`. Not
 * only errors end a VM (VM_SHUTDOWN is 0, a guest reset is EAGAIN), so this
 * is the failure channel of the VM program and main turns it into the
 * process's exit code. Codes are OpenBSD errno numbers, which the vmm reads.
 */
import { Data, Effect } from "effect"

export class VmExit extends Data.TaggedError("VmExit")<{
  readonly code: number
  /** Why, for the log. */
  readonly reason: string
}> {}

export const exitWith = (code: number, reason: string): Effect.Effect<never, VmExit> =>
  Effect.fail(new VmExit({ code, reason }))

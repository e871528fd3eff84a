/**
 * The typed failure of a parent operation: the OpenBSD errno (or vmd code)
 * the vmm answered with, or the one we would have sent to vmctl.
 */
import { Data } from "effect"
import { errnoName } from "../schema/errno.ts"

export type ParentOp = "spawn" | "start" | "stop" | "pause" | "unpause" | "info" | "send" | "wait" | "close"

export class ParentError extends Data.TaggedError("ParentError")<{
  readonly op: ParentOp
  /** OpenBSD errno or vmd result code (1004 VMD_VM_STOP_INVALID, ...). */
  readonly errno: number
  readonly detail: string
}> {
  override get message(): string {
    return `${this.op}: ${errnoName(this.errno)}${this.detail === "" ? "" : ` (${this.detail})`}`
  }
}

export const parentError = (op: ParentOp, errno: number, detail = ""): ParentError =>
  new ParentError({ op, errno, detail })

/**
 * The typed failure of a vmm operation (start, terminate, info): the
 * OpenBSD errno or vmd code that goes into the reply's result field.
 */
import { Data } from "effect"
import { errnoName } from "../schema/errno.ts"

export class VmOpError extends Data.TaggedError("VmOpError")<{
  readonly op: "start" | "terminate" | "info"
  readonly errno: number
}> {
  override get message(): string {
    return `${this.op}: ${errnoName(this.errno)}`
  }
}

export const opError = (op: VmOpError["op"]) => (errno: number) => new VmOpError({ op, errno })

/**
 * vmopResultBytes (src/vmm/wire.ts) writes struct vmop_result by hand at the
 * layout's offsets, for TERMINATE_VM_EVENT's path: it must give the bytes
 * the codec gives for the same values, and those of vmd.md §4.1's offsets
 * written out.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import fc from "fast-check"
import { encodeVmopResult } from "../../src/schema/structs.ts"
import { vmopResultBytes } from "../../src/vmm/wire.ts"

const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })
const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 })

describe("vmopResultBytes", () => {
  it("the codec's bytes for every int result, uint32 id and int pid, ttyname empty", () => {
    fc.assert(
      fc.property(int32, uint32, int32, (res, id, pid) => {
        const codec = encodeVmopResult({ vmr_result: res, vmr_id: id, vmr_pid: pid, vmr_ttyname: "" })
        expect(Either.isRight(codec)).toBe(true)
        expect(vmopResultBytes(res, id, pid)).toEqual(Either.getOrThrow(codec))
      }),
      { numRuns: 500 }
    )
  })

  it("an id given as a negative int is its uint32, as the codec's id >>> 0 was", () => {
    const codec = Either.getOrThrow(encodeVmopResult({ vmr_result: 0, vmr_id: 0xffffffff, vmr_pid: 0, vmr_ttyname: "" }))
    expect(vmopResultBytes(0, -1, 0)).toEqual(codec)
  })

  it("EIO for VM 7, pid 0: the bytes of vmd.md §4.1 (res at 0, id at 4, pid at 8, ttyname 12..27)", () => {
    const b = vmopResultBytes(5, 7, 0)
    expect(Array.from(b)).toEqual([5, 0, 0, 0, 7, 0, 0, 0, ...new Array<number>(20).fill(0)])
    expect(b.length).toBe(28)
  })
})

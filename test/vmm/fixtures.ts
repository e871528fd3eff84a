/**
 * Small steps the example tests share: a vmm that has its /dev/vmm, a VM
 * started and running, the fds that are open when nothing else is.
 */
import { Effect } from "effect"
import { expect } from "vitest"
import type { Harness, HarnessOptions } from "./harness.ts"
import { makeHarness } from "./harness.ts"
import { expectParent, reply, sendStart } from "./steps.ts"
import type { StartParts } from "./steps.ts"
import { M, vmopResult } from "./wire.ts"
import type { CreateSpec } from "./wire.ts"

export const DEV_VMM = "/dev/vmm"

/** A vmm that has received its /dev/vmm fd (vmd_configure's first message). */
export const booted = (options: HarnessOptions = {}) =>
  Effect.gen(function* () {
    const h = yield* makeHarness(options)
    yield* h.send({ type: M.RECEIVE_VMM_FD, fd: h.makeFd(DEV_VMM) })
    yield* h.settle
    expect(h.takeParent()).toEqual([])
    return h
  })

/** The fds open with no VM: the two ends of fd 3 and /dev/vmm. */
export const idleFds = ["parent[0]", "parent[1]", DEV_VMM]

/** The two ends of a running VM's imsg socket (the vmm's and the child's). */
export const vmSocketFds = (vmid: number) => [`vm ${vmid} channel[0]`, `vm ${vmid} channel[1]`]

/** Start a VM and check the START_VM_RESPONSE {0, vmid, pid}; returns its pid. */
export const startRunning = (h: Harness, vmid: number, spec: CreateSpec, parts: StartParts = {}) =>
  Effect.gen(function* () {
    yield* sendStart(h, vmid, spec, parts)
    yield* h.settle
    const got = h.takeParent()
    const pid = got[0] === undefined || got[0].data.length !== 28 ? -1 : new DataView(got[0].data.buffer, got[0].data.byteOffset).getInt32(8, true)
    expectParent(got, [reply(M.START_VM_RESPONSE, vmid, vmopResult(0, vmid, pid))])
    expect(pid).toBeGreaterThan(0)
    return pid
  })

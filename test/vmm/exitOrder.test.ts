/**
 * vmm_sighdlr's order (src/vmm/childExit.ts sighdlrNow): what the vmm still
 * holds of a VM at the moment its TERMINATE_VM_EVENT is handed to the
 * parent's socket. vmm.c does vm_remove (every fd of the VM closed) before
 * the event; ours closes the VM's own fds first too, and may leave only its
 * socket (whose peer is dead) until right after the write, unless messages
 * wait in that socket's queue (they may carry fds). Checked at the write
 * itself, through a parent channel that looks when a message is handed to it.
 * Found by a review: a START_VM_CDROM sent after the start (vmm.c and ours
 * take it) was still open when the event went out.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { makeVmRegistry } from "../../src/layers/VmRegistryLive.ts"
import { Fd, type FdBackend } from "../../src/services/Fd.ts"
import type { Channel } from "../../src/services/ImsgChannel.ts"
import type { VmmContext } from "../../src/vmm/context.ts"
import { sighdlrNow } from "../../src/vmm/childExit.ts"
import * as S from "../../src/schema/structs.ts"
import { VM_STATE_SHUTDOWN } from "../../src/schema/constants.ts"
import { Errno } from "../../src/schema/errno.ts"
import * as T from "../../src/schema/imsgTypes.ts"

const { IMSG_VMDOP_TERMINATE_VM_EVENT } = T
const { EAGAIN } = Errno

const scenario = (queuedOnVmSocket: number, exitCode = 0, shuttingDown = false) =>
  Effect.gen(function* () {
    const closed: Array<string> = []
    const labels = new Map<number, string>()
    let next = 100
    let doubleCloses = 0
    const backend: FdBackend = {
      name: "test",
      closeNumber: (n) => (closed.push(labels.get(n) ?? "?"), 0),
      onDoubleClose: () => void doubleCloses++
    }
    const fd = (label: string) => {
      labels.set(next, label)
      return new Fd(next++, backend, label)
    }

    const registry = yield* makeVmRegistry()
    const vm = yield* registry.register(
      { ...S.emptyVmopCreateParams(), vmc_name: "vm", vmc_flags: 0x1, vmc_kernel: 5, vmc_ncpus: 1n },
      7,
      0
    )
    vm.pid = 4242
    if (shuttingDown) vm.state |= VM_STATE_SHUTDOWN // a graceful stop pending
    // After a start the vmm holds none of these; a START_VM_CDROM / DISK sent later is taken.
    vm.cdrom = fd("cdrom")
    vm.disks[0]![0] = fd("disk")
    let socketClosed = false
    vm.channel = { unsafeQueued: () => queuedOnVmSocket } as unknown as Channel
    vm.closeChannel = () => {
      socketClosed = true
    }

    const atWrite: Array<{ type: number; result: number; closed: ReadonlyArray<string>; socketClosed: boolean; registered: boolean }> = []
    // the event is written with unsafeSendNow (queued and written in one call)
    const parent = {
      unsafeSendNow: (msg: { type: number; data: Uint8Array }) => {
        const result = new DataView(msg.data.buffer, msg.data.byteOffset).getInt32(0, true) // vmr_result
        atWrite.push({ type: msg.type, result, closed: [...closed].sort(), socketClosed, registered: registry.unsafeByPid(4242) !== null })
        return null
      }
    } as unknown as Channel
    const ctx = { registry, parent } as unknown as VmmContext

    const removed = sighdlrNow(ctx, { pid: 4242, status: { _tag: "Exited", code: exitCode } })
    return { removed, vm, atWrite, closed, socketClosed, doubleCloses, registered: registry.unsafeByPid(4242) !== null }
  })

describe("vmm_sighdlr: what the vmm holds of a VM when its exit event is written", () => {
  it.effect("its own fds are closed before the event; its socket (nothing queued) right after", () =>
    Effect.gen(function* () {
      const r = yield* scenario(0)
      expect(r.atWrite).toEqual([{ type: IMSG_VMDOP_TERMINATE_VM_EVENT, result: 0, closed: ["cdrom", "disk"], socketClosed: false, registered: true }])
      expect(r.removed).toBe(r.vm)
      expect([r.socketClosed, r.registered, r.doubleCloses]).toEqual([true, false, 0])
      expect(r.closed.sort()).toEqual(["cdrom", "disk"]) // each once
    })
  )

  it.effect("with messages queued on its socket: vm_remove first, as vmm.c", () =>
    Effect.gen(function* () {
      const r = yield* scenario(1)
      expect(r.atWrite).toEqual([{ type: IMSG_VMDOP_TERMINATE_VM_EVENT, result: 0, closed: ["cdrom", "disk"], socketClosed: true, registered: false }])
      expect([r.socketClosed, r.registered, r.doubleCloses]).toEqual([true, false, 0])
    })
  )

  it.effect("a reset (EAGAIN) while a stop is pending is reported as 0, whichever order the removes take", () =>
    Effect.gen(function* () {
      for (const queued of [0, 1]) {
        const r = yield* scenario(queued, EAGAIN, true)
        expect(r.atWrite.map((w) => w.result)).toEqual([0])
        const plain = yield* scenario(queued, EAGAIN, false)
        expect(plain.atWrite.map((w) => w.result)).toEqual([EAGAIN]) // the parent restarts it
      }
    })
  )
})

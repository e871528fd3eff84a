/**
 * The start-up floors' common part (scripts/bench-vmm.ts, "start-up
 * floor" rows): what bin/vmm must at least do to count as ready, with
 * nothing of the vmm. It reads imsgs from fd 3 (vmd's parent channel) with
 * plain node:fs, answers the first GET_INFO_VM_REQUEST with a
 * GET_INFO_VM_END_DATA of the same peerid, as the vmm does with no VMs, and
 * calls `done` at EOF. fd 3 is a non-blocking socket, and node:fs cannot wait
 * for it: before the answer, EAGAIN tries again on the next turn of the event
 * loop (a spin, but the benchmark writes its request right after the spawn,
 * long before a program is up to read it); after it, every millisecond until
 * the benchmark closes the socket, so as not to take a core from what it times.
 */
import { readSync, writeSync } from "node:fs"
import { IMSG_HEADER_SIZE, lenOf, readLenWord, readPeerid, readType, writeHeader } from "../../src/schema/imsgHeader.ts"
import { IMSG_VMDOP_GET_INFO_VM_END_DATA, IMSG_VMDOP_GET_INFO_VM_REQUEST } from "../../src/schema/imsgTypes.ts"

export const answerOnFd3 = (done: () => void): void => {
  const header = Buffer.alloc(IMSG_HEADER_SIZE)
  const sink = Buffer.alloc(4096)
  let have = 0
  /** Payload bytes of the current message still to skip. */
  let skip = 0
  let answered = false
  const step = (): void => {
    for (;;) {
      let n: number
      try {
        n = skip > 0 ? readSync(3, sink, 0, Math.min(skip, sink.length), null) : readSync(3, header, have, IMSG_HEADER_SIZE - have, null)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EAGAIN") {
          if (answered) setTimeout(step, 1)
          else setImmediate(step)
          return
        }
        throw err
      }
      if (n === 0) return done()
      if (skip > 0) {
        skip -= n
        continue
      }
      have += n
      if (have < IMSG_HEADER_SIZE) continue
      have = 0
      skip = lenOf(readLenWord(header, 0)) - IMSG_HEADER_SIZE
      if (!answered && readType(header, 0) === IMSG_VMDOP_GET_INFO_VM_REQUEST) {
        answered = true
        const reply = Buffer.alloc(IMSG_HEADER_SIZE)
        writeHeader(reply, 0, IMSG_VMDOP_GET_INFO_VM_END_DATA, IMSG_HEADER_SIZE, false, readPeerid(header, 0), process.pid)
        writeSync(3, reply)
      }
    }
  }
  step()
}

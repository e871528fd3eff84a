/**
 * The vmm under strace: no epoll_ctl of its fails with EBADF. A poll handle
 * stopped, its fd closed and the handle then uv_close'd makes libuv's second
 * EPOLL_CTL_DEL hit a closed fd (one per VM socket and pidfd, until session
 * 17); were that fd number already reused and watched, the DEL would take
 * the new fd out of the epoll set behind libuv's back. Skipped without strace.
 */
import { describe, expect } from "@effect/vitest"
import { Effect } from "effect"
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { makeVmdParent } from "../../src/parent/parent.ts"
import type { ParentEvent } from "../../src/parent/events.ts"
import { Errno } from "../../src/schema/errno.ts"
import { binVmmPath, e2e, smallSpec, useFixture } from "./harness.ts"

const fixture = useFixture("epoll")

const hasStrace = (() => {
  try {
    execFileSync("strace", ["-o", "/dev/null", "true"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

describe.runIf(process.platform === "linux" && hasStrace)(`bin/vmm's epoll_ctl calls (strace${hasStrace ? "" : " NOT INSTALLED: skipped"})`, () => {
  for (const spawn of ["direct", "spawner"] as const) {
    e2e(fixture, `--spawn ${spawn}: VMs stopped gracefully, by force and by a crash, then fd 3 closed: no epoll_ctl fails with EBADF`, (run) =>
      Effect.gen(function* () {
        const f = fixture()
        const log = join(f.dir, `strace-${spawn}-${run.token}`)
        const parent = yield* makeVmdParent(
          run.options({
            vmExec: f.vmprog,
            command: { command: "strace", args: ["-f", "-qq", "-o", log, "-e", "trace=epoll_ctl", binVmmPath, "--spawn", spawn] }
          })
        )
        const terminated = (id: number) => (e: ParentEvent) => e._tag === "Terminated" && e.id === id
        const [a, b, c] = yield* Effect.forEach(["a", "b", "c"], (n) => parent.startVm(smallSpec(f, n)))
        let mark = yield* parent.mark
        yield* parent.stopVm(a!.id, { wait: true })
        yield* parent.waitFor(terminated(a!.id), mark)
        mark = yield* parent.mark
        yield* parent.stopVm(b!.id, { force: true, wait: true })
        yield* parent.waitFor(terminated(b!.id), mark)
        mark = yield* parent.mark
        process.kill(c!.pid, "SIGKILL")
        expect(yield* parent.waitFor(terminated(c!.id), mark)).toMatchObject({ result: Errno.EIO })
        yield* parent.startVm(smallSpec(f, "d")) // running when fd 3 closes
        expect(yield* parent.close).toEqual({ _tag: "Exited", code: 0 })
        const calls = readFileSync(log, "utf8").split("\n").filter((l) => l.includes("epoll_ctl("))
        // the trace saw the vmm take its fds out of epoll (the VMs' sockets and pidfds among them)
        expect(calls.filter((l) => l.includes("EPOLL_CTL_DEL") && / = 0$/.test(l)).length).toBeGreaterThanOrEqual(4)
        expect(calls.filter((l) => l.includes("EBADF"))).toEqual([])
      })
    )
  }
})

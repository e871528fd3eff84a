/**
 * `vmctl status` formatting: fmt_scaled(3), vm_state and print_vm_info's
 * columns, against values worked out from the C sources.
 */
import { describe, expect, it } from "vitest"
import { VM_STATE_PAUSED, VM_STATE_RUNNING, VM_STATE_SHUTDOWN, VM_STATE_WAITING, VM_STATE_DISABLED } from "../../src/schema/constants.ts"
import { emptyVmopInfoResult } from "../../src/schema/structs.ts"
import { fmtScaled, parseIdNames, STATUS_HEADER, statusLine, vmStateName } from "../../src/parent/status.ts"

describe("fmt_scaled", () => {
  it.each([
    [0n, "0B"],
    [1n, "1B"],
    [1023n, "1023B"],
    [1024n, "1.0K"],
    [1536n, "1.5K"],
    [10239n, "10.0K"], // the fraction rounds up to 10: the whole part takes it
    [100n * 1024n, "100K"],
    [512n * 1024n * 1024n, "512M"],
    [1536n * 1024n * 1024n, "1.5G"],
    [1024n ** 3n, "1.0G"],
    [55_000_000n, "52.5M"],
    [999n * 1024n * 1024n + 600n * 1024n, "1000M"], // >= 100: no fraction, rounded
    [-2048n, "-2.0K"]
  ])("%s bytes is %s", (n, s) => expect(fmtScaled(n)).toBe(s))
})

describe("vm_state", () => {
  it("orders the bits as vmctl does: paused, waiting, stopping, running, stopped", () => {
    expect(vmStateName(VM_STATE_RUNNING | VM_STATE_PAUSED)).toBe("paused")
    expect(vmStateName(VM_STATE_RUNNING | VM_STATE_WAITING)).toBe("waiting")
    expect(vmStateName(VM_STATE_RUNNING | VM_STATE_SHUTDOWN)).toBe("stopping")
    expect(vmStateName(VM_STATE_RUNNING)).toBe("running")
    expect(vmStateName(0)).toBe("stopped")
    expect(vmStateName(VM_STATE_DISABLED)).toBe("stopped")
    expect(vmStateName(0x40)).toBe("unknown")
  })
})

describe("print_vm_info", () => {
  const row = {
    ...emptyVmopInfoResult(),
    vir_id: 3,
    vir_creator_pid: 4242,
    vir_ncpus: 2n,
    vir_memory_size: 1024n ** 3n,
    vir_used_size: 42n * 1024n * 1024n,
    vir_name: "web",
    vir_ttyname: "/dev/ttyp3",
    vir_uid: 0,
    vir_gid: -1n,
    vir_state: VM_STATE_RUNNING
  }

  it("prints the header and a running VM in vmctl's columns", () => {
    expect(STATUS_HEADER).toBe("   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME")
    expect(statusLine(row)).toBe("    3  4242     2    1.0G   42.0M   ttyp3         root  running web")
  })

  it("prints a VM that is not running with dashes for pid, curmem and tty", () => {
    const stopped = { ...row, vir_creator_pid: 0, vir_used_size: 0n, vir_ttyname: "", vir_state: 0 }
    expect(statusLine(stopped)).toBe("    3     -     2    1.0G       -       -         root  stopped web")
  })

  it("names owners from passwd text, numbers when unknown", () => {
    const names = parseIdNames("root:x:0:0:root:/root:/bin/sh\n_vmd:*:759:759::/var/empty:/sbin/nologin\n")
    expect(names.get(0)).toBe("root")
    expect(names.get(759)).toBe("_vmd")
    expect(statusLine({ ...row, vir_uid: 987654 })).toContain(" 987654 ")
  })
})

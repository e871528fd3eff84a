/**
 * The layout tables against the spec and against gcc: test/schema/c/layout.c
 * declares the same structs from vmd.md §4 and prints sizeof/offsetof; every
 * line must match the TypeScript table, and every table field must be printed.
 */
import { spawnSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { ALL_LAYOUTS, checkLayout, resolvePath, VMD_VM, VMOP_CREATE_PARAMS } from "../../src/schema/layout.ts"
import type { AnyLayout } from "../../src/schema/layout.ts"
import { SIZEOF } from "../../src/schema/structs.ts"
import { Errno } from "../../src/schema/errno.ts"
import * as T from "../../src/schema/imsgTypes.ts"
import { IMSG_FD_MARK, IMSG_HEADER_SIZE, MAX_IMSGSIZE } from "../../src/schema/imsgHeader.ts"

const byName = new Map<string, AnyLayout>(ALL_LAYOUTS.map((l) => [l.name, l]))

describe("layout tables", () => {
  it.each(ALL_LAYOUTS.map((l) => [l.name, l] as const))("%s: fields in order, contiguous, aligned, ending at sizeof", (_, l) => {
    expect(checkLayout(l)).toEqual([])
  })

  it("sizes pinned by DECISIONS.md and vmd.md §4", () => {
    expect(SIZEOF).toMatchObject({
      vmop_result: 28,
      vmop_id: 76,
      vmop_info_result: 200,
      vmop_addr_req: 8,
      vmop_addr_result: 16,
      vmop_owner: 16,
      local_prefix: 40,
      vmd_agentx: 144,
      vmd_config: 216,
      vm_mem_range: 32,
      vmop_create_params: 8392,
      vmd_vm: 13352,
      vm_info_result: 160,
      vm_info_params: 24,
      vm_terminate_params: 4,
      vm_create_params: 2656
    })
  })

  it("vmd_vm offsets the VM child reads (vmd.md §4.5)", () => {
    const at = (path: string) => resolvePath(VMD_VM, path)?.offset
    for (let i = 0; i < 4; i++) {
      expect(at(`vm_ifs[${i}].vif_fd`)).toBe(12896 + 56 * i)
      for (let j = 0; j < 4; j++) expect(at(`vm_disks[${i}][${j}]`)).toBe(12804 + 16 * i + 4 * j)
    }
    expect(at("vm_iev.ibuf.fd")).toBe(13136)
    expect([at("vm_pid"), at("vm_vmid"), at("vm_vmmid"), at("vm_kernel"), at("vm_cdrom"), at("vm_tty"), at("vm_state")]).toEqual([
      8392, 8400, 8404, 12784, 12800, 13112, 13304
    ])
    expect(resolvePath(VMOP_CREATE_PARAMS, "vmc_memranges[0].vmr_size")).toEqual({ offset: 2192, size: 8 })
    expect(resolvePath(VMD_VM, "vm_ifs[4].vif_fd")).toBeUndefined()
    expect(resolvePath(VMD_VM, "vm_iev.ibuf.pid")).toBeUndefined()
    expect(resolvePath(VMD_VM, "_pad12868")).toBeUndefined()
  })
})

const hasGcc = spawnSync("gcc", ["--version"]).status === 0
if (!hasGcc) console.warn("gcc not found: skipping the C layout check (test/schema/c/layout.c)")

describe("C layout check (gcc, test/schema/c/layout.c)", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-layout-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it.skipIf(!hasGcc)("sizeof, alignment and every offsetof printed by gcc match the TypeScript tables", () => {
    const source = fileURLToPath(new URL("./c/layout.c", import.meta.url))
    const exe = join(dir, "layout")
    const cc = spawnSync("gcc", ["-std=c11", "-Wall", "-o", exe, source], { encoding: "utf8" })
    expect(cc.status, cc.stderr).toBe(0)
    const run = spawnSync(exe, [], { encoding: "utf8" })
    expect(run.status, run.stderr).toBe(0)

    const mismatches: Array<string> = []
    const printed = new Set<string>()
    const lines = run.stdout.trim().split("\n")
    for (const line of lines) {
      const [tag, struct = "", ...rest] = line.split(" ")
      const layout = byName.get(struct)
      if (layout === undefined) {
        mismatches.push(`${line}: no TypeScript table`)
        continue
      }
      if (tag === "S") {
        printed.add(struct)
        const [size, align] = rest.map(Number)
        if (size !== layout.sizeof || align !== layout.align) mismatches.push(`${line}: table says ${layout.sizeof} ${layout.align}`)
      } else {
        const [path = "", offset, size] = [rest[0], Number(rest[1]), Number(rest[2])]
        printed.add(`${struct}.${path}`)
        const ts = resolvePath(layout, path)
        if (ts?.offset !== offset || ts.size !== size) mismatches.push(`${line}: table says ${ts ? `${ts.offset} ${ts.size}` : "no such field"}`)
      }
    }
    for (const l of ALL_LAYOUTS) {
      if (!printed.has(l.name)) mismatches.push(`${l.name}: sizeof not printed by layout.c`)
      for (const f of l.fields) {
        if (f.type.kind !== "pad" && !printed.has(`${l.name}.${f.name}`)) mismatches.push(`${l.name}.${f.name}: not printed by layout.c`)
      }
    }
    expect(mismatches).toEqual([])
    expect(lines.length).toBeGreaterThan(150)
  })
})

describe("c/vmd_wire.h (the C programs' copy of the wire numbers)", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmd-vmm-wire-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it.skipIf(!hasGcc)("every constant equals the TypeScript tables' value", () => {
    const header = fileURLToPath(new URL("../../c/vmd_wire.h", import.meta.url))
    const off = (path: string) => resolvePath(VMD_VM, path)?.offset
    const expected: Record<string, number | undefined> = {
      X_EIO: Errno.EIO,
      X_EBADF: Errno.EBADF,
      X_EINVAL: Errno.EINVAL,
      X_EAGAIN: Errno.EAGAIN,
      SIZEOF_VMD_VM: SIZEOF.vmd_vm,
      OFF_NAME: off("vm_params.vmc_name"),
      OFF_NDISKS: off("vm_params.vmc_ndisks"),
      OFF_CDROMPATH: off("vm_params.vmc_cdrom"),
      OFF_PID: off("vm_pid"),
      OFF_VMID: off("vm_vmid"),
      OFF_KERNEL: off("vm_kernel"),
      OFF_CDROM: off("vm_cdrom"),
      OFF_DISKS: off("vm_disks"),
      OFF_VIF_FD: off("vm_ifs[0].vif_fd"),
      OFF_TTY: off("vm_tty"),
      SIZEOF_PREFIX: SIZEOF.local_prefix,
      CTL_VERBOSE: T.IMSG_CTL_VERBOSE,
      PAUSE_VM: T.IMSG_VMDOP_PAUSE_VM,
      PAUSE_VM_RESPONSE: T.IMSG_VMDOP_PAUSE_VM_RESPONSE,
      UNPAUSE_VM: T.IMSG_VMDOP_UNPAUSE_VM,
      UNPAUSE_VM_RESPONSE: T.IMSG_VMDOP_UNPAUSE_VM_RESPONSE,
      GET_INFO_VM_REQUEST: T.IMSG_VMDOP_GET_INFO_VM_REQUEST,
      GET_INFO_VM_DATA: T.IMSG_VMDOP_GET_INFO_VM_DATA,
      GET_INFO_VM_END_DATA: T.IMSG_VMDOP_GET_INFO_VM_END_DATA,
      PRIV_GET_ADDR_RESPONSE: T.IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE,
      VM_SHUTDOWN: T.IMSG_VMDOP_VM_SHUTDOWN,
      VM_REBOOT: T.IMSG_VMDOP_VM_REBOOT,
      HDR: IMSG_HEADER_SIZE,
      FD_MARK: IMSG_FD_MARK,
      MAX_IMSGSIZE
    }
    const names = Object.keys(expected)
    const source = join(dir, "wire.c")
    const exe = join(dir, "wire")
    writeFileSync(
      source,
      `#include <stdio.h>\n#include "${header}"\nint main(void) {\n${names
        .map((n) => `\tprintf("%s %lu\\n", "${n}", (unsigned long)(${n}));`)
        .join("\n")}\n\treturn 0;\n}\n`
    )
    const cc = spawnSync("gcc", ["-Wall", "-Wextra", "-o", exe, source], { encoding: "utf8" })
    expect(cc.status, cc.stderr).toBe(0)
    const run = spawnSync(exe, [], { encoding: "utf8" })
    const got = Object.fromEntries(run.stdout.trim().split("\n").map((l) => [l.split(" ")[0], Number(l.split(" ")[1])]))
    for (const n of names) expect(expected[n], `${n} in the TypeScript tables`).toBeTypeOf("number")
    expect(got).toEqual(expected)
  })
})

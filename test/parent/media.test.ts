/** openMedia's kernel fd as config_setvm's: the kernel named, else the BIOS, else VMD_BIOS_MISSING. */
import { Either } from "effect"
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import * as libc from "../../src/native/libc.ts"
import { openFdNumbers } from "../../src/native/sys.ts"
import { openMedia } from "../../src/parent/media.ts"
import { VmdError } from "../../src/schema/errno.ts"

const dir = mkdtempSync(join(tmpdir(), "media-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const file = (name: string) => {
  const p = join(dir, name)
  writeFileSync(p, name)
  return p
}

describe("openMedia (config_setvm's fds)", () => {
  it("a VM with no kernel gets the BIOS as its kernel fd; without a BIOS the start fails VMD_BIOS_MISSING, nothing left open", () => {
    const bios = file("vmm-bios")
    const disk = file("disk.img")
    const tty = libc.nativeFd(libc.open("/dev/null", libc.O_RDWR), "tty")
    try {
      const m = Either.getOrThrow(openMedia({ name: "d", disks: [[disk]] }, tty, bios))
      const kernel = m.fds.kernel
      expect(kernel).not.toBeNull()
      expect(libc.fstatId(kernel!.num)).toMatchObject({ ino: BigInt(statSync(bios).ino) })
      for (const fd of [kernel, ...m.fds.disks.flat(), m.fds.tty]) fd?.closeSync()
      const before = openFdNumbers()
      const missing = openMedia({ name: "d", disks: [[disk]] }, tty, join(dir, "no-bios"))
      expect(Either.isLeft(missing) && missing.left.errno).toBe(VmdError.VMD_BIOS_MISSING)
      expect(openFdNumbers()).toEqual(before)
    } finally {
      if (tty.isOpen) tty.closeSync()
    }
  })
})

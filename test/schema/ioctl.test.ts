/** ioctl request numbers (OpenBSD sys/ioccom.h, vmd.md §5, DECISIONS.md). */
import { describe, expect, it } from "@effect/vitest"
import { _IO, _IOR, _IOW, _IOWR, IOCGROUP, IOCPARM_LEN, VMM_IOC_CREATE, VMM_IOC_INFO, VMM_IOC_TERM } from "../../src/schema/ioctl.ts"

describe("ioctl encoding", () => {
  it("VMM_IOC_INFO = _IOWR('V', 3, 24) = 0xC0185603", () => {
    expect(VMM_IOC_INFO).toBe(0xc0185603)
    expect(VMM_IOC_INFO).toBe(3222820355)
  })

  it("VMM_IOC_TERM = _IOW('V', 4, 4) = 0x80045604", () => {
    expect(VMM_IOC_TERM).toBe(0x80045604)
    expect(VMM_IOC_TERM).toBe(2147767812)
  })

  it("VMM_IOC_CREATE = _IOWR('V', 1, 2656) = 0xCA605601", () => {
    expect(VMM_IOC_CREATE).toBe(0xca605601)
  })

  it("direction bits, length mask and group as in ioccom.h; results are unsigned", () => {
    expect(_IO("V", 7)).toBe(0x20005607)
    expect(_IOR("t", 116, 4)).toBe(0x40047474)
    expect(_IOW("i", 12, 32)).toBe(0x8020690c)
    expect(_IOWR(0x56, 3, 0x2000 + 24)).toBe(0xc0185603) // len & 0x1fff
    expect(IOCPARM_LEN(VMM_IOC_CREATE)).toBe(2656)
    expect(IOCGROUP(VMM_IOC_TERM)).toBe(0x56)
    for (const r of [VMM_IOC_INFO, VMM_IOC_TERM, VMM_IOC_CREATE]) expect(r).toBeGreaterThan(0)
  })
})

/** Bad input gives a SchemaError value naming the struct and the field; nothing throws. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import type { SchemaError } from "../../src/schema/codec.ts"
import * as S from "../../src/schema/structs.ts"

const fails = (r: Either.Either<unknown, SchemaError>, struct: string, field: string): void => {
  expect(Either.isLeft(r)).toBe(true)
  if (Either.isLeft(r)) expect(r.left).toMatchObject({ _tag: "SchemaError", struct, field })
}

describe("wrong buffer size", () => {
  type Decoder = (bytes: Uint8Array) => Either.Either<unknown, SchemaError>
  it.each<readonly [string, Decoder, number]>([
    ["vmop_id", S.decodeVmopId, 76],
    ["vmop_result", S.decodeVmopResult, 28],
    ["vmop_info_result", S.decodeVmopInfoResult, 200],
    ["vmop_addr_result", S.decodeVmopAddrResult, 16],
    ["vmd_config", S.decodeVmdConfig, 216],
    ["vmop_create_params", S.decodeVmopCreateParams, 8392],
    ["vmd_vm", S.decodeVmdVm, 13352],
    ["vm_info_params", S.decodeVmInfoParams, 24]
  ])("%s: one byte short, one byte long and empty are SchemaError(sizeof)", (name, decode, size) => {
    for (const n of [size - 1, size + 1, 0]) fails(decode(new Uint8Array(n)), name, "sizeof")
    expect(Either.isRight(decode(new Uint8Array(size)))).toBe(true)
  })

  it("imsg_int_read / imsg_uint_read want exactly 4 bytes", () => {
    fails(S.imsgIntRead(new Uint8Array(3)), "int", "sizeof")
    fails(S.imsgUintRead(new Uint8Array(8)), "unsigned int", "sizeof")
    fails(S.imsgUintRead(new Uint8Array(0)), "unsigned int", "sizeof")
  })

  it("the message says what was expected and what came", () => {
    const r = S.decodeVmopId(new Uint8Array(75))
    expect(Either.isLeft(r) && r.left.message).toBe("expected 76 bytes, got 75")
  })
})

describe("strings", () => {
  it("a 64-char vid_name does not fit (63 plus NUL)", () => {
    fails(S.encodeVmopId({ ...S.emptyVmopId(), vid_name: "x".repeat(64) }), "vmop_id", "vid_name")
    expect(Either.isRight(S.encodeVmopId({ ...S.emptyVmopId(), vid_name: "x".repeat(63) }))).toBe(true)
  })

  it("an over-long disk path names its index inside the nested struct", () => {
    const p = { ...S.emptyVmopCreateParams(), vmc_disks: ["a", "b", "p".repeat(1024)] }
    fails(S.encodeVmopCreateParams(p), "vmop_create_params", "vmc_disks[2]")
    const vm = { ...S.emptyVmdVm(), vm_params: p }
    fails(S.encodeVmdVm(vm), "vmd_vm", "vm_params.vmc_disks[2]")
  })

  it("vmc_cdrom (not terminated) takes 1024 chars but not 1025", () => {
    expect(Either.isRight(S.encodeVmopCreateParams({ ...S.emptyVmopCreateParams(), vmc_cdrom: "c".repeat(1024) }))).toBe(true)
    fails(S.encodeVmopCreateParams({ ...S.emptyVmopCreateParams(), vmc_cdrom: "c".repeat(1025) }), "vmop_create_params", "vmc_cdrom")
  })

  it("a NUL or a non-latin1 char cannot be encoded", () => {
    fails(S.encodeVmopResult({ ...S.emptyVmopResult(), vmr_ttyname: "a\0b" }), "vmop_result", "vmr_ttyname")
    fails(S.encodeVmopResult({ ...S.emptyVmopResult(), vmr_ttyname: "tty\u2603" }), "vmop_result", "vmr_ttyname")
  })
})

describe("numbers", () => {
  it("out-of-range or non-integer values name the field", () => {
    fails(S.encodeVmopId({ ...S.emptyVmopId(), vid_id: -1 }), "vmop_id", "vid_id")
    fails(S.encodeVmopId({ ...S.emptyVmopId(), vid_flags: 2 ** 32 }), "vmop_id", "vid_flags")
    fails(S.encodeVmopResult({ ...S.emptyVmopResult(), vmr_result: 1.5 }), "vmop_result", "vmr_result")
    fails(S.encodeVmopOwner({ uid: 0, gid: 2n ** 63n }), "vmop_owner", "gid")
    fails(S.encodeVmInfoParams({ ...S.emptyVmInfoParams(), vip_size: -1n }), "vm_info_params", "vip_size")
    fails(S.encodeImsgInt(2 ** 31), "int", "value")
  })
})

describe("counts and arrays", () => {
  it("an array longer than its C array is a SchemaError; a shorter one is zero-filled", () => {
    fails(S.encodeVmopCreateParams({ ...S.emptyVmopCreateParams(), vmc_disks: ["a", "b", "c", "d", "e"] }), "vmop_create_params", "vmc_disks")
    fails(S.encodeVmdVm({ ...S.emptyVmdVm(), vm_disks: [[1, 2, 3, 4, 5]] }), "vmd_vm", "vm_disks[0]")
    fails(S.encodeVmopAddrResult({ ...S.emptyVmopAddrResult(), var_addr: new Uint8Array(7) }), "vmop_addr_result", "var_addr")
    const short = S.encodeVmopCreateParams({ ...S.emptyVmopCreateParams(), vmc_disks: ["a"] })
    expect(Either.map(Either.flatMap(short, S.decodeVmopCreateParams), (p) => p.vmc_disks)).toEqual(Either.right(["a", "", "", ""]))
  })

  it("vmc_ndisks > 4 as a bound is SchemaError(vmc_ndisks); decoding alone keeps the value for vm_register's EINVAL", () => {
    const p = { ...S.emptyVmopCreateParams(), vmc_ndisks: 5n }
    const bytes = S.encodeVmopCreateParams(p)
    expect(Either.map(Either.flatMap(bytes, S.decodeVmopCreateParams), (x) => x.vmc_ndisks)).toEqual(Either.right(5n))
    fails(S.vmcDiskCount(p), "vmop_create_params", "vmc_ndisks")
    fails(S.checkVmopCreateParams(p), "vmop_create_params", "vmc_ndisks")
    fails(S.checkVmdVm({ ...S.emptyVmdVm(), vm_params: p }), "vmd_vm", "vm_params.vmc_ndisks")
    expect(S.vmcDiskCount({ ...p, vmc_ndisks: 4n })).toEqual(Either.right(4))
  })

  it("vmc_nnics, vmc_nmemranges and vm_sev_nmemsegments are bounded by their arrays", () => {
    const p = S.emptyVmopCreateParams()
    fails(S.vmcNicCount({ ...p, vmc_nnics: 5n }), "vmop_create_params", "vmc_nnics")
    fails(S.vmcMemRangeCount({ ...p, vmc_nmemranges: 17n }), "vmop_create_params", "vmc_nmemranges")
    expect(S.vmcMemRangeCount({ ...p, vmc_nmemranges: 16n })).toEqual(Either.right(16))
    fails(S.checkVmdVm({ ...S.emptyVmdVm(), vm_sev_nmemsegments: 129n }), "vmd_vm", "vm_sev_nmemsegments")
    expect(Either.isRight(S.checkVmdVm({ ...S.emptyVmdVm(), vm_sev_nmemsegments: 128n }))).toBe(true)
  })

  it("vip_size not a multiple of 160, or beyond the buffer, is SchemaError(vm_info_params.vip_size)", () => {
    const buf = new Uint8Array(320)
    fails(S.decodeVmInfoResults(buf, 161n), "vm_info_params", "vip_size")
    fails(S.decodeVmInfoResults(buf, 480n), "vm_info_params", "vip_size")
    expect(Either.map(S.decodeVmInfoResults(buf, 160n), (xs) => xs.length)).toEqual(Either.right(1))
    expect(Either.map(S.decodeVmInfoResults(buf, 0n), (xs) => xs.length)).toEqual(Either.right(0))
  })
})

describe("as an Effect", () => {
  it.effect("an Either from a decoder fails the Effect with the SchemaError", () =>
    Effect.gen(function* () {
      const err = yield* Effect.flip(
        Effect.gen(function* () {
          return yield* S.decodeVmopId(new Uint8Array(1))
        })
      )
      expect(err).toMatchObject({ _tag: "SchemaError", struct: "vmop_id", field: "sizeof" })
      const ok = yield* S.decodeVmopId(new Uint8Array(76))
      expect(ok.vid_name).toBe("")
    })
  )
})

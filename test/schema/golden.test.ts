/**
 * Golden bytes: each expected buffer is written field by field at the offsets
 * vmd.md §4 documents (numbers typed in here, not taken from layout.ts), then
 * compared with the encoder's output and decoded back.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type { Codec } from "../../src/schema/codec.ts"
import type { VmInfo } from "../../src/services/VmmDevice.ts"
import * as S from "../../src/schema/structs.ts"

/** A little-endian buffer written at documented offsets. */
class Golden {
  readonly bytes: Uint8Array
  private readonly view: DataView
  constructor(size: number) {
    this.bytes = new Uint8Array(size)
    this.view = new DataView(this.bytes.buffer)
  }
  u32(offset: number, v: number): this {
    this.view.setUint32(offset, v, true)
    return this
  }
  i32(offset: number, v: number): this {
    this.view.setInt32(offset, v, true)
    return this
  }
  u64(offset: number, v: bigint): this {
    this.view.setBigUint64(offset, v, true)
    return this
  }
  i64(offset: number, v: bigint): this {
    this.view.setBigInt64(offset, v, true)
    return this
  }
  str(offset: number, s: string): this {
    for (let i = 0; i < s.length; i++) this.bytes[offset + i] = s.charCodeAt(i)
    return this
  }
  raw(offset: number, b: ArrayLike<number>): this {
    this.bytes.set(b, offset)
    return this
  }
}

/** The first differing byte, readable in a failure message. */
const firstDiff = (got: Uint8Array, want: Uint8Array): string | undefined => {
  if (got.length !== want.length) return `length ${got.length}, expected ${want.length}`
  const i = got.findIndex((b, k) => b !== want[k])
  return i < 0 ? undefined : `offset ${i}: 0x${got[i]?.toString(16)}, expected 0x${want[i]?.toString(16)}`
}

const expectGolden = <A>(codec: Codec<A>, value: A, golden: Golden): void => {
  const encoded = codec.encode(value)
  expect(Either.map(encoded, (bytes) => firstDiff(bytes, golden.bytes))).toEqual(Either.right(undefined))
  expect(codec.decode(golden.bytes)).toEqual(Either.right(value))
}

/** true exactly when A and B are the same type (readonly-ness included). */
type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false

/** VmInfo's keys in struct order; `satisfies` and the test's `listed` make tsc hold it to exactly VmInfo's fields. */
const vmInfoKeys = [
  "vir_memory_size",
  "vir_used_size",
  "vir_ncpus",
  "vir_vcpu_state",
  "vir_creator_pid",
  "vir_id",
  "vir_name"
] as const satisfies ReadonlyArray<keyof VmInfo>

const vcpuState = Uint8Array.from({ length: 64 }, (_, i) => i % 5)
const mac = [0xfe, 0xe1, 0xbb, 0xd1, 0x02, 0x03]
const GiB = 1024n * 1024n * 1024n

const createParams: S.VmopCreateParams = (() => {
  const e = S.emptyVmopCreateParams()
  return {
    ...e,
    vmc_id: 9,
    vmc_name: "web-01",
    vmc_owner: { uid: 1000, gid: 1001n },
    vmc_flags: 0x1f,
    vmc_checkaccess: 0x10,
    vmc_ncpus: 2n,
    vmc_asid: e.vmc_asid.map((_, i) => (i === 0 ? 7 : i === 511 ? 0xfffffffe : 0)),
    vmc_poscbit: 51,
    vmc_sev: 1,
    vmc_seves: -1,
    vmc_nmemranges: 2n,
    vmc_memranges: e.vmc_memranges.map((r, i) =>
      i === 1 ? { vmr_gpa: 0x100000n, vmr_va: 0x7f0000000000n, vmr_size: 2n * GiB, vmr_type: 2 } : r
    ),
    vmc_kernel: 5,
    vmc_bootdevice: 2,
    vmc_ndisks: 2n,
    vmc_disks: ["/var/vm/a.qcow2", "", "", "/var/vm/" + "d".repeat(1014)],
    vmc_disktypes: [3, 2, 0, 1],
    vmc_diskbases: [1, 0, 0, 4],
    vmc_cdrom: "c".repeat(1024),
    vmc_nnics: 1n,
    vmc_ifnames: ["", "", "tap3", ""],
    vmc_ifswitch: ["", "", "", "uplink"],
    vmc_ifgroup: ["vmgrp", "", "", ""],
    vmc_ifrdomain: [0, 0, 0, 7],
    vmc_macs: [new Uint8Array(6), new Uint8Array(6), new Uint8Array(6), Uint8Array.from(mac)],
    vmc_ifflags: [1, 0, 0, 0x0e],
    vmc_instance: "tmpl",
    vmc_insowner: { uid: 0, gid: -1n },
    vmc_insflags: 0x40
  }
})()

/** vmd.md §4.2, at base `b` (0 alone, 0 inside vmd_vm too). */
const createParamsGolden = (g: Golden, b: number): Golden =>
  g
    .u32(b + 0, 9)
    .str(b + 4, "web-01")
    .u32(b + 72, 1000)
    .i64(b + 80, 1001n)
    .u32(b + 88, 0x1f)
    .u32(b + 92, 0x10)
    .u64(b + 96, 2n)
    .u32(b + 104, 7)
    .u32(b + 104 + 511 * 4, 0xfffffffe)
    .u32(b + 2152, 51)
    .i32(b + 2156, 1)
    .i32(b + 2160, -1)
    .u64(b + 2168, 2n)
    .u64(b + 2176 + 32, 0x100000n)
    .u64(b + 2176 + 40, 0x7f0000000000n)
    .u64(b + 2176 + 48, 2n * GiB)
    .i32(b + 2176 + 56, 2)
    .i32(b + 2688, 5)
    .u32(b + 2692, 2)
    .u64(b + 2696, 2n)
    .str(b + 2704, "/var/vm/a.qcow2")
    .str(b + 2704 + 3 * 1024, "/var/vm/" + "d".repeat(1014))
    .raw(b + 6800, new Uint8Array(new Uint32Array([3, 2, 0, 1]).buffer))
    .raw(b + 6816, new Uint8Array(new Uint32Array([1, 0, 0, 4]).buffer))
    .str(b + 6832, "c".repeat(1024))
    .u64(b + 7856, 1n)
    .str(b + 7864 + 2 * 16, "tap3")
    .str(b + 7928 + 3 * 64, "uplink")
    .str(b + 8184, "vmgrp")
    .u32(b + 8248 + 12, 7)
    .raw(b + 8264 + 18, mac)
    .u32(b + 8288, 1)
    .u32(b + 8288 + 12, 0x0e)
    .str(b + 8304, "tmpl")
    .u32(b + 8368, 0)
    .i64(b + 8376, -1n)
    .u32(b + 8384, 0x40)

describe("golden bytes (vmd.md §4 offsets, little-endian)", () => {
  it("vmop_result (28)", () => {
    expectGolden(
      S.VmopResultCodec,
      { vmr_result: 35, vmr_id: 7, vmr_pid: 4242, vmr_ttyname: "/dev/ttyp3" },
      new Golden(28).i32(0, 35).u32(4, 7).i32(8, 4242).str(12, "/dev/ttyp3")
    )
  })

  it("vmop_id (76)", () => {
    expectGolden(
      S.VmopIdCodec,
      { vid_id: 0xdeadbeef, vid_name: "openbsd-vm", vid_uid: 1000, vid_flags: 3 },
      new Golden(76).u32(0, 0xdeadbeef).str(4, "openbsd-vm").u32(68, 1000).u32(72, 3)
    )
  })

  it("vmop_info_result (200)", () => {
    expectGolden(
      S.VmopInfoResultCodec,
      {
        vir_memory_size: 4n * GiB,
        vir_used_size: 123456789n,
        vir_ncpus: 4n,
        vir_vcpu_state: vcpuState,
        vir_creator_pid: 777,
        vir_id: 3,
        vir_name: "n".repeat(63),
        vir_ttyname: "/dev/ttyp0",
        vir_uid: 1000,
        vir_gid: -2n,
        vir_state: 0x11
      },
      new Golden(200)
        .u64(0, 4n * GiB)
        .u64(8, 123456789n)
        .u64(16, 4n)
        .raw(24, vcpuState)
        .i32(88, 777)
        .u32(92, 3)
        .str(96, "n".repeat(63))
        .str(160, "/dev/ttyp0")
        .u32(176, 1000)
        .i64(184, -2n)
        .u32(192, 0x11)
    )
  })

  it("vmop_addr_req (8) and vmop_addr_result (16)", () => {
    expectGolden(S.VmopAddrReqCodec, { var_vmid: 4, var_nic_idx: 2 }, new Golden(8).u32(0, 4).u32(4, 2))
    expectGolden(
      S.VmopAddrResultCodec,
      { var_vmid: 4, var_nic_idx: 2, var_addr: Uint8Array.from(mac) },
      new Golden(16).u32(0, 4).u32(4, 2).raw(8, mac)
    )
  })

  it("vmop_owner (16)", () => {
    expectGolden(S.VmopOwnerCodec, { uid: 1000, gid: -1n }, new Golden(16).u32(0, 1000).i64(8, -1n))
  })

  const prefix: S.LocalPrefix = {
    lp_in: Uint8Array.of(100, 64, 0, 0),
    lp_mask: Uint8Array.of(255, 192, 0, 0),
    lp_in6: Uint8Array.of(0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    lp_mask6: Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
  }
  const prefixGolden = (g: Golden, b: number): Golden =>
    g.raw(b, prefix.lp_in).raw(b + 4, prefix.lp_mask).raw(b + 8, prefix.lp_in6).raw(b + 24, prefix.lp_mask6)

  it("local_prefix (40), network byte order", () => {
    expectGolden(S.LocalPrefixCodec, prefix, prefixGolden(new Golden(40), 0))
  })

  it("vmd_config (216) with vmd_agentx (144)", () => {
    const agentx = { ax_enabled: 1, ax_path: "/var/agentx/master", ax_context: "c".repeat(32) }
    expectGolden(S.VmdAgentxCodec, agentx, new Golden(144).i32(0, 1).str(4, "/var/agentx/master").str(108, "c".repeat(32)))
    expectGolden(
      S.VmdConfigCodec,
      { cfg_flags: 0x05, delay: { tv_sec: 30n, tv_usec: 5n }, parallelism: 4, cfg_localprefix: prefix, cfg_agentx: agentx },
      prefixGolden(new Golden(216).u32(0, 5).i64(8, 30n).i64(16, 5n).i32(24, 4), 28)
        .i32(68, 1)
        .str(72, "/var/agentx/master")
        .str(176, "c".repeat(32))
    )
  })

  it("vm_mem_range (32)", () => {
    expectGolden(
      S.VmMemRangeCodec,
      { vmr_gpa: 0xfffff000n, vmr_va: 0x1234n, vmr_size: 512n * 1024n * 1024n, vmr_type: 1 },
      new Golden(32).u64(0, 0xfffff000n).u64(8, 0x1234n).u64(16, 512n * 1024n * 1024n).i32(24, 1)
    )
  })

  it("vmop_create_params (8392)", () => {
    expectGolden(S.VmopCreateParamsCodec, createParams, createParamsGolden(new Golden(8392), 0))
  })

  it("vmd_vm (13352): every field the VM child reads, pointers zero, vm_iev.ibuf.fd -1", () => {
    const e = S.emptyVmdVm()
    const vm: S.VmdVm = {
      ...e,
      vm_params: createParams,
      vm_pid: 31337,
      vm_uid: 0,
      vm_vmid: 12,
      vm_vmmid: 0,
      vm_peerid: 0xffffffff,
      vm_sev_handle: 0,
      vm_kernel: 8,
      vm_cdrom: -1,
      vm_disks: [
        [9, 10, -1, -1],
        [11, -1, -1, -1],
        [-1, -1, -1, -1],
        [-1, -1, -1, 42]
      ],
      vm_ifs: e.vm_ifs.map((nic, i) => ({ ...nic, vif_fd: i === 0 ? 13 : -1, vif_rdomain: i, vif_flags: i === 3 ? 1 : 0 })),
      vm_ttyname: "",
      vm_tty: 14,
      vm_from_config: 0,
      vm_state: 0x01,
      vm_start_tv: { tv_sec: 1700000000n, tv_usec: 250000n },
      vm_start_limit: 2
    }
    const g = createParamsGolden(new Golden(13352), 0)
      .i32(8392, 31337)
      .u32(8400, 12)
      .u32(8408, 0xffffffff)
      .i32(12784, 8)
      .i32(12800, -1)
    vm.vm_disks.forEach((row, i) => row.forEach((fd, j) => g.i32(12804 + 16 * i + 4 * j, fd)))
    for (let i = 0; i < 4; i++) g.i32(12896 + 56 * i, i === 0 ? 13 : -1).u32(12900 + 56 * i, i).u32(12904 + 56 * i, i === 3 ? 1 : 0)
    g.i32(13112, 14).i32(13136, -1).u32(13304, 1).i64(13312, 1700000000n).i64(13320, 250000n).i32(13328, 2)
    expectGolden(S.VmdVmCodec, vm, g)
  })

  it("vm_info_result (160), vm_info_params (24), vm_terminate_params (4)", () => {
    expectGolden(
      S.VmInfoResultCodec,
      {
        vir_memory_size: GiB,
        vir_used_size: 4096n,
        vir_ncpus: 1n,
        vir_vcpu_state: vcpuState,
        vir_creator_pid: 99,
        vir_id: 1,
        vir_name: "k"
      },
      new Golden(160).u64(0, GiB).u64(8, 4096n).u64(16, 1n).raw(24, vcpuState).i32(88, 99).u32(92, 1).str(96, "k")
    )
    expectGolden(
      S.VmInfoParamsCodec,
      { vip_size: 320n, vip_info_ct: 2n, vip_info: 0x7fff12345678n },
      new Golden(24).u64(0, 320n).u64(8, 2n).u64(16, 0x7fff12345678n)
    )
    expectGolden(S.VmTerminateParamsCodec, { vtp_vm_id: 5 }, new Golden(4).u32(0, 5))
  })

  it("VmInfo (services/VmmDevice.ts) has exactly the fields the vm_info_result codec decodes", () => {
    // Compile time (tsc, part of `npm test`): the two types are the same, keys, readonly-ness and value types.
    const same: Equals<VmInfo, S.VmInfoResult> = true
    // ... and vmInfoKeys (top of the file) lists every key of VmInfo. The expect only uses the two.
    const listed: Equals<(typeof vmInfoKeys)[number], keyof VmInfo> = true
    expect([same, listed]).toEqual([true, true])
    // Run time: the keys the compiled decoder builds, in order, are VmInfo's (vmd.md §4.6), and nothing else.
    const decoded = S.decodeVmInfoResult(new Golden(160).u64(0, GiB).raw(24, vcpuState).str(96, "k").bytes)
    expect(Either.map(decoded, (v) => Object.keys(v))).toEqual(Either.right([...vmInfoKeys]))
    expect(Object.keys(S.emptyVmInfoResult())).toEqual([...vmInfoKeys])
    // And each value has VmInfo's JS type.
    expect(Either.map(decoded, (v) => vmInfoKeys.map((k) => (v[k] instanceof Uint8Array ? `Uint8Array(${v[k].length})` : typeof v[k])))).toEqual(
      Either.right(["bigint", "bigint", "bigint", "Uint8Array(64)", "number", "number", "string"])
    )
  })

  it("4-byte int / unsigned int payloads", () => {
    expect(S.encodeImsgInt(-1)).toEqual(Either.right(Uint8Array.of(0xff, 0xff, 0xff, 0xff)))
    expect(S.encodeImsgUint(0xff)).toEqual(Either.right(Uint8Array.of(0xff, 0, 0, 0)))
    expect(S.imsgIntRead(Uint8Array.of(0xfe, 0xff, 0xff, 0xff))).toEqual(Either.right(-2))
    expect(S.imsgUintRead(Uint8Array.of(0xfe, 0xff, 0xff, 0xff))).toEqual(Either.right(0xfffffffe))
  })
})

describe("NUL termination as vmd reads (vmd.md §8)", () => {
  it("a 64-byte vid_name without NUL decodes to 63 chars", () => {
    const g = new Golden(76).str(4, "x".repeat(64)).u32(68, 5)
    const r = S.decodeVmopId(g.bytes)
    expect(Either.map(r, (v) => [v.vid_name, v.vid_uid])).toEqual(Either.right(["x".repeat(63), 5]))
  })

  it("vmc_cdrom is not terminated: 1024 bytes without NUL are 1024 chars", () => {
    const g = new Golden(8392).str(6832, "c".repeat(1024)).str(2704, "d".repeat(1024))
    const r = S.decodeVmopCreateParams(g.bytes)
    expect(Either.map(r, (v) => [v.vmc_cdrom.length, v.vmc_disks[0]?.length])).toEqual(Either.right([1024, 1023]))
  })

  it("bytes after the first NUL are ignored; latin1 bytes survive", () => {
    const g = new Golden(28).raw(12, [0x41, 0xe9, 0xff, 0, 0x42, 0x43])
    expect(Either.map(S.decodeVmopResult(g.bytes), (v) => v.vmr_ttyname)).toEqual(Either.right("A\u00e9\u00ff"))
  })
})

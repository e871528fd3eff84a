/**
 * The wire schema of the vmm process: message numbers, errno, constants,
 * struct codecs and ioctl numbers. The layout tables and their small
 * table-building vocabulary (u32, char, struct, ...) stay under `Layout`.
 */
export * from "./codec.ts"
export * from "./constants.ts"
export * from "./errno.ts"
export * from "./imsgTypes.ts"
export * from "./ioctl.ts"
export * as Layout from "./layout.ts"
export type { AnyLayout, StructLayout, StructValue } from "./layout.ts"
export * from "./structs.ts"

/**
 * The CONFIG payload (vmd.md §4.1): struct vmd_config and what it embeds
 * (timeval, local_prefix, vmd_agentx).
 */
import { SUN_PATH_LEN } from "../constants.ts"
import { bytes, char, defineStruct, field, i32, i64, pad, struct, u32 } from "./kinds.ts"

// Offsets are written out (not computed) so each line can be read against
// vmd.md; `defineStruct` proves they are consistent at module load.

/** struct timeval (16, 8). */
export const TIMEVAL = defineStruct("timeval", 16, 8, [
  field("tv_sec", 0, i64),
  field("tv_usec", 8, i64)
])

/** struct local_prefix (40, 4), §4.1; addresses in network byte order, kept as bytes. */
export const LOCAL_PREFIX = defineStruct("local_prefix", 40, 4, [
  field("lp_in", 0, bytes(4, 4)),
  field("lp_mask", 4, bytes(4, 4)),
  field("lp_in6", 8, bytes(16, 4)),
  field("lp_mask6", 24, bytes(16, 4))
])

/** struct vmd_agentx (144, 4), §4.1. */
export const VMD_AGENTX = defineStruct("vmd_agentx", 144, 4, [
  field("ax_enabled", 0, i32),
  field("ax_path", 4, char(SUN_PATH_LEN, "terminated")),
  field("ax_context", 108, char(33, "terminated")),
  pad(141, 3)
])

/** struct vmd_config (216, 8), §4.1. */
export const VMD_CONFIG = defineStruct("vmd_config", 216, 8, [
  field("cfg_flags", 0, u32),
  pad(4, 4),
  field("delay", 8, struct(TIMEVAL)),
  field("parallelism", 24, i32),
  field("cfg_localprefix", 28, struct(LOCAL_PREFIX)),
  field("cfg_agentx", 68, struct(VMD_AGENTX)),
  pad(212, 4)
])

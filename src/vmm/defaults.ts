/**
 * config_init / config_purge defaults of the vmm process: the local prefix
 * is 100.64.0.0/10 and fd00::/8 until the parent sends CONFIG.
 */
import { VMD_CFG_INET6 } from "../schema/constants.ts"
import { emptyVmdConfig, type LocalPrefix, type VmdConfig } from "../schema/structs.ts"

const v6 = (first: number) => {
  const b = new Uint8Array(16)
  b[0] = first
  return b
}

/** VMD_DEFAULT_LOCALPREFIX_INET "100.64.0.0/10", VMD_DEFAULT_LOCALPREFIX_INET6 "fd00::/8". */
export const defaultLocalPrefix = (): LocalPrefix => ({
  lp_in: Uint8Array.of(100, 64, 0, 0),
  lp_mask: Uint8Array.of(255, 192, 0, 0),
  lp_in6: v6(0xfd),
  lp_mask6: v6(0xff)
})

export const defaultVmdConfig = (): VmdConfig => ({ ...emptyVmdConfig(), cfg_localprefix: defaultLocalPrefix() })

/** config_purge: back to the default IPv4 prefix, INET6 flag cleared (the IPv6 prefix is kept). */
export const resetLocalPrefix = (cfg: VmdConfig): VmdConfig => ({
  ...cfg,
  cfg_flags: cfg.cfg_flags & ~VMD_CFG_INET6,
  cfg_localprefix: { ...cfg.cfg_localprefix, lp_in: defaultLocalPrefix().lp_in, lp_mask: defaultLocalPrefix().lp_mask }
})

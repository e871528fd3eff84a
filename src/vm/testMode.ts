/**
 * Test-only misbehaviour of the VM process, chosen with the environment
 * variable VMM_TEST_VM_MODE (c/vmprog.c reads the same variable). Unset or
 * empty means a well-behaved VM; production never sets it.
 *
 *   die-in-handshake  exit EIO after reading the struct, answer nothing
 *   answer-zero       answer id 0 and exit EINVAL (a failed VMM_IOC_CREATE)
 *   hang              never answer the id; wait for a signal (not for EOF: it outlives
 *                     a vmm killed with SIGKILL, as a VM process stuck in vmm(4) would)
 *   garbage           after the handshake, send the vmm an invalid imsg
 */
export const TEST_MODE_VARIABLE = "VMM_TEST_VM_MODE"

const MODES = ["die-in-handshake", "answer-zero", "hang", "garbage"] as const

export type TestMode = "normal" | (typeof MODES)[number]

/** An unknown value is ignored (the VM behaves), so a typo cannot break a real deployment. */
export const testModeFrom = (env: Readonly<Record<string, string | undefined>>): TestMode => {
  const v = env[TEST_MODE_VARIABLE]
  return MODES.find((m) => m === v) ?? "normal"
}

/** The imsg type "garbage" mode sends: not a message the vmm accepts from a VM. */
export const GARBAGE_IMSG_TYPE = 99

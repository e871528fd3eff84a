/**
 * Start-up floor (scripts/bench-vmm.ts): answer the parent's first request
 * on fd 3 and exit at EOF, in plain Node. Run two ways: bundled alone under
 * bin/vmm's #! line (Node's own start-up), and through bin/vmm's loader
 * (its code cache, and koffi's native module, which the loader maps the
 * files with).
 */
import { answerOnFd3 } from "./answer.ts"

answerOnFd3(() => process.exit(0))

/**
 * Imported first by scripts/fuzz.ts, before anything gets hot: V8's
 * optimising compiler off for the rest of the process. Optimised code does
 * not count function calls (Node 20's V8): a small function without blocks
 * of its own that got optimised (or inlined) while one run went reads as
 * never called in the next, and so the run that went first looked ahead by
 * a few functions whichever it was (measured: the same two helpers each
 * time, random first or guided first; with --no-opt both read alike). The
 * guided run's feedback misses such calls as well. Costs speed in the
 * in-process targets only (the real vmm is another process).
 */
import { setFlagsFromString } from "node:v8"

setFlagsFromString("--no-opt")

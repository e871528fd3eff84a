/**
 * V8 precise block coverage of this process's src/ files, through
 * node:inspector (the coverage-guided fuzzer's feedback, and the measure
 * that compares it with purely random fuzzing).
 *
 * One `CoverageSession` per process: Profiler.startPreciseCoverage({
 * callCount: true, detailed: true }); each `take()` returns what ran since
 * the previous take (V8 resets its counters on every take). A take is slow
 * (it serialises every function of every script, Effect's included: about
 * 20-150 ms here), so the fuzzer takes one per batch of inputs, not per
 * input.
 *
 * V8 reports, per function, its range and nested block ranges whose count
 * differs from the enclosing one; a byte of source is covered in a take
 * when the innermost range around it has a count above 0. Taking the
 * functions outer first and painting each one's ranges in order gives that
 * (a nested function paints over its parent's body). A `CoverageMap`
 * keeps, per script, the bytes ever covered and the functions ever called;
 * what a take adds to it (new bytes, new functions) is the novelty signal.
 *
 * Optimised code does not count calls (Node 20's V8): a small function
 * with no blocks of its own reads as never called once it is optimised.
 * scripts/fuzz.ts therefore turns the optimising compiler off first
 * (exactCoverage.ts).
 *
 * Counting: a "block" is any range V8 ever reported (a function's or a
 * nested block's) in a src/ script, over the whole session (the universe
 * is shared, so two maps are compared on the same blocks); it is covered
 * when its first byte is. A "function" is a function range; covered when
 * its count was ever above 0.
 */
import { Session } from "node:inspector"

interface Range {
  readonly startOffset: number
  readonly endOffset: number
  readonly count: number
}
interface FunctionCoverage {
  readonly functionName: string
  readonly ranges: ReadonlyArray<Range>
  readonly isBlockCoverage: boolean
}
interface ScriptCoverage {
  readonly scriptId: string
  readonly url: string
  readonly functions: ReadonlyArray<FunctionCoverage>
}

/** One take, reduced to the src/ scripts: per url, the bytes covered in it and the functions called. */
export interface Take {
  readonly scripts: ReadonlyMap<string, { readonly painted: Uint8Array; readonly spans: ReadonlyArray<readonly [number, number]>; readonly called: ReadonlyArray<string> }>
}

const isSrc = (url: string): boolean => url.includes("/src/") && !url.includes("/node_modules/")

export class CoverageSession {
  readonly #session = new Session()
  /** url -> block key "start:end" -> is a function range. */
  readonly universe = new Map<string, Map<string, boolean>>()
  /** url -> function key -> its name (for reports). */
  readonly names = new Map<string, Map<string, string>>()
  /** url -> scratch paint buffer. */
  readonly #scratch = new Map<string, Uint8Array>()
  readonly #scriptIds = new Map<string, string>()
  takes = 0
  takeMs = 0
  #started = false

  #post<A>(method: string, params: object = {}): A {
    let result: unknown
    let error: Error | null = null
    let done = false
    this.#session.post(method, params, (err, res) => {
      error = err
      result = res
      done = true
    })
    // The in-process session answers synchronously.
    if (!done) throw new Error(`inspector ${method}: no synchronous answer`)
    if (error !== null) throw error
    return result as A
  }

  start(): this {
    if (this.#started) return this
    this.#session.connect()
    this.#post("Profiler.enable")
    this.#post("Profiler.startPreciseCoverage", { callCount: true, detailed: true })
    this.#started = true
    this.take() // forget what ran before
    return this
  }

  stop(): void {
    if (!this.#started) return
    this.#started = false
    try {
      this.#post("Profiler.stopPreciseCoverage")
      this.#post("Profiler.disable")
    } finally {
      this.#session.disconnect()
    }
  }

  /** The first `n` characters of a function (key "start:end") of a script, for reports; "" if unknown. */
  snippet(url: string, key: string, n = 40): string {
    const id = this.#scriptIds.get(url)
    if (id === undefined) return ""
    try {
      this.#post("Debugger.enable")
      const { scriptSource } = this.#post<{ scriptSource: string }>("Debugger.getScriptSource", { scriptId: id })
      const [a, b] = key.split(":").map(Number) as [number, number]
      return scriptSource.slice(a, Math.min(b, a + n)).replace(/\s+/g, " ")
    } catch {
      return ""
    } finally {
      try {
        this.#post("Debugger.disable")
      } catch {
        // ignore
      }
    }
  }

  /** What ran in src/ since the previous take. */
  take(): Take {
    const t = performance.now()
    const { result } = this.#post<{ result: ReadonlyArray<ScriptCoverage> }>("Profiler.takePreciseCoverage")
    const scripts = new Map<string, { painted: Uint8Array; spans: Array<readonly [number, number]>; called: Array<string> }>()
    for (const sc of result) {
      if (!isSrc(sc.url)) continue
      this.#scriptIds.set(sc.url, sc.scriptId)
      let blocks = this.universe.get(sc.url)
      if (blocks === undefined) {
        blocks = new Map()
        this.universe.set(sc.url, blocks)
      }
      let len = 0
      for (const f of sc.functions) for (const r of f.ranges) if (r.endOffset > len) len = r.endOffset
      let paint = this.#scratch.get(sc.url)
      if (paint === undefined || paint.length < len) {
        paint = new Uint8Array(len)
        this.#scratch.set(sc.url, paint)
      }
      // outer functions first, so that a nested function paints over its parent's body
      const fns = [...sc.functions].sort((a, b) => {
        const ra = a.ranges[0] as Range
        const rb = b.ranges[0] as Range
        return ra.startOffset - rb.startOffset || rb.endOffset - ra.endOffset
      })
      const spans: Array<readonly [number, number]> = []
      const called: Array<string> = []
      for (const f of fns) {
        const top = f.ranges[0]
        if (top === undefined) continue
        const fkey = `${top.startOffset}:${top.endOffset}`
        if (blocks.get(fkey) !== true) {
          blocks.set(fkey, true)
          let names = this.names.get(sc.url)
          if (names === undefined) this.names.set(sc.url, (names = new Map()))
          names.set(fkey, f.functionName)
        }
        for (let i = 1; i < f.ranges.length; i++) {
          const r = f.ranges[i] as Range
          const k = `${r.startOffset}:${r.endOffset}`
          if (!blocks.has(k)) blocks.set(k, false)
        }
        for (const r of f.ranges) paint.fill(r.count > 0 ? 1 : 0, r.startOffset, r.endOffset)
        if (top.count > 0) {
          called.push(fkey)
          spans.push([top.startOffset, top.endOffset])
        }
      }
      scripts.set(sc.url, { painted: paint, spans, called })
    }
    this.takes++
    this.takeMs += performance.now() - t
    return { scripts }
  }
}

/** What a run covered: per script, the bytes and the functions. */
export class CoverageMap {
  readonly #bytes = new Map<string, Uint8Array>()
  readonly #functions = new Map<string, Set<string>>()

  /** How much `take` adds (new covered bytes, new functions), without adding it. */
  novelty(take: Take): { readonly bytes: number; readonly functions: number } {
    return this.#walk(take, false)
  }

  /** Add `take`; how much it added. */
  merge(take: Take): { readonly bytes: number; readonly functions: number } {
    return this.#walk(take, true)
  }

  #walk(take: Take, write: boolean): { bytes: number; functions: number } {
    let bytes = 0
    let functions = 0
    for (const [url, s] of take.scripts) {
      let have = this.#bytes.get(url)
      if (have === undefined || have.length < s.painted.length) {
        const grown = new Uint8Array(s.painted.length)
        if (have !== undefined) grown.set(have)
        have = grown
        if (write) this.#bytes.set(url, have)
      }
      let fns = this.#functions.get(url)
      if (fns === undefined) {
        fns = new Set()
        if (write) this.#functions.set(url, fns)
      }
      for (const [a, b] of s.spans) {
        for (let i = a; i < b; i++) {
          if (s.painted[i] === 1 && have[i] !== 1) {
            bytes++
            if (write) have[i] = 1
          }
        }
      }
      for (const f of s.called) {
        if (!fns.has(f)) {
          functions++
          if (write) fns.add(f)
        }
      }
    }
    return { bytes, functions }
  }

  calledFunction(url: string, key: string): boolean {
    return this.#functions.get(url)?.has(key) === true
  }

  /** Blocks and functions covered, of the session's universe (optionally only urls matching `only`). */
  summary(session: CoverageSession, only: (url: string) => boolean = () => true): CoverageSummary {
    let blocks = 0
    let blocksTotal = 0
    let functions = 0
    let functionsTotal = 0
    let bytes = 0
    for (const [url, all] of session.universe) {
      if (!only(url)) continue
      const have = this.#bytes.get(url)
      const fns = this.#functions.get(url)
      if (have !== undefined) for (const b of have) bytes += b
      for (const [key, isFn] of all) {
        const start = Number(key.slice(0, key.indexOf(":")))
        blocksTotal++
        if (have !== undefined && have[start] === 1) blocks++
        if (isFn) {
          functionsTotal++
          if (fns?.has(key) === true) functions++
        }
      }
    }
    return { blocks, blocksTotal, functions, functionsTotal, bytes }
  }
}

/** Functions `a` covered and `b` did not (url#name@offset), for reports. */
export const functionsOnlyIn = (session: CoverageSession, a: CoverageMap, b: CoverageMap): Array<string> => {
  const out: Array<string> = []
  for (const [url, names] of session.names) {
    for (const [key, name] of names) {
      if (a.calledFunction(url, key) && !b.calledFunction(url, key))
      {
        const text = session.snippet(url, key)
        out.push(`${url.slice(url.lastIndexOf("/src/") + 1)}#${name || "(anonymous)"}@${key}${text === "" ? "" : ` ${JSON.stringify(text)}`}`)
      }
    }
  }
  return out
}

export interface CoverageSummary {
  readonly blocks: number
  readonly blocksTotal: number
  readonly functions: number
  readonly functionsTotal: number
  /** Source bytes covered (of the transpiled scripts). */
  readonly bytes: number
}

export const formatCoverage = (s: CoverageSummary): string =>
  `${s.blocks}/${s.blocksTotal} blocks, ${s.functions}/${s.functionsTotal} functions`

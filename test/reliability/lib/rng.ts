/**
 * A small seeded PRNG (sfc32) for the fuzzers: a million messages through
 * fast-check's arbitraries would cost more than the targets themselves, and
 * a seed printed with every failure makes a run reproducible.
 */
export class Rng {
  #a: number
  #b: number
  #c: number
  #d: number

  constructor(readonly seed: number) {
    this.#a = 0x9e3779b9
    this.#b = 0x243f6a88
    this.#c = 0xb7e15162
    this.#d = seed >>> 0
    for (let i = 0; i < 15; i++) this.u32()
  }

  /** A uniform uint32. */
  u32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0
    this.#d = (this.#d + 1) | 0
    this.#a = this.#b ^ (this.#b >>> 9)
    this.#b = (this.#c + (this.#c << 3)) | 0
    this.#c = (this.#c << 21) | (this.#c >>> 11)
    this.#c = (this.#c + t) | 0
    return t >>> 0
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x1_0000_0000) * n)
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p
  }

  pick<A>(xs: ReadonlyArray<A>): A {
    return xs[this.int(xs.length)] as A
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<A>(table: ReadonlyArray<readonly [number, A]>): A {
    let total = 0
    for (const [w] of table) total += w
    let r = this.int(total)
    for (const [w, v] of table) {
      if (r < w) return v
      r -= w
    }
    return (table[table.length - 1] as readonly [number, A])[1]
  }

  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n)
    for (let i = 0; i < n; i += 4) {
      const x = this.u32()
      b[i] = x & 0xff
      if (i + 1 < n) b[i + 1] = (x >>> 8) & 0xff
      if (i + 2 < n) b[i + 2] = (x >>> 16) & 0xff
      if (i + 3 < n) b[i + 3] = x >>> 24
    }
    return b
  }

  /** A fresh generator from this one (for a sub-target). */
  fork(): Rng {
    return new Rng(this.u32())
  }
}

/** A seed from the environment (FUZZ_SEED) or the clock. */
export const seedFrom = (env: Readonly<Record<string, string | undefined>>): number => {
  const s = env["FUZZ_SEED"]
  if (s !== undefined && /^\d+$/.test(s)) return Number(s) >>> 0
  return (Date.now() ^ (process.pid << 16)) >>> 0
}

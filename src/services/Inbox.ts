/**
 * A one-consumer inbox: producers push synchronously (from event-loop
 * callbacks), the one consumer takes, waiting when it is empty, or hands
 * the inbox a listener that gets each item as it is pushed. A plain array
 * and one waiting taker: on the path of every request and every exit, so
 * lighter than a general Queue. The vmm's dispatcher queue and each Process
 * layer's exits are one.
 */
import { Effect } from "effect"

export class Inbox<A> {
  #items: Array<A> = []
  #head = 0
  #wake: (() => void) | null = null
  #listener: ((item: A) => void) | null = null

  /** `what` names the inbox in the defects a second consumer gets. */
  constructor(readonly what: string) {}

  /** The consumer is waiting for the next item (so none is queued). */
  get waiting(): boolean {
    return this.#wake !== null
  }

  push(item: A): void {
    const l = this.#listener
    if (l !== null) return l(item)
    this.#items.push(item)
    const w = this.#wake
    if (w !== null) {
      this.#wake = null
      w()
    }
  }

  #waitFor<B>(take: Effect.Effect<B>): Effect.Effect<B> {
    if (this.#listener !== null) return Effect.dieMessage(`${this.what}: taken from an inbox with a listener`)
    return Effect.async<B>((resume) => {
      this.#wake = () => resume(take)
      return Effect.sync(() => {
        this.#wake = null
      })
    })
  }

  /** The next item, waiting for one. */
  readonly takeOne: Effect.Effect<A> = Effect.suspend(() => {
    if (this.#head >= this.#items.length) return this.#waitFor(this.takeOne)
    const item = this.#items[this.#head++] as A
    if (this.#head === this.#items.length) {
      this.#items = []
      this.#head = 0
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
    return Effect.succeed(item)
  })

  /** At least one item, and all that are there, in order. */
  readonly takeAll: Effect.Effect<ReadonlyArray<A>> = Effect.suspend(() => {
    if (this.#head >= this.#items.length) return this.#waitFor(this.takeAll)
    const all = this.#head === 0 ? this.#items : this.#items.slice(this.#head)
    this.#items = []
    this.#head = 0
    return Effect.succeed(all)
  })

  /** Hand every item to `listener` from now on (those waiting at once), instead of taking. */
  listen(listener: (item: A) => void): Effect.Effect<void> {
    return Effect.sync(() => {
      if (this.#listener !== null || this.#wake !== null) throw new Error(`${this.what}: a second consumer`)
      this.#listener = listener
      const waiting = this.#items.slice(this.#head)
      this.#items = []
      this.#head = 0
      for (const item of waiting) listener(item)
    })
  }
}

/**
 * An owned file descriptor.
 *
 * Every fd the vmm process holds (received over imsg, created by socketpair,
 * opened) is wrapped in an Fd. Closing goes through the Fd so that an fd is
 * closed exactly once: a second close is a bug, counted by the backend and
 * never passed to close(2) (the number may already belong to someone else).
 *
 * The backend is what makes the number real: the native backend calls
 * close(2); the in-memory backend (tests) keeps a table of open fds so that
 * a test can assert that nothing leaked and nothing was closed twice.
 */
import { Effect } from "effect"

export interface FdBackend {
  readonly name: string
  /** close(2) on the number; returns 0 or a host errno. Called at most once per Fd. */
  readonly closeNumber: (num: number) => number
  /** Called when close() is called on an Fd that is already closed. */
  readonly onDoubleClose: (fd: Fd) => void
}

export class Fd {
  #open = true
  constructor(
    readonly num: number,
    readonly backend: FdBackend,
    /** What the fd is, for logs and leak reports ("kernel", "disk0.1", "vm7 channel"). */
    readonly label: string = ""
  ) {}

  get isOpen(): boolean {
    return this.#open
  }

  /** Close now; returns 0 or the host errno of close(2). A second call is counted and ignored. */
  closeSync(): number {
    if (!this.#open) {
      this.backend.onDoubleClose(this)
      return 0
    }
    this.#open = false
    return this.backend.closeNumber(this.num)
  }

  /**
   * Give up ownership without closing (the number now belongs to someone
   * else, e.g. an imsg channel that will close it). Returns the number.
   */
  release(): number {
    if (!this.#open) throw new Error(`fd ${this.num} (${this.label}) released after close`)
    this.#open = false
    return this.num
  }

  /** Close as an Effect; never fails (close errors are logged by the caller if it cares). */
  get close(): Effect.Effect<void> {
    return Effect.sync(() => {
      this.closeSync()
    })
  }

  toString(): string {
    return `fd ${this.num}${this.label ? ` (${this.label})` : ""}`
  }
}

/**
 * A child of this process watched until it exits, without SIGCHLD: its
 * pidfd (readable once the child has exited; Linux >= 5.3) polled on Node's
 * own loop, then waitid(P_PIDFD, WNOHANG) on that pidfd (waitpid before
 * Linux 5.4), which also keeps the pid from being reused until then; a child
 * reaped by something else is reported lost even if a new child has its pid.
 * Should libuv stop polling the pidfd, the child is looked at every 50 ms
 * instead. Node's libuv waitpids only the pids of its own ChildProcess
 * handles, never these.
 *
 * Used by ProcessDirect for every VM process and by ProcessSpawner for the
 * spawner itself.
 */
import * as libc from "./libc.ts"
import { decodeWaitStatus, pidfdOpen, reapChild, waitStatus, type WaitStatus } from "./spawn.ts"
import { UV_READABLE, UvPoll } from "./uvpoll.ts"

/** How often a child is looked at when libuv could not poll its pidfd. */
const FALLBACK_POLL_MS = 50

export class ChildWatch {
  #poll: UvPoll | null = null
  #timer: ReturnType<typeof setInterval> | null = null
  #done = false
  #released = false

  private constructor(
    readonly pid: number,
    /** Open until the watch is released (for pidfd_send_signal). */
    readonly pidfd: number,
    readonly onExit: (status: WaitStatus | null) => void,
    readonly onReleased: () => void
  ) {}

  /**
   * Watch `pid`: `onExit` once, with its status (null if something else
   * reaped it: ECHILD), the watch released right after it returns; `onReleased` once
   * libuv has let go of the poll handle. -errno if it cannot be watched
   * (pidfd_open or uv_poll failed): nothing is left open then.
   */
  static open(pid: number, onExit: (status: WaitStatus | null) => void, onReleased: () => void = () => {}): ChildWatch | number {
    const pidfd = pidfdOpen(pid)
    if (pidfd < 0) return pidfd
    const w = new ChildWatch(pid, pidfd, onExit, onReleased)
    const poll = UvPoll.open(pidfd, (status) => {
      if (w.reap() || status >= 0) return
      // libuv gave up on this pidfd: look every FALLBACK_POLL_MS instead.
      w.#poll?.stop()
      if (w.#timer === null) w.#timer = setInterval(() => void w.reap(), FALLBACK_POLL_MS)
    })
    if (typeof poll === "number") {
      libc.close(pidfd)
      return poll
    }
    const started = poll.start(UV_READABLE)
    if (started < 0) {
      poll.close() // before the fd's close: uv_close's epoll DEL must find it open
      libc.close(pidfd)
      return started
    }
    w.#poll = poll
    return w
  }

  /** waitid(P_PIDFD, WNOHANG): true once the child is reaped (and reported) or known lost. */
  reap(): boolean {
    if (this.#done) return true
    const r = reapChild(this.pid, this.pidfd)
    if (r === 0) return false
    let status: WaitStatus | null = null
    if (r === this.pid) {
      status = decodeWaitStatus(waitStatus())
      if (status === null) return false // stopped or continued: not an exit
    }
    this.#done = true
    // Reported first, released after: the exit's report (TERMINATE_VM_EVENT) is
    // on its way before the three native calls of the release.
    try {
      this.onExit(status)
    } finally {
      this.release()
    }
    return true
  }

  /**
   * uv_close the handle (it stops watching, its epoll_ctl DEL made while the
   * pidfd is still open; the close callback only frees its memory), then
   * close(2) the pidfd at once: after a reap, right after the exit is
   * reported, in the same callback. Once.
   */
  release(): void {
    if (this.#released) return
    this.#released = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    const poll = this.#poll
    this.#poll = null
    if (poll !== null) poll.close(this.onReleased)
    libc.close(this.pidfd)
    if (poll === null) this.onReleased()
  }
}

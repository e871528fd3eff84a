/**
 * The VM process (vmd's `vmd -V fd ...`, vm.c vm_main): the start
 * handshake, then imsg with the vmm on the same socket until the guest
 * stops. The guest is a null guest: it runs no code and idles.
 *
 * It holds the fds it was given and nothing else of its own: the struct's
 * fds stay open, unused, until exit; an fd that arrives with a message is
 * closed. (Node's own fds, epoll, eventfds and the pipes of its loop,
 * exist in every Node process; test/vm/fds.test.ts tells them apart.)
 *
 * Ends with (OpenBSD errno as exit code, vmd.md §7): 0 on VM_SHUTDOWN, EOF
 * from the vmm, or SIGTERM; 35 (EAGAIN) on VM_REBOOT or SIGHUP (the
 * guest's reset: SIGHUP is this port's reset button for tests and the
 * demo); 1 on an invalid message; EIO, EINVAL, EBADF from the handshake.
 */
import { Deferred, Effect, Exit, Stream } from "effect"
import type { VmArgs } from "../cli/args.ts"
import { Errno, errnoName, fromHostErrno } from "../schema/errno.ts"
import { ImsgChannel } from "../services/ImsgChannel.ts"
import { nativeFd, notStreamSocket, setNonblockCloexec } from "../native/libc.ts"
import { logDebug, logState, logWarnx, setVerbose } from "../vmm/log.ts"
import { answerId, receiveStartData } from "./handshake.ts"
import { dispatchVmm, type VmState } from "./dispatch.ts"
import { exitWith, VmExit } from "./exit.ts"
import { GARBAGE_IMSG_TYPE, testModeFrom } from "./testMode.ts"

/**
 * SIGTERM ends the VM (0); SIGHUP resets the guest (EAGAIN). The handlers
 * are installed before anything else runs, so a signal that arrives while
 * the handshake is still in progress is not lost to the default action.
 */
const installSignals = Effect.gen(function* () {
  const fired = yield* Deferred.make<never, VmExit>()
  const on = (code: number, reason: string) => () => {
    Deferred.unsafeDone(fired, Exit.fail(new VmExit({ code, reason })))
  }
  const term = on(0, "received SIGTERM")
  const hup = on(Errno.EAGAIN, "received SIGHUP: guest reset")
  process.on("SIGTERM", term)
  process.on("SIGHUP", hup)
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      process.off("SIGTERM", term)
      process.off("SIGHUP", hup)
    })
  )
  return Deferred.await(fired)
})

const run = (args: VmArgs) =>
  Effect.gen(function* () {
    setVerbose(args.verbose)
    const mode = testModeFrom(process.env)
    const imsg = yield* ImsgChannel
    // Our end of vmm's socketpair: non-blocking (so signals are served while we wait), close-on-exec.
    // Not a stream socket (an fd number we were not given: Node's own, say): nothing to read the struct from.
    const what = notStreamSocket(args.vmFd)
    if (what !== null) return yield* exitWith(Errno.EBADF, `vm socket ${args.vmFd}: not a stream socket (${what})`)
    const r = setNonblockCloexec(args.vmFd)
    if (r < 0) return yield* exitWith(Errno.EBADF, `vm socket ${args.vmFd}: ${errnoName(fromHostErrno(-r))}`)
    const sock = nativeFd(args.vmFd, "vmm channel")

    const { vm } = yield* receiveStartData(imsg, sock, mode, args.pspFd)
    // vm.c: setproctitle(vmc_name); log lines carry the VM's name.
    logState.title = `vm/${vm.vm_params.vmc_name}`
    if (mode === "hang") {
      yield* logDebug("test mode: hanging in the handshake")
      return yield* Effect.never
    }
    if (mode === "answer-zero") {
      yield* answerId(imsg, sock, 0)
      return yield* exitWith(Errno.EINVAL, "test mode: answered id 0")
    }
    yield* answerId(imsg, sock, vm.vm_vmid)

    const channel = yield* imsg.open(sock).pipe(Effect.catchAll((e) => exitWith(1, `imsg on the vmm socket: ${e.message}`)))
    if (mode === "garbage") yield* channel.send({ type: GARBAGE_IMSG_TYPE, peerid: 0, pid: 0 }).pipe(Effect.ignore)
    yield* logDebug(`started vm ${vm.vm_vmid}`)

    const state: VmState = { vmid: vm.vm_vmid, paused: false }
    yield* channel.messages.pipe(
      Stream.mapError((e) => new VmExit({ code: 1, reason: `imsgbuf_read: ${e.message}` })),
      Stream.runForEach((m) => dispatchVmm(state, channel, m))
    )
    return yield* exitWith(0, "vmm closed the channel")
  })

/**
 * The VM process as an Effect: its exit code, never a failure. Needs the
 * ImsgChannel service (the native layer in production).
 */
export const vmProcess = (args: VmArgs): Effect.Effect<number, never, ImsgChannel> =>
  Effect.flatMap(installSignals, (signals) => Effect.raceFirst(run(args), signals)).pipe(
    Effect.scoped,
    Effect.catchAll((e: VmExit) =>
      Effect.as(e.code === 0 ? logDebug(e.reason) : logWarnx(`${e.reason} (exit ${e.code})`), e.code)
    )
  )

/**
 * A raw parent for the end-to-end tests: the stand-in's pieces (spawnVmm,
 * the messages of config_setvm, its media and pty) without its
 * bookkeeping, for tests that look at single messages and fds.
 */
import { Duration, Effect, Queue, Stream } from "effect"
import type { Scope } from "effect"
import * as libc from "../../src/native/libc.ts"
import type { ParentError } from "../../src/parent/errors.ts"
import { openMedia } from "../../src/parent/media.ts"
import * as M from "../../src/parent/messages.ts"
import { openPty, type Pty } from "../../src/parent/pty.ts"
import { createParams, createParamsBytes, type VmSpec } from "../../src/parent/spec.ts"
import { spawnVmm, type VmmChild, type VmmSpawnOptions } from "../../src/parent/vmmProcess.ts"
import { ImsgChannel, type Channel, type Imsg, type OutgoingImsg } from "../../src/services/ImsgChannel.ts"
import { defaultVmdConfig } from "../../src/vmm/defaults.ts"
import { fileIdOf, type FileId } from "./proc.ts"

export interface RawVmm {
  readonly vmm: VmmChild
  readonly channel: Channel
  readonly send: (m: OutgoingImsg) => Effect.Effect<void, unknown>
  /** The next message from the vmm (fails after `ms`). */
  readonly next: (ms?: number) => Effect.Effect<Imsg, Error>
  /** Whatever has arrived and not been taken. */
  readonly drain: Effect.Effect<ReadonlyArray<Imsg>>
}

/** bin/vmm on a channel of our own; RECEIVE_VMM_FD with `vmmDevice` first if given, then CONFIG, as vmd_configure. */
export const rawVmm = (
  options: VmmSpawnOptions,
  vmmDevice?: string
): Effect.Effect<RawVmm, ParentError | unknown, Scope.Scope | ImsgChannel> =>
  Effect.gen(function* () {
    const imsg = yield* ImsgChannel
    const [ours, theirs] = yield* imsg.socketpair("raw parent")
    const vmm = yield* spawnVmm(options, theirs).pipe(Effect.ensuring(theirs.close), Effect.onError(() => ours.close))
    const channel = yield* imsg.open(ours)
    const inbox = yield* Queue.unbounded<Imsg>()
    yield* channel.messages.pipe(
      Stream.runForEach((m) => Queue.offer(inbox, m)),
      Effect.ignore,
      Effect.forkScoped
    )
    if (vmmDevice !== undefined) {
      const n = libc.open(vmmDevice, libc.O_RDWR)
      if (n < 0) return yield* Effect.die(new Error(`open ${vmmDevice}: errno ${-n}`))
      yield* channel.send(M.receiveVmmFd(libc.nativeFd(n, vmmDevice)))
    }
    yield* channel.send(M.config(defaultVmdConfig()))
    return {
      vmm,
      channel,
      send: (m) => channel.send(m),
      next: (ms = 10_000) =>
        Queue.take(inbox).pipe(
          Effect.timeoutFail({ duration: Duration.millis(ms), onTimeout: () => new Error(`no message from the vmm within ${ms} ms`) })
        ),
      drain: Effect.map(Queue.takeAll(inbox), (c) => [...c])
    }
  })

/** What the parent sent for one VM, identified before it left (the channel closes our copies once sent). */
export interface SentFiles {
  readonly kernel: FileId | null
  readonly cdrom: FileId | null
  readonly disks: ReadonlyArray<ReadonlyArray<FileId>>
  readonly taps: ReadonlyArray<FileId>
  readonly tty: FileId
}

export interface PreparedStart {
  readonly messages: ReadonlyArray<OutgoingImsg>
  readonly sent: SentFiles
  readonly pty: Pty
}

/**
 * config_setvm's messages for `spec` under vmd id `vmid`, with real files,
 * socketpair taps and a pty; the pty master and the host ends of the taps
 * stay open until the scope ends.
 */
export const prepareStart = (vmid: number, spec: VmSpec): Effect.Effect<PreparedStart, ParentError, Scope.Scope> =>
  Effect.gen(function* () {
    const pty = yield* Effect.acquireRelease(openPty(`${spec.name} tty`), (p) => p.master.close)
    const media = yield* openMedia(spec, pty.master)
    yield* Effect.addFinalizer(() => Effect.forEach(media.hostTaps, (fd) => fd.close, { discard: true }))
    const ifnames = Array.from({ length: spec.nics ?? 0 }, (_, i) => `tap${i}`)
    const params = yield* createParamsBytes(createParams(spec, ifnames))
    const sent: SentFiles = {
      kernel: media.fds.kernel === null ? null : fileIdOf(media.fds.kernel),
      cdrom: media.fds.cdrom === null ? null : fileIdOf(media.fds.cdrom),
      disks: media.fds.disks.map((layers) => layers.map(fileIdOf)),
      taps: media.fds.taps.map(fileIdOf),
      tty: fileIdOf(media.fds.tty)
    }
    return { messages: M.startVm(vmid, params, media.fds), sent, pty }
  })

/** Take messages until one satisfies `pred`; the others are returned too, in order. */
export const nextMatching = (raw: RawVmm, pred: (m: Imsg) => boolean, ms = 10_000) =>
  Effect.gen(function* () {
    const skipped: Array<Imsg> = []
    for (;;) {
      const m = yield* raw.next(ms)
      if (pred(m)) return { match: m, skipped }
      skipped.push(m)
    }
  })

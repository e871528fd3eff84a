/**
 * Requests to the vmm and their replies, on the parent's channel. A reply
 * is matched by a key the caller chooses: the vmd id for a start or a pause
 * (the reply that comes from the VM carries no request id), the request's
 * peerid for a stop or an info. GET_INFO_VM_DATA rows are collected under
 * the request's peerid until END_DATA.
 */
import { Deferred, Effect, Either } from "effect"
import { Errno } from "../schema/errno.ts"
import type { VmopInfoResult } from "../schema/structs.ts"
import type { Channel, OutgoingImsg } from "../services/ImsgChannel.ts"
import { parentError, type ParentError, type ParentOp } from "./errors.ts"
import * as M from "./messages.ts"

/** A vmop_result reply; for END_DATA, its int as `result`. */
export interface Reply {
  readonly result: number
  readonly id: number
  readonly pid: number
}

export interface Requests {
  readonly send: (op: ParentOp, m: OutgoingImsg) => Effect.Effect<void, ParentError>
  /** Send every message, then wait for the reply under `key`. */
  readonly request: (op: ParentOp, key: string, messages: ReadonlyArray<OutgoingImsg>) => Effect.Effect<Reply, ParentError>
  /** GET_INFO_VM_REQUEST: the DATA rows and END_DATA's result. */
  readonly getInfo: Effect.Effect<{ readonly rows: ReadonlyArray<VmopInfoResult>; readonly result: number }, ParentError>
  /** A fresh peerid for a request. */
  readonly peerid: () => number
  /** From the dispatcher: a reply arrived. */
  readonly resolve: (key: string, reply: Reply) => Effect.Effect<void>
  /** From the dispatcher: a GET_INFO_VM_DATA row arrived. */
  readonly collect: (peerid: number, row: VmopInfoResult) => void
  /** The channel ended: every waiting request fails with `error`, and every later one at once. */
  readonly failAll: (error: ParentError) => void
}

export const makeRequests = (channel: Channel, timeoutMs: number): Requests => {
  const pending = new Map<string, Deferred.Deferred<Reply, ParentError>>()
  const rows = new Map<number, Array<VmopInfoResult>>()
  let next = 1
  /** Set once the channel has ended: a request made afterwards fails with it at once. */
  let gone: ParentError | null = null

  const send = (op: ParentOp, m: OutgoingImsg) =>
    channel.send(m).pipe(Effect.mapError((e) => parentError(op, e.errno ?? Errno.EPIPE, e.message)))

  const request = (op: ParentOp, key: string, messages: ReadonlyArray<OutgoingImsg>) =>
    Effect.gen(function* () {
      const reply = yield* Deferred.make<Reply, ParentError>()
      pending.set(key, reply)
      // no reply can come any more (the fds are still handed to the channel, which closes them)
      if (gone !== null) Deferred.unsafeDone(reply, Effect.fail(gone))
      // Every message is offered, so that each fd is either sent or closed by the channel.
      const sent = yield* Effect.forEach(messages, (m) => Effect.either(send(op, m)))
      const failed = sent.find(Either.isLeft)
      if (failed !== undefined) return yield* Effect.fail(failed.left)
      return yield* Deferred.await(reply).pipe(
        Effect.timeoutFail({ duration: timeoutMs, onTimeout: () => parentError(op, Errno.ETIMEDOUT, `no reply to ${key}`) })
      )
    }).pipe(Effect.ensuring(Effect.sync(() => pending.delete(key))))

  const getInfo = Effect.suspend(() => {
    const peerid = next++
    const collected: Array<VmopInfoResult> = []
    rows.set(peerid, collected)
    return request("info", `info:${peerid}`, [M.getInfo(peerid)]).pipe(
      Effect.map((r) => ({ rows: collected, result: r.result })),
      Effect.ensuring(Effect.sync(() => rows.delete(peerid)))
    )
  })

  return {
    send,
    request,
    getInfo,
    peerid: () => next++,
    resolve: (key, reply) =>
      Effect.suspend(() => {
        const d = pending.get(key)
        return d === undefined ? Effect.void : Deferred.succeed(d, reply)
      }),
    collect: (peerid, row) => {
      rows.get(peerid)?.push(row)
    },
    failAll: (error) => {
      gone = error
      for (const d of pending.values()) Deferred.unsafeDone(d, Effect.fail(error))
    }
  }
}

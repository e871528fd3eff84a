/**
 * Logging in vmd's manner (log.c): log_warn/log_warnx always, log_info
 * always, log_debug only when verbose > 1. Verbosity changes at run time
 * (IMSG_CTL_VERBOSE). Lines are "vmm: message" on stderr in debug mode, or
 * go to the sink installed by the program (syslog).
 *
 * The functions are Effects so that tests can capture the lines.
 */
import { Effect, FiberRef, HashSet, Logger, LogLevel } from "effect"

export interface LogSink {
  (level: "warning" | "info" | "debug", line: string): void
}

/** Process-wide log state, like log.c's statics. */
export const logState = {
  verbose: 0,
  title: "vmm",
  sink: ((_level, line) => {
    process.stderr.write(line + "\n")
  }) as LogSink
}

export const setVerbose = (v: number): void => {
  logState.verbose = v
}

/** Log now, outside an effect (for code already inside an Effect.sync step). */
export const emitLog = (level: "warning" | "info" | "debug", msg: string): void => {
  if (level === "debug" && logState.verbose < 2) return
  logState.sink(level, `${logState.title}: ${msg}`)
}

/** log_warnx */
export const logWarnx = (msg: string): Effect.Effect<void> => Effect.sync(() => emitLog("warning", msg))
/** log_warn: the message with the error text appended. */
export const logWarn = (msg: string, err: string): Effect.Effect<void> =>
  Effect.sync(() => emitLog("warning", `${msg}: ${err}`))
/** log_info */
export const logInfo = (msg: string): Effect.Effect<void> => Effect.sync(() => emitLog("info", msg))
/** log_debug (verbose > 1) */
export const logDebug = (msg: string): Effect.Effect<void> => Effect.sync(() => emitLog("debug", msg))

/**
 * Route Effect's own logger (Effect.log*, defects) through the same sink so
 * that nothing bypasses vmd's format.
 */
export const vmdLogger = Logger.make(({ logLevel, message }) => {
  const text = Array.isArray(message) ? message.map(String).join(" ") : String(message)
  const level = LogLevel.greaterThanEqual(logLevel, LogLevel.Warning)
    ? "warning"
    : LogLevel.greaterThanEqual(logLevel, LogLevel.Info)
      ? "info"
      : "debug"
  emitLog(level, text)
})

export const VmdLoggerLayer = Logger.replace(Logger.defaultLogger, vmdLogger)

/**
 * The same replacement for one effect and everything it builds, without a
 * layer: the logger set is the root fiber's own, inherited by every fiber it
 * forks. bin/vmm runs its layers and program under it: as a layer, the
 * changed logger set made Layer's FiberRef diffing run for every layer built
 * after it, ~4-6 ms of start-up.
 */
export const withVmdLogger = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.locallyWith(self, FiberRef.currentLoggers, (loggers) =>
    HashSet.add(HashSet.remove(loggers, Logger.defaultLogger), vmdLogger)
  )


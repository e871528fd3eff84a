/**
 * syslog(3) through koffi, for vmd's log sink when not in debug mode
 * (log.c: vsyslog with LOG_DAEMON). Returns null where there is no syslog
 * daemon socket, so the caller falls back to stderr.
 */
import koffi from "koffi"
import { existsSync } from "node:fs"

const LOG_PID = 0x01
const LOG_NDELAY = 0x08
const LOG_DAEMON = 3 << 3
const LOG_WARNING = 4
const LOG_INFO = 6
const LOG_DEBUG = 7

export type SyslogWrite = (level: "warning" | "info" | "debug", line: string) => void

export const openSyslog = (ident: string): SyslogWrite | null => {
  if (!existsSync("/dev/log")) return null
  const c = koffi.load(null)
  const openlog = c.func("void openlog(const char *ident, int option, int facility)")
  const syslog = c.func("void syslog(int priority, const char *format, ...)")
  // openlog keeps the pointer: keep the string alive for the process's life.
  const keep = Buffer.from(ident + "\0", "latin1")
  ;(globalThis as { __vmmSyslogIdent?: Buffer }).__vmmSyslogIdent = keep
  openlog(keep, LOG_PID | LOG_NDELAY, LOG_DAEMON)
  return (level, line) => {
    const prio = level === "warning" ? LOG_WARNING : level === "info" ? LOG_INFO : LOG_DEBUG
    syslog(LOG_DAEMON | prio, "%s", "str", line)
  }
}

/**
 * The runtime's log: lines at a level, filtered by `system.log_level`. Under systemd (stderr is the
 * journal: JOURNAL_STREAM is set) each line carries its syslog priority prefix (<7> debug … <3>
 * error), so `journalctl -p warning` works; elsewhere lines are plain.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** A log line at a level (info when not given). */
export type Log = (line: string, level?: LogLevel) => void;

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const SYSLOG: Record<LogLevel, number> = { debug: 7, info: 6, warn: 4, error: 3 };

/** A Log that passes lines at `min` or above to `sink`, prefixed for the journal when `journal`. */
export function leveledLog(min: LogLevel, sink: (line: string) => void, o: { journal?: boolean } = {}): Log {
  const journal = o.journal ?? !!process.env.JOURNAL_STREAM;
  return (line, level = 'info') => {
    if (RANK[level] < RANK[min]) return;
    sink(journal ? `<${SYSLOG[level]}>${line}` : line);
  };
}

import { pino, type Logger } from 'pino';

export type { Logger };

// JSON lines to stdout, one per event worth an operator's attention. Nothing
// on the per-chunk path logs; per-connection failures go through RateLimitedLog.
export function createLogger(level: string, destination: NodeJS.WritableStream | number = 1): Logger {
  const stream = typeof destination === 'number' ? pino.destination({ dest: destination, sync: false }) : destination;
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}

/**
 * At most one line per key per interval, with the count of what was
 * suppressed: a connection flood must not become a log flood.
 */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  warn(key: string, fields: Record<string, unknown>, msg: string): void {
    const t = this.now();
    const entry = this.last.get(key);
    if (entry && t - entry.at < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.last.set(key, { at: t, suppressed: 0 });
    this.log.warn(suppressed > 0 ? { ...fields, suppressed } : fields, msg);
  }
}

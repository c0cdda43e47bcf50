// The one record of config reloads: /status, /metrics and the log read it,
// and only Ballast writes it, once per reload, after every process that must
// apply the new config has answered (a reload a worker refuses is a failed
// reload, never also a successful one).

/** Why a reload was refused; a label of ballast_config_reloads_total. */
export const RELOAD_FAILURES = ['io', 'yaml', 'schema', 'tls_material', 'listen', 'restart_required', 'worker_refused', 'other'] as const;
export type ReloadFailure = (typeof RELOAD_FAILURES)[number];

export interface ReloadRecord {
  readonly ok: number;
  readonly failed: number;
  readonly failedBy: ReadonlyMap<ReloadFailure, number>;
  readonly lastError: string | undefined;
  /** Epoch ms of the last reload, applied or refused; 0 before the first. */
  readonly lastAt: number;
}

export class ReloadLog implements ReloadRecord {
  private okCount = 0;
  private failedCount = 0;
  private readonly by = new Map<ReloadFailure, number>();
  private error: string | undefined;
  private at = 0;

  constructor(private readonly now: () => number = Date.now) {}

  get ok(): number {
    return this.okCount;
  }
  get failed(): number {
    return this.failedCount;
  }
  get failedBy(): ReadonlyMap<ReloadFailure, number> {
    return this.by;
  }
  get lastError(): string | undefined {
    return this.error;
  }
  get lastAt(): number {
    return this.at;
  }

  applied(): void {
    this.okCount++;
    this.error = undefined;
    this.at = this.now();
  }

  refused(reason: ReloadFailure, message: string): void {
    this.failedCount++;
    this.by.set(reason, (this.by.get(reason) ?? 0) + 1);
    this.error = message;
    this.at = this.now();
  }
}

/** The failure kind of an error thrown while applying a reload, by its code (never its text). */
export function applyFailure(err: unknown): ReloadFailure {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'BALLAST_TLS_MATERIAL') return 'tls_material';
  if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') return 'listen';
  return 'other';
}

/** What the backup scheduler reports to /metrics and /status. */
export interface BackupStats {
  lastSuccessAt: number | undefined;
  lastDurationMs: number | undefined;
  lastSize: number | undefined;
  lastFile: string | undefined;
  lastRevision: number | undefined;
  lastError: string | undefined;
  failures: Map<string, number>;
  lastDrillAt: number | undefined;
  lastDrillVerdict: string | undefined;
}

export function emptyBackupStats(): BackupStats {
  return {
    lastSuccessAt: undefined,
    lastDurationMs: undefined,
    lastSize: undefined,
    lastFile: undefined,
    lastRevision: undefined,
    lastError: undefined,
    failures: new Map(),
    lastDrillAt: undefined,
    lastDrillVerdict: undefined,
  };
}

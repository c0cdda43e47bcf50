// Types for soak.mjs, for the TypeScript tests that import it.
export type FaultKind = 'kill' | 'stop' | 'isolate' | 'replace' | 'reload' | 'restart';
export const FAULTS: FaultKind[];
export const FAULT_LABELS: Record<FaultKind, string>;
export const REPO: string;
export const CLI: string;

export interface SoakOptions {
  cycles?: number;
  faults?: FaultKind[];
  clients?: number;
  log?: (line: string) => void;
  nodeBin?: string;
  dir?: string;
  keepDir?: boolean;
  paceMs?: number;
  recoveryTimeoutMs?: number;
}

export interface KindSummary {
  label: string;
  count: number;
  clientFaults: number;
  affected: number;
  medianMs: number;
  worstMs: number;
  failedWrites: number;
  byRole: Partial<Record<'leader' | 'follower', { count: number; medianMs: number; worstMs: number }>>;
  meanCycleMs: number;
}

export interface CycleRecord {
  cycle: number;
  kind: FaultKind;
  startedAt: number;
  victim?: string;
  role?: string;
  error?: string;
  recoveryTimeout?: string;
  problem?: string;
  ms: number;
  windows: number[];
  events?: string[];
  [k: string]: unknown;
}

export interface SoakReport {
  date: string;
  versions: Record<string, string>;
  settings: { cycles: number; faults: FaultKind[]; clients: number; paceMs: number; [k: string]: unknown };
  durationMs: number;
  perCycleMs: number;
  byKind: Partial<Record<FaultKind, KindSummary>>;
  cycles: CycleRecord[];
  totals: {
    ackedWrites: number;
    lost: number;
    lostKeys: string[];
    revisionMismatches: number;
    mismatchedKeys: string[];
    reads: number;
    regressions: number;
    regressionEvents: number;
    regressionDetails: Record<string, unknown>[];
    writeFailures: number;
    readFailures: number;
    memberMoves: number;
    faultErrors: number;
    recoveryTimeouts: number;
    problems: string[];
  };
  ballast: {
    samples: { cycle: number; pid: number; rssKiB: number; fds: number }[];
    rssKiB: { first: number; last: number; max: number };
    fds: { first: number; last: number; max: number };
    starts: number;
    finalExit: unknown;
    [k: string]: unknown;
  };
  clients: { index: number; acked: number; writeFailures: number; readFailures: number; reads: number; regressions: number; memberMoves: number; windows: number }[];
  workDir?: string;
}

export function runSoak(options?: SoakOptions): Promise<SoakReport>;
export function parseMetrics(text: string): { name: string; labels: Record<string, string>; value: number }[];
export function metricSum(metrics: { name: string; labels: Record<string, string>; value: number }[], name: string, match?: Record<string, string>): number;

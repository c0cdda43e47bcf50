// Types for lab.mjs, for the TypeScript tests that import it.
export type VipCase = 'kill' | 'stop' | 'term' | 'linkdown' | 'partition' | 'unready';
export const CASES: VipCase[];
export const CASE_LABELS: Record<VipCase, string>;
export const VIP: string;
export const VIP_PORT: number;
export const REPO: string;
export const CLI: string;
export function nowMs(): number;

export interface Sample {
  t: number;
  holders: string[];
}
export interface Answer {
  s: number;
  e: number;
  who?: string;
  err?: string;
}
export interface CaseResult {
  kind: VipCase;
  mode: 'ballast' | 'keepalived';
  from: string;
  to: string | undefined;
  answerMs: number | undefined;
  twoHolderSamples: number;
  samples: number;
  noHolderMs: number;
  /** keepalived: the old holder still had the address 3.5 s after the restore (removed by hand). */
  staleLeft: boolean;
  /** The holder's etcd member was the raft leader when the fault hit (undefined: not known). */
  etcdLeader: boolean | undefined;
  twoHolders: string[];
}

export class VipLab {
  static start(opts?: { mode?: 'ballast' | 'keepalived'; leaseTTL?: string; log?: (s: string) => void; nodeBin?: string }): Promise<VipLab>;
  readonly mode: 'ballast' | 'keepalived';
  readonly samples: Sample[];
  readonly answers: Answer[];
  readonly startedAt: number;
  readonly net: { nodes: { name: string; ns: string; ip: string }[]; client: { ns: string; ip: string }; prefix: string; created: string[] };
  settle(boundMs?: number, quietMs?: number): Promise<string>;
  twoHolderSamples(from: number, to?: number): Sample[];
  firstOtherAnswer(old: string, t0: number): Answer | undefined;
  inject(kind: VipCase, node: string): Promise<void>;
  restore(kind: VipCase, node: string): Promise<void>;
  runCase(kind: VipCase, opts?: { boundMs?: number; observeMs?: number }): Promise<CaseResult>;
  ballastLog(node: string, lines?: number): string;
  close(): Promise<void>;
}

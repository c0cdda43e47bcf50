import type { EndpointSnapshot } from '../upstream/cluster.js';
import type { ConnectOutcome } from '../upstream/endpoint.js';

// The IPC protocol between the primary (control plane) and its workers (data
// plane). Small, explicit, and versioned by the code: primary and workers are
// always the same build.

export interface ClusterState {
  cluster: string;
  endpoints: EndpointSnapshot[];
}

/** Primary -> worker. */
export type ToWorker =
  | { t: 'state'; clusters: ClusterState[] }
  | { t: 'pick-result'; id: number; endpoint: string | null }
  | { t: 'stats-request'; id: number }
  | { t: 'reload'; id: number }
  | { t: 'drain'; timeoutMs: number };

/** Worker -> primary. */
export type FromWorker =
  | { t: 'ready' }
  | { t: 'start-failed'; error: string }
  | { t: 'outcome'; cluster: string; endpoint: string; outcome: ConnectOutcome }
  | { t: 'pick'; id: number; cluster: string; key: string; tried: string[] }
  | { t: 'stats'; id: number; stats: WorkerStats }
  | { t: 'reloaded'; id: number; ok: boolean; error?: string };

/** A worker's data-plane counters, merged by the primary for /status. */
export interface WorkerStats {
  pid: number;
  rss: number;
  listeners: { name: string; active: number; results: Record<string, number>; tlsFailures: Record<string, number> }[];
  endpoints: { cluster: string; id: string; active: number; total: number; bytesUp: number; bytesDown: number }[];
  clusters: { name: string; panicRoutes: number; placements: number; moves: Record<string, number>; behindMoves: number }[];
  /** prom-client JSON of the data-plane metrics, aggregated with AggregatorRegistry. */
  metrics: unknown[];
}

import { AggregatorRegistry, collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Ballast } from '../ballast.js';
import { BACKUP_FAILURE_REASONS } from '../backup/snapshot-file.js';
import { CONNECTION_RESULTS } from '../listener/listener.js';
import { readBufferStats } from '../listener/read-buffers.js';
import { TLS_REFUSAL_REASONS } from '../tls/tls-profile.js';
import { CONNECT_OUTCOMES } from '../upstream/endpoint.js';
import { VERSION } from '../version.js';
import { VIP_RENEWAL_RESULTS, VIP_TRANSITION_REASONS } from '../vip/vip-election.js';

// Every metric ballast exports, declared once (Envoy's ALL_*_STATS habit), so
// /metrics, the README's table and the dashboard cannot drift apart.
// Counters and gauges are read from the components' own plain fields at
// scrape time: the data path increments integers, never a labelled metric.

export const METRICS = {
  info: { name: 'ballast_info', help: 'Build information; always 1.', labels: ['version', 'nodejs'] },
  listenerConnections: { name: 'ballast_listener_connections_total', help: 'Client connections by outcome: proxied, no_endpoint, connect_failed, over_limit (maxConnections), fd_limit (file descriptors), local_error (out of descriptors connecting upstream), tls_refused, client_closed, draining, accept_error.', labels: ['listener', 'result'] },
  listenerActive: { name: 'ballast_listener_active_connections', help: 'Client connections open now (routed or proxied).', labels: ['listener'] },
  listenerHandshaking: { name: 'ballast_listener_handshaking_connections', help: 'TLS clients still in their handshake: they hold a socket and a maxConnections slot.', labels: ['listener'] },
  upstreamHealthy: { name: 'ballast_upstream_healthy', help: '1 when the endpoint is up (checked healthy), else 0.', labels: ['cluster', 'endpoint'] },
  upstreamState: { name: 'ballast_upstream_state', help: '1 for the endpoint\'s current state (unknown, up, down, ejected, draining).', labels: ['cluster', 'endpoint', 'state'] },
  upstreamActive: { name: 'ballast_upstream_active_connections', help: 'Proxied connections open to the endpoint now.', labels: ['cluster', 'endpoint'] },
  upstreamConnections: { name: 'ballast_upstream_connections_total', help: 'Proxied connections established to the endpoint.', labels: ['cluster', 'endpoint'] },
  upstreamConnectDuration: { name: 'ballast_upstream_connect_duration_seconds', help: 'Time to connect to an upstream (TCP, plus TLS when originating).', labels: ['cluster'] },
  upstreamBytes: { name: 'ballast_upstream_bytes_total', help: 'Bytes proxied; direction up is client to endpoint, down is endpoint to client.', labels: ['cluster', 'endpoint', 'direction'] },
  upstreamFailures: { name: 'ballast_upstream_failures_total', help: 'Passive failures seen on the data path: connect_refused, connect_timeout, connect_error, tls_error, reset.', labels: ['cluster', 'endpoint', 'outcome'] },
  upstreamChecks: { name: 'ballast_upstream_health_checks_total', help: 'Active health check results by reason code.', labels: ['cluster', 'endpoint', 'result'] },
  upstreamStateChanges: { name: 'ballast_upstream_state_changes_total', help: 'Endpoint state transitions by the state entered.', labels: ['cluster', 'endpoint', 'state'] },
  upstreamEjections: { name: 'ballast_upstream_ejections_total', help: 'Outlier ejections (passive detection).', labels: ['cluster', 'endpoint'] },
  upstreamRaftIndex: { name: 'ballast_upstream_etcd_raft_index', help: 'Raft index the etcd member reported at its last check.', labels: ['cluster', 'endpoint'] },
  clusterPanic: { name: 'ballast_cluster_panic', help: '1 while no endpoint is healthy and panic: open routes to all of them.', labels: ['cluster'] },
  clusterHealthyEndpoints: { name: 'ballast_cluster_healthy_endpoints', help: 'Endpoints eligible for new connections.', labels: ['cluster'] },
  clusterPanicRoutes: { name: 'ballast_cluster_panic_routes_total', help: 'Connections routed in panic mode.', labels: ['cluster'] },
  affinityMoves: { name: 'ballast_affinity_moves_total', help: 'Clients moved to another member, by reason: member_down, member_removed, rebalance.', labels: ['cluster', 'reason'] },
  affinityBehind: { name: 'ballast_affinity_behind_moves_total', help: 'Moves that had to land on a member behind the one left (no caught-up member was healthy).', labels: ['cluster'] },
  affinityPlacements: { name: 'ballast_affinity_placements', help: 'Clients with a remembered placement.', labels: ['cluster'] },
  readBuffers: { name: 'ballast_read_buffers', help: 'Private 256 KiB read buffers of plain sockets: leased (to a socket in a bulk transfer) or free (kept for reuse); at most 256 exist.', labels: ['state'] },
  tlsHandshakeFailures: { name: 'ballast_tls_handshake_failures_total', help: 'Refused TLS clients by reason (handshake or authorization).', labels: ['listener', 'reason'] },
  tlsExpiry: { name: 'ballast_tls_certificate_expiry_seconds', help: 'Seconds until the earliest certificate of the profile expires.', labels: ['profile'] },
  tlsCrlNextUpdate: { name: 'ballast_tls_crl_next_update_timestamp_seconds', help: 'When the earliest CRL of the profile must be replaced (its nextUpdate); past it every client is refused as crl_error. Only profiles with a crl.', labels: ['profile'] },
  tlsReloads: { name: 'ballast_tls_reloads_total', help: 'Certificate rotations by result.', labels: ['profile', 'result'] },
  configReloads: { name: 'ballast_config_reloads_total', help: 'Config reloads by result, and for failures the reason: io, yaml, schema, tls_material, listen, restart_required, worker_refused, other.', labels: ['result', 'reason'] },
  discoverySyncs: { name: 'ballast_discovery_syncs_total', help: 'etcd member list syncs by result.', labels: ['cluster', 'result'] },
  discoveryMembers: { name: 'ballast_discovery_members', help: 'Members in the last etcd member list.', labels: ['cluster'] },
  backupLastSuccess: { name: 'ballast_backup_last_success_timestamp_seconds', help: 'Unix time of the newest verified snapshot this process took; 0 until the first.', labels: [] },
  backupDuration: { name: 'ballast_backup_duration_seconds', help: 'Duration of the last snapshot attempt.', labels: [] },
  backupSize: { name: 'ballast_backup_size_bytes', help: 'Size of the newest verified snapshot.', labels: [] },
  backupFailures: { name: 'ballast_backup_failures_total', help: 'Failed snapshot attempts by reason.', labels: ['reason'] },
  vipHolder: { name: 'ballast_vip_holder', help: '1 while this node holds the virtual IP (vip: in the config), else 0.', labels: [] },
  vipTransitions: { name: 'ballast_vip_transitions_total', help: 'Moves of the virtual IP on this node by reason: won (took it), unready, shutdown, renewal_failed, renewal_late, lease_lost, address_failed (let it go).', labels: ['reason'] },
  vipLeaseRenewals: { name: 'ballast_vip_lease_renewals_total', help: 'Lease renewals of the virtual IP holder by result: ok, failed (error or no answer), late (answered too late to refresh the address), lost (etcd no longer knew the lease).', labels: ['result'] },
  drillLastSuccess: { name: 'ballast_restore_drill_last_success_timestamp_seconds', help: 'Unix time of the last successful restore drill of this process; 0 until the first (exported when drills are scheduled).', labels: [] },
} as const;

export type MetricKey = keyof typeof METRICS;

const TLS_REFUSAL_REASON_SET: ReadonlySet<string> = new Set(TLS_REFUSAL_REASONS);

/**
 * Metrics the data path produces. With workers, each worker reports these and
 * the primary sums them; the primary reports everything else (health state,
 * checks, discovery, certificates, backups) once.
 */
export const DATA_PLANE_METRICS: ReadonlySet<string> = new Set(
  (['listenerConnections', 'listenerActive', 'listenerHandshaking', 'upstreamActive', 'upstreamConnections', 'upstreamConnectDuration', 'upstreamBytes', 'clusterPanicRoutes', 'affinityMoves', 'affinityBehind', 'affinityPlacements', 'readBuffers', 'tlsHandshakeFailures'] as const).map((k) => METRICS[k].name),
);

/**
 * prom-client's gauges of libuv handles, requests and resources are named
 * `*_total`, which Prometheus reserves for counters (promtool flags them);
 * their values stay available as nodejs_active_{handles,requests,resources}.
 */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** prom-client's process and Node.js metrics. */
export function isDefaultMetric(name: string): boolean {
  return name.startsWith('process_') || name.startsWith('nodejs_');
}

export class Metrics {
  readonly registry = new Registry();
  readonly connectDuration: Histogram<'cluster'>;
  private readonly connectChildren = new Map<string, { observe(v: number): void }>();

  constructor(private readonly ballast: Ballast) {
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    for (const name of MISNAMED_DEFAULTS) r.removeSingleMetric(name);
    const b = () => this.ballast;
    const gauge = (k: MetricKey, collect: (g: Gauge<string>) => void) =>
      new Gauge({ name: METRICS[k].name, help: METRICS[k].help, labelNames: [...METRICS[k].labels], registers: [r], collect() { this.reset(); collect(this); } });
    const counter = (k: MetricKey, collect: (c: Counter<string>) => void) =>
      new Counter({ name: METRICS[k].name, help: METRICS[k].help, labelNames: [...METRICS[k].labels], registers: [r], collect() { this.reset(); collect(this); } });

    // `nodejs`, not `node`: Kubernetes service discovery already uses `node`.
    gauge('info', (g) => g.set({ version: VERSION, nodejs: process.versions.node }, 1));
    counter('listenerConnections', (c) => {
      // Every known label set from the start, at 0, so rate() and increase()
      // see the first refusal (a series born at 1 has no increase).
      for (const l of b().listeners.values()) for (const result of CONNECTION_RESULTS) c.inc({ listener: l.name, result }, l.results.get(result) ?? 0);
    });
    gauge('listenerActive', (g) => {
      for (const l of b().listeners.values()) g.set({ listener: l.name }, l.active);
    });
    gauge('listenerHandshaking', (g) => {
      for (const l of b().listeners.values()) if (l.config.tls !== undefined) g.set({ listener: l.name }, l.handshaking);
    });
    const eachEndpoint = (fn: (cluster: string, e: import('../upstream/endpoint.js').Endpoint) => void) => {
      for (const c of b().clusters.values()) {
        for (const e of c.endpoints) fn(c.name, e);
        for (const e of c.draining) fn(c.name, e);
      }
    };
    gauge('upstreamHealthy', (g) => eachEndpoint((cluster, e) => g.set({ cluster, endpoint: e.id }, e.state === 'up' ? 1 : 0)));
    gauge('upstreamState', (g) =>
      eachEndpoint((cluster, e) => {
        for (const state of ['unknown', 'up', 'down', 'ejected', 'draining']) g.set({ cluster, endpoint: e.id, state }, e.state === state ? 1 : 0);
      }),
    );
    gauge('upstreamActive', (g) => eachEndpoint((cluster, e) => g.set({ cluster, endpoint: e.id }, e.active)));
    counter('upstreamConnections', (c) => eachEndpoint((cluster, e) => c.inc({ cluster, endpoint: e.id }, e.total)));
    counter('upstreamBytes', (c) =>
      eachEndpoint((cluster, e) => {
        e.sweepBytes();
        c.inc({ cluster, endpoint: e.id, direction: 'up' }, e.bytesUp);
        c.inc({ cluster, endpoint: e.id, direction: 'down' }, e.bytesDown);
      }),
    );
    counter('upstreamFailures', (c) => eachEndpoint((cluster, e) => CONNECT_OUTCOMES.forEach((outcome) => c.inc({ cluster, endpoint: e.id, outcome }, e.outcomes.get(outcome) ?? 0))));
    counter('upstreamChecks', (c) => eachEndpoint((cluster, e) => e.checkResults.forEach((n, result) => c.inc({ cluster, endpoint: e.id, result }, n))));
    counter('upstreamStateChanges', (c) => eachEndpoint((cluster, e) => e.stateChanges.forEach((n, state) => c.inc({ cluster, endpoint: e.id, state }, n))));
    counter('upstreamEjections', (c) => eachEndpoint((cluster, e) => c.inc({ cluster, endpoint: e.id }, e.ejections)));
    gauge('upstreamRaftIndex', (g) => eachEndpoint((cluster, e) => e.etcd && g.set({ cluster, endpoint: e.id }, e.etcd.raftIndex)));
    gauge('clusterPanic', (g) => b().clusters.forEach((c) => g.set({ cluster: c.name }, c.panicMode ? 1 : 0)));
    gauge('clusterHealthyEndpoints', (g) => b().clusters.forEach((c) => g.set({ cluster: c.name }, c.eligibleCount)));
    counter('clusterPanicRoutes', (c) => b().clusters.forEach((cl) => c.inc({ cluster: cl.name }, cl.panicRoutes)));
    counter('affinityMoves', (c) =>
      b().clusters.forEach((cl) => {
        const a = cl.affinity;
        if (!a) return;
        for (const reason of ['member_down', 'member_removed', 'rebalance'] as const) c.inc({ cluster: cl.name, reason }, a.moves.get(reason) ?? 0);
      }),
    );
    counter('affinityBehind', (c) => b().clusters.forEach((cl) => cl.affinity && c.inc({ cluster: cl.name }, cl.affinity.behindMoves)));
    gauge('affinityPlacements', (g) => b().clusters.forEach((cl) => cl.affinity && g.set({ cluster: cl.name }, cl.affinity.placementCount)));
    gauge('readBuffers', (g) => {
      const s = readBufferStats();
      g.set({ state: 'leased' }, s.leased);
      g.set({ state: 'free' }, s.free);
    });
    counter('tlsHandshakeFailures', (c) => {
      for (const l of b().listeners.values()) {
        if (l.config.tls === undefined) continue;
        for (const reason of TLS_REFUSAL_REASONS) c.inc({ listener: l.name, reason }, l.tlsFailures.get(reason) ?? 0);
        for (const [reason, n] of l.tlsFailures) if (!TLS_REFUSAL_REASON_SET.has(reason)) c.inc({ listener: l.name, reason }, n);
      }
    });
    gauge('tlsExpiry', (g) => b().tls.forEach((p) => Number.isFinite(p.expirySeconds()) && g.set({ profile: p.profile }, Math.round(p.expirySeconds()))));
    gauge('tlsCrlNextUpdate', (g) => b().tls.forEach((p) => p.material.crlNextUpdate !== undefined && g.set({ profile: p.profile }, Math.floor(p.material.crlNextUpdate.getTime() / 1000))));
    counter('tlsReloads', (c) =>
      b().tls.forEach((p) => {
        c.inc({ profile: p.profile, result: 'ok' }, p.reloadsOk);
        c.inc({ profile: p.profile, result: 'failed' }, p.reloadsFailed);
      }),
    );
    counter('configReloads', (c) => {
      c.inc({ result: 'ok', reason: '' }, b().reloads.ok);
      for (const [reason, n] of b().reloads.failedBy) c.inc({ result: 'failed', reason }, n);
      if (b().reloads.failedBy.size === 0) c.inc({ result: 'failed', reason: '' }, 0);
    });
    counter('discoverySyncs', (c) =>
      b().discovery.forEach((d, name) => {
        c.inc({ cluster: name, result: 'ok' }, d.syncsOk);
        c.inc({ cluster: name, result: 'failed' }, d.syncsFailed);
      }),
    );
    gauge('discoveryMembers', (g) => b().discovery.forEach((d, name) => g.set({ cluster: name }, d.members.length)));
    const backup = () => b().backup;
    // 0 means never (since this process started): the series exists from
    // the start, so an alert can tell "no success yet" from "not scraped".
    gauge('backupLastSuccess', (g) => {
      const s = backup()?.stats;
      if (s) g.set((s.lastSuccessAt ?? 0) / 1000);
    });
    gauge('backupDuration', (g) => {
      const s = backup()?.stats;
      if (s?.lastDurationMs !== undefined) g.set(s.lastDurationMs / 1000);
    });
    gauge('backupSize', (g) => {
      const s = backup()?.stats;
      if (s?.lastSize !== undefined) g.set(s.lastSize);
    });
    counter('backupFailures', (c) => {
      const s = backup()?.stats;
      if (s) for (const reason of BACKUP_FAILURE_REASONS) c.inc({ reason }, s.failures.get(reason) ?? 0);
    });
    gauge('drillLastSuccess', (g) => {
      const bk = backup();
      if (bk?.drillsScheduled) g.set((bk.stats.lastDrillAt ?? 0) / 1000);
    });

    gauge('vipHolder', (g) => {
      const v = b().vip;
      if (v) g.set(v.holding ? 1 : 0);
    });
    counter('vipTransitions', (c) => {
      const v = b().vip;
      if (v) for (const reason of VIP_TRANSITION_REASONS) c.inc({ reason }, v.transitions.get(reason) ?? 0);
    });
    counter('vipLeaseRenewals', (c) => {
      const v = b().vip;
      if (v) for (const result of VIP_RENEWAL_RESULTS) c.inc({ result }, v.renewals.get(result) ?? 0);
    });

    const zeroed = new Set<string>();
    this.connectDuration = new Histogram({
      name: METRICS.upstreamConnectDuration.name,
      help: METRICS.upstreamConnectDuration.help,
      labelNames: ['cluster'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [r],
      // Each cluster's buckets exist from the start, at 0, as the counters do.
      collect() {
        for (const name of b().clusters.keys()) if (!zeroed.has(name)) {
          zeroed.add(name);
          this.zero({ cluster: name });
        }
      },
    });
  }

  /** A cached child per cluster: one bucket search per connection, no label hashing. */
  connectObserver(cluster: string): { observe(v: number): void } {
    let child = this.connectChildren.get(cluster);
    if (!child) {
      child = this.connectDuration.labels({ cluster });
      this.connectChildren.set(cluster, child);
    }
    return child;
  }

  /** Data-plane and process metrics of this process, for the primary to aggregate. */
  async workerJson(): Promise<unknown[]> {
    const all = (await this.registry.getMetricsAsJSON()) as { name: string }[];
    return all.filter((m) => DATA_PLANE_METRICS.has(m.name) || isDefaultMetric(m.name));
  }

  /** Set by the primary of a multi-process ballast: fetches the workers' metrics. */
  fromWorkers: (() => Promise<unknown[][]>) | undefined;

  async render(): Promise<{ contentType: string; body: string }> {
    if (this.fromWorkers === undefined) return { contentType: this.registry.contentType, body: await this.registry.metrics() };
    // The primary's own data-plane numbers are not all zero: it places the
    // clients of affinity clusters (moves, placements, panic routes), so its
    // values are summed with the workers'.
    const own = ((await this.registry.getMetricsAsJSON()) as { name: string }[]).filter((m) => !isDefaultMetric(m.name));
    const workers = await this.fromWorkers();
    const merged = AggregatorRegistry.aggregate([own, ...workers] as Parameters<typeof AggregatorRegistry.aggregate>[0]);
    return { contentType: this.registry.contentType, body: await merged.metrics() };
  }
}

import type { Ballast } from '../ballast.js';
import { VERSION } from '../version.js';
import type { WorkerStats } from '../workers/messages.js';

// /status: everything an operator asks at 3 a.m., as JSON. The status page
// renders exactly this document, so the two never disagree.

export function statusDocument(b: Ballast, workers?: WorkerStats[]): Record<string, unknown> {
  const doc = singleStatus(b);
  return workers === undefined ? doc : mergeWorkers(doc, workers);
}

/** The primary's document with the workers' connection counters summed in. */
function mergeWorkers(doc: Record<string, unknown>, workers: WorkerStats[]): Record<string, unknown> {
  const sum = (a: Record<string, number>, b: Record<string, number>) => {
    for (const [k, v] of Object.entries(b)) a[k] = (a[k] ?? 0) + v;
    return a;
  };
  const listeners = (doc.listeners as { name: string; active: number; results: Record<string, number>; tlsRefusals: Record<string, number> }[]).map((l) => {
    const mine = workers.flatMap((w) => w.listeners.filter((x) => x.name === l.name));
    return { ...l, active: mine.reduce((n, x) => n + x.active, 0), results: mine.reduce((a, x) => sum(a, x.results), {} as Record<string, number>), tlsRefusals: mine.reduce((a, x) => sum(a, x.tlsFailures), {} as Record<string, number>) };
  });
  const clusters = (doc.clusters as { name: string; endpoints: { id: string; active: number; total: number; bytesUp: number; bytesDown: number }[] }[]).map((c) => ({
    ...c,
    endpoints: c.endpoints.map((e) => {
      const mine = workers.flatMap((w) => w.endpoints.filter((x) => x.cluster === c.name && x.id === e.id));
      return { ...e, active: mine.reduce((n, x) => n + x.active, 0), total: mine.reduce((n, x) => n + x.total, 0), bytesUp: mine.reduce((n, x) => n + x.bytesUp, 0), bytesDown: mine.reduce((n, x) => n + x.bytesDown, 0) };
    }),
  }));
  return { ...doc, listeners, clusters, workers: workers.map((w) => ({ pid: w.pid, rss: w.rss, active: w.listeners.reduce((n, l) => n + l.active, 0) })) };
}

function singleStatus(b: Ballast): Record<string, unknown> {
  const now = b.clock.now();
  const wall = Date.now();
  return {
    version: VERSION,
    node: process.versions.node,
    pid: process.pid,
    state: b.state,
    startedAt: new Date(b.startedAt).toISOString(),
    uptimeSeconds: Math.round((wall - b.startedAt) / 1000),
    config: b.config.source,
    ready: b.notReadyReasons().length === 0,
    notReady: b.notReadyReasons(),
    reloads: { ok: b.reloads.ok, failed: b.reloads.failed, lastError: b.reloads.lastError ?? null },
    listeners: b.config.listeners.map((lc) => {
      const l = b.listeners.get(lc.name);
      return {
        name: lc.name,
        listen: lc.listen.kind === 'unix' ? `unix:${lc.listen.path}` : lc.listen.text,
        cluster: lc.cluster,
        tls: lc.tls ?? null,
        active: l?.active ?? 0,
        maxConnections: lc.maxConnections,
        results: l ? Object.fromEntries(l.results) : {},
        tlsRefusals: l ? Object.fromEntries(l.tlsFailures) : {},
      };
    }),
    clusters: [...b.clusters.values()].map((c) => {
      const endpoints = [...c.endpoints, ...c.draining].map((e) => {
        e.sweepBytes();
        return {
          id: e.id,
          state: e.state,
          reason: e.reason,
          sinceSeconds: Math.round((now - e.since) / 1000),
          active: e.active,
          total: e.total,
          bytesUp: e.bytesUp,
          bytesDown: e.bytesDown,
          lastCheck: e.lastCheckAt === 0 ? null : { ok: e.lastCheckOk ?? null, reason: e.lastCheckReason, durationMs: e.lastCheckMs, agoMs: Math.round(now - e.lastCheckAt) },
          checks: { ok: e.checksOk, failed: e.checksFailed },
          ejections: e.ejections,
          ejectedForMs: e.state === 'ejected' ? Math.max(0, Math.round(e.ejectedUntil - now)) : 0,
          etcd: e.etcd
            ? {
                memberId: e.etcd.memberId,
                leaderId: e.etcd.leaderId,
                isLeader: e.etcd.memberId === e.etcd.leaderId,
                raftIndex: e.etcd.raftIndex,
                raftTerm: e.etcd.raftTerm,
                dbSize: e.etcd.dbSize,
                version: e.etcd.version,
                alarms: e.etcd.alarms.map((a) => a.alarm),
              }
            : null,
        };
      });
      const d = b.discovery.get(c.name);
      const a = c.affinity;
      return {
        name: c.name,
        balance: c.config.balance,
        tls: c.config.tls ?? null,
        check: c.config.health.check,
        healthy: c.eligibleCount,
        panic: c.panicMode,
        endpoints,
        discovery: d ? { members: d.members.map((m) => ({ id: m.id, name: m.name, clientURLs: m.clientURLs, learner: m.isLearner })), syncsOk: d.syncsOk, syncsFailed: d.syncsFailed, lastError: d.lastError ?? null, refused: d.refused } : null,
        affinity: a ? { placements: a.placementCount, moves: Object.fromEntries(a.moves), behindMoves: a.behindMoves, stickiness: c.config.affinity.stickiness } : null,
      };
    }),
    tls: [...b.tls.values()].map((p) => ({
      profile: p.profile,
      version: p.version,
      expiresInSeconds: Number.isFinite(p.expirySeconds(wall)) ? Math.round(p.expirySeconds(wall)) : null,
      certs: p.material.certs.map((c) => ({ role: c.role, file: c.file, subject: c.subject, serial: c.serial, notAfter: c.notAfter.toISOString() })),
      crl: p.config.crl === undefined ? null : { file: p.config.crl, nextUpdate: p.material.crlNextUpdate?.toISOString() ?? null, stale: p.crlStale(wall), revoked: p.material.revoked.size },
      rotations: p.reloadsOk,
      rotationFailures: p.reloadsFailed,
      lastError: p.lastError ?? null,
    })),
    vip: b.vip
      ? {
          address: b.vip.config.cidr,
          interface: b.vip.config.interface,
          node: b.vip.config.node,
          state: b.vip.state,
          holding: b.vip.holding,
          holder: b.vip.holder ?? null,
          holderSince: b.vip.holder !== undefined && b.vip.holderSince > 0 ? new Date(b.vip.holderSince).toISOString() : null,
          since: b.vip.since > 0 ? new Date(b.vip.since).toISOString() : null,
          leaseTTLSeconds: b.vip.timings.ttlSeconds,
          addressLifetimeSeconds: b.vip.timings.lifetimeSeconds,
          transitions: Object.fromEntries(b.vip.transitions),
          renewals: Object.fromEntries(b.vip.renewals),
          lastError: b.vip.lastError ?? null,
        }
      : null,
    backup: b.backup
      ? {
          lastSuccessAt: b.backup.stats.lastSuccessAt ? new Date(b.backup.stats.lastSuccessAt).toISOString() : null,
          lastFile: b.backup.stats.lastFile ?? null,
          lastRevision: b.backup.stats.lastRevision ?? null,
          lastSize: b.backup.stats.lastSize ?? null,
          lastError: b.backup.stats.lastError ?? null,
          lastDrillAt: b.backup.stats.lastDrillAt ? new Date(b.backup.stats.lastDrillAt).toISOString() : null,
          lastDrillVerdict: b.backup.stats.lastDrillVerdict ?? null,
        }
      : null,
  };
}

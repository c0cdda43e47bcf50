import type { Ballast } from '../ballast.js';
import { VERSION } from '../version.js';

// /status: everything an operator asks at 3 a.m., as JSON. The status page
// renders exactly this document, so the two never disagree.

export function statusDocument(b: Ballast): Record<string, unknown> {
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
    listeners: [...b.listeners.values()].map((l) => ({
      name: l.name,
      listen: l.address,
      cluster: l.cluster.name,
      tls: l.config.tls ?? null,
      active: l.active,
      maxConnections: l.config.maxConnections,
      results: Object.fromEntries(l.results),
      tlsRefusals: Object.fromEntries(l.tlsFailures),
    })),
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
        discovery: d ? { members: d.members.map((m) => ({ id: m.id, name: m.name, clientURLs: m.clientURLs, learner: m.isLearner })), syncsOk: d.syncsOk, syncsFailed: d.syncsFailed, lastError: d.lastError ?? null } : null,
        affinity: a ? { placements: a.placementCount, moves: Object.fromEntries(a.moves), behindMoves: a.behindMoves, stickiness: c.config.affinity.stickiness } : null,
      };
    }),
    tls: [...b.tls.values()].map((p) => ({
      profile: p.profile,
      version: p.version,
      expiresInSeconds: Number.isFinite(p.expirySeconds(wall)) ? Math.round(p.expirySeconds(wall)) : null,
      certs: p.material.certs.map((c) => ({ role: c.role, file: c.file, subject: c.subject, serial: c.serial, notAfter: c.notAfter.toISOString() })),
      rotations: p.reloadsOk,
      rotationFailures: p.reloadsFailed,
      lastError: p.lastError ?? null,
    })),
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

import cluster from 'node:cluster';
import { parseAddress } from '../config/address.js';
import type { EndpointSpec } from '../config/load.js';
import type { Ballast } from '../ballast.js';
import type { Endpoint } from '../upstream/endpoint.js';
import type { FromWorker, ToWorker, WorkerStats } from './messages.js';

// A worker of a multi-process ballast: the data plane only. It builds the
// same listeners, TLS material and clusters as a single process would, but
// runs no health checks or discovery: endpoint states arrive from the
// primary, passive failures go back to it, and affinity clients are placed by
// it (one round trip per new connection of an affinity cluster).

export async function runWorker(): Promise<number> {
  const send = (m: FromWorker) => process.send?.(m);
  const index = process.env.BALLAST_WORKER ?? '?';
  const { loadConfigFile } = await import('../config/load.js');
  const { Ballast } = await import('../ballast.js');
  const { createLogger } = await import('../log.js');
  const config = loadConfigFile(process.env.BALLAST_CONFIG!);
  if (process.env.BALLAST_TICKET_KEYS) {
    // One ticket secret for all workers: a TLS session made with one worker resumes on another.
    const { useTicketSecret } = await import('../tls/material.js');
    useTicketSecret(Buffer.from(process.env.BALLAST_TICKET_KEYS, 'base64'));
  }
  const log = createLogger(config.log.level).child({ worker: Number(index) });
  const sharing = process.env.BALLAST_SHARING === 'reuseport' ? 'reuseport' : 'shared';
  const ballast = new Ballast(config, log, undefined, 'data', sharing);
  const pickWaiters = new Map<number, (id: string | null) => void>();
  let pickSeq = 0;
  const wire = (b: Ballast) => {
    for (const c of b.clusters.values()) {
      c.remoteOutcome = (e: Endpoint, outcome) => send({ t: 'outcome', cluster: c.name, endpoint: e.id, outcome });
      c.remotePick =
        c.config.balance === 'affinity'
          ? (key, tried) =>
              new Promise((resolve) => {
                const id = ++pickSeq;
                // The primary may hold the answer while a member catches up
                // (forward-only failover); past that, it is slow or gone: place locally.
                const timer = setTimeout(() => {
                  pickWaiters.delete(id);
                  resolve(c.pick({ key, tried }));
                }, 8000);
                pickWaiters.set(id, (epId) => {
                  clearTimeout(timer);
                  resolve(epId === null ? undefined : c.find(epId));
                });
                send({ t: 'pick', id, cluster: c.name, key, tried: tried?.map((e) => e.id) ?? [] });
              })
          : undefined;
    }
  };
  try {
    await ballast.start();
    wire(ballast);
  } catch (err) {
    send({ t: 'start-failed', error: (err as Error).message });
    return 1;
  }

  process.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'state':
        for (const s of m.clusters) {
          const c = ballast.clusters.get(s.cluster);
          if (!c) continue;
          const specs: EndpointSpec[] = [];
          for (const e of s.endpoints) {
            const r = parseAddress(e.address, { allowScheme: true, allowHostname: true });
            if (r.ok) specs.push({ address: r.address, id: e.id, servername: e.servername, weight: e.weight });
          }
          c.applySnapshot(s.endpoints, specs);
        }
        return;
      case 'pick-result':
        pickWaiters.get(m.id)?.(m.endpoint);
        pickWaiters.delete(m.id);
        return;
      case 'stats-request':
        void stats(ballast).then((s) => send({ t: 'stats', id: m.id, stats: s }));
        return;
      case 'reload':
        void ballast.reloadFromFile('primary').then((ok) => {
          wire(ballast);
          send({ t: 'reloaded', id: m.id, ok, ...(ok ? {} : { error: ballast.reloads.lastError ?? 'refused' }) });
        });
        return;
      case 'drain':
        void ballast.drain(m.timeoutMs).then(() => process.exit(0));
        return;
    }
  });
  // The primary decides when to stop; signals sent to the whole process
  // group (Ctrl-C in a terminal) must not make workers exit on their own.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  process.on('SIGHUP', () => undefined);
  // If the primary dies, the IPC channel closes: leave too.
  process.on('disconnect', () => process.exit(0));
  send({ t: 'ready' });
  void cluster;
  return new Promise<number>(() => undefined);
}

async function stats(b: Ballast): Promise<WorkerStats> {
  return {
    pid: process.pid,
    rss: process.memoryUsage.rss(),
    listeners: [...b.listeners.values()].map((l) => ({ name: l.name, active: l.active, results: Object.fromEntries(l.results), tlsFailures: Object.fromEntries(l.tlsFailures) })),
    endpoints: [...b.clusters.values()].flatMap((c) =>
      [...c.endpoints, ...c.draining].map((e) => {
        e.sweepBytes();
        return { cluster: c.name, id: e.id, active: e.active, total: e.total, bytesUp: e.bytesUp, bytesDown: e.bytesDown };
      }),
    ),
    clusters: [...b.clusters.values()].map((c) => ({ name: c.name, panicRoutes: c.panicRoutes, placements: c.affinity?.placementCount ?? 0, moves: Object.fromEntries(c.affinity?.moves ?? []), behindMoves: c.affinity?.behindMoves ?? 0 })),
    metrics: await b.metrics.workerJson(),
  };
}

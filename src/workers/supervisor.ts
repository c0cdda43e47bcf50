import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Ballast } from '../ballast.js';
import { removeStaleSocket } from '../listener/listener.js';
import type { ConnectOutcome } from '../upstream/endpoint.js';
import type { ClusterState, FromWorker, ToWorker, WorkerStats } from './messages.js';

// The primary of a multi-process ballast. It runs the control plane once
// (health checks, discovery, admin server, backups) in a Ballast of role
// 'control', and N workers that each run the data plane (listeners) in a
// Ballast of role 'data'. The primary is the single source of truth for
// endpoint state: it broadcasts every change, receives the workers' passive
// failures, and places affinity clients, so a client's member is the same
// whichever worker accepted its connection.

const RESPAWN_DELAY_MS = 1000;

export class Supervisor {
  private readonly workers = new Map<number, Worker>();
  private readonly ready = new Set<number>();
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; left: number; results: unknown[]; timer: NodeJS.Timeout }>();
  private broadcastScheduled = false;
  private stopping = false;
  /** Shared TLS session ticket keys, so a session resumes on any worker. */
  private readonly ticketKeys = randomBytes(48).toString('base64');

  constructor(
    private readonly ballast: Ballast,
    private readonly count: number,
    private readonly configPath: string,
    private readonly sharing: 'reuseport' | 'shared',
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    const b = this.ballast;
    for (const c of b.clusters.values()) {
      c.observe({ stateChanged: () => this.scheduleBroadcast(), changed: () => this.scheduleBroadcast() });
    }
    b.metrics.fromWorkers = async () => (await this.collect()).map((s) => s.metrics);
    b.statsFromWorkers = () => this.collect();
    // A unix socket listener is shared through node:cluster: clean a stale file once, here.
    for (const l of b.config.listeners) if (l.listen.kind === 'unix') await removeStaleSocket(l.listen.path, `listeners.${l.name}`);
    if (this.sharing === 'shared') cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ silent: false });
    const starting: Promise<void>[] = [];
    for (let i = 0; i < this.count; i++) starting.push(this.fork(i));
    await Promise.all(starting);
    this.log.info({ workers: this.count, sharing: this.sharing }, `${this.count} workers serving (${this.sharing === 'reuseport' ? 'SO_REUSEPORT: one socket per worker' : 'one socket shared through node:cluster'})`);
  }

  private fork(index: number): Promise<void> {
    const w = cluster.fork({ BALLAST_WORKER: String(index), BALLAST_CONFIG: this.configPath, BALLAST_SHARING: this.sharing, BALLAST_TICKET_KEYS: this.ticketKeys });
    this.workers.set(w.id, w);
    return new Promise((resolve, reject) => {
      w.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          this.ready.add(w.id);
          this.send(w, { t: 'state', clusters: this.states() });
          resolve();
        } else if (m.t === 'start-failed') {
          reject(new Error(`worker ${index}: ${m.error}`));
        } else this.onMessage(w, m);
      });
      w.on('exit', (code, signal) => {
        this.workers.delete(w.id);
        this.ready.delete(w.id);
        for (const [id, p] of this.pending) {
          if (--p.left <= 0) {
            clearTimeout(p.timer);
            this.pending.delete(id);
            p.resolve(p.results);
          }
        }
        if (this.stopping) return;
        this.log.error({ worker: index, code, signal }, `worker ${index} exited (${signal ?? code}); starting a new one in ${RESPAWN_DELAY_MS}ms`);
        setTimeout(() => {
          if (!this.stopping) this.fork(index).catch((err: Error) => this.log.error({ worker: index, err: err.message }, 'worker restart failed'));
        }, RESPAWN_DELAY_MS).unref();
        reject(new Error(`worker ${index} exited before it was ready (${signal ?? code})`));
      });
    });
  }

  private onMessage(w: Worker, m: FromWorker): void {
    const b = this.ballast;
    switch (m.t) {
      case 'outcome': {
        const e = b.clusters.get(m.cluster)?.find(m.endpoint);
        if (e) b.clusters.get(m.cluster)!.reportFailure(e, m.outcome as ConnectOutcome);
        return;
      }
      case 'pick': {
        const c = b.clusters.get(m.cluster);
        const tried = c ? m.tried.map((id) => c.find(id)).filter((x) => x !== undefined) : [];
        const ctx = { key: m.key, tried: tried.length > 0 ? tried : null, barrier: 0 };
        const e = c?.pick(ctx);
        if (c && e && ctx.barrier > 0) {
          // Forward-only failover: answer once the member has caught up.
          void c.awaitRaft(e, ctx.barrier).then(() => this.send(w, { t: 'pick-result', id: m.id, endpoint: e.id }));
          return;
        }
        this.send(w, { t: 'pick-result', id: m.id, endpoint: e?.id ?? null });
        return;
      }
      case 'stats':
      case 'reloaded': {
        const p = this.pending.get(m.id);
        if (!p) return;
        p.results.push(m.t === 'stats' ? m.stats : m);
        if (--p.left <= 0) {
          clearTimeout(p.timer);
          this.pending.delete(m.id);
          p.resolve(p.results);
        }
        return;
      }
    }
  }

  private states(): ClusterState[] {
    return [...this.ballast.clusters.values()].map((c) => ({ cluster: c.name, endpoints: c.snapshot() }));
  }

  private scheduleBroadcast(): void {
    if (this.broadcastScheduled) return;
    this.broadcastScheduled = true;
    setImmediate(() => {
      this.broadcastScheduled = false;
      const msg: ToWorker = { t: 'state', clusters: this.states() };
      for (const w of this.workers.values()) if (this.ready.has(w.id)) this.send(w, msg);
    });
  }

  private send(w: Worker, m: ToWorker): void {
    if (w.isConnected()) w.send(m);
  }

  /** Ask every ready worker; resolve with what arrived within the timeout. */
  private ask<T>(make: (id: number) => ToWorker, timeoutMs = 2000): Promise<T[]> {
    const targets = [...this.workers.values()].filter((w) => this.ready.has(w.id));
    if (targets.length === 0) return Promise.resolve([]);
    const id = ++this.seq;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const p = this.pending.get(id);
        this.pending.delete(id);
        resolve((p?.results ?? []) as T[]);
      }, timeoutMs);
      timer.unref();
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, left: targets.length, results: [], timer });
      for (const w of targets) this.send(w, make(id));
    });
  }

  collect(): Promise<WorkerStats[]> {
    return this.ask<WorkerStats>((id) => ({ t: 'stats-request', id }));
  }

  /** After the primary applied a reload, the workers apply it too (they read the same file). */
  async reloadWorkers(): Promise<{ ok: boolean; errors: string[] }> {
    const results = await this.ask<{ ok: boolean; error?: string }>((id) => ({ t: 'reload', id }), 15_000);
    const errors = results.filter((r) => !r.ok).map((r) => r.error ?? 'unknown error');
    return { ok: errors.length === 0 && results.length === this.ready.size, errors };
  }

  /** Tell every worker to drain, and wait for them to exit. */
  async drain(timeoutMs: number): Promise<void> {
    this.stopping = true;
    const exits = [...this.workers.values()].map((w) => new Promise<void>((r) => (w.isDead() ? r() : w.once('exit', () => r()))));
    for (const w of this.workers.values()) this.send(w, { t: 'drain', timeoutMs });
    const hard = setTimeout(() => {
      for (const w of this.workers.values()) w.process.kill('SIGKILL');
    }, timeoutMs + 5000);
    await Promise.all(exits);
    clearTimeout(hard);
  }
}

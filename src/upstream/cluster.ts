import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { ClusterConfig, EndpointSpec } from '../config/load.js';
import { createBalancer, type Balancer, type PickContext } from './balancer/index.js';
import { RendezvousBalancer } from './balancer/rendezvous.js';
import { CatchUpBarrier } from './catch-up.js';
import { canTransition, Endpoint, type ConnectOutcome, type EndpointState, type EtcdMemberStatus, type TrackedConnection } from './endpoint.js';

// A cluster owns its endpoints, their health state machine and the eligible
// set the balancer picks from. The data path reports outcomes (connected,
// refused, timed out, reset); the cluster decides what they mean.

/** One health check's verdict, as the checkers report it. */
export interface CheckResult {
  ok: boolean;
  /** Human reason for logs and /status: "timeout after 300ms", "raft lag 5120 > 1000". */
  reason: string;
  /** Low-cardinality code for metric labels: ok, timeout, refused, http_status, no_leader, raft_lag, alarm, learner, error. */
  code: string;
  durationMs: number;
  etcd?: EtcdMemberStatus;
  /** The check could not judge (ballast's own event loop stalled): neither success nor failure. */
  inconclusive?: boolean;
}

export interface ClusterObserver {
  stateChanged(cluster: Cluster, e: Endpoint, from: EndpointState, to: EndpointState, reason: string): void;
  /** Endpoints were added or removed, or a check updated what is known of one. */
  changed?(cluster: Cluster): void;
}

/** What a worker process needs to know of the primary's view of an endpoint. */
export interface EndpointSnapshot {
  id: string;
  address: string;
  servername: string | undefined;
  weight: number;
  state: EndpointState;
  reason: string;
  /** Ages (ms before the snapshot) rather than times: clocks differ per process. */
  upAgeMs: number | undefined;
  raft: { ageMs: number; index: number }[];
}

/** The active health checker as the cluster sees it. */
export interface Prober {
  probeNow(e: Endpoint): void;
  /** Resolves once `e` has applied all the cluster had committed at the call (etcd check only). */
  readonly readBarrier?: ((e: Endpoint, timeoutMs: number) => Promise<void>) | undefined;
  endpointsChanged(): void;
  stop(): void;
}

export class Cluster {
  readonly name: string;
  private readonly catchUp: CatchUpBarrier = new CatchUpBarrier(this);
  config: ClusterConfig;
  endpoints: Endpoint[] = [];
  /** Removed from the config or the membership, finishing their open connections. */
  readonly draining = new Set<Endpoint>();
  balancer: Balancer;
  /** True while no endpoint is healthy and panic: open routes to all of them. */
  panicMode = false;
  /** Connections routed while in panic mode; refusals with panic: refuse. */
  panicRoutes = 0;
  noEndpointRefusals = 0;
  prober: Prober | undefined;
  /**
   * Set in worker processes: passive failures go to the primary, which owns
   * the health state machine, instead of ejecting locally.
   */
  remoteOutcome: ((e: Endpoint, outcome: ConnectOutcome) => void) | undefined;
  /** Set in worker processes for affinity clusters: the primary places clients. */
  remotePick: ((key: string, tried: readonly Endpoint[] | null) => Promise<Endpoint | undefined>) | undefined;
  private readonly observers: ClusterObserver[] = [];
  private readonly timers = new Map<Endpoint, ReturnType<Clock['setTimeout']>>();

  constructor(
    config: ClusterConfig,
    readonly clock: Clock,
    readonly log: Logger,
    private readonly random: () => number = Math.random,
  ) {
    this.name = config.name;
    this.config = config;
    this.balancer = createBalancer(config, clock);
    this.setEndpoints(config.endpoints);
  }

  observe(o: ClusterObserver): void {
    this.observers.push(o);
  }

  get eligibleCount(): number {
    let n = 0;
    for (const e of this.endpoints) if (e.eligible) n++;
    return n;
  }

  /** Healthy in the readiness sense: at least one endpoint eligible without panic. */
  get ready(): boolean {
    return this.eligibleCount > 0;
  }

  get affinity(): RendezvousBalancer | undefined {
    return this.balancer instanceof RendezvousBalancer ? this.balancer : undefined;
  }

  // --- membership -----------------------------------------------------------

  /** Make the endpoint list match `specs`: new ones join as unknown, missing ones drain. */
  setEndpoints(specs: readonly EndpointSpec[]): { added: Endpoint[]; removed: Endpoint[] } {
    const now = this.clock.now();
    const wanted = new Map(specs.map((s) => [s.id, s]));
    const added: Endpoint[] = [];
    const removed: Endpoint[] = [];
    const kept: Endpoint[] = [];
    for (const e of this.endpoints) {
      const spec = wanted.get(e.id);
      if (spec && spec.servername === e.servername && spec.weight === e.weight) {
        kept.push(e);
        wanted.delete(e.id);
      } else {
        removed.push(e);
      }
    }
    for (const spec of wanted.values()) {
      const e = new Endpoint(spec.id, spec.address, spec.servername, spec.weight, now);
      kept.push(e);
      added.push(e);
    }
    // Keep the configured order: round robin and status pages read it.
    const order = new Map(specs.map((s, i) => [s.id, i]));
    kept.sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0));
    this.endpoints = kept;
    for (const e of removed) {
      this.transition(e, 'draining', 'removed from the endpoint list', { rebuild: false });
      this.clearTimer(e);
      if (e.active > 0) this.draining.add(e);
    }
    this.rebuild();
    if (added.length > 0 || removed.length > 0) {
      this.prober?.endpointsChanged();
      for (const o of this.observers) o.changed?.(this);
    }
    return { added, removed };
  }

  /** The primary's view of every endpoint, for worker processes. */
  snapshot(): EndpointSnapshot[] {
    const now = this.clock.now();
    return this.endpoints.map((e) => ({
      id: e.id,
      address: e.address.text,
      servername: e.servername,
      weight: e.weight,
      state: e.state,
      reason: e.reason,
      upAgeMs: e.upSince > 0 ? now - e.upSince : undefined,
      raft: e.raftHistory().map((r) => ({ ageMs: now - r.at, index: r.index })),
    }));
  }

  /**
   * In a worker: make the endpoints and their states match the primary's
   * snapshot. States are taken as decided (no rise/fall here); leaving the
   * eligible set still closes connections with onDown: close.
   */
  applySnapshot(snap: readonly EndpointSnapshot[], specs: readonly EndpointSpec[]): void {
    this.setEndpoints(specs);
    const now = this.clock.now();
    let changed = false;
    for (const s of snap) {
      const e = this.find(s.id);
      if (!e) continue;
      e.replaceRaftHistory(s.raft.map((r) => ({ at: now - r.ageMs, index: r.index })));
      if (s.upAgeMs !== undefined) e.upSince = now - s.upAgeMs;
      if (e.state === s.state) {
        e.reason = s.reason;
        continue;
      }
      const wasEligible = e.eligible;
      e.state = s.state;
      e.reason = s.reason;
      e.since = now;
      changed = true;
      if (wasEligible && !e.eligible && s.state !== 'draining') this.closeOnDownAfterRebuild.add(e);
    }
    if (changed) {
      this.rebuild();
      for (const e of this.closeOnDownAfterRebuild) this.closeOnDown(e);
      this.closeOnDownAfterRebuild.clear();
    }
  }

  private readonly closeOnDownAfterRebuild = new Set<Endpoint>();

  find(id: string): Endpoint | undefined {
    return this.endpoints.find((e) => e.id === id);
  }

  // --- data path ------------------------------------------------------------

  pick(ctx: PickContext): Endpoint | undefined {
    let e = this.balancer.pick(ctx);
    if (e === undefined) {
      if (ctx.tried === null) this.noEndpointRefusals++;
      return undefined;
    }
    if (this.config.slowStart > 0 && e.upSince > 0) {
      const age = this.clock.now() - e.upSince;
      // A recovering endpoint takes a growing share: skip it with the
      // probability it has not yet earned, at most once per pick.
      if (age < this.config.slowStart && this.random() > Math.max(0.1, age / this.config.slowStart)) {
        const other = this.balancer.pick({ key: ctx.key, tried: ctx.tried === null ? [e] : [...ctx.tried, e] });
        if (other !== undefined) e = other;
      }
    }
    if (this.panicMode) this.panicRoutes++;
    return e;
  }

  opened(e: Endpoint, c: TrackedConnection): void {
    e.active++;
    e.total++;
    e.connections.add(c);
    e.passiveFailures = 0;
    this.balancer.opened(e);
  }

  closed(e: Endpoint, c: TrackedConnection): void {
    if (!e.connections.delete(c)) return;
    e.active--;
    e.settleBytes(c);
    this.balancer.closed(e);
    if (e.state === 'draining' && e.active === 0) this.draining.delete(e);
  }

  /** Passive detection: a failed connect or a reset on an established connection. */
  reportFailure(e: Endpoint, outcome: ConnectOutcome): void {
    if (this.remoteOutcome !== undefined) {
      this.remoteOutcome(e, outcome);
      return;
    }
    e.lastOutcome = outcome;
    e.outcomes.set(outcome, (e.outcomes.get(outcome) ?? 0) + 1);
    e.passiveFailures++;
    const limit = this.config.outlier.consecutiveFailures;
    if (limit > 0 && e.passiveFailures >= limit && e.eligible && !this.panicMode) this.eject(e, outcome);
  }

  // --- control plane --------------------------------------------------------

  /** A health check finished. Rise and fall turn streaks into state changes. */
  reportCheck(e: Endpoint, r: CheckResult): void {
    if (e.state === 'draining' || !this.endpoints.includes(e)) return;
    if (r.etcd) for (const o of this.observers) o.changed?.(this);
    const now = this.clock.now();
    e.lastCheckAt = now;
    e.lastCheckMs = r.durationMs;
    e.checkResults.set(r.code, (e.checkResults.get(r.code) ?? 0) + 1);
    if (r.etcd) {
      e.etcd = r.etcd;
      e.etcdAt = performance.now();
      // The applied index: what a member's serializable reads reflect.
      e.noteRaft(now, r.etcd.raftAppliedIndex || r.etcd.raftIndex);
    }
    if (r.inconclusive) {
      e.lastCheckReason = r.reason;
      return;
    }
    e.lastCheckOk = r.ok;
    e.lastCheckReason = r.reason;
    const { rise, fall } = this.config.health;
    if (r.ok) {
      e.checksOk++;
      e.okStreak++;
      e.failStreak = 0;
      if (e.state === 'unknown') this.transition(e, 'up', r.reason);
      else if (e.state === 'down' && e.okStreak >= rise) this.transition(e, 'up', r.reason);
      else if (e.state === 'ejected' && e.okStreak >= rise && now >= e.ejectedUntil) this.transition(e, 'up', `${r.reason} after ejection`);
    } else {
      e.checksFailed++;
      e.failStreak++;
      e.okStreak = 0;
      if ((e.state === 'up' || e.state === 'unknown' || e.state === 'ejected') && e.failStreak >= fall) this.transition(e, 'down', r.reason);
      else if (e.state === 'down') e.reason = r.reason;
    }
  }

  transition(e: Endpoint, to: EndpointState, reason: string, opts: { rebuild: boolean } = { rebuild: true }): boolean {
    const from = e.state;
    if (from === to) {
      e.reason = reason;
      return false;
    }
    if (!canTransition(from, to)) {
      this.log.error({ cluster: this.name, endpoint: e.id, from, to, reason }, 'refused an impossible endpoint state change');
      return false;
    }
    const wasEligible = e.eligible;
    e.state = to;
    e.reason = reason;
    e.since = this.clock.now();
    e.stateChanges.set(to, (e.stateChanges.get(to) ?? 0) + 1);
    if (to === 'up') {
      e.upSince = e.since;
      e.passiveFailures = 0;
    }
    const level = to === 'up' ? 'info' : 'warn';
    this.log[level]({ cluster: this.name, endpoint: e.id, from, to, reason }, `${this.name}/${e.id} ${from} -> ${to} (${reason})`);
    for (const o of this.observers) o.stateChanged(this, e, from, to, reason);
    if (opts.rebuild) this.rebuild();
    if (wasEligible && !e.eligible && to !== 'draining') this.closeOnDown(e);
    return true;
  }

  private eject(e: Endpoint, outcome: ConnectOutcome): void {
    const now = this.clock.now();
    const { baseEjection, maxEjection } = this.config.outlier;
    // Back-off forgets old sins: an endpoint that stayed up longer than the
    // longest ejection starts again from the base duration.
    if (e.upSince > 0 && now - e.upSince > maxEjection) e.ejections = 0;
    e.ejections++;
    const duration = Math.min(maxEjection, baseEjection * 2 ** Math.min(e.ejections - 1, 30));
    e.ejectedUntil = now + duration;
    e.okStreak = 0;
    this.transition(e, 'ejected', `${e.passiveFailures} consecutive failures (last: ${outcome}), ejected for ${duration}ms`);
    this.clearTimer(e);
    // Without active checks nothing else brings it back: the timer does.
    this.timers.set(
      e,
      this.clock.setTimeout(() => {
        this.timers.delete(e);
        if (e.state !== 'ejected') return;
        if (this.config.health.check === 'none') this.transition(e, 'up', 'ejection expired');
        else this.prober?.probeNow(e);
      }, duration),
    );
    this.prober?.probeNow(e);
  }

  /** Wait until `e` has caught up before an affinity client lands on it (see CatchUpBarrier). */
  awaitRaft(e: Endpoint, index: number): Promise<boolean> {
    return this.catchUp.wait(e, index);
  }

  private closeOnDown(e: Endpoint): void {
    // Connects in progress to it move on at once, whatever onDown says: they
    // have nothing to lose, and a hung member would hold them for connectTimeout.
    if (e.connecting.size > 0 && this.eligibleCount > 0) for (const p of [...e.connecting]) p.redirect();
    if (this.config.onDown !== 'close' || e.connections.size === 0) return;
    // Closing only helps if clients have somewhere better to go; with every
    // endpoint down (often ballast's own overload, k3s#10240) it would turn a
    // degraded control plane into an outage.
    if (this.eligibleCount === 0) {
      this.log.warn({ cluster: this.name, endpoint: e.id, connections: e.connections.size }, 'endpoint down but no other endpoint is healthy: keeping its connections');
      return;
    }
    const n = e.connections.size;
    for (const c of [...e.connections]) c.close('endpoint_down');
    this.log.info({ cluster: this.name, endpoint: e.id, connections: n }, `closed ${n} connections to ${e.id} so clients reconnect to a healthy endpoint`);
  }

  /** Recompute the eligible set and hand it to the balancer (a new "picker"). */
  rebuild(): void {
    const eligible = this.endpoints.filter((e) => e.eligible);
    let set = eligible;
    const wasPanic = this.panicMode;
    this.panicMode = false;
    if (eligible.length === 0 && this.endpoints.length > 0 && this.config.panic === 'open') {
      set = this.endpoints;
      this.panicMode = true;
    }
    if (this.panicMode !== wasPanic) {
      if (this.panicMode) this.log.error({ cluster: this.name }, `${this.name}: no healthy endpoint; panic mode routes to all ${set.length} endpoints`);
      else this.log.info({ cluster: this.name }, `${this.name}: healthy endpoints again; panic mode over`);
    }
    this.balancer.update(set);
  }

  /** Prune affinity placements of clients not seen for a while. */
  housekeeping(): void {
    this.affinity?.prune(this.clock.now(), Math.max(this.config.affinity.ttl, 600_000));
  }

  private clearTimer(e: Endpoint): void {
    const t = this.timers.get(e);
    if (t) {
      this.clock.clearTimeout(t);
      this.timers.delete(e);
    }
  }

  /** Apply a changed config for this cluster (same name). */
  reconfigure(config: ClusterConfig): void {
    const balanceChanged = config.balance !== this.config.balance || JSON.stringify(config.affinity) !== JSON.stringify(this.config.affinity);
    this.config = config;
    if (balanceChanged) this.balancer = createBalancer(config, this.clock);
    if (config.discovery === 'static') this.setEndpoints(config.endpoints);
    else this.rebuild();
  }

  stop(): void {
    this.prober?.stop();
    for (const e of [...this.timers.keys()]) this.clearTimer(e);
    this.catchUp.stop();
  }

  /** Remember an etcd status seen outside a health check (discovery). */
  noteEtcd(e: Endpoint, s: EtcdMemberStatus): void {
    e.etcd = s;
    e.noteRaft(this.clock.now(), s.raftAppliedIndex || s.raftIndex);
  }
}

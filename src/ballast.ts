import type { Logger } from 'pino';
import type { BackupStats } from './backup/stats.js';
import { systemClock, type Clock } from './clock.js';
import { ConfigError, loadConfigFile, type ClusterConfig, type Config, type ListenerConfig } from './config/load.js';
import { applyFailure, ReloadLog, type ReloadFailure, type ReloadRecord } from './reload/reload-log.js';
import { describePlan, planReload, ReloadRefusedError, type ReloadPlan } from './reload/reload-plan.js';
import type { BackupConfig } from './config/schema.js';
import { adminDescriptors, calibrate } from './listener/fd-budget.js';
import { Listener, type ListenerHooks } from './listener/listener.js';
import type { OriginTls } from './listener/proxy-connection.js';
import { Metrics } from './admin/metrics.js';
import { TlsProfileRuntime, serverName } from './tls/tls-profile.js';
import { readMaterial } from './tls/material.js';
import { buildTlsProfiles, keyKindFor, profileRoles } from './tls/profiles.js';
import { Cluster } from './upstream/cluster.js';
import { EtcdMemberDiscovery } from './upstream/discovery/etcd-members.js';
import { createHealthChecker, type CheckTls } from './upstream/health/index.js';
import type { HealthChecker } from './upstream/health/health-checker.js';
import type { VipElection } from './vip/vip-election.js';

// The running proxy: TLS profiles, clusters with their health checkers and
// discovery, listeners, and the admin server's view of all of it. It applies
// a config whole at start, and as a diff on reload once the new config has
// been validated (files included); it drains on shutdown.

export type RunState = 'starting' | 'running' | 'draining' | 'stopped';

/**
 * single: one process does everything. With `workers > 1` the primary runs
 * the control plane (checks, discovery, admin, backups) and each worker the
 * data plane (listeners), fed the primary's endpoint states.
 */
export type Role = 'single' | 'control' | 'data';

/** How a listener's socket is shared between worker processes. */
/**
 * How listener sockets are bound: `exclusive` (one process), `handover` (one
 * process, SO_REUSEPORT so a new ballast can bind beside it before it
 * drains), `reuseport` (a worker's own socket), `shared` (node:cluster).
 */
export type SocketSharing = 'exclusive' | 'handover' | 'reuseport' | 'shared';

export interface BackupRunner {
  readonly stats: BackupStats;
  /** Restore drills run on a schedule (backup.drillInterval > 0). */
  readonly drillsScheduled: boolean;
  stop(): Promise<void> | void;
}

export interface AdminLike {
  close(): Promise<void>;
}

export class Ballast {
  config: Config;
  private runState: RunState = 'starting';
  get state(): RunState {
    return this.runState;
  }
  readonly clusters = new Map<string, Cluster>();
  readonly listeners = new Map<string, Listener>();
  readonly tls = new Map<string, TlsProfileRuntime>();
  readonly discovery = new Map<string, EtcdMemberDiscovery>();
  readonly checkers = new Map<string, HealthChecker>();
  readonly metrics: Metrics;
  private readonly reloadLog = new ReloadLog();
  /** Config reloads, applied and refused (read-only: only Ballast writes it). */
  get reloads(): ReloadRecord {
    return this.reloadLog;
  }
  backup: BackupRunner | undefined;
  /** The virtual IP election (vip: in the config), in the primary or single process. */
  vip: VipElection | undefined;
  /** Runs `ip` and `arping` for the VIP; tests inject their own. */
  vipRunner: import('./vip/runner.js').CommandRunner | undefined;
  /** Set by the primary of a multi-process ballast: the workers' data-plane counters. */
  statsFromWorkers: (() => Promise<import('./workers/messages.js').WorkerStats[]>) | undefined;
  readonly startedAt = Date.now();
  private housekeeping: NodeJS.Timeout | undefined;
  private accessLogger: Logger | undefined;

  constructor(
    config: Config,
    readonly log: Logger,
    readonly clock: Clock = systemClock,
    readonly role: Role = 'single',
    /** Listener sockets: exclusive (one process), SO_REUSEPORT per worker, or one socket shared through node:cluster. */
    readonly sharing: SocketSharing = 'exclusive',
  ) {
    this.config = config;
    this.metrics = new Metrics(this);
  }

  // --- start ----------------------------------------------------------------

  async start(): Promise<void> {
    const c = this.config;
    for (const [name, runtime] of buildTlsProfiles(c, this.log)) {
      this.tls.set(name, runtime);
      runtime.watch();
    }
    for (const cc of c.clusters) this.addCluster(cc);
    // The admin servers run beside the listeners only in a single process (with workers, in the primary).
    calibrate(this.role === 'single' ? adminDescriptors(c.admin) : 0);
    try {
      if (this.role !== 'control') for (const lc of c.listeners) await this.addListener(lc);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.housekeeping = setInterval(() => this.clusters.forEach((cl) => cl.housekeeping()), 60_000);
    this.housekeeping.unref();
    this.runState = 'running';
    if (c.vip && this.role !== 'data') {
      try {
        await this.startVip(c.vip);
      } catch (err) {
        await this.stop();
        throw err;
      }
    }
    this.log.info(
      { listeners: c.listeners.map((l) => `${l.name}=${l.listen.text}`), clusters: c.clusters.map((x) => x.name) },
      `ballast running: ${c.listeners.length} listener(s), ${c.clusters.length} cluster(s)`,
    );
  }

  /** Remove a stale copy of the VIP, then campaign for it (src/vip/). */
  private async startVip(vc: NonNullable<Config['vip']>): Promise<void> {
    const [{ VipElection }, { VipAddress }, { EtcdElectionStore }, { execFileRunner }] = await Promise.all([
      import('./vip/vip-election.js'),
      import('./vip/vip-address.js'),
      import('./vip/election-store.js'),
      import('./vip/runner.js'),
    ]);
    const log = this.log.child({ component: 'vip' });
    const cluster = () => this.clusters.get(vc.cluster);
    const store = new EtcdElectionStore(cluster, () => this.checkTls(cluster()?.config.health.tls ?? cluster()?.config.tls));
    const address = new VipAddress(vc, this.vipRunner ?? execFileRunner, log);
    // Readiness as /readyz says it; without requireReady only a draining or stopping ballast lets go.
    const notReady = () => (vc.requireReady ? this.notReadyReasons() : this.state === 'running' ? [] : [`state: ${this.state}`]);
    const vip = new VipElection(vc, store, address, notReady, this.clock, log);
    await vip.start();
    this.vip = vip;
  }

  private addCluster(cc: ClusterConfig): Cluster {
    const cluster = new Cluster(cc, this.clock, this.log);
    this.clusters.set(cc.name, cluster);
    this.startControlLoops(cluster);
    return cluster;
  }

  private startControlLoops(cluster: Cluster): void {
    if (this.role === 'data') return;
    const cc = cluster.config;
    const checkTls = () => this.checkTls(cluster.config.health.tls ?? cluster.config.tls);
    const checker = createHealthChecker(cluster, checkTls, this.clock, this.log);
    if (checker) {
      cluster.prober = checker;
      this.checkers.set(cc.name, checker);
      checker.start();
    }
    if (cc.discovery === 'etcd-members') {
      const d = new EtcdMemberDiscovery(cluster, () => cluster.config.endpoints, checkTls, this.clock, this.log);
      this.discovery.set(cc.name, d);
      d.start();
    }
  }

  private stopControlLoops(name: string): void {
    this.checkers.get(name)?.stop();
    this.checkers.delete(name);
    this.discovery.get(name)?.stop();
    this.discovery.delete(name);
    const cl = this.clusters.get(name);
    if (cl) cl.prober = undefined;
  }

  private async addListener(lc: ListenerConfig): Promise<Listener> {
    const cluster = this.clusters.get(lc.cluster)!;
    const terminator = lc.tls !== undefined ? this.tls.get(lc.tls) : undefined;
    const l = new Listener(lc, cluster, terminator, this.hooksFor(lc), this.log, this.sharing);
    await l.start();
    this.listeners.set(lc.name, l);
    return l;
  }

  private hooksFor(lc: ListenerConfig): ListenerHooks {
    const self = this;
    return {
      originTls(): OriginTls | undefined {
        // Read through the listener's current cluster: reload may change it.
        const cl = self.listeners.get(lc.name)?.cluster ?? self.clusters.get(lc.cluster);
        const profile = cl?.config.tls;
        return profile === undefined ? undefined : self.tls.get(profile)?.origin();
      },
      observeConnect(l, seconds) {
        self.metrics.connectObserver(l.cluster.name).observe(seconds);
      },
      accessLog(line) {
        self.accessLogger ??= self.log.child({ log: 'access' });
        self.accessLogger.info(line, 'connection closed');
      },
    };
  }

  checkTls(profile: string | undefined): CheckTls | undefined {
    if (profile === undefined) return undefined;
    const p = this.tls.get(profile);
    if (!p) return undefined;
    const m = p.material;
    const name = p.config.servername;
    return {
      version: p.version,
      ...(m.ca ? { ca: m.ca } : {}),
      ...(m.cert ? { cert: m.cert, key: m.key! } : {}),
      servername: (e) => serverName(e, name),
    };
  }

  // --- readiness and status -------------------------------------------------

  /** Reasons the process is not ready, one per listener; empty when ready. */
  notReadyReasons(): string[] {
    if (this.state === 'draining') return ['draining: shutting down'];
    if (this.state !== 'running') return [`state: ${this.state}`];
    const out: string[] = [];
    // From the config, not the listener objects: the primary of a
    // multi-process ballast has no listeners of its own.
    for (const lc of this.config.listeners) {
      const c = this.clusters.get(lc.cluster);
      if (c && !c.ready) out.push(`${lc.name}: no healthy endpoint in cluster ${c.name} (${c.endpoints.map((e) => `${e.id} ${e.state}: ${e.reason}`).join('; ')})`);
    }
    return out;
  }

  // --- reload ---------------------------------------------------------------

  /**
   * Re-read the config file and apply it; on any error the running config
   * stays. `followers` (the primary of a multi-process ballast: its workers)
   * apply it after this process did; the reload counts as applied only if
   * they all did, and is counted once either way.
   */
  async reloadFromFile(trigger: string, followers?: () => Promise<{ ok: boolean; errors: string[] }>): Promise<boolean> {
    if (this.state === 'draining' || this.state === 'stopped') {
      // A rollout edits the file while the old process drains: not a failure.
      this.log.info({ trigger, state: this.state }, `config reload ignored while ${this.state}`);
      return true;
    }
    // Certificates are re-read on every reload trigger (SIGHUP), whatever the config says.
    for (const p of this.tls.values()) p.reload(trigger);
    let next: Config;
    try {
      next = loadConfigFile(this.config.source);
    } catch (err) {
      return this.refused(err instanceof ConfigError ? err.kind : 'other', (err as Error).message, trigger);
    }
    let plan: ReloadPlan;
    try {
      plan = await this.reload(next);
    } catch (err) {
      return this.refused(err instanceof ReloadRefusedError ? err.reason : applyFailure(err), (err as Error).message, trigger);
    }
    if (followers !== undefined) {
      const r = await followers();
      if (!r.ok) return this.refused('worker_refused', `the primary applied it but a worker refused it: ${r.errors.join('; ')}`, trigger);
    }
    this.reloadLog.applied();
    this.log.info({ trigger, changes: describePlan(plan) }, `config reloaded: ${describePlan(plan)}`);
    return true;
  }

  private refused(reason: ReloadFailure, message: string, trigger: string): false {
    this.reloadLog.refused(reason, message);
    this.log.error({ trigger, reason, err: message }, `config reload refused, the running config stays: ${message}`);
    return false;
  }

  /**
   * Apply a validated config as the diff planReload computes. Everything that
   * can fail (reading TLS files, binding new listeners) is done first; only
   * then is the running state touched, so a refused reload leaves no trace.
   */
  async reload(next: Config): Promise<ReloadPlan> {
    if (this.state !== 'running') throw new Error(`cannot reload while ${this.state}`);
    const plan = planReload(this.config, next);
    if (plan.kind === 'refused') throw new ReloadRefusedError(plan);
    // 1. TLS material: new and changed profiles must load.
    const roles = profileRoles(next);
    const newProfiles = new Map<string, TlsProfileRuntime>();
    try {
      for (const name of plan.tls.load) {
        const p = next.tls.get(name)!;
        const r = roles.get(name) ?? { server: false, client: false };
        readMaterial(p, r); // throws with the key path
        newProfiles.set(name, new TlsProfileRuntime(p, r, this.log, keyKindFor(next, name)));
      }
    } catch (err) {
      for (const p of newProfiles.values()) p.close();
      throw err;
    }
    // 2. Listeners on new addresses bind before anything else changes.
    const tlsOf = (name: string | undefined) => (name === undefined ? undefined : (newProfiles.get(name) ?? this.tls.get(name)));
    const provisional = new Map(plan.clusters.add.map((cc) => [cc.name, new Cluster(cc, this.clock, this.log)]));
    const started: Listener[] = [];
    try {
      if (this.role !== 'control') {
        for (const lc of plan.listeners.bind) {
          const cluster = this.clusters.get(lc.cluster) ?? provisional.get(lc.cluster)!;
          const l = new Listener(lc, cluster, tlsOf(lc.tls), this.hooksFor(lc), this.log, this.sharing);
          await l.start();
          started.push(l);
        }
      }
    } catch (err) {
      for (const l of started) await l.stopAccepting();
      for (const p of newProfiles.values()) p.close();
      for (const c of provisional.values()) c.stop();
      throw err;
    }
    // 3. Commit. Nothing below throws on valid input.
    for (const name of plan.tls.crlDropped) {
      this.log.warn({ profile: name, crl: this.tls.get(name)?.config.crl }, `tls.${name}.crl: removed by this reload; clients it revoked are admitted again`);
    }
    for (const [name, p] of newProfiles) {
      const old = this.tls.get(name);
      this.tls.set(name, p);
      p.watch();
      old?.close();
    }
    for (const name of plan.tls.remove) {
      this.tls.get(name)?.close();
      this.tls.delete(name);
    }
    for (const [name, fresh] of provisional) {
      this.clusters.set(name, fresh);
      this.startControlLoops(fresh);
    }
    for (const { config: cc, restartLoops } of plan.clusters.update) {
      const cl = this.clusters.get(cc.name)!;
      if (restartLoops) this.stopControlLoops(cc.name);
      cl.reconfigure(cc);
      if (restartLoops) this.startControlLoops(cl);
    }
    for (const name of plan.listeners.retire) {
      // Removed, moved or rebound: stop accepting; its open connections finish on their own.
      await this.listeners.get(name)?.stopAccepting();
      this.listeners.delete(name);
    }
    for (const { config: lc, replaceTls } of plan.listeners.update) {
      const l = this.listeners.get(lc.name);
      if (l === undefined) continue; // the primary of a multi-process ballast has none
      l.config = lc;
      l.cluster = this.clusters.get(lc.cluster)!;
      if (replaceTls) l.replaceTls(this.tls.get(lc.tls!)!);
    }
    for (const l of started) {
      l.cluster = this.clusters.get(l.config.cluster)!;
      this.listeners.set(l.name, l);
    }
    if (this.role !== 'control') for (const lc of plan.listeners.rebind) await this.addListener(lc);
    for (const name of plan.clusters.remove) {
      this.stopControlLoops(name);
      this.clusters.get(name)?.stop();
      this.clusters.delete(name);
    }
    if (plan.logLevel !== undefined) this.log.level = plan.logLevel;
    this.config = next;
    // The backup schedule lives with the health checks: in the primary, not in workers.
    if (this.role !== 'data' && plan.backupChanged) await this.applyBackup(next.backup);
    return plan;
  }

  /**
   * Start, replace or stop the backup schedule (at start, and on a reload
   * that changes `backup`). A replaced schedule stops first, aborting a
   * snapshot or drill in flight (its partial file is removed, as on any
   * abort); its counters and last results carry over, so /metrics does not
   * go back to "never backed up".
   */
  async applyBackup(cfg: BackupConfig | undefined): Promise<void> {
    const prev = this.backup;
    this.backup = undefined;
    await prev?.stop();
    if (cfg === undefined) {
      if (prev) this.log.info('backups stopped: the config has no backup section any more');
      return;
    }
    const { BackupScheduler } = await import('./backup/backup-scheduler.js');
    const next = BackupScheduler.fromConfig(this, cfg, this.log);
    if (next && prev) next.continueFrom(prev.stats);
    this.backup = next;
  }

  // --- shutdown -------------------------------------------------------------

  /**
   * Drain: /readyz turns 503 at once, the VIP is let go, listeners stop
   * accepting, open connections get up to `timeoutMs` to finish, then are
   * closed. With workers, `dataPlane` (the supervisor) drains theirs instead.
   */
  async drain(timeoutMs = this.config.drainTimeout, dataPlane?: { drain(timeoutMs: number): Promise<void> }): Promise<{ closedAtDeadline: number }> {
    if (this.state === 'stopped') return { closedAtDeadline: 0 };
    this.runState = 'draining';
    // The VIP goes first: another node takes it over while this one drains.
    await this.vip?.stop('shutdown');
    if (dataPlane !== undefined) {
      await dataPlane.drain(timeoutMs);
      await this.stop();
      return { closedAtDeadline: 0 };
    }
    const open = () => [...this.listeners.values()].reduce((n, l) => n + l.active, 0);
    this.log.info({ open: open(), timeoutMs }, `draining: stopped accepting, waiting up to ${timeoutMs}ms for ${open()} open connection(s)`);
    for (const l of this.listeners.values()) await l.stopAccepting();
    const deadline = Date.now() + timeoutMs;
    while (open() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    const left = open();
    if (left > 0) {
      // Say what was still open: a stuck connection is worth a look.
      const sample = [...this.listeners.values()].flatMap((l) => [...l.connections].slice(0, 5).map((c) => ({ listener: l.name, ...c.describe() })));
      this.log.warn({ open: left, sample }, `drain timeout: closing ${left} connection(s)`);
      for (const l of this.listeners.values()) l.closeAll('drain_timeout');
    }
    await this.stop();
    return { closedAtDeadline: left };
  }

  async stop(): Promise<void> {
    await this.vip?.stop('shutdown');
    if (this.housekeeping) clearInterval(this.housekeeping);
    for (const l of this.listeners.values()) {
      await l.stopAccepting();
      l.closeAll('shutdown');
    }
    for (const name of [...this.clusters.keys()]) this.stopControlLoops(name);
    for (const c of this.clusters.values()) c.stop();
    for (const p of this.tls.values()) p.close();
    await this.backup?.stop();
    this.runState = 'stopped';
  }
}

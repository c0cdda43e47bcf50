import type { Logger } from 'pino';
import type { Ballast, BackupRunner } from '../ballast.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { BackupConfig } from '../config/schema.js';
import type { CheckTls } from '../upstream/health/http-check.js';
import { restoreDrill, type DrillOptions, type DrillResult } from './restore-drill.js';
import { newestSnapshot } from './snapshot-file.js';
import { BackupError, Snapshotter, type SnapshotMember, type SnapshotResult, type SnapshotterOptions } from './snapshotter.js';
import { emptyBackupStats, type BackupStats } from './stats.js';

// Periodic verified snapshots inside `ballast run`, and (drillInterval > 0)
// periodic restore drills of the newest one.
//
//   first snapshot: as soon as every endpoint of the cluster has been checked
//                   once and one is up (so `from: follower` can see the
//                   followers), at the latest after `firstDelayMs` (10 s)
//   then:           every `interval`, counted from the start of the previous
//                   attempt; if that attempt is still running the tick is
//                   skipped and counted as failure reason `overlap`; after a
//                   failed attempt, sooner: 1 min, 2 min, 4 min… (at most
//                   `interval`) until one succeeds
//   drills:         every `drillInterval` on the newest snapshot in `dir`;
//                   never at the same time as a snapshot (a snapshot waits
//                   for a running drill, a drill for a running snapshot), so
//                   pruning never deletes the file being drilled
//
// Timers are unref'd (the clock's): backups never keep the process alive.
// stop() cancels the timers and aborts a running snapshot and drill.

export interface BackupSchedulerStats extends BackupStats {
  /** Drills by verdict. */
  drills: { ok: number; failed: number };
  /** Wall time of the last drill, whatever its verdict (lastDrillAt is the last successful one). */
  lastDrillAttemptAt: number | undefined;
}

export interface BackupSchedulerDeps {
  cluster: string;
  members: () => readonly SnapshotMember[];
  tls: () => CheckTls | undefined;
  log: Logger;
  clock?: Clock;
}

export interface BackupSchedulerOptions {
  /** Latest moment for the first snapshot, in ms after start. Default 10 s. */
  firstDelayMs?: number;
  /** Passed to the snapshotter (etcdctl path, progress hook, wall clock, worker thread). */
  snapshot?: Pick<SnapshotterOptions, 'etcdctl' | 'onProgress' | 'now' | 'worker'>;
  /** Passed to the restore drill (sample size, work dir, binaries, timeout). */
  drill?: Omit<DrillOptions, 'signal' | 'log'>;
}

const POLL_MS = 500;
const RETRY_MS = 60_000;

export class BackupScheduler implements BackupRunner {
  readonly stats: BackupSchedulerStats;
  readonly snapshotter: Snapshotter;
  lastResult: SnapshotResult | undefined;
  lastDrill: DrillResult | undefined;
  private readonly clock: Clock;
  private readonly log: Logger;
  private snapshotTimer: TimerHandle | undefined;
  private drillTimer: TimerHandle | undefined;
  private snapshotPending: Promise<unknown> | undefined;
  private drilling: Promise<DrillResult | undefined> | undefined;
  private drillAbort: AbortController | undefined;
  private stopped = false;
  private startedAt = 0;
  private consecutiveFailures = 0;

  /** Start backups for `cfg` on a running Ballast; undefined when the config has no backup section. */
  static fromConfig(ballast: Ballast, cfg: BackupConfig | undefined, log: Logger, opts: BackupSchedulerOptions = {}): BackupScheduler | undefined {
    if (cfg === undefined) return undefined;
    const cluster = () => ballast.clusters.get(cfg.cluster);
    const scheduler = new BackupScheduler(
      cfg,
      {
        cluster: cfg.cluster,
        members: () => cluster()?.endpoints ?? [],
        // The profile the cluster's etcd health checks use (health.tls, default the cluster's tls).
        tls: () => {
          const c = cluster();
          return c ? ballast.checkTls(c.config.health.tls ?? c.config.tls) : undefined;
        },
        log: log.child({ component: 'backup' }),
        clock: ballast.clock,
      },
      opts,
    );
    scheduler.start();
    return scheduler;
  }

  get drillsScheduled(): boolean {
    return this.cfg.drillInterval > 0;
  }

  constructor(
    readonly cfg: BackupConfig,
    private readonly deps: BackupSchedulerDeps,
    private readonly opts: BackupSchedulerOptions = {},
  ) {
    this.clock = deps.clock ?? systemClock;
    this.log = deps.log;
    this.stats = { ...emptyBackupStats(), drills: { ok: 0, failed: 0 }, lastDrillAttemptAt: undefined };
    this.snapshotter = new Snapshotter({
      cluster: deps.cluster,
      dir: cfg.dir,
      keep: cfg.keep,
      from: cfg.from,
      timeoutMs: cfg.timeout,
      members: deps.members,
      tls: deps.tls,
      log: deps.log,
      stats: this.stats,
      ...opts.snapshot,
    });
  }

  start(): void {
    this.startedAt = this.clock.now();
    this.log.info(
      { cluster: this.deps.cluster, dir: this.cfg.dir, intervalMs: this.cfg.interval, keep: this.cfg.keep, from: this.cfg.from, drillIntervalMs: this.cfg.drillInterval },
      `backups of ${this.deps.cluster} to ${this.cfg.dir} every ${this.cfg.interval / 1000}s, keeping ${this.cfg.keep}${this.cfg.drillInterval > 0 ? `, restore drill every ${this.cfg.drillInterval / 1000}s` : ''}`,
    );
    this.snapshotTimer = this.clock.setTimeout(() => this.waitForMembers(), Math.min(POLL_MS, this.firstDelay));
    if (this.cfg.drillInterval > 0) this.scheduleDrill();
  }

  private get firstDelay(): number {
    return this.opts.firstDelayMs ?? 10_000;
  }

  private waitForMembers(): void {
    if (this.stopped) return;
    const members = this.deps.members();
    const checked = members.length > 0 && members.some((m) => m.state === 'up') && !members.some((m) => m.state === 'unknown');
    if (checked || this.clock.now() - this.startedAt >= this.firstDelay) {
      this.tick();
      return;
    }
    this.snapshotTimer = this.clock.setTimeout(() => this.waitForMembers(), POLL_MS);
  }

  /** One scheduled snapshot; the next is scheduled first, so a slow one makes the next tick an overlap. */
  private tick(): void {
    if (this.stopped) return;
    this.snapshotTimer = this.clock.setTimeout(() => this.tick(), this.cfg.interval);
    if (this.snapshotPending) {
      this.stats.failures.set('overlap', (this.stats.failures.get('overlap') ?? 0) + 1);
      this.log.warn({ cluster: this.deps.cluster, intervalMs: this.cfg.interval }, `backup: the previous snapshot is still running after ${this.cfg.interval / 1000}s; skipping this one (overlap)`);
      return;
    }
    void this.runNow().then(
      () => {
        this.consecutiveFailures = 0;
      },
      (err: unknown) => {
        const reason = err instanceof BackupError ? err.reason : 'io';
        if (this.stopped || reason === 'busy' || reason === 'aborted') return;
        // A failed backup is retried sooner than `interval`: 1 min, doubling, at most `interval`.
        this.consecutiveFailures++;
        const retryMs = Math.min(this.cfg.interval, RETRY_MS * 2 ** Math.min(this.consecutiveFailures - 1, 20));
        if (this.snapshotTimer) this.clock.clearTimeout(this.snapshotTimer);
        this.snapshotTimer = this.clock.setTimeout(() => this.tick(), retryMs);
        this.log.info({ cluster: this.deps.cluster, retryMs, failures: this.consecutiveFailures }, `backup: retrying in ${Math.round(retryMs / 1000)}s`);
      },
    );
  }

  /**
   * Take a snapshot now (waiting for a running drill first). Rejects with
   * BackupError; `busy` if a snapshot is already running or pending.
   */
  runNow(): Promise<SnapshotResult> {
    if (this.stopped) return Promise.reject(new BackupError('aborted', 'backups are stopped'));
    if (this.snapshotPending) return this.snapshotter.take(); // rejects with busy and counts it
    const p = (async () => {
      await this.drilling;
      if (this.stopped) throw new BackupError('aborted', 'backups are stopped');
      const r = await this.snapshotter.take();
      this.lastResult = r;
      return r;
    })();
    this.snapshotPending = p.finally(() => {
      this.snapshotPending = undefined;
    });
    this.snapshotPending.catch(() => undefined);
    return p;
  }

  private scheduleDrill(): void {
    if (this.stopped) return;
    this.drillTimer = this.clock.setTimeout(() => {
      this.scheduleDrill();
      if (this.drilling) {
        this.log.warn({ cluster: this.deps.cluster }, 'restore drill: the previous drill is still running; skipping this one');
        return;
      }
      void this.drillNow();
    }, this.cfg.drillInterval);
  }

  /** Drill the newest snapshot in `dir` now (after a running snapshot). Undefined when there is none yet or one is running. */
  drillNow(): Promise<DrillResult | undefined> {
    if (this.drilling) return this.drilling;
    const ac = new AbortController();
    this.drillAbort = ac;
    const p = (async (): Promise<DrillResult | undefined> => {
      await this.snapshotPending?.catch(() => undefined);
      await this.snapshotter.settled();
      if (this.stopped) return undefined;
      const newest = await newestSnapshot(this.cfg.dir).catch(() => undefined);
      if (!newest) {
        this.log.info({ cluster: this.deps.cluster, dir: this.cfg.dir }, 'restore drill: no snapshot yet; trying again at the next drill interval');
        return undefined;
      }
      const r = await restoreDrill(newest.path, { ...this.opts.drill, signal: ac.signal, log: this.log });
      this.lastDrill = r;
      const now = Date.now();
      this.stats.lastDrillAttemptAt = now;
      if (r.verdict === 'ok') {
        this.stats.drills.ok++;
        this.stats.lastDrillAt = now;
        this.stats.lastDrillVerdict = `ok (${newest.name}: revision ${r.revision}, ${r.keys} keys, restored in ${r.restoreSeconds?.toFixed(2)}s)`;
      } else {
        this.stats.drills.failed++;
        this.stats.lastDrillVerdict = `failed (${r.reason}) at ${new Date(now).toISOString()}: ${newest.name}: ${r.detail ?? ''}`.slice(0, 500);
      }
      return r;
    })();
    this.drilling = p.finally(() => {
      this.drilling = undefined;
      this.drillAbort = undefined;
    });
    return this.drilling;
  }

  /** Carry a replaced schedule's counters and last results (a reload changed `backup`). */
  continueFrom(prev: BackupStats): void {
    const drills = (prev as Partial<BackupSchedulerStats>).drills;
    Object.assign(this.stats, prev, { failures: new Map(prev.failures), drills: drills ? { ...drills } : this.stats.drills });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.snapshotTimer) this.clock.clearTimeout(this.snapshotTimer);
    if (this.drillTimer) this.clock.clearTimeout(this.drillTimer);
    this.snapshotter.abort();
    this.drillAbort?.abort();
    await Promise.all([this.snapshotPending?.catch(() => undefined), this.snapshotter.settled(), this.drilling?.catch(() => undefined)]);
  }
}

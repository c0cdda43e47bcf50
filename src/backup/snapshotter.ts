import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Address } from '../config/address.js';
import type { BackupConfig } from '../config/schema.js';
import type { CheckTls } from '../upstream/health/http-check.js';
import type { Endpoint, EndpointState } from '../upstream/endpoint.js';
import {
  BackupError,
  etcdctlSnapshotStatus,
  fsyncDir,
  PARTIAL_NAME,
  pruneSnapshots,
  snapshotName,
  utcStamp,
  type BackupFailureReason,
  type EtcdctlSnapshotStatus,
} from './snapshot-file.js';
import { runDownload, runScan, type WorkerSetting } from './snapshot-work.js';
import { emptyBackupStats, type BackupStats } from './stats.js';

export { BackupError, type BackupFailureReason } from './snapshot-file.js';

// One verified snapshot of an etcd cluster, taken beside the data path:
//
//   1. pick a healthy member (a follower by default: the leader is busiest)
//   2. stream Maintenance.Snapshot from that member alone (no retries, no
//      failover inside an attempt: the next attempt picks again) into
//      DIR/.etcd-snapshot-<time>-<pid>-<rand>.partial, hashing as it goes
//   3. verify: etcd's trailing SHA-256 (ours), then `etcdctl snapshot status`
//      (the real tool: bolt opens it and its consistency check passes)
//   4. fsync, rename to DIR/etcd-snapshot-<UTC>-rev<revision>.db, fsync DIR
//   5. prune the oldest beyond `keep` (only files with that name pattern)
//
// Any failure deletes the partial file and leaves earlier snapshots alone.
// Only one snapshot runs at a time per directory: a second take() while one
// runs fails at once with `busy` (it does not wait: a caller that wants a
// fresh snapshot should not silently get one that started earlier). The lock
// is in-process and, for `ballast backup` run beside a daemon on the same
// directory, a lock file DIR/.ballast-backup.lock.
//
// The per-byte work (gRPC decoding, SHA-256, writes, the key scan) runs on a
// worker thread (snapshot-work.ts), streamed with backpressure in batches of
// at most 1 MiB, so the proxy's event loop keeps serving while a multi-GB
// database streams; without the compiled worker (TypeScript sources) the same
// code runs here, still as async I/O.

/** What the snapshotter needs to know about a member: the cluster's Endpoint satisfies it. */
export interface SnapshotMember {
  readonly id: string;
  readonly address: Address;
  readonly host: string;
  readonly port: number;
  readonly state: EndpointState;
  readonly servername?: string | undefined;
  readonly etcd?: { memberId: string; leaderId: string } | undefined;
}

export type MemberRole = 'leader' | 'follower' | 'unknown';

export function roleOf(m: SnapshotMember): MemberRole {
  if (!m.etcd) return 'unknown';
  return m.etcd.memberId === m.etcd.leaderId ? 'leader' : 'follower';
}

export interface MemberChoice {
  member: SnapshotMember;
  role: MemberRole;
  /** Set when the choice is not what `from` asked for (a follower was wanted, only the leader is up). */
  fallback?: string;
}

/**
 * Pick the member to snapshot: only `up` members qualify.
 *   follower: the first up non-leader; the leader only if no follower is up
 *   leader:   the up leader, or nothing
 *   any:      the first up member
 * `avoid` (the member whose snapshot failed last) is passed over when another
 * member qualifies, so a member that breaks snapshots but passes health
 * checks cannot block every attempt.
 */
export function chooseMember(members: readonly SnapshotMember[], from: BackupConfig['from'], avoid?: string): MemberChoice | undefined {
  const up = members.filter((m) => m.state === 'up');
  const prefer = (list: SnapshotMember[]) => list.find((m) => m.id !== avoid) ?? list[0];
  if (from === 'leader') {
    const leader = up.find((m) => roleOf(m) === 'leader');
    return leader ? { member: leader, role: 'leader' } : undefined;
  }
  if (from === 'any') {
    const m = prefer(up);
    return m ? { member: m, role: roleOf(m) } : undefined;
  }
  const followers = up.filter((m) => roleOf(m) !== 'leader');
  const f = prefer(followers);
  if (f) return { member: f, role: roleOf(f) };
  const leader = up.find((m) => roleOf(m) === 'leader');
  if (leader) return { member: leader, role: 'leader', fallback: 'no follower is up: snapshotting from the leader' };
  return undefined;
}

export interface SnapshotterOptions {
  /** Cluster name, for logs. */
  cluster: string;
  dir: string;
  keep: number;
  from: BackupConfig['from'];
  /** The whole attempt (stream, verification, rename) must finish within this. */
  timeoutMs: number;
  /** The cluster's endpoints as health checks see them now. */
  members: () => readonly SnapshotMember[];
  /** TLS client material for the members (the cluster's etcd health-check profile). */
  tls: () => CheckTls | undefined;
  log: Logger;
  /** Shared with /metrics and /status; a fresh one if absent. */
  stats?: BackupStats;
  /** etcdctl binary (default BALLAST_ETCDCTL_BIN or etcdctl on PATH). */
  etcdctl?: string;
  /** Wall clock for file names and stats (tests). */
  now?: () => Date;
  /** Called as data arrives (progress, tests): the first chunk at once, then at most every 50 ms from a worker. */
  onProgress?: (p: SnapshotProgress) => void;
  /**
   * Where the per-byte work runs: default the compiled snapshot-worker.js
   * beside this module (a worker thread), or this thread when there is none;
   * a path/URL to use that worker file; false for this thread.
   */
  worker?: WorkerSetting;
}

export interface SnapshotProgress {
  member: string;
  partial: string;
  /** Bytes written so far. */
  bytes: number;
  /** Bytes the member announced (database + 32), once known. */
  total: number | undefined;
}

export interface SnapshotResult {
  /** Absolute path of the verified snapshot. */
  file: string;
  name: string;
  /** Revision of the store in the snapshot (what a restored member serves). */
  revision: number;
  /** Live keys at that revision, from reading the file (undefined if our reader could not: see the log). */
  keys: number | undefined;
  /** File size in bytes (database + 32-byte hash). */
  size: number;
  /** etcdctl snapshot status of the file. */
  status: EtcdctlSnapshotStatus;
  sha256: string;
  durationMs: number;
  member: string;
  role: MemberRole;
  startedAt: Date;
  /** Names pruned after this snapshot. */
  pruned: string[];
  /** Where the time went: streaming to disk (fsync included), etcdctl snapshot status, our key scan. */
  phases: { streamMs: number; etcdctlMs: number; scanMs: number };
}

const LOCK_NAME = '.ballast-backup.lock';

export class Snapshotter {
  readonly stats: BackupStats;
  private current: Promise<SnapshotResult> | undefined;
  private controller: AbortController | undefined;
  /** The member whose last attempt failed: passed over next time if another one qualifies. */
  private lastFailedMember: string | undefined;
  private warnedDirMode = false;

  constructor(readonly opts: SnapshotterOptions) {
    this.stats = opts.stats ?? emptyBackupStats();
  }

  get running(): boolean {
    return this.current !== undefined;
  }

  /** Abort the running snapshot, if any (its attempt fails with `aborted`). */
  abort(): void {
    this.controller?.abort(new BackupError('aborted', 'stopped'));
  }

  /** Wait for the running snapshot to settle (success or failure). */
  async settled(): Promise<void> {
    await this.current?.catch(() => undefined);
  }

  /** Take one verified snapshot. Rejects with BackupError (reason) on any failure, `busy` if one is running. */
  take(signal?: AbortSignal): Promise<SnapshotResult> {
    if (this.current) {
      const err = new BackupError('busy', 'a snapshot is already running');
      this.fail(err, Date.now(), false);
      return Promise.reject(err);
    }
    const controller = new AbortController();
    this.controller = controller;
    const onAbort = () => controller.abort(new BackupError('aborted', 'stopped'));
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    this.current = this.attempt(controller.signal).finally(() => {
      signal?.removeEventListener('abort', onAbort);
      this.current = undefined;
      this.controller = undefined;
    });
    return this.current;
  }

  private async attempt(signal: AbortSignal): Promise<SnapshotResult> {
    const o = this.opts;
    const t0 = Date.now();
    const startedAt = (o.now ?? (() => new Date()))();
    const deadline = t0 + o.timeoutMs;
    const timeoutController = new AbortController();
    const timer = setTimeout(() => timeoutController.abort(new BackupError('timeout', `snapshot did not finish within ${o.timeoutMs}ms`)), o.timeoutMs);
    timer.unref();
    const both = AbortSignal.any([signal, timeoutController.signal]);
    let member: string | undefined;
    let partial: string | undefined;
    let lock: DirLock | undefined;
    try {
      await fsp.mkdir(o.dir, { recursive: true, mode: 0o700 }).catch((err: Error) => {
        throw new BackupError('io', `cannot create ${o.dir}: ${err.message}`);
      });
      if (!this.warnedDirMode) {
        // Snapshots hold every Secret; a directory others may write lets them swap or delete one.
        const mode = (await fsp.stat(o.dir)).mode & 0o777;
        if ((mode & 0o022) !== 0) {
          this.warnedDirMode = true;
          o.log.warn({ dir: o.dir, mode: mode.toString(8).padStart(4, '0') }, `backup.dir ${o.dir} is writable by ${mode & 0o002 ? 'every user' : 'its group'} (mode ${mode.toString(8).padStart(4, '0')}): they could replace or delete snapshots; chmod 0700 it`);
        }
      }
      lock = await DirLock.acquire(o.dir, o.timeoutMs);
      await this.removeStalePartials();

      const choice = chooseMember(o.members(), o.from, this.lastFailedMember);
      if (!choice) {
        const seen = o.members().map((m) => `${m.id} ${m.state}`).join(', ') || 'no endpoints';
        throw new BackupError('no_healthy_member', o.from === 'leader' ? `no healthy leader in cluster ${o.cluster} (${seen})` : `no healthy member in cluster ${o.cluster} (${seen})`);
      }
      member = choice.member.id;
      if (choice.fallback) o.log.warn({ cluster: o.cluster, member, from: o.from }, `backup: ${choice.fallback} ${member}`);
      o.log.info({ cluster: o.cluster, member, role: choice.role }, `backup: snapshot of ${o.cluster} from ${member} (${choice.role}) started`);

      partial = path.join(o.dir, `.etcd-snapshot-${utcStamp(startedAt)}-${process.pid}-${randomBytes(3).toString('hex')}.partial`);
      const tStream = Date.now();
      const m = choice.member;
      const t = o.tls();
      const servername = t?.servername(m as unknown as Endpoint);
      const { sha256, size } = await runDownload(
        {
          member: { id: m.id, address: m.address, host: m.host, port: m.port },
          ...(t ? { tls: { ...(t.ca ? { ca: t.ca } : {}), ...(t.cert ? { cert: t.cert } : {}), ...(t.key ? { key: t.key } : {}) } } : {}),
          ...(servername ? { servername } : {}),
          file: partial,
          dialTimeoutMs: Math.min(o.timeoutMs, 5_000),
        },
        both,
        (p) => o.onProgress?.({ member: m.id, partial: partial!, bytes: p.bytes, total: p.total }),
        o.worker,
      );
      const tStatus = Date.now();

      // The real tool: bolt opens it, its page check passes, every bucket walks.
      const left = () => Math.max(1_000, deadline - Date.now());
      const status = await etcdctlSnapshotStatus(partial, { ...(o.etcdctl ? { etcdctl: o.etcdctl } : {}), timeoutMs: left(), signal: both }).catch((err: unknown) => {
        throw both.aborted ? abortReason(both) : err;
      });
      if (status.totalSize !== size - 32) throw new BackupError('unreadable', `etcdctl reads a ${status.totalSize}-byte database from a ${size}-byte file (expected ${size - 32})`);
      // Our own read of the key space: live keys and the exact revision a
      // restore serves. Advisory here (etcdctl has verified the file); the
      // restore drill insists on it.
      let keys: number | undefined;
      let revision = status.revision;
      const tScan = Date.now();
      try {
        const c = await runScan(partial, both, o.worker);
        keys = c.liveKeys;
        if (c.maxRevision !== status.revision) o.log.warn({ cluster: o.cluster, ours: c.maxRevision, etcdctl: status.revision }, 'backup: our bolt reader and etcdctl disagree on the revision');
        revision = c.revision;
      } catch (err) {
        o.log.warn({ cluster: o.cluster, err: (err as Error).message }, `backup: could not count keys in the snapshot (etcdctl verified it): ${(err as Error).message}`);
      }
      const phases = { streamMs: tStatus - tStream, etcdctlMs: tScan - tStatus, scanMs: Date.now() - tScan };
      if (both.aborted) throw abortReason(both);

      const name = snapshotName(startedAt, revision);
      const file = path.join(o.dir, name);
      try {
        await fsp.rename(partial, file);
        partial = undefined;
        await fsyncDir(o.dir);
      } catch (err) {
        throw new BackupError('io', `cannot move the snapshot into place: ${(err as Error).message}`);
      }
      let pruned: string[] = [];
      try {
        pruned = await pruneSnapshots(o.dir, o.keep, name);
        if (pruned.length > 0) await fsyncDir(o.dir);
      } catch (err) {
        o.log.warn({ cluster: o.cluster, err: (err as Error).message }, `backup: pruning old snapshots failed: ${(err as Error).message}`);
      }
      const durationMs = Date.now() - t0;
      const result: SnapshotResult = { file, name, revision, keys, size, status, sha256, durationMs, member, role: choice.role, startedAt, pruned, phases };
      const s = this.stats;
      s.lastSuccessAt = Date.now();
      s.lastDurationMs = durationMs;
      s.lastSize = size;
      s.lastFile = file;
      s.lastRevision = revision;
      s.lastError = undefined;
      this.lastFailedMember = undefined;
      o.log.info(
        { cluster: o.cluster, file, revision, keys, size, durationMs, member, role: choice.role, pruned, ...phases },
        `backup: verified snapshot ${name} (revision ${revision}, ${keys ?? '?'} keys, ${size} bytes) from ${member} in ${(durationMs / 1000).toFixed(2)}s${pruned.length ? `; pruned ${pruned.length}` : ''}`,
      );
      return result;
    } catch (err) {
      const e = err instanceof BackupError ? err : new BackupError('io', (err as Error).message ?? String(err));
      const failure = new BackupError(e.reason, e.message, member);
      if (member !== undefined && ['connect', 'stream', 'truncated', 'timeout', 'bad_hash'].includes(failure.reason)) this.lastFailedMember = member;
      this.fail(failure, t0, true);
      throw failure;
    } finally {
      clearTimeout(timer);
      if (partial !== undefined) await fsp.rm(partial, { force: true }).catch(() => undefined);
      await lock?.release();
    }
  }

  private fail(err: BackupError, t0: number, attempted: boolean): void {
    const s = this.stats;
    s.failures.set(err.reason, (s.failures.get(err.reason) ?? 0) + 1);
    if (attempted) {
      s.lastError = `${err.reason}: ${err.message}`;
      s.lastDurationMs = Date.now() - t0;
    }
    const level = err.reason === 'busy' || err.reason === 'aborted' ? 'warn' : 'error';
    this.opts.log[level]({ cluster: this.opts.cluster, reason: err.reason, member: err.member, err: err.message }, `backup failed (${err.reason})${err.member ? ` from ${err.member}` : ''}: ${err.message}; earlier snapshots are untouched`);
  }

  /** Partials left by a crashed process: we hold the directory lock, so nobody is writing them. */
  private async removeStalePartials(): Promise<void> {
    for (const name of await fsp.readdir(this.opts.dir).catch(() => [] as string[])) {
      if (PARTIAL_NAME.test(name)) {
        await fsp.rm(path.join(this.opts.dir, name), { force: true }).catch(() => undefined);
        this.opts.log.warn({ file: name }, `backup: removed a partial snapshot left by an earlier attempt: ${name}`);
      }
    }
  }
}

function abortReason(signal: AbortSignal): BackupError {
  const r: unknown = signal.reason;
  return r instanceof BackupError ? r : new BackupError('aborted', 'aborted');
}

/**
 * DIR/.ballast-backup.lock, created exclusively, holding "pid host time".
 * A lock is stale when its process is gone (same host) or it is older than
 * the attempt timeout plus a minute (another host, or a recycled pid).
 */
class DirLock {
  private constructor(private readonly file: string) {}

  static async acquire(dir: string, timeoutMs: number): Promise<DirLock> {
    const file = path.join(dir, LOCK_NAME);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await fsp.open(file, 'wx', 0o600);
        await fh.writeFile(`${process.pid} ${os.hostname()} ${Date.now()}\n`);
        await fh.close();
        return new DirLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new BackupError('io', `cannot create the lock ${file}: ${(err as Error).message}`);
      }
      const text = await fsp.readFile(file, 'utf8').catch(() => '');
      const [pidText, host, atText] = text.trim().split(/\s+/);
      const pid = Number(pidText);
      const at = Number(atText);
      const sameHost = host === os.hostname();
      const alive = sameHost && Number.isInteger(pid) && pid > 0 && pidAlive(pid);
      const tooOld = !Number.isFinite(at) || Date.now() - at > timeoutMs + 60_000;
      if ((sameHost && !alive) || tooOld || text === '') {
        await fsp.rm(file, { force: true });
        continue;
      }
      throw new BackupError('busy', `another snapshot is running on ${dir} (pid ${pid}${sameHost ? '' : ` on ${host}`}, lock ${file})`);
    }
    throw new BackupError('busy', `could not take the lock ${file}`);
  }

  async release(): Promise<void> {
    await fsp.rm(this.file, { force: true }).catch(() => undefined);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { buildTlsProfiles } from '../tls/profiles.js';
import { systemClock } from '../clock.js';
import { ConfigError, loadConfigFile, type Config } from '../config/load.js';
import { createLogger } from '../log.js';
import { serverName, type TlsProfileRuntime } from '../tls/tls-profile.js';
import { Cluster } from '../upstream/cluster.js';
import { EtcdMemberDiscovery } from '../upstream/discovery/etcd-members.js';
import { EtcdCheck } from '../upstream/health/etcd-check.js';
import type { CheckTls } from '../upstream/health/http-check.js';
import { BackupError, Snapshotter, type SnapshotResult } from './snapshotter.js';

// `ballast backup --config FILE`: one verified snapshot, now, with the same
// member choice, TLS material and verification as the scheduler in
// `ballast run`, without starting any listener. The cluster's members are
// judged by one pass of the real etcd health check (the same EtcdCheck
// `ballast run` uses: answers, knows a leader, no alarm, not a learner, not
// lagging), after one member-list sync when the cluster uses etcd-members
// discovery. Logs go to stderr; stdout gets one summary line.

const USAGE = `usage: ballast backup --config FILE [--log-level LEVEL]

Takes one verified snapshot of the etcd cluster named in the config's backup
section, into backup.dir, and prunes beyond backup.keep. Prints one line:
  snapshot=FILE revision=N keys=N size=BYTES seconds=X member=HOST:PORT role=follower|leader
Exit: 0 ok, 1 the snapshot failed (reason on stderr), 2 usage or config.
`;

export async function runBackupCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`ballast backup: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const path = values.config;
  if (!path) {
    process.stderr.write(`ballast backup: --config FILE is required\n\n${USAGE}`);
    return 2;
  }
  let config: Config;
  try {
    config = loadConfigFile(path);
  } catch (err) {
    process.stderr.write(`ballast: ${err instanceof ConfigError ? err.message : `${path}: ${(err as Error).message}`}\n`);
    return 2;
  }
  const b = config.backup;
  if (!b) {
    process.stderr.write(
      `ballast backup: ${path} has no backup section. Add one naming the etcd cluster (health.check: etcd) and a directory, e.g.\n\n` +
        `backup:\n  cluster: ${config.clusters.find((c) => c.health.check === 'etcd')?.name ?? 'etcd'}\n  dir: /var/lib/ballast/backups\n`,
    );
    return 2;
  }
  const level = values['log-level'] ?? 'warn';
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) {
    process.stderr.write(`ballast backup: --log-level expects trace, debug, info, warn, error, fatal or silent, got "${level}"\n`);
    return 2;
  }
  const log = createLogger(level, 2);
  let profiles: Map<string, TlsProfileRuntime>;
  try {
    profiles = buildTlsProfiles(config, log);
  } catch (err) {
    process.stderr.write(`ballast: ${path}: ${(err as Error).message}\n`);
    return 2;
  }
  const cc = config.clusters.find((c) => c.name === b.cluster)!;
  const cluster = new Cluster(cc, systemClock, log);
  const tls = () => checkTlsOf(profiles, cc.health.tls ?? cc.tls);
  const check = new EtcdCheck(cluster, () => cc.health, tls);
  let discovery: EtcdMemberDiscovery | undefined;
  try {
    if (cc.discovery === 'etcd-members') {
      discovery = new EtcdMemberDiscovery(cluster, () => cc.endpoints, tls, systemClock, log);
      await discovery.sync();
    }
    await healthPass(cluster, check, log);
    const snapshotter = new Snapshotter({ cluster: cc.name, dir: b.dir, keep: b.keep, from: b.from, timeoutMs: b.timeout, members: () => cluster.endpoints, tls, log });
    const ac = new AbortController();
    const onSignal = () => ac.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const r = await snapshotter.take(ac.signal);
      process.stdout.write(`${formatBackupLine(r)}\n`);
      return 0;
    } catch (err) {
      const e = err instanceof BackupError ? err : new BackupError('io', (err as Error).message);
      process.stderr.write(`ballast backup: failed: reason=${e.reason}${e.member ? ` member=${e.member}` : ''}: ${e.message}\n`);
      return 1;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  } finally {
    discovery?.stop();
    check.close();
    cluster.stop();
    for (const p of profiles.values()) p.close();
    await new Promise<void>((r) => log.flush(() => r()));
  }
}

/** snapshot=FILE revision=N keys=N size=BYTES seconds=X member=ID role=R */
export function formatBackupLine(r: SnapshotResult): string {
  return `snapshot=${r.file} revision=${r.revision} keys=${r.keys ?? '-'} size=${r.size} seconds=${(r.durationMs / 1000).toFixed(2)} member=${r.member} role=${r.role}`;
}

/** One etcd check of every endpoint, in order (later ones judge raft lag against earlier ones), each bounded by health.timeout. */
async function healthPass(cluster: Cluster, check: EtcdCheck, log: Logger): Promise<void> {
  // A cold process pays for each member's first TLS handshake and gRPC channel: give it room.
  const timeout = Math.max(cluster.config.health.timeout, 2_000);
  for (const e of cluster.endpoints) {
    const t0 = performance.now();
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeout);
    let r;
    try {
      r = await Promise.race([
        check.run(e, ac.signal, timeout),
        new Promise<never>((_, reject) => ac.signal.addEventListener('abort', () => reject(new Error(`timeout after ${timeout}ms`)), { once: true })),
      ]);
    } catch (err) {
      r = { ok: false, code: 'timeout', reason: (err as Error).message };
    } finally {
      clearTimeout(timer);
    }
    cluster.reportCheck(e, { ...r, durationMs: performance.now() - t0 });
    if (!r.ok) log.warn({ cluster: cluster.name, endpoint: e.id, reason: r.reason }, `${cluster.name}/${e.id}: not healthy: ${r.reason}`);
  }
}

/** The same material Ballast.checkTls hands the health checks. */
function checkTlsOf(profiles: Map<string, TlsProfileRuntime>, name: string | undefined): CheckTls | undefined {
  if (name === undefined) return undefined;
  const p = profiles.get(name);
  if (!p) return undefined;
  const m = p.material;
  return {
    version: p.version,
    ...(m.ca ? { ca: m.ca } : {}),
    ...(m.cert ? { cert: m.cert, key: m.key! } : {}),
    servername: (e) => serverName(e, p.config.servername),
  };
}

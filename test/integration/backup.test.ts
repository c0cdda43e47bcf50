// Verified etcd backups and the restore drill that proves them, on real etcd:
// data written through ballast comes back, key for key, from a throwaway etcd
// restored from the snapshot. Members die and hang mid-snapshot, files get
// corrupted, snapshots pile up and collide; every case must end with either a
// verified snapshot or a clear reason and no file that looks like one.
//
// This file is the CI's routine restoration test: every run restores real
// snapshots (in-process and through `node dist/cli.js`) and compares them
// with what was written.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupScheduler } from '../../src/backup/backup-scheduler.js';
import { restoreDrill } from '../../src/backup/restore-drill.js';
import { SNAPSHOT_NAME, verifySnapshotHash } from '../../src/backup/snapshot-file.js';
import { BackupError, Snapshotter, type SnapshotterOptions } from '../../src/backup/snapshotter.js';
import { parseConfig } from '../../src/config/load.js';
import { memoryLogger, REPO, runCliToEnd, startInProcess, writeConfig, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePort } from '../support/ports.js';
import { eventually } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

const execFileP = promisify(execFile);
const WORKER = path.join(REPO, 'dist/backup/snapshot-worker.js');

/** A known data set: 50 keys under /registry/backup-test/ with values that cannot be guessed. */
function dataSet(tag: string): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i < 50; i++) m.set(`/registry/backup-test/${tag}-${String(i).padStart(3, '0')}`, `${tag}:${i}:${randomBytes(12).toString('hex')}`);
  return m;
}

async function writeThrough(port: number, data: Map<string, string>): Promise<number> {
  const client = new Etcd3({ hosts: `http://127.0.0.1:${port}` });
  try {
    for (const [k, v] of data) await client.put(k).value(v);
    const r = await client.get('/registry/backup-test/').exec();
    return Number(r.header.revision);
  } finally {
    client.close();
  }
}

function sampleAsStrings(sample: Map<string, Buffer>): Map<string, string> {
  return new Map([...sample].map(([k, v]) => [k, v.toString('utf8')]));
}

async function listDir(d: string): Promise<string[]> {
  return (await fsp.readdir(d)).sort();
}

/** key=value pairs of a summary line. */
function fields(line: string): Record<string, string> {
  return Object.fromEntries(line.trim().split(/\s+/).map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
}

// ---------------------------------------------------------------------------

describe('plain etcd: scheduler, keep, concurrency, failures mid-stream, corruption', () => {
  let dir: string;
  let etcd: EtcdCluster;
  let proxy: InProcess;
  let port: number;
  const cluster = () => proxy.ballast.clusters.get('etcd')!;
  /** The proxy's config, with `backup` as given (YAML, or empty for none). */
  const configWith = (backup: string) => `
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    health: { check: etcd }
${backup}`;

  beforeAll(async () => {
    dir = await makeTempDir();
    etcd = await EtcdCluster.start({ size: 3 });
    port = await freePort();
    proxy = await startInProcess(
      configWith(`backup:
  cluster: etcd
  dir: ${path.join(dir, 'scheduled')}
  interval: 2s
  keep: 3
  drillInterval: 1500ms
`),
    );
    await eventually(() => cluster().endpoints.every((e) => e.state === 'up'), 'members up');
  });

  afterAll(async () => {
    await proxy?.stop();
    await etcd?.close();
    await removeDir(dir);
  });

  /** A snapshotter over the running ballast's view of the cluster. */
  function snapshotter(sub: string, extra: Partial<SnapshotterOptions> = {}): Snapshotter {
    const { log } = memoryLogger();
    return new Snapshotter({
      cluster: 'etcd',
      dir: path.join(dir, sub),
      keep: 5,
      from: 'follower',
      timeoutMs: 30_000,
      members: () => cluster().endpoints,
      tls: () => undefined,
      log,
      // The compiled worker thread, as `ballast run` uses it (the scheduler test below runs the same code in-thread).
      worker: WORKER,
      ...extra,
    });
  }

  const memberIndex = (id: string) => etcd.members.findIndex((m) => m.clientUrl.endsWith(`//${id}`));

  it('the scheduler snapshots a follower once members are checked, drills the newest snapshot, and reports both', async () => {
    const data = dataSet('sched');
    const revision = await writeThrough(port, data);
    const { log } = memoryLogger();
    const scheduler = BackupScheduler.fromConfig(proxy.ballast, proxy.ballast.config.backup, log)!;
    proxy.ballast.backup = scheduler;
    try {
      await eventually(() => scheduler.stats.drills.ok + scheduler.stats.drills.failed > 0, 'a scheduled snapshot and drill', 30_000, 100);
      expect(scheduler.lastResult).toMatchObject({ revision, keys: data.size, role: 'follower' });
      expect(scheduler.lastDrill).toMatchObject({ verdict: 'ok', revision, keys: data.size });
      expect(scheduler.stats.lastDrillVerdict).toMatch(/^ok \(etcd-snapshot-\d{8}T\d{6}Z-rev\d+\.db: revision \d+, 50 keys/);
      expect(scheduler.stats).toMatchObject({ lastRevision: revision, lastFile: scheduler.lastResult!.file, lastError: undefined });
      expect(scheduler.stats.lastSuccessAt).toBeGreaterThan(Date.now() - 30_000);
      expect(scheduler.stats.lastDrillAt).toBeGreaterThan(Date.now() - 30_000);
      // What /metrics exports (src/admin/metrics.ts reads ballast.backup.stats).
      const { body } = await proxy.ballast.metrics.render();
      expect(Number(/^ballast_backup_last_success_timestamp_seconds (\S+)$/m.exec(body)?.[1])).toBeCloseTo(scheduler.stats.lastSuccessAt! / 1000, 0);
      expect(Number(/^ballast_backup_size_bytes (\S+)$/m.exec(body)?.[1])).toBe(scheduler.lastResult!.size);
      expect(Number(/^ballast_restore_drill_last_success_timestamp_seconds (\S+)$/m.exec(body)?.[1])).toBeGreaterThan(0);
      // The drill served exactly the data set (the only keys in this cluster so far).
      const full = await restoreDrill(scheduler.lastResult!.file, { sample: 100 });
      expect(full.verdict).toBe('ok');
      expect(sampleAsStrings(full.sample)).toEqual(data);
    } finally {
      await scheduler.stop();
      proxy.ballast.backup = undefined;
    }
    // Stopped means stopped: no snapshot starts afterwards.
    const before = await listDir(path.join(dir, 'scheduled'));
    await new Promise((r) => setTimeout(r, 2_200)); // longer than the 2s interval
    expect(await listDir(path.join(dir, 'scheduled'))).toEqual(before);
    expect(before.filter((n) => SNAPSHOT_NAME.test(n)).length).toBeLessThanOrEqual(3);
  });

  it('a reload that changes the backup section replaces the schedule (counters carry over); one that removes it stops backups', async () => {
    // The first schedule snapshots every 2 s, so a schedule that failed to stop would show.
    const first = parseConfig(configWith(`backup: { cluster: etcd, dir: ${path.join(dir, 'reload-a')}, interval: 2s, keep: 5 }`));
    await proxy.ballast.reload(first);
    try {
      const a = proxy.ballast.backup as BackupScheduler;
      expect(a.cfg.dir).toBe(path.join(dir, 'reload-a'));
      // The first snapshot comes once members are checked (they are), not after the hour.
      await eventually(() => a.stats.lastSuccessAt !== undefined, 'a snapshot in reload-a', 30_000, 100);
      const okBefore = a.stats.lastSuccessAt!;
      // A changed backup section: a new schedule, into the new directory.
      await proxy.ballast.reload(parseConfig(configWith(`backup: { cluster: etcd, dir: ${path.join(dir, 'reload-b')}, interval: 1h, keep: 2 }`)));
      const b = proxy.ballast.backup as BackupScheduler;
      expect(b).not.toBe(a);
      expect(b.cfg.dir).toBe(path.join(dir, 'reload-b'));
      expect(b.stats.lastSuccessAt).toBe(okBefore); // carried over, not reset to "never"
      // The file is in place a moment before its verification is counted: wait for the count.
      await eventually(() => (b.stats.lastSuccessAt ?? 0) > okBefore, 'a verified snapshot by the new schedule', 30_000, 100);
      expect(path.dirname(b.stats.lastFile!)).toBe(path.join(dir, 'reload-b'));
      expect((await listDir(path.join(dir, 'reload-b'))).filter((n) => SNAPSHOT_NAME.test(n))).toContain(path.basename(b.stats.lastFile!));
      // The old schedule is stopped: nothing more lands in reload-a.
      const inA = await listDir(path.join(dir, 'reload-a'));
      await new Promise((r) => setTimeout(r, 2_500)); // longer than its 2 s interval
      expect(await listDir(path.join(dir, 'reload-a'))).toEqual(inA);
      // No backup section: backups stop.
      await proxy.ballast.reload(parseConfig(configWith('')));
      expect(proxy.ballast.backup).toBeUndefined();
    } finally {
      await proxy.ballast.applyBackup(undefined);
    }
  });

  it('keep prunes the oldest snapshots and never touches a foreign file', async () => {
    const s = snapshotter('keep', { keep: 2 });
    const d = s.opts.dir;
    await fsp.mkdir(d, { recursive: true });
    const foreign = { 'README.txt': 'hands off', 'etcd-snapshot-manual.db': 'an operator copied this' };
    for (const [n, c] of Object.entries(foreign)) await fsp.writeFile(path.join(d, n), c);
    const client = new Etcd3({ hosts: `http://127.0.0.1:${port}` });
    const names: string[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        await client.put(`/keep/${i}`).value(String(i)); // a new revision: a new name, even within the same second
        names.push((await s.take()).name);
      }
    } finally {
      client.close();
    }
    expect(new Set(names).size).toBe(4);
    const left = await listDir(d);
    expect(left.filter((n) => SNAPSHOT_NAME.test(n))).toEqual(names.slice(2).sort());
    expect(left).toEqual([...names.slice(2), ...Object.keys(foreign)].sort());
    for (const [n, c] of Object.entries(foreign)) expect(await fsp.readFile(path.join(d, n), 'utf8')).toBe(c);
  });

  it('warns once when the backup directory is writable by others (snapshots hold every Secret)', async () => {
    const { log, lines } = memoryLogger();
    const s = snapshotter('open-dir', { log });
    await fsp.mkdir(s.opts.dir, { recursive: true });
    await fsp.chmod(s.opts.dir, 0o777);
    await s.take();
    await s.take();
    const warned = lines.filter((l) => l.level === 'warn' && /is writable by every user \(mode 0777\).*chmod 0700/.test(l.msg));
    expect(warned).toHaveLength(1);
    const { log: quiet, lines: none } = memoryLogger();
    const t = snapshotter('closed-dir', { log: quiet });
    await t.take();
    expect(none.filter((l) => l.level === 'warn' && /writable/.test(l.msg))).toEqual([]);
  });

  it('two snapshots never run at once: the second is refused as busy, in-process and through the directory lock', async () => {
    const s1 = snapshotter('busy');
    let s2Result: Promise<unknown> | undefined;
    const s2 = snapshotter('busy'); // another Snapshotter on the same directory (as `ballast backup` beside `ballast run`)
    const s1b = new Snapshotter({
      ...s1.opts,
      onProgress: () => {
        s2Result ??= s2.take().then(
          () => 'took one',
          (e: BackupError) => e,
        );
      },
    });
    const first = s1b.take();
    const second = s1b.take();
    await expect(second).rejects.toMatchObject({ reason: 'busy' });
    expect(s1b.running).toBe(true);
    const r = await first;
    expect(r.file).toMatch(/etcd-snapshot-.*\.db$/);
    expect(await s2Result).toMatchObject({ reason: 'busy', message: expect.stringMatching(/another snapshot is running/) });
    expect(s1b.stats.failures.get('busy')).toBe(1);
    expect(s2.stats.failures.get('busy')).toBe(1);
    expect((await listDir(s1.opts.dir)).filter((n) => SNAPSHOT_NAME.test(n))).toEqual([r.name]);
    // The lock went with the snapshot: the next one is fine. (A new revision
    // first: two snapshots in the same second at the same revision share a
    // name, and the second replaces the first, which holds the same data.)
    const client = new Etcd3({ hosts: `http://127.0.0.1:${port}` });
    try {
      await client.put('/busy/next').value('1');
    } finally {
      client.close();
    }
    const next = await s2.take();
    expect(await listDir(s1.opts.dir)).toEqual([r.name, next.name].sort());
  });

  it('a member killed mid-snapshot: the attempt fails clearly, leaves nothing, and the next one uses another member', async () => {
    // ~20 MB, so the stream takes a moment.
    const big = new Etcd3({ hosts: etcd.clientUrls() });
    try {
      const value = Buffer.alloc(100_000);
      for (let i = 0; i < 200; i += 10) await Promise.all(Array.from({ length: 10 }, (_, j) => big.put(`/big/${String(i + j).padStart(4, '0')}`).value(value.fill(i + j))));
    } finally {
      big.close();
    }
    let killed: string | undefined;
    let killing: Promise<void> | undefined;
    const sawPartial: string[] = [];
    const s = snapshotter('kill', {
      onProgress: (p) => {
        if (killed !== undefined) return;
        killed = p.member;
        sawPartial.push(path.basename(p.partial));
        killing = etcd.kill(memberIndex(p.member));
      },
    });
    const err = (await s.take().then(
      () => undefined,
      (e: unknown) => e,
    )) as BackupError;
    await killing;
    expect(err).toBeInstanceOf(BackupError);
    expect(err.reason).toBe('stream');
    expect(err.member).toBe(killed);
    expect(err.message).toMatch(/snapshot stream broke after \d+ bytes/);
    expect(sawPartial[0]).toMatch(/^\.etcd-snapshot-.*\.partial$/);
    expect(await listDir(s.opts.dir)).toEqual([]); // no partial, no lock, no "good" file
    expect(s.stats).toMatchObject({ lastSuccessAt: undefined, lastError: expect.stringMatching(/^stream: /) });
    expect(s.stats.failures.get('stream')).toBe(1);

    const killedEndpoint = cluster().find(killed!)!;
    expect(killedEndpoint.etcd?.memberId).not.toBe(killedEndpoint.etcd?.leaderId); // from: follower
    await eventually(() => killedEndpoint.state === 'down', 'the killed member marked down');
    const ok = await s.take();
    expect(ok.member).not.toBe(killed);
    expect(ok.keys).toBeGreaterThanOrEqual(200);
    expect(ok.size).toBeGreaterThan(20_000_000);
    expect(await listDir(s.opts.dir)).toEqual([ok.name]);
    await etcd.restart(memberIndex(killed!));
    await eventually(() => killedEndpoint.state === 'up', 'the restarted member up again');
  });

  it('a member that hangs mid-snapshot (SIGSTOP): the attempt times out and leaves nothing', async () => {
    let stopped = -1;
    const s = snapshotter('hang', {
      timeoutMs: 2_500,
      onProgress: (p) => {
        if (stopped < 0) {
          stopped = memberIndex(p.member);
          etcd.stop(stopped);
        }
      },
    });
    const t0 = Date.now();
    try {
      await expect(s.take()).rejects.toMatchObject({ reason: 'timeout' });
      expect(Date.now() - t0).toBeLessThan(6_000);
      expect(await listDir(s.opts.dir)).toEqual([]);
    } finally {
      if (stopped >= 0) etcd.cont(stopped);
    }
    await etcd.waitHealthy(stopped);
  });

  it('a byte flipped in the middle fails verification (bad_hash) and the drill; the intact file drills ok through the CLI', async () => {
    const s = snapshotter('corrupt');
    const good = await s.take();
    // The intact snapshot, drilled by the CLI on its directory (newest file).
    const cli = await runCliToEnd(['restore-drill', '--dir', s.opts.dir], { timeoutMs: 60_000 });
    expect(cli.stderr).toBe('');
    expect(cli.code).toBe(0);
    expect(cli.stdout.trim().split('\n')).toHaveLength(1);
    expect(fields(cli.stdout)).toMatchObject({ snapshot: good.file, revision: String(good.revision), keys: String(good.keys), verdict: 'ok' });
    expect(Number(fields(cli.stdout).restore_seconds)).toBeGreaterThan(0);

    const badDir = path.join(dir, 'corrupt-copy');
    await fsp.mkdir(badDir);
    const bad = path.join(badDir, good.name);
    const bytes = await fsp.readFile(good.file);
    bytes[bytes.length >> 1]! ^= 0x01;
    await fsp.writeFile(bad, bytes);
    const check = await verifySnapshotHash(bad);
    expect(check).toMatchObject({ ok: false, problem: expect.stringMatching(/SHA-256 mismatch/) });
    // etcdctl alone would have called it fine: bolt's page check does not read values.
    const { stdout } = await execFileP('etcdctl', ['snapshot', 'status', bad, '-w', 'json'], { env: { ...process.env, ETCDCTL_API: '3' } });
    expect(JSON.parse(stdout)).toMatchObject({ revision: good.status.revision });
    const drill = await restoreDrill(bad);
    expect(drill).toMatchObject({ verdict: 'failed', reason: 'bad_hash' });
    const cliBad = await runCliToEnd(['restore-drill', '--snapshot', bad], { timeoutMs: 60_000 });
    expect(cliBad.code).toBe(1);
    expect(cliBad.stdout.trim()).toBe(`snapshot=${bad} revision=- keys=- restore_seconds=- verdict=failed reason=bad_hash`);
    expect(cliBad.stderr).toMatch(/bad_hash: SHA-256 mismatch/);
  });
});

// ---------------------------------------------------------------------------

describe('TLS-only etcd: `ballast backup` over mTLS and `ballast restore-drill`, both through the CLI', () => {
  let dir: string;
  let pki: Pki;
  let etcd: EtcdCluster;
  let proxy: InProcess;
  let port: number;
  let yaml: (opts: { clientCert: boolean; backup: boolean }) => string;

  beforeAll(async () => {
    dir = await makeTempDir();
    pki = await makePki(dir);
    const f = pki.files;
    etcd = await EtcdCluster.start({ size: 3, clientTls: { cert: f['etcd-server.crt']!, key: f['etcd-server.key']!, ca: f['ca.crt']!, clientCertAuth: true } });
    port = await freePort();
    yaml = ({ clientCert, backup }) => `
admin: { enabled: false }
tls:
  to-etcd:
    ca: ${f['ca.crt']}
${clientCert ? `    cert: ${f['ballast-client.crt']}\n    key: ${f['ballast-client.key']}\n` : ''}listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    tls: to-etcd
    health: { check: etcd }
${backup ? `backup:\n  cluster: etcd\n  dir: ${path.join(dir, 'backups')}\n  keep: 5\n  timeout: 30s\n` : ''}`;
    proxy = await startInProcess(yaml({ clientCert: true, backup: false }));
    await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'members up through the mTLS etcd check');
  });

  afterAll(async () => {
    await proxy?.stop();
    await etcd?.close();
    await removeDir(dir);
  });

  it('data written through ballast is snapshotted from a follower over mTLS and restored exactly, at its revision', async () => {
    const data = dataSet('tls');
    const revision = await writeThrough(port, data);
    const config = writeConfig(dir, yaml({ clientCert: true, backup: true }));
    const backup = await runCliToEnd(['backup', '--config', config], { timeoutMs: 60_000 });
    expect(backup.stderr).toBe('');
    expect(backup.code).toBe(0);
    expect(backup.stdout.trim().split('\n')).toHaveLength(1);
    const b = fields(backup.stdout);
    expect(b).toMatchObject({ revision: String(revision), keys: String(data.size), role: 'follower' });
    expect(path.basename(b.snapshot!)).toMatch(SNAPSHOT_NAME);
    expect(path.dirname(b.snapshot!)).toBe(path.join(dir, 'backups'));
    expect(etcd.members.some((m) => m.clientUrl === `https://${b.member}`)).toBe(true);
    expect(Number(b.size)).toBe((await fsp.stat(b.snapshot!)).size);

    const drill = await runCliToEnd(['restore-drill', '--snapshot', b.snapshot!], { timeoutMs: 60_000 });
    expect(drill.code).toBe(0);
    expect(drill.stdout.trim()).toMatch(new RegExp(`^snapshot=${b.snapshot} revision=${revision} keys=${data.size} restore_seconds=\\d+\\.\\d\\d verdict=ok$`));

    // Every key and value of the data set, read back from the restored member.
    const full = await restoreDrill(b.snapshot!, { sample: 1000 });
    expect(full).toMatchObject({ verdict: 'ok', revision, keys: data.size });
    expect(sampleAsStrings(full.sample)).toEqual(data);
  });

  it('without the client certificate no member is healthy and the backup fails with a reason (the mTLS path is real)', async () => {
    const config = writeConfig(dir, yaml({ clientCert: false, backup: true }), 'no-cert.yaml');
    const before = await listDir(path.join(dir, 'backups')).catch(() => []);
    const r = await runCliToEnd(['backup', '--config', config], { timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/backup: failed: reason=no_healthy_member: no healthy member in cluster etcd/);
    expect(await listDir(path.join(dir, 'backups')).catch(() => [])).toEqual(before);
  });

  it('a config without a backup section is a usage error that names the fix', async () => {
    const config = writeConfig(dir, yaml({ clientCert: true, backup: false }), 'no-backup.yaml');
    const r = await runCliToEnd(['backup', '--config', config]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/has no backup section/);
    expect(r.stderr).toMatch(/backup:\n {2}cluster: etcd\n {2}dir: /);
  });
});

// Backup pieces that need no etcd: the trailing-hash check, names, pruning,
// member choice, and failures that happen before any member is contacted.
import { createHash, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Address } from '../../src/config/address.js';
import { listSnapshots, pruneSnapshots, SnapshotHasher, snapshotName, SNAPSHOT_NAME, verifySnapshotHash } from '../../src/backup/snapshot-file.js';
import { chooseMember, Snapshotter, type SnapshotMember } from '../../src/backup/snapshotter.js';
import { formatDrillLine, restoreDrill } from '../../src/backup/restore-drill.js';
import { BackupScheduler } from '../../src/backup/backup-scheduler.js';
import net from 'node:net';
import { ManualClock } from '../support/manual-clock.js';
import { eventually } from '../support/servers.js';
import { memoryLogger } from '../support/ballast.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

/** A fake streamed snapshot: `pages` 4 KiB pages of random bytes + their SHA-256. */
function fakeSnapshot(pages = 5): Buffer {
  const db = randomBytes(pages * 4096);
  return Buffer.concat([db, createHash('sha256').update(db).digest()]);
}

function feed(buf: Buffer, sizes: number[]): SnapshotHasher {
  const h = new SnapshotHasher();
  let off = 0;
  let i = 0;
  while (off < buf.length) {
    const n = sizes[i++ % sizes.length]!;
    h.update(buf.subarray(off, off + n));
    off += n;
  }
  return h;
}

describe('SnapshotHasher: etcd appends sha256(db) to the stream', () => {
  it('accepts an intact snapshot however it is chunked (the last 32 bytes are held back)', () => {
    const snap = fakeSnapshot();
    for (const sizes of [[snap.length], [32 * 1024], [1], [31, 33], [32], [7, 4096, 32, 1]]) {
      const r = feed(snap, sizes).result();
      expect(r, `chunks ${sizes.join(',')}`).toMatchObject({ ok: true, size: snap.length, dataBytes: snap.length - 32 });
      expect(r.expected).toBe(r.actual);
    }
  });

  it('refuses one flipped bit anywhere, a truncation, a missing hash and a tiny file', () => {
    const snap = fakeSnapshot();
    for (const at of [0, 4096 * 2 + 17, snap.length - 33, snap.length - 1]) {
      const bad = Buffer.from(snap);
      bad[at]! ^= 0x01;
      const r = feed(bad, [1000]).result();
      expect(r.ok, `flip at ${at}`).toBe(false);
      expect(r.problem).toMatch(/SHA-256 mismatch/);
    }
    expect(feed(snap.subarray(0, snap.length - 4096), [4096]).result()).toMatchObject({ ok: false });
    expect(feed(snap.subarray(0, snap.length - 32), [4096]).result().problem).toMatch(/no SHA-256 appended/);
    expect(feed(Buffer.alloc(10), [10]).result().problem).toMatch(/no room/);
  });

  it('verifySnapshotHash reads a file the same way', async () => {
    const dir = await makeTempDir();
    try {
      const snap = fakeSnapshot(40);
      const f = path.join(dir, 's.db');
      await fsp.writeFile(f, snap);
      expect((await verifySnapshotHash(f)).ok).toBe(true);
      snap[snap.length >> 1]! ^= 0x80;
      await fsp.writeFile(f, snap);
      expect((await verifySnapshotHash(f)).ok).toBe(false);
    } finally {
      await removeDir(dir);
    }
  });
});

describe('snapshot names and pruning', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await makeTempDir();
  });
  afterEach(async () => {
    await removeDir(dir);
  });

  it('names carry the UTC second and the revision, and sort oldest first', async () => {
    const name = snapshotName(new Date('2024-03-09T07:05:03.999Z'), 4711);
    expect(name).toBe('etcd-snapshot-20240309T070503Z-rev4711.db');
    expect(SNAPSHOT_NAME.test(name)).toBe(true);
    expect(SNAPSHOT_NAME.test(`.${name}.partial`)).toBe(false);
    const names = [
      snapshotName(new Date('2024-03-09T07:05:03Z'), 20),
      snapshotName(new Date('2024-03-09T07:05:03Z'), 9), // same second, lower revision: older
      snapshotName(new Date('2023-12-31T23:59:59Z'), 100),
    ];
    for (const n of names) await fsp.writeFile(path.join(dir, n), 'x');
    expect((await listSnapshots(dir)).map((s) => s.revision)).toEqual([100, 9, 20]);
  });

  it('keeps the newest `keep`, never the protected one, never a foreign file', async () => {
    const snaps = [1, 2, 3, 4, 5].map((i) => snapshotName(new Date(Date.UTC(2024, 0, i)), i * 10));
    const foreign = ['notes.txt', 'etcd-snapshot-manual.db', 'etcd-snapshot-20240101T000000Z-rev1.db.bak'];
    for (const n of [...snaps, ...foreign]) await fsp.writeFile(path.join(dir, n), n);
    expect(await pruneSnapshots(dir, 3)).toEqual([snaps[0], snaps[1]]);
    // A clock stepped back: the newest snapshot by name is not the one just taken.
    const justTaken = snapshotName(new Date(Date.UTC(2023, 0, 1)), 60);
    await fsp.writeFile(path.join(dir, justTaken), 'x');
    expect(await pruneSnapshots(dir, 2, justTaken)).toEqual([snaps[2], snaps[3]]);
    const left = (await fsp.readdir(dir)).sort();
    expect(left).toEqual([...foreign, justTaken, snaps[4]!].sort());
    for (const f of foreign) expect(await fsp.readFile(path.join(dir, f), 'utf8')).toBe(f);
  });
});

const addr = (port: number): Address => ({ kind: 'inet', host: '127.0.0.1', port, family: 4, text: `127.0.0.1:${port}` }) as Address;

function member(port: number, state: SnapshotMember['state'], role: 'leader' | 'follower' | 'none'): SnapshotMember {
  return {
    id: `127.0.0.1:${port}`,
    address: addr(port),
    host: '127.0.0.1',
    port,
    state,
    ...(role === 'none' ? {} : { etcd: { memberId: role === 'leader' ? 'a' : `f${port}`, leaderId: 'a' } }),
  };
}

describe('chooseMember', () => {
  const L = member(1, 'up', 'leader');
  const F2 = member(2, 'up', 'follower');
  const F3 = member(3, 'up', 'follower');

  it('follower: a follower first, the leader only when no follower is up (and says so)', () => {
    expect(chooseMember([L, F2, F3], 'follower')).toEqual({ member: F2, role: 'follower' });
    const downF = [L, member(2, 'down', 'follower'), member(3, 'ejected', 'follower')];
    expect(chooseMember(downF, 'follower')).toMatchObject({ member: L, role: 'leader', fallback: expect.stringMatching(/no follower/) });
  });

  it('passes over the member that failed last time when another one qualifies', () => {
    expect(chooseMember([L, F2, F3], 'follower', F2.id)?.member).toBe(F3);
    expect(chooseMember([L, F2], 'follower', F2.id)?.member).toBe(F2);
    expect(chooseMember([L, F2], 'any', L.id)?.member).toBe(F2);
  });

  it('leader: only the leader; any: the first up; nothing up: nothing', () => {
    expect(chooseMember([F2, L], 'leader')).toEqual({ member: L, role: 'leader' });
    expect(chooseMember([F2, member(1, 'down', 'leader')], 'leader')).toBeUndefined();
    expect(chooseMember([member(9, 'unknown', 'none'), L, F2], 'any')).toEqual({ member: L, role: 'leader' });
    expect(chooseMember([member(1, 'down', 'leader'), member(2, 'unknown', 'follower'), member(3, 'draining', 'follower')], 'follower')).toBeUndefined();
  });
});

describe('Snapshotter failures before any member is contacted', () => {
  it('no healthy member: reason no_healthy_member, counted, nothing written', async () => {
    const dir = await makeTempDir();
    try {
      const { log, lines } = memoryLogger();
      const s = new Snapshotter({ cluster: 'etcd', dir, keep: 3, from: 'follower', timeoutMs: 5_000, members: () => [member(1, 'down', 'leader'), member(2, 'unknown', 'follower')], tls: () => undefined, log });
      await expect(s.take()).rejects.toMatchObject({ reason: 'no_healthy_member', message: expect.stringMatching(/127\.0\.0\.1:1 down, 127\.0\.0\.1:2 unknown/) });
      expect(s.stats.failures.get('no_healthy_member')).toBe(1);
      expect(s.stats.lastError).toMatch(/^no_healthy_member: /);
      expect(s.stats.lastSuccessAt).toBeUndefined();
      expect(await fsp.readdir(dir)).toEqual([]);
      expect(lines.some((l) => l.level === 'error' && /backup failed \(no_healthy_member\)/.test(l.msg))).toBe(true);
    } finally {
      await removeDir(dir);
    }
  });

  it('a drill of a file that is not a snapshot fails with a reason, and says so in one line', async () => {
    const dir = await makeTempDir();
    try {
      const f = path.join(dir, 'etcd-snapshot-20240101T000000Z-rev1.db');
      await fsp.writeFile(f, randomBytes(4096 * 3)); // no hash appended
      const r = await restoreDrill(f);
      expect(r).toMatchObject({ verdict: 'failed', reason: 'bad_hash' });
      expect(formatDrillLine(r)).toBe(`snapshot=${f} revision=- keys=- restore_seconds=- verdict=failed reason=bad_hash`);
      const missing = await restoreDrill(path.join(dir, 'nope.db'));
      expect(missing).toMatchObject({ verdict: 'failed', reason: 'unreadable' });
    } finally {
      await removeDir(dir);
    }
  });
});

describe('BackupScheduler timing (manual clock; the member is a socket that never answers)', () => {
  it('waits for checked members, skips and counts a tick that would overlap a running snapshot, and stop() aborts it', async () => {
    const dir = await makeTempDir();
    // Accepts connections and never says a word: the snapshot stream hangs.
    const sockets = new Set<net.Socket>();
    const mute = net.createServer((c) => {
      sockets.add(c);
      c.on('error', () => undefined);
    });
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
    const port = (mute.address() as net.AddressInfo).port;
    const clock = new ManualClock();
    const members: SnapshotMember[] = [member(port, 'unknown', 'none')];
    const { log, lines } = memoryLogger();
    const cfg = { cluster: 'etcd', dir, interval: 60_000, keep: 3, from: 'follower' as const, timeout: 300_000, drillInterval: 0 };
    const s = new BackupScheduler(cfg, { cluster: 'etcd', members: () => members, tls: () => undefined, log, clock }, { firstDelayMs: 10_000, snapshot: { worker: false } });
    try {
      s.start();
      await clock.advance(2_000);
      expect(s.snapshotter.running).toBe(false); // the member has not been checked yet
      members[0] = member(port, 'up', 'follower');
      await clock.advance(500);
      await eventually(() => s.snapshotter.running && sockets.size > 0, 'the first snapshot connected to the member');
      await clock.advance(60_000); // the next tick: the first is still streaming
      expect(s.stats.failures.get('overlap')).toBe(1);
      expect(lines.some((l) => /skipping this one \(overlap\)/.test(l.msg))).toBe(true);
      await s.stop();
      expect(s.snapshotter.running).toBe(false);
      expect(s.stats.failures.get('aborted')).toBe(1);
      expect(await fsp.readdir(dir)).toEqual([]); // no partial, no lock
      await clock.advance(120_000);
      expect(s.snapshotter.running).toBe(false); // stopped: no more ticks
      expect(clock.pending).toBe(0);
    } finally {
      await s.stop();
      for (const c of sockets) c.destroy();
      await new Promise<void>((r) => mute.close(() => r()));
      await removeDir(dir);
    }
  });

  it('retries a failed snapshot after 1 min, then 2 min, 4 min…, never later than the interval', async () => {
    const dir = await makeTempDir();
    const clock = new ManualClock();
    const { log } = memoryLogger();
    const cfg = { cluster: 'etcd', dir, interval: 300_000, keep: 3, from: 'follower' as const, timeout: 60_000, drillInterval: 0 };
    const s = new BackupScheduler(cfg, { cluster: 'etcd', members: () => [member(1, 'down', 'leader')], tls: () => undefined, log, clock }, { firstDelayMs: 10_000, snapshot: { worker: false } });
    const attempts = () => s.stats.failures.get('no_healthy_member') ?? 0;
    const settle = async (n: number) => eventually(() => attempts() === n && !s.snapshotter.running, `${n} attempts`);
    try {
      s.start();
      await clock.advance(10_000); // nothing gets checked up: the first attempt after firstDelayMs
      await settle(1);
      await clock.advance(60_000);
      await settle(2);
      await clock.advance(60_000); // now 2 min
      expect(attempts()).toBe(2);
      await clock.advance(60_000);
      await settle(3);
      await clock.advance(240_000); // 4 min
      await settle(4);
      await clock.advance(299_000); // 8 min would exceed the 5 min interval: capped
      expect(attempts()).toBe(4);
      await clock.advance(1_000);
      await settle(5);
    } finally {
      await s.stop();
      await removeDir(dir);
    }
  });
});

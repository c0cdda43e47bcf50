import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { etcdctlBin, etcdctlEnv, runTool, toolFailure, ToolMissingError } from './exec.js';

// Snapshot files on disk: their names, the integrity hash etcd appends, what
// `etcdctl snapshot status` says about them, and pruning.
//
// Format (etcd 3.4, the same in 3.5): the Maintenance.Snapshot stream carries
// the member's bolt database file, in 32 KiB messages, followed by one last
// message whose blob is the 32-byte SHA-256 of everything before it. A file
// saved from the stream is therefore `db || sha256(db)`; bolt files are whole
// pages (4 KiB), so `size % 512 === 32` tells a streamed snapshot from a
// copied member/snap/db (which has no hash; etcdctl restore then needs
// --skip-hash-check). bolt itself ignores the 32 trailing bytes.

export const BACKUP_FAILURE_REASONS = [
  'no_healthy_member', // no endpoint of the cluster is up (or no leader is, with from: leader)
  'busy', // a snapshot is already running (this process or another one on the same dir)
  'overlap', // the schedule fired while the previous attempt still ran
  'connect', // the member could not be reached, or failed before the first byte
  'stream', // the stream broke after data started to arrive (member died, connection reset)
  'truncated', // the stream ended cleanly but short of the size the member announced
  'timeout', // the attempt exceeded backup.timeout
  'aborted', // ballast is stopping
  'bad_hash', // the SHA-256 etcd appended does not match the data
  'unreadable', // etcdctl snapshot status cannot open it as a bolt database
  'etcdctl_missing', // no etcdctl to verify with
  'io', // writing, syncing or renaming the file failed
] as const;
export type BackupFailureReason = (typeof BACKUP_FAILURE_REASONS)[number];

export class BackupError extends Error {
  constructor(
    readonly reason: BackupFailureReason,
    message: string,
    readonly member?: string,
  ) {
    super(message);
    this.name = 'BackupError';
  }
}

export const SHA256_BYTES = 32;

/** etcd-snapshot-20240131T235959Z-rev12345.db */
export const SNAPSHOT_NAME = /^etcd-snapshot-(\d{8}T\d{6}Z)-rev(\d+)\.db$/;
/** In-progress downloads: dot-prefixed, never matching SNAPSHOT_NAME. */
export const PARTIAL_NAME = /^\.etcd-snapshot-.*\.partial$/;

export function utcStamp(at: Date): string {
  return at.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

export function snapshotName(at: Date, revision: number): string {
  return `etcd-snapshot-${utcStamp(at)}-rev${revision}.db`;
}

export interface SnapshotFileInfo {
  name: string;
  path: string;
  /** The UTC second in the name (when the snapshot was started). */
  stamp: string;
  revision: number;
}

/** Snapshot files in `dir` (names matching SNAPSHOT_NAME only), oldest first: by the time in the name, then revision. */
export async function listSnapshots(dir: string): Promise<SnapshotFileInfo[]> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: SnapshotFileInfo[] = [];
  for (const name of names) {
    const m = SNAPSHOT_NAME.exec(name);
    if (m) out.push({ name, path: path.join(dir, name), stamp: m[1]!, revision: Number(m[2]) });
  }
  return out.sort((a, b) => (a.stamp < b.stamp ? -1 : a.stamp > b.stamp ? 1 : a.revision - b.revision));
}

export async function newestSnapshot(dir: string): Promise<SnapshotFileInfo | undefined> {
  const all = await listSnapshots(dir);
  return all[all.length - 1];
}

/**
 * Delete the oldest snapshots so at most `keep` remain. Only names matching
 * SNAPSHOT_NAME are considered; `protect` (a name) is never deleted, whatever
 * its place in the order (a clock stepped backwards must not prune the
 * snapshot just taken). Returns the deleted names.
 */
export async function pruneSnapshots(dir: string, keep: number, protect?: string): Promise<string[]> {
  const all = await listSnapshots(dir);
  const others = all.filter((s) => s.name !== protect);
  const budget = Math.max(0, keep - (protect !== undefined && all.some((s) => s.name === protect) ? 1 : 0));
  const doomed = others.slice(0, Math.max(0, others.length - budget));
  const deleted: string[] = [];
  for (const s of doomed) {
    try {
      await fsp.unlink(s.path);
      deleted.push(s.name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return deleted;
}

/** fsync a directory so a rename or unlink in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Incremental check of etcd's trailing SHA-256: everything but the last 32
 * bytes is hashed as it streams; the last 32 bytes seen are held back, since
 * only the end of the stream tells which bytes they are.
 */
export class SnapshotHasher {
  private readonly hash: Hash = createHash('sha256');
  private tail = Buffer.alloc(0);
  /** Bytes fed so far (data + hash). */
  bytes = 0;

  update(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (chunk.length >= SHA256_BYTES) {
      if (this.tail.length > 0) this.hash.update(this.tail);
      this.hash.update(chunk.subarray(0, chunk.length - SHA256_BYTES));
      this.tail = Buffer.from(chunk.subarray(chunk.length - SHA256_BYTES));
      return;
    }
    const both = Buffer.concat([this.tail, chunk]);
    const spill = both.length - SHA256_BYTES;
    if (spill > 0) {
      this.hash.update(both.subarray(0, spill));
      this.tail = both.subarray(spill);
    } else {
      this.tail = both;
    }
  }

  /** Finish: does the trailing hash match the data before it? */
  result(): HashCheck {
    const size = this.bytes;
    if (size < SHA256_BYTES) return { ok: false, size, dataBytes: 0, expected: '', actual: '', problem: `only ${size} bytes: no room for the 32-byte SHA-256 etcd appends` };
    const dataBytes = size - SHA256_BYTES;
    const actual = this.hash.digest('hex');
    const expected = this.tail.toString('hex');
    if (size % 512 !== SHA256_BYTES) {
      return { ok: false, size, dataBytes, expected, actual, problem: `size ${size} is not whole bolt pages + 32: no SHA-256 appended (a copied member/snap/db, or truncated)` };
    }
    if (actual !== expected) return { ok: false, size, dataBytes, expected, actual, problem: `SHA-256 mismatch: the snapshot says ${expected.slice(0, 16)}…, the data hashes to ${actual.slice(0, 16)}…` };
    return { ok: true, size, dataBytes, expected, actual };
  }
}

export interface HashCheck {
  ok: boolean;
  /** File size, hash included. */
  size: number;
  /** The bolt database's size (size - 32). */
  dataBytes: number;
  expected: string;
  actual: string;
  problem?: string;
}

/** Stream a snapshot file through SnapshotHasher (64 KiB reads, never the whole file in memory). */
export async function verifySnapshotHash(file: string, signal?: AbortSignal): Promise<HashCheck> {
  const h = new SnapshotHasher();
  const stream = createReadStream(file, { highWaterMark: 1 << 16, ...(signal ? { signal } : {}) });
  for await (const chunk of stream) h.update(chunk as Buffer);
  return h.result();
}

/** What `etcdctl snapshot status -w json` reports. */
export interface EtcdctlSnapshotStatus {
  /** crc32 over every bucket's keys and values (etcdctl's own, not the stream's SHA-256). */
  hash: number;
  /** The highest revision in the key bucket. */
  revision: number;
  /** Every entry of every bolt bucket: all revisions of all keys, tombstones and etcd's own metadata. NOT the number of live keys. */
  totalKey: number;
  /** The bolt database's size in bytes. */
  totalSize: number;
}

/**
 * Open the file with the real tool: `etcdctl snapshot status` opens it as a
 * bolt database, runs bolt's consistency check over every page, and walks
 * every bucket. (The SHA-256 check above is ours; this is the "real tool"
 * route, and what an operator would run by hand.) Throws BackupError
 * `unreadable` (or `etcdctl_missing`, `timeout`, `aborted`).
 */
export async function etcdctlSnapshotStatus(file: string, opts: { etcdctl?: string; timeoutMs: number; signal?: AbortSignal }): Promise<EtcdctlSnapshotStatus> {
  let r;
  try {
    r = await runTool(etcdctlBin(opts.etcdctl), ['snapshot', 'status', file, '-w', 'json'], { timeoutMs: opts.timeoutMs, env: etcdctlEnv(), ...(opts.signal ? { signal: opts.signal } : {}) });
  } catch (err) {
    if (err instanceof ToolMissingError) throw new BackupError('etcdctl_missing', `${err.message} (install etcdctl or set BALLAST_ETCDCTL_BIN)`);
    throw err;
  }
  if (r.aborted) throw new BackupError('aborted', 'etcdctl snapshot status aborted');
  if (r.timedOut) throw new BackupError('timeout', `etcdctl snapshot status did not finish within ${opts.timeoutMs}ms`);
  if (r.code !== 0) throw new BackupError('unreadable', `etcdctl snapshot status: ${toolFailure(r)}`);
  const line = r.stdout
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.startsWith('{') && l.includes('"totalKey"'));
  if (!line) throw new BackupError('unreadable', `etcdctl snapshot status printed no status: ${r.stdout.slice(0, 200)}`);
  const j = JSON.parse(line) as Record<string, unknown>;
  const status = { hash: Number(j.hash), revision: Number(j.revision), totalKey: Number(j.totalKey), totalSize: Number(j.totalSize) };
  if (!Number.isFinite(status.revision) || !Number.isFinite(status.totalKey)) throw new BackupError('unreadable', `etcdctl snapshot status: unexpected output ${line.slice(0, 200)}`);
  return status;
}

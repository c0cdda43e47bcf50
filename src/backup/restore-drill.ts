import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { parseDuration } from '../config/duration.js';
import { BoltFormatError, type EtcdDbContents } from './bolt.js';
import { etcdBin, etcdctlBin, etcdctlEnv, runTool, spawnManaged, toolFailure, ToolMissingError, type ManagedChild } from './exec.js';
import { BackupError, etcdctlSnapshotStatus, newestSnapshot, type EtcdctlSnapshotStatus } from './snapshot-file.js';
import { runScan, runVerify, type WorkerSetting } from './snapshot-work.js';

// The restore drill: a backup is only as good as the last time it was
// restored. For one snapshot file:
//
//   1. verify etcd's SHA-256 (ours) and open it with `etcdctl snapshot status`
//   2. read its key space ourselves (bolt.ts): live keys, the revision a
//      restore must serve, and the first N keys' values
//   3. `etcdctl snapshot restore` into a temp dir as a one-member cluster
//   4. start a throwaway `etcd` listening on unix sockets inside the 0700
//      temp dir (no TCP port: it serves every restored Secret), wait until healthy
//   5. read back through its JSON gateway: the key count and revision, and
//      the first N keys with values; all must equal what the file holds
//   6. stop it (SIGTERM, then SIGKILL, by PID), remove the temp dir
//
// restore_seconds runs from step 3 to the first successful read in step 5:
// how long it takes to get a serving etcd from this file (the RTO of one
// member, without copying the file to the machine).

export type DrillFailure =
  | 'no_snapshot'
  | 'bad_hash'
  | 'unreadable'
  | 'tools_disagree'
  | 'restore_failed'
  | 'start_failed'
  | 'not_healthy'
  | 'read_failed'
  | 'revision_mismatch'
  | 'key_count_mismatch'
  | 'sample_mismatch'
  | 'timeout'
  | 'aborted'
  | 'etcdctl_missing'
  | 'etcd_missing';

export interface DrillOptions {
  /** How many keys (first in key order) to read back with values. Default 10. */
  sample?: number;
  /** Parent of the drill's temp dir. Default os.tmpdir(). It needs room for about twice the snapshot. */
  workDir?: string;
  /** Leave the temp dir (data dir, etcd log) behind for debugging. */
  keepDir?: boolean;
  /** The whole drill. Default 10 minutes. */
  timeoutMs?: number;
  etcd?: string;
  etcdctl?: string;
  signal?: AbortSignal;
  log?: Logger;
  /** Where the hash check and key scan run: a worker thread by default when compiled (see snapshot-work.ts). */
  worker?: WorkerSetting;
  /** Test hook: runs once the restored member is healthy, before the read-back (tests make it disagree with the file). */
  beforeReadBack?: (member: DrillMember) => Promise<void>;
}

/** The restored member while it runs, as the beforeReadBack hook sees it. */
export interface DrillMember {
  pid: number;
  /** The drill's temp dir (0700). */
  dir: string;
  /** Its client socket (the JSON gateway and gRPC answer there). */
  socketPath: string;
}

export interface DrillResult {
  file: string;
  verdict: 'ok' | 'failed';
  reason?: DrillFailure;
  detail?: string;
  /** Revision the restored member serves. */
  revision?: number;
  /** Keys the restored member serves. */
  keys?: number;
  /** First `sample` keys (latin1-decoded bytes) and values, as the restored member served them. */
  sample: Map<string, Buffer>;
  /** What the file holds: etcdctl's status and our own read. */
  expected?: { etcdctl: EtcdctlSnapshotStatus; revision: number; keys: number; compactRevision: number };
  /** From `snapshot restore` to the first read served by the restored member. */
  restoreSeconds?: number;
  totalSeconds: number;
  /** The temp dir, when kept (--keep-dir). */
  dir?: string;
}

class DrillError extends Error {
  constructor(
    readonly reason: DrillFailure,
    message: string,
  ) {
    super(message);
  }
}

const DEFAULT_TIMEOUT = 10 * 60_000;
const CLIENT_SOCKET = 'client.sock:0';
const PEER_SOCKET = 'peer.sock:0';
/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export async function restoreDrill(file: string, opts: DrillOptions = {}): Promise<DrillResult> {
  const t0 = performance.now();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  const sampleSize = opts.sample ?? 10;
  const result: DrillResult = { file: path.resolve(file), verdict: 'failed', sample: new Map(), totalSeconds: 0 };
  let tmp: string | undefined;
  let etcd: ManagedChild | undefined;
  let socketPath = '';
  const left = () => Math.max(1, timeoutMs - (performance.now() - t0));
  const check = () => {
    if (signal.aborted) throw timeout.aborted ? new DrillError('timeout', `the drill did not finish within ${timeoutMs}ms`) : new DrillError('aborted', 'aborted');
  };
  try {
    // 1. Integrity: ours, then the real tool.
    let hash;
    try {
      hash = await runVerify(file, signal, opts.worker);
    } catch (err) {
      check();
      throw new DrillError('unreadable', `cannot read ${file}: ${(err as Error).message}`);
    }
    if (!hash.ok) throw new DrillError('bad_hash', hash.problem ?? 'hash mismatch');
    let status: EtcdctlSnapshotStatus;
    try {
      status = await etcdctlSnapshotStatus(file, { ...(opts.etcdctl ? { etcdctl: opts.etcdctl } : {}), timeoutMs: left(), signal });
    } catch (err) {
      check();
      if (err instanceof BackupError) throw new DrillError(err.reason === 'etcdctl_missing' ? 'etcdctl_missing' : 'unreadable', err.message);
      throw err;
    }
    // 2. What the file holds, read without etcd.
    let contents: EtcdDbContents;
    try {
      contents = await runScan(file, signal, opts.worker, sampleSize);
    } catch (err) {
      check();
      throw new DrillError('unreadable', `ballast's bolt reader: ${(err as Error).message}`);
    }
    result.expected = { etcdctl: status, revision: contents.revision, keys: contents.liveKeys, compactRevision: contents.compactRevision };
    if (contents.maxRevision !== status.revision) throw new DrillError('tools_disagree', `etcdctl says revision ${status.revision}, the key bucket's newest entry is ${contents.maxRevision}`);
    check();

    // 3-4. Restore and start. The member holds every Secret of the cluster, so
    // it listens on unix sockets only, inside the 0700 temp dir: no TCP port
    // another local process (user nobody, a hostNetwork pod) could read it on.
    // etcd wants URLs of the form unix://host:port and binds "host:port" as a
    // path relative to its working directory, so it runs with cwd = the temp dir.
    tmp = await fsp.mkdtemp(path.join(opts.workDir ?? os.tmpdir(), 'ballast-drill-'));
    await fsp.chmod(tmp, 0o700);
    socketPath = path.join(tmp, CLIENT_SOCKET);
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
      throw new DrillError('start_failed', `the drill's socket path ${socketPath} is longer than ${MAX_SOCKET_PATH} bytes (a unix socket limit); give a shorter --work-dir`);
    }
    const tRestore = performance.now();
    const peer = `unix://${PEER_SOCKET}`;
    const clientUrl = `unix://${CLIENT_SOCKET}`;
    const dataDir = path.join(tmp, 'data');
    const logFile = path.join(tmp, 'etcd.log');
    const restoreArgs = ['snapshot', 'restore', file, '--data-dir', dataDir, '--name', 'drill', '--initial-cluster', `drill=${peer}`, '--initial-advertise-peer-urls', peer, '--initial-cluster-token', `ballast-drill-${randomBytes(4).toString('hex')}`];
    let r;
    try {
      r = await runTool(etcdctlBin(opts.etcdctl), restoreArgs, { timeoutMs: left(), env: etcdctlEnv(), signal });
    } catch (err) {
      if (err instanceof ToolMissingError) throw new DrillError('etcdctl_missing', `${err.message} (install etcdctl or set BALLAST_ETCDCTL_BIN)`);
      throw err;
    }
    check();
    if (r.code !== 0) throw new DrillError('restore_failed', `etcdctl snapshot restore: ${toolFailure(r)}`);
    const args = [
      '--name=drill',
      `--data-dir=${dataDir}`,
      `--listen-client-urls=${clientUrl}`,
      `--advertise-client-urls=${clientUrl}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=drill=${peer}`,
      '--logger=zap',
      `--log-outputs=${logFile}`,
    ];
    const fd = openSync(logFile, 'a', 0o600);
    try {
      etcd = await spawnManaged(etcdBin(opts.etcd), args, { stdio: ['ignore', fd, fd], cwd: tmp });
    } catch (err) {
      if (err instanceof ToolMissingError) throw new DrillError('etcd_missing', `${err.message} (install etcd or set BALLAST_ETCD_BIN)`);
      throw err;
    } finally {
      closeSync(fd);
    }
    opts.log?.debug({ pid: etcd.pid, socketPath, dataDir }, 'restore drill: etcd started');
    const healthy = await waitHealthy(socketPath, etcd, signal);
    if (healthy !== true) {
      await etcd.stop(2_000);
      etcd = undefined;
      check();
      throw new DrillError(healthy === 'exited' ? 'start_failed' : 'not_healthy', `restored etcd ${healthy === 'exited' ? 'exited' : 'never became healthy'}; log tail: ${logTail(logFile).slice(-600)}`);
    }
    if (opts.beforeReadBack) await opts.beforeReadBack({ pid: etcd.pid, dir: tmp, socketPath });

    // 5. Read back.
    let count;
    try {
      count = await range(socketPath, { count_only: true }, signal);
    } catch (err) {
      check();
      throw new DrillError('read_failed', `counting keys on the restored member: ${(err as Error).message}`);
    }
    result.restoreSeconds = (performance.now() - tRestore) / 1000;
    result.revision = count.revision;
    result.keys = count.count;
    let sample;
    try {
      sample = sampleSize > 0 ? await range(socketPath, { limit: sampleSize }, signal) : { kvs: [] };
    } catch (err) {
      check();
      throw new DrillError('read_failed', `reading keys on the restored member: ${(err as Error).message}`);
    }
    for (const kv of sample.kvs) result.sample.set(kv.key.toString('latin1'), kv.value);

    if (count.revision !== contents.revision) {
      throw new DrillError('revision_mismatch', `the restored member serves revision ${count.revision}, the file holds revision ${contents.revision}${contents.compactRevision > contents.maxRevision ? ` (compacted at ${contents.compactRevision})` : ''}`);
    }
    if (count.count !== contents.liveKeys) throw new DrillError('key_count_mismatch', `the restored member serves ${count.count} keys, the file holds ${contents.liveKeys}`);
    const want = [...contents.sample];
    const got = [...result.sample];
    if (want.length !== got.length) throw new DrillError('sample_mismatch', `read back ${got.length} of the first ${want.length} keys`);
    for (let i = 0; i < want.length; i++) {
      const [wk, wv] = want[i]!;
      const [gk, gv] = got[i]!;
      if (wk !== gk) throw new DrillError('sample_mismatch', `key #${i + 1}: the file has ${JSON.stringify(wk.slice(0, 80))}, the restored member ${JSON.stringify(gk.slice(0, 80))}`);
      if (!wv.equals(gv)) throw new DrillError('sample_mismatch', `key ${JSON.stringify(wk.slice(0, 80))}: the value differs (${wv.length} bytes in the file, ${gv.length} served)`);
    }
    result.verdict = 'ok';
  } catch (err) {
    if (err instanceof DrillError) {
      result.reason = err.reason;
      result.detail = err.message;
    } else {
      result.reason = signal.aborted ? (timeout.aborted ? 'timeout' : 'aborted') : 'read_failed';
      result.detail = (err as Error).message ?? String(err);
    }
  } finally {
    // 6. Clean up, whatever happened.
    if (etcd) await etcd.stop(5_000);
    if (tmp !== undefined) {
      if (opts.keepDir) result.dir = tmp;
      else await fsp.rm(tmp, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 }).catch(() => undefined);
    }
    result.totalSeconds = (performance.now() - t0) / 1000;
  }
  const l = opts.log;
  if (l) {
    if (result.verdict === 'ok') l.info({ file: result.file, revision: result.revision, keys: result.keys, restoreSeconds: result.restoreSeconds }, `restore drill ok: ${formatDrillLine(result)}`);
    else l.error({ file: result.file, reason: result.reason, detail: result.detail }, `restore drill FAILED (${result.reason}): ${result.detail}`);
  }
  return result;
}

/** The one summary line: `snapshot=F revision=N keys=N restore_seconds=X verdict=ok` (or `verdict=failed reason=R`). */
export function formatDrillLine(r: DrillResult): string {
  const parts = [`snapshot=${r.file}`, `revision=${r.revision ?? '-'}`, `keys=${r.keys ?? '-'}`, `restore_seconds=${r.restoreSeconds !== undefined ? r.restoreSeconds.toFixed(2) : '-'}`];
  parts.push(r.verdict === 'ok' ? 'verdict=ok' : `verdict=failed reason=${r.reason}`);
  return parts.join(' ');
}

/** Poll /health until it says true (resolves true), the process exits ('exited'), or the signal aborts ('timeout'). */
async function waitHealthy(socketPath: string, child: ManagedChild, signal: AbortSignal): Promise<true | 'exited' | 'timeout'> {
  for (;;) {
    if (child.done) return 'exited';
    if (signal.aborted) return 'timeout';
    try {
      const body = await request(socketPath, '/health', undefined, signal, 1_000);
      if (/"health":\s*"true"/.test(body)) return true;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface KV {
  key: Buffer;
  value: Buffer;
}

/** Range over the whole key space ("\0" to "\0") through the JSON gateway. */
async function range(socketPath: string, extra: { count_only?: boolean; limit?: number }, signal: AbortSignal): Promise<{ revision: number; count: number; kvs: KV[] }> {
  const zero = Buffer.from([0]).toString('base64');
  const body = await request(socketPath, '/v3/kv/range', JSON.stringify({ key: zero, range_end: zero, ...extra }), signal, 60_000);
  const j = JSON.parse(body) as { header?: { revision?: string }; count?: string; kvs?: Array<{ key?: string; value?: string }> };
  return {
    revision: Number(j.header?.revision ?? 0),
    count: Number(j.count ?? 0),
    kvs: (j.kvs ?? []).map((kv) => ({ key: Buffer.from(kv.key ?? '', 'base64'), value: Buffer.from(kv.value ?? '', 'base64') })),
  };
}

function request(socketPath: string, route: string, payload: string | undefined, signal: AbortSignal, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath, path: route, method: payload === undefined ? 'GET' : 'POST', agent: false, signal, timeout: timeoutMs, headers: payload === undefined ? {} : { 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if ((res.statusCode ?? 0) >= 300) reject(new Error(`${route}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
          else resolve(text);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${route}: no answer within ${timeoutMs}ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

function logTail(file: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').filter(Boolean).slice(-8).join('\n');
  } catch {
    return '(no log)';
  }
}

// --- CLI: ballast restore-drill ------------------------------------------------

const USAGE = `usage: ballast restore-drill (--snapshot FILE | --dir DIR) [--sample N] [--work-dir DIR] [--timeout 10m] [--keep-dir]

Restores a snapshot into a throwaway single-member etcd (unix sockets in a
0700 temp dir, no TCP port), reads it back, and checks it serves exactly the revision, key count and sampled values
the file holds. Prints one line:
  snapshot=FILE revision=N keys=N restore_seconds=X verdict=ok|failed [reason=R]
--dir DIR drills the newest etcd-snapshot-*.db in DIR. Exit: 0 ok, 1 failed, 2 usage.
`;

export async function runRestoreDrillCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        snapshot: { type: 'string' },
        dir: { type: 'string' },
        sample: { type: 'string' },
        'work-dir': { type: 'string' },
        timeout: { type: 'string' },
        'keep-dir': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`ballast restore-drill: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if ((values.snapshot === undefined) === (values.dir === undefined)) {
    process.stderr.write(`ballast restore-drill: give exactly one of --snapshot FILE or --dir DIR\n\n${USAGE}`);
    return 2;
  }
  const sample = values.sample === undefined ? 10 : Number(values.sample);
  if (!Number.isInteger(sample) || sample < 0) {
    process.stderr.write(`ballast restore-drill: --sample expects a whole number, got "${values.sample}"\n`);
    return 2;
  }
  const timeoutMs = values.timeout === undefined ? DEFAULT_TIMEOUT : parseDuration(values.timeout);
  if (timeoutMs === undefined || timeoutMs <= 0) {
    process.stderr.write(`ballast restore-drill: --timeout expects a duration like "90s" or "10m", got "${values.timeout}"\n`);
    return 2;
  }
  let file = values.snapshot;
  if (file === undefined) {
    const newest = await newestSnapshot(values.dir!).catch((err: Error) => {
      process.stderr.write(`ballast restore-drill: cannot read ${values.dir}: ${err.message}\n`);
      return null;
    });
    if (newest === null) return 1;
    if (newest === undefined) {
      process.stdout.write(`snapshot=- revision=- keys=- restore_seconds=- verdict=failed reason=no_snapshot\n`);
      process.stderr.write(`ballast restore-drill: no etcd-snapshot-*.db file in ${values.dir}\n`);
      return 1;
    }
    file = newest.path;
  }
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await restoreDrill(file, { sample, timeoutMs, keepDir: values['keep-dir'], signal: ac.signal, ...(values['work-dir'] ? { workDir: values['work-dir'] } : {}) });
    process.stdout.write(`${formatDrillLine(r)}\n`);
    if (r.verdict !== 'ok') process.stderr.write(`ballast restore-drill: ${r.reason}: ${r.detail}\n`);
    if (r.dir) process.stderr.write(`ballast restore-drill: kept ${r.dir}\n`);
    return r.verdict === 'ok' ? 0 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export { BoltFormatError };

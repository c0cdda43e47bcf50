import { existsSync } from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Etcd3 } from 'etcd3';
import type { Address } from '../config/address.js';
import { readEtcdDb, type EtcdDbContents } from './bolt.js';
import { BackupError, SnapshotHasher, verifySnapshotHash, type BackupFailureReason, type HashCheck } from './snapshot-file.js';

// The per-byte work of a snapshot: the gRPC stream (decoding 32 KiB messages),
// the SHA-256, the writes, and the bolt key scan. It runs in a worker thread
// (snapshot-worker.js) so the proxy's event loop never shares a CPU slice
// with it: in-process, a 100 MB snapshot under proxy load doubled ballast's
// event-loop p99 and ran 2-4x slower (bench/backup-rto.mjs). When the
// compiled worker file is not there (running from TypeScript sources), the
// same functions run on the calling thread.

export interface DownloadRequest {
  member: { id: string; address: Address; host: string; port: number };
  /** TLS client material (the cluster's etcd check profile); structured-clone safe. */
  tls?: { ca?: Uint8Array; cert?: Uint8Array; key?: Uint8Array };
  servername?: string;
  file: string;
  dialTimeoutMs: number;
}

export interface DownloadResult {
  sha256: string;
  size: number;
}

export interface Progress {
  bytes: number;
  total: number | undefined;
}

const WRITE_BATCH = 1 << 20;

interface SnapshotStream extends AsyncIterable<{ blob: Buffer; remaining_bytes: string | number }> {
  cancel(): void;
}

function abortReason(signal: AbortSignal): BackupError {
  const r: unknown = signal.reason;
  if (r instanceof BackupError) return r;
  if (r && typeof r === 'object' && 'reason' in r && 'message' in r) return new BackupError((r as { reason: BackupFailureReason }).reason, String((r as { message: string }).message));
  return new BackupError('aborted', 'aborted');
}

/** A client for one member only: no retries, no circuit breaker, no other hosts. (etcd3 and grpc-js load on first use.) */
async function makeClient(req: DownloadRequest): Promise<Etcd3> {
  const [{ Etcd3 }, { noop }] = await Promise.all([import('etcd3'), import('cockatiel')]);
  const { member: m, tls: t } = req;
  const scheme = t?.ca ? 'https' : 'http';
  const host = m.address.kind === 'inet' ? (m.address.family === 6 ? `[${m.host}]` : m.host) : 'localhost';
  return new Etcd3({
    hosts: m.address.kind === 'unix' ? `unix://${m.address.path}` : `${scheme}://${host}:${m.port}`,
    ...(t?.ca ? { credentials: { rootCertificate: Buffer.from(t.ca), ...(t.cert && t.key ? { certChain: Buffer.from(t.cert), privateKey: Buffer.from(t.key) } : {}) } } : {}),
    faultHandling: { host: () => noop, global: noop },
    dialTimeout: req.dialTimeoutMs,
    grpcOptions: {
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      ...(req.servername ? { 'grpc.ssl_target_name_override': req.servername, 'grpc.default_authority': req.servername } : {}),
    },
  });
}

/**
 * Stream the member's snapshot into `file` (created exclusively), checking
 * etcd's trailing SHA-256 and the size the member announced, then fsync.
 * Memory: one batch of at most ~1 MiB. Throws BackupError.
 */
export async function downloadSnapshot(req: DownloadRequest, signal: AbortSignal, onProgress?: (p: Progress) => void): Promise<DownloadResult> {
  const file = req.file;
  const client = await makeClient(req);
  let fh: FileHandle | undefined;
  let stream: SnapshotStream | undefined;
  const onAbort = () => stream?.cancel();
  signal.addEventListener('abort', onAbort, { once: true });
  const hasher = new SnapshotHasher();
  let total: number | undefined;
  let lastRemaining: number | undefined;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (pending.length === 0) return;
    const chunks = pending;
    const want = pendingBytes;
    pending = [];
    pendingBytes = 0;
    try {
      const done = (await fh!.writev(chunks)).bytesWritten;
      // A short write (rare on regular files) continues where it stopped.
      if (done < want) {
        const rest = Buffer.concat(chunks).subarray(done);
        for (let off = 0; off < rest.length; ) off += (await fh!.write(rest, off, rest.length - off)).bytesWritten;
      }
    } catch (err) {
      throw new BackupError('io', `writing ${file}: ${(err as Error).message}`);
    }
  };
  try {
    try {
      fh = await fsp.open(file, 'wx', 0o600);
    } catch (err) {
      throw new BackupError('io', `cannot create ${file}: ${(err as Error).message}`);
    }
    if (signal.aborted) throw abortReason(signal);
    // grpc-js's ClientReadableStream: an object-mode Readable with cancel().
    stream = (await client.maintenance.snapshot()) as unknown as SnapshotStream;
    if (signal.aborted) {
      stream.cancel();
      throw abortReason(signal);
    }
    try {
      for await (const msg of stream) {
        const blob = msg.blob;
        const remaining = Number(msg.remaining_bytes);
        // remaining_bytes counts the database bytes still to come after this message.
        if (total === undefined && blob.length > 0) total = hasher.bytes + blob.length + remaining + 32;
        lastRemaining = remaining;
        hasher.update(blob);
        // Batch the 32 KiB messages into writes of up to 1 MiB: one threadpool round trip per MiB.
        pending.push(blob);
        pendingBytes += blob.length;
        if (pendingBytes >= WRITE_BATCH) await flush();
        onProgress?.({ bytes: hasher.bytes, total });
        if (signal.aborted) throw abortReason(signal);
      }
      await flush();
    } catch (err) {
      if (signal.aborted) throw abortReason(signal);
      if (err instanceof BackupError) throw err;
      const msg = ((err as Error).message ?? String(err)).split('\n')[0]!;
      throw new BackupError(hasher.bytes === 0 ? 'connect' : 'stream', `${hasher.bytes === 0 ? 'snapshot stream failed before the first byte' : `snapshot stream broke after ${hasher.bytes} bytes`}: ${msg}`);
    }
    if (signal.aborted) throw abortReason(signal);
    if (total === undefined || hasher.bytes !== total || lastRemaining !== 0) {
      throw new BackupError('truncated', `the stream ended after ${hasher.bytes} bytes; the member announced ${total === undefined ? 'nothing' : total}`);
    }
    const check = hasher.result();
    if (!check.ok) throw new BackupError('bad_hash', check.problem ?? 'hash mismatch');
    // The hash was checked on the stream; make sure the file holds every byte of it.
    const onDisk = (await fh.stat()).size;
    if (onDisk !== check.size) throw new BackupError('io', `${file} holds ${onDisk} bytes, the stream had ${check.size}`);
    try {
      await fh.sync();
      await fh.close();
      fh = undefined;
    } catch (err) {
      throw new BackupError('io', `syncing ${file}: ${(err as Error).message}`);
    }
    return { sha256: check.expected, size: check.size };
  } finally {
    signal.removeEventListener('abort', onAbort);
    await fh?.close().catch(() => undefined);
    client.close();
  }
}

// --- running it off the event loop ---------------------------------------------

export type WorkerSetting = URL | string | false | undefined;

let defaultWorker: URL | false | undefined;

/** The compiled worker beside this module, or false when there is none (TypeScript sources). */
function resolveWorker(setting: WorkerSetting): URL | false {
  if (setting === false) return false;
  if (setting !== undefined) return typeof setting === 'string' ? pathToFileURL(setting) : setting;
  if (defaultWorker === undefined) {
    const url = new URL('./snapshot-worker.js', import.meta.url);
    defaultWorker = import.meta.url.endsWith('.js') && existsSync(fileURLToPath(url)) ? url : false;
  }
  return defaultWorker;
}

type WorkerMessage = { type: 'progress'; bytes: number; total: number | undefined } | { type: 'result'; value: unknown } | { type: 'error'; reason: BackupFailureReason; message: string };

export type WorkerTask = 'download' | 'scan' | 'verify';

function inWorker<T>(url: URL, task: WorkerTask, data: unknown, signal: AbortSignal, onProgress?: (p: Progress) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;
    // Not unref'd: a running snapshot keeps `ballast backup` alive until it settles
    // (`ballast run` stops it through BackupScheduler.stop()).
    const worker = new Worker(url, { workerData: { task, data } });
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      fn();
    };
    const onAbort = () => {
      const r = abortReason(signal);
      worker.postMessage({ type: 'abort', reason: r.reason, message: r.message });
      // The worker cleans up (cancels the stream, closes the file) and exits; if it does not, it is terminated.
      killTimer = setTimeout(() => void worker.terminate(), 3_000);
      killTimer.unref();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'progress') onProgress?.({ bytes: m.bytes, total: m.total });
      else if (m.type === 'result') finish(() => resolve(m.value as T));
      else finish(() => reject(new BackupError(m.reason, m.message)));
    });
    worker.once('error', (err) => finish(() => reject(new BackupError('io', `snapshot worker failed: ${err.message}`))));
    worker.once('exit', (code) => {
      if (killTimer) clearTimeout(killTimer);
      finish(() => reject(signal.aborted ? abortReason(signal) : new BackupError('io', `snapshot worker exited (${code}) without a result`)));
    });
  });
}

/** downloadSnapshot on a worker thread (or here, without a compiled worker). */
export function runDownload(req: DownloadRequest, signal: AbortSignal, onProgress: ((p: Progress) => void) | undefined, worker: WorkerSetting): Promise<DownloadResult> {
  const url = resolveWorker(worker);
  return url ? inWorker<DownloadResult>(url, 'download', req, signal, onProgress) : downloadSnapshot(req, signal, onProgress);
}

/** readEtcdDb (live keys, revision, and the first `sample` keys' values) on a worker thread (or here). */
export async function runScan(file: string, signal: AbortSignal, worker: WorkerSetting, sample = 0): Promise<EtcdDbContents> {
  const url = resolveWorker(worker);
  if (!url) return readEtcdDb(file, { sample });
  const r = await inWorker<EtcdDbContents>(url, 'scan', { file, sample }, signal);
  // Buffers arrive as Uint8Arrays.
  return { ...r, sample: new Map([...r.sample].map(([k, v]) => [k, Buffer.from(v.buffer, v.byteOffset, v.byteLength)])) };
}

/** verifySnapshotHash on a worker thread (or here). */
export function runVerify(file: string, signal: AbortSignal, worker: WorkerSetting): Promise<HashCheck> {
  const url = resolveWorker(worker);
  return url ? inWorker<HashCheck>(url, 'verify', { file }, signal) : verifySnapshotHash(file, signal);
}

import { parentPort, workerData } from 'node:worker_threads';
import { BoltFormatError } from './bolt.js';
import { BackupError } from './snapshot-file.js';
import type { DownloadRequest } from './snapshot-work.js';

// Worker-thread entry for snapshot-work.ts: runs one task (download, scan, verify)
// and posts progress, then the result or a typed error. An {type: 'abort'}
// message aborts the task with the reason the parent gives.

// As in cli.ts: grpc-js passes an IP address as the TLS server name when a
// member is addressed by IP (DEP0123); Node ignores it and checks the IP SAN.
// Other warnings go to stderr as one JSON line.
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code === 'DEP0123') return;
  process.stderr.write(`${JSON.stringify({ level: 'warn', time: new Date().toISOString(), pid: process.pid, thread: 'snapshot-worker', warning: w.name, code: w.code, msg: w.message })}\n`);
});

const port = parentPort!;
const { task, data } = workerData as { task: 'download' | 'scan' | 'verify'; data: unknown };
const ac = new AbortController();
port.on('message', (m: { type: string; reason?: string; message?: string }) => {
  if (m.type === 'abort') ac.abort({ reason: m.reason ?? 'aborted', message: m.message ?? 'aborted' });
});

try {
  let value: unknown;
  if (task === 'download') {
    const { downloadSnapshot } = await import('./snapshot-work.js');
    let lastPost = 0;
    value = await downloadSnapshot(data as DownloadRequest, ac.signal, (p) => {
      // The first chunk at once (callers act on "data is flowing"), then at most every 50 ms.
      const now = Date.now();
      if (lastPost === 0 || now - lastPost >= 50 || p.bytes === p.total) {
        lastPost = now;
        port.postMessage({ type: 'progress', bytes: p.bytes, total: p.total });
      }
    });
  } else if (task === 'scan') {
    const { readEtcdDb } = await import('./bolt.js');
    const d = data as { file: string; sample?: number };
    value = await readEtcdDb(d.file, { sample: d.sample ?? 0 });
  } else {
    const { verifySnapshotHash } = await import('./snapshot-file.js');
    value = await verifySnapshotHash((data as { file: string }).file, ac.signal);
  }
  port.postMessage({ type: 'result', value });
} catch (err) {
  const reason = err instanceof BackupError ? err.reason : err instanceof BoltFormatError ? 'unreadable' : 'io';
  port.postMessage({ type: 'error', reason, message: (err as Error).message ?? String(err) });
} finally {
  port.close();
}

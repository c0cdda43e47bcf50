// The restore drill's throwaway etcd holds a copy of every Secret in the
// cluster. It must be readable by the drill alone (issue #15, hole 4: it used
// to serve plain HTTP on 127.0.0.1, open to any local process), and its verdict
// must come from reading that member back, never from the file it was
// restored from (issue #21: a drill that passes without asking the restored
// etcd is not evidence).
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { restoreDrill, type DrillMember } from '../../src/backup/restore-drill.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

/** Inodes of the sockets process `pid` holds open. */
function socketInodes(pid: number): Set<string> {
  const out = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** TCP sockets in LISTEN state (st 0A) owned by `pid`, as "local_address" hex strings from /proc/net/tcp{,6}. */
function tcpListeners(pid: number): string[] {
  const mine = socketInodes(pid);
  const found: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[3] === '0A' && mine.has(f[9]!)) found.push(`${table}:${f[1]}`);
    }
  }
  return found;
}

/** One JSON-gateway call over the drill member's unix socket. */
function gateway(socketPath: string, route: string, body: unknown): Promise<any> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: route, method: 'POST', headers: { 'content-type': 'application/json' }, agent: false, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('gateway timeout')));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('restore drill: the throwaway etcd is reachable by the drill only, and the verdict comes from reading it back', () => {
  let dir: string;
  let etcd: EtcdCluster;
  let snapshot: string;
  const keys: string[] = [];

  beforeAll(async () => {
    dir = await makeTempDir();
    etcd = await EtcdCluster.start({ size: 1 });
    const client = new Etcd3({ hosts: etcd.members[0]!.clientUrl.replace(/^(?!http)/, 'http://') });
    try {
      for (let i = 0; i < 20; i++) {
        const k = `/registry/secrets/drill-${String(i).padStart(2, '0')}`;
        keys.push(k);
        await client.put(k).value(randomBytes(16).toString('hex'));
      }
    } finally {
      client.close();
    }
    snapshot = path.join(dir, 'etcd-snapshot-test.db');
    await etcd.etcdctl(['snapshot', 'save', snapshot]);
  });

  afterAll(async () => {
    await etcd?.close();
    await removeDir(dir);
  });

  it('listens on no TCP port while it runs: only unix sockets inside a 0700 temp dir', async () => {
    let seen: { tcp: string[]; dirMode: number; socket: string; served: number } | undefined;
    const r = await restoreDrill(snapshot, {
      sample: 5,
      workDir: dir,
      beforeReadBack: async (m: DrillMember) => {
        const served = await gateway(m.socketPath, '/v3/kv/range', { key: b64('\0'), range_end: b64('\0'), count_only: true });
        seen = { tcp: tcpListeners(m.pid), dirMode: statSync(m.dir).mode & 0o777, socket: m.socketPath, served: Number(served.count) };
      },
    });
    expect(r).toMatchObject({ verdict: 'ok', keys: 20 });
    expect(seen).toBeDefined();
    expect(seen!.served).toBe(20);
    expect(seen!.tcp).toEqual([]);
    expect(seen!.dirMode).toBe(0o700);
    expect(path.dirname(seen!.socket).startsWith(dir)).toBe(true);
  });

  it('fails when the restored member disagrees with the file (a key deleted before the read-back)', async () => {
    const r = await restoreDrill(snapshot, {
      sample: 5,
      workDir: dir,
      beforeReadBack: async (m: DrillMember) => {
        const del = await gateway(m.socketPath, '/v3/kv/deleterange', { key: b64(keys[0]!) });
        expect(del.deleted).toBe('1');
      },
    });
    expect(r.verdict).toBe('failed');
    expect(['revision_mismatch', 'key_count_mismatch', 'sample_mismatch']).toContain(r.reason);
  });

  it('fails when a value differs on the restored member (the sample is read from the member, not the file)', async () => {
    let rev = 0;
    const r = await restoreDrill(snapshot, {
      sample: 5,
      workDir: dir,
      beforeReadBack: async (m: DrillMember) => {
        const put = await gateway(m.socketPath, '/v3/kv/put', { key: b64(keys[1]!), value: b64('tampered') });
        rev = Number(put.header.revision);
      },
    });
    expect(rev).toBeGreaterThan(0);
    expect(r.verdict).toBe('failed');
    expect(r.sample.get(keys[1]!)?.toString()).toBe('tampered');
  });
});

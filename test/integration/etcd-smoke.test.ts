import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { freePort } from '../support/ports.js';

// The smallest proof of the mission: a real 3-member etcd cluster behind
// ballast, used by the real etcd3 client and by etcdctl through the proxy.

let etcd: EtcdCluster;
let proxy: InProcess;
let port: number;

beforeAll(async () => {
  etcd = await EtcdCluster.start({ size: 3 });
  port = await freePort();
  proxy = await startInProcess(`
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    health: { check: etcd }
`);
});

afterAll(async () => {
  await proxy?.stop();
  await etcd?.close();
});

describe('etcd through ballast (plain TCP)', () => {
  it('carries gRPC puts and gets from the etcd3 client', async () => {
    const client = new Etcd3({ hosts: `http://127.0.0.1:${port}` });
    try {
      for (let i = 0; i < 20; i++) await client.put(`smoke/${i}`).value(`v${i}`);
      const all = await client.getAll().prefix('smoke/').strings();
      expect(Object.keys(all).length).toBe(20);
      expect(all['smoke/7']).toBe('v7');
    } finally {
      client.close();
    }
  });

  it('carries etcdctl and sees the members up through the etcd check', async () => {
    await etcd.etcdctl(['put', 'smoke/ctl', 'hello'], { endpoint: `http://127.0.0.1:${port}` });
    const { stdout } = await etcd.etcdctl(['get', 'smoke/ctl', '--print-value-only'], { endpoint: `http://127.0.0.1:${port}` });
    expect(stdout.trim()).toBe('hello');
    const cluster = proxy.ballast.clusters.get('etcd')!;
    const deadline = Date.now() + 10_000;
    while (cluster.endpoints.some((e) => e.state !== 'up') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
    const leaders = cluster.endpoints.filter((e) => e.etcd && e.etcd.memberId === e.etcd.leaderId);
    expect(leaders.length).toBe(1);
  });
});

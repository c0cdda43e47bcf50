import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueCert } from '../../src/tls/certs.js';
import { startApiserverStandIn, type ApiserverStandIn } from '../support/apiserver-standin.js';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { EtcdWriter, missingAcked } from '../support/etcd-writer.js';
import { freePort } from '../support/ports.js';
import { eventually } from '../support/servers.js';
import { makeTempDir, removeDir, writeFiles } from '../support/tmp.js';

// Health checking and failover against a real 3-member etcd cluster: the
// failures users hit (kubernetes/kubernetes#128812, #59074, #72796: apiservers
// stuck on a dead or partitioned member; etcd-io/etcd#17353: a proxy that
// never noticed) and ballast's answer to each.

function etcdConfig(port: number, etcd: EtcdCluster, extra = ''): string {
  return `
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    balance: affinity
    affinity: { key: source-ip }
    health: { check: etcd }
${extra}`;
}

describe('failover with a writer pinned to one member (kubernetes/kubernetes#128812)', () => {
  let etcd: EtcdCluster;
  let proxy: InProcess;
  let port: number;
  let writer: EtcdWriter | undefined;

  beforeAll(async () => {
    etcd = await EtcdCluster.start({ size: 3 });
    port = await freePort();
    proxy = await startInProcess(etcdConfig(port, etcd));
    await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'all members up');
  });
  afterEach(async () => {
    await writer?.stop();
    writer = undefined;
  });
  afterAll(async () => {
    await proxy?.stop();
    await etcd?.close();
  });

  async function pinnedIndex(w: EtcdWriter): Promise<number> {
    const ids = await etcd.memberIds();
    const idx = ids.get(await w.memberNow());
    expect(idx).toBeDefined();
    return idx!;
  }

  it('kill -9 of the member in use: writes resume through another member and every acknowledged write is readable', async () => {
    writer = new EtcdWriter(`http://127.0.0.1:${port}`, 'kill');
    writer.start();
    await writer.waitForAcks(20);
    const victim = await pinnedIndex(writer);
    await etcd.kill(victim);
    const cluster = proxy.ballast.clusters.get('etcd')!;
    await writer.waitForAcks(50, 30_000);
    expect(await pinnedIndex(writer)).not.toBe(victim);
    // ballast noticed: the dead member is out of rotation, for a reason it can name.
    await eventually(() => ['down', 'ejected'].includes(cluster.endpoints[victim]!.state), 'killed member marked down');
    await writer.stop();
    const missing = await missingAcked(etcd.clientUrls(), writer.stats.acked);
    expect(missing).toEqual([]);
    await etcd.restart(victim);
    await eventually(() => cluster.endpoints[victim]!.state === 'up', 'restarted member back up after rise', 20_000);
  });

  it('SIGSTOP of the member in use: detected by timeout, its connections closed, writes resume; SIGCONT brings it back', async () => {
    writer = new EtcdWriter(`http://127.0.0.1:${port}`, 'stop');
    writer.start();
    await writer.waitForAcks(20);
    const victim = await pinnedIndex(writer);
    const cluster = proxy.ballast.clusters.get('etcd')!;
    const ep = cluster.endpoints[victim]!;
    expect(ep.active).toBeGreaterThan(0);
    etcd.stop(victim);
    try {
      await eventually(() => ep.state === 'down', 'hung member marked down', 15_000);
      expect(ep.reason).toMatch(/^timeout after \d+ms$/);
      // onDown: close (the default with etcd checks) closed its client connections.
      expect(proxy.lines.some((l) => l.msg.startsWith(`closed `) && l.msg.includes(`connections to ${ep.id}`))).toBe(true);
      await eventually(() => ep.active === 0, 'no connection left on the hung member');
      await writer.waitForAcks(30, 30_000);
      expect(await pinnedIndex(writer)).not.toBe(victim);
    } finally {
      etcd.cont(victim);
    }
    await eventually(() => ep.state === 'up', 'resumed member back up', 20_000);
    await writer.stop();
    expect(await missingAcked(etcd.clientUrls(), writer.stats.acked)).toEqual([]);
  });
});

describe('a member cut off from its peers (kubernetes/kubernetes#59074)', () => {
  let etcd: EtcdCluster;
  let proxy: InProcess;

  beforeAll(async () => {
    etcd = await EtcdCluster.start({ size: 3, partitionable: true });
    proxy = await startInProcess(etcdConfig(await freePort(), etcd));
    await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'all members up');
  });
  afterAll(async () => {
    await proxy?.stop();
    await etcd?.close();
  });

  it('is marked down by the etcd check (no leader / raft lag) while it still answers TCP and status', async () => {
    const leader = await etcd.leaderIndex();
    const f = (leader + 1) % 3;
    const ep = proxy.ballast.clusters.get('etcd')!.endpoints[f]!;
    await etcd.isolate(f);
    try {
      await eventually(() => ep.state === 'down', 'isolated member marked down', 20_000);
      expect(['no leader', 'raft lag']).toContain(ep.reason.startsWith('raft lag') ? 'raft lag' : ep.reason);
      // It still answers: the status call succeeded, it was the content that condemned it.
      expect(ep.lastCheckReason).toBe(ep.reason);
      expect(ep.checkResults.get('no_leader') ?? ep.checkResults.get('raft_lag')).toBeGreaterThan(0);
      expect(ep.etcd).toBeDefined();
    } finally {
      await etcd.heal(f);
    }
    await eventually(() => ep.state === 'up', 'healed member back up', 20_000);
  });
});

describe('kube-apiserver /readyz through the https check (stand-in apiserver)', () => {
  let dir: string;
  let api: ApiserverStandIn[] = [];
  let proxy: InProcess;

  beforeAll(async () => {
    dir = await makeTempDir();
    const ca = await createCA({ cn: 'kubernetes' });
    const server = await issueCert(ca, { cn: 'kube-apiserver', ips: ['127.0.0.1'], dns: ['localhost'], usage: ['server'] });
    const files = await writeFiles(dir, { 'ca.crt': ca.cert });
    api = [await startApiserverStandIn(server), await startApiserverStandIn(server)];
    proxy = await startInProcess(`
tls:
  cluster-ca: { ca: ${files['ca.crt']} }
listeners:
  - { name: apiserver, listen: 127.0.0.1:${await freePort()}, cluster: apiserver }
clusters:
  - name: apiserver
    endpoints: [${api.map((a) => `127.0.0.1:${a.port}`).join(', ')}]
    balance: least-connections
    health: { check: https, path: /readyz, interval: 100ms, timeout: 90ms, rise: 2, fall: 2, tls: cluster-ca }
`);
  });
  afterAll(async () => {
    await proxy?.stop();
    for (const a of api) await a.close();
    await removeDir(dir);
  });

  it('goes down on HTTP 500 and comes back after rise successes', async () => {
    const cluster = proxy.ballast.clusters.get('apiserver')!;
    const ep = cluster.endpoints[0]!;
    await eventually(() => cluster.endpoints.every((e) => e.state === 'up'), 'both up (the CA verifies them)');
    api[0]!.ready = false;
    await eventually(() => ep.state === 'down', 'unready apiserver marked down');
    expect(ep.reason).toBe('HTTP 500');
    expect(cluster.endpoints[1]!.state).toBe('up');
    api[0]!.ready = true;
    await eventually(() => ep.state === 'up', 'ready apiserver back up');
    expect(ep.checkResults.get('http_status')).toBeGreaterThanOrEqual(1);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import { parseConfig } from '../../src/config/load.js';
import { Cluster } from '../../src/upstream/cluster.js';
import { EtcdCheck } from '../../src/upstream/health/etcd-check.js';
import { memoryLogger } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';

// The read barrier an affinity client waits at before it lands on a new
// member, against a real etcd: it passes on a member that is part of the
// quorum, and cannot pass on a member cut off from it (which would serve the
// client stale data), until the partition heals.

let etcd: EtcdCluster;
let cluster: Cluster;
let check: EtcdCheck;

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

beforeAll(async () => {
  etcd = await EtcdCluster.start({ size: 3, partitionable: true });
  const config = parseConfig(`
listeners: [{ name: etcd, listen: 127.0.0.1:1, cluster: etcd }]
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl.replace('http://', '')).join(', ')}]
    health: { check: etcd }
`).clusters[0]!;
  cluster = new Cluster(config, systemClock, memoryLogger().log);
  check = new EtcdCheck(cluster, () => cluster.config.health, () => undefined);
});

afterAll(async () => {
  check?.close();
  cluster?.stop();
  await etcd?.close();
});

describe('EtcdCheck.readBarrier (real etcd)', () => {
  it('passes on every member of a healthy cluster', async () => {
    for (const e of cluster.endpoints) await expect(check.readBarrier(e, 2_000)).resolves.toBeUndefined();
  });

  it('cannot pass on a member isolated from its peers, and passes again once healed, with what the majority wrote meanwhile', async () => {
    const f = ((await etcd.leaderIndex()) + 1) % 3;
    const e = cluster.endpoints.find((x) => etcd.members[f]!.clientUrl.endsWith(`:${x.port}`))!;
    await etcd.isolate(f);
    try {
      await waitFor('the isolated member to lose its leader', async () => (await etcd.status(f, 1_000)).leader === '0', 10_000);
      await etcd.etcdctl(['put', 'barrier/key', 'written-during-partition']);
      await expect(check.readBarrier(e, 1_000)).rejects.toThrow();
    } finally {
      await etcd.heal(f);
    }
    await waitFor('the barrier to pass on the healed member', async () => check.readBarrier(e, 1_000).then(() => true, () => false), 15_000);
    // Passing the barrier means the member has applied the majority's write.
    const out = await etcd.etcdctl(['get', 'barrier/key', '--consistency=s', '--print-value-only'], { endpoint: etcd.members[f]!.clientUrl });
    expect(out.stdout.trim()).toBe('written-during-partition');
  });
});

import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { freePorts } from '../support/ports.js';
import { eventually } from '../support/servers.js';

// A real NOSPACE alarm, raised by etcd itself on the one member whose backend
// quota is small, takes that member (and only it) out of ballast's healthy
// set; freeing the space (compact + defrag) and `etcdctl alarm disarm`
// brings it back. The other members carry the same cluster-wide alarm in
// their status, but it is not theirs: they stay up. (issue #21: a member's
// own alarm ignored by the etcd check went unnoticed.)

/** Member 0's --quota-backend-bytes: a fresh etcd 3.4 backend is ~20 KiB. */
const QUOTA = 1024 * 1024;
const VALUE = 'x'.repeat(64 * 1024);

let etcd: EtcdCluster;
let proxy: InProcess;
let admin: number;

interface StatusEndpoint {
  id: string;
  state: string;
  reason: string;
  etcd: { alarms: string[] } | null;
  checks: { ok: number; failed: number };
}

async function endpoints(): Promise<StatusEndpoint[]> {
  const r = await fetch(`http://127.0.0.1:${admin}/status`);
  const body = (await r.json()) as { clusters: { name: string; endpoints: StatusEndpoint[] }[] };
  return body.clusters.find((c) => c.name === 'etcd')!.endpoints;
}

const idOf = (i: number) => etcd.members[i]!.clientUrl.replace('http://', '');

async function metric(name: string, labels: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

beforeAll(async () => {
  etcd = await EtcdCluster.start({ size: 3, memberArgs: (i) => (i === 0 ? [`--quota-backend-bytes=${QUOTA}`] : []) });
  const [listen, adminPort] = (await freePorts(2)) as [number, number];
  admin = adminPort;
  proxy = await startInProcess(
    `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: etcd, listen: 127.0.0.1:${listen}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((_, i) => idOf(i)).join(', ')}]
    balance: affinity
    health: { check: etcd }
`,
    { admin: true },
  );
  await eventually(async () => (await endpoints()).every((e) => e.state === 'up'), 'all three members up', 20_000);
});

afterAll(async () => {
  await proxy?.stop();
  await etcd?.close();
});

describe('a NOSPACE alarm on one etcd member', () => {
  it('takes the member that raised it out of the healthy set, the others stay up', async () => {
    // Overwrite one key through a member with the default quota until etcd
    // refuses writes: member 0 crosses its quota while applying and raises
    // NOSPACE under its own member id.
    const client = new Etcd3({ hosts: etcd.members[1]!.clientUrl });
    let refused: Error | undefined;
    try {
      for (let n = 0; n < 200 && refused === undefined; n++) {
        await client
          .put('alarm/fill')
          .value(VALUE)
          .catch((err: Error) => (refused = err));
      }
    } finally {
      client.close();
    }
    expect(refused?.message).toMatch(/database space exceeded/);
    const alarms = await etcd.etcdctl(['alarm', 'list']);
    expect(alarms.stdout).toMatch(/memberID:\d+ alarm:NOSPACE/);
    // Every member reports the alarm in its status; only member 0 owns it.
    for (const i of [0, 1, 2]) expect((await etcd.status(i)).errors.join(' '), `member ${i}'s status`).toContain('NOSPACE');
    const checked = (await endpoints()).map((e) => e.checks.ok + e.checks.failed);

    await eventually(async () => (await endpoints()).find((e) => e.id === idOf(0))?.state === 'down', 'member 0 down on its alarm', 15_000);
    // Give the others' checks time to see the alarm too (fall is 2): three more checks each.
    await eventually(async () => (await endpoints()).every((e, k) => e.checks.ok + e.checks.failed >= checked[k]! + 3), 'three more checks of every member', 15_000);
    const now = await endpoints();
    const m0 = now.find((e) => e.id === idOf(0))!;
    expect(m0.reason).toContain('NOSPACE');
    expect(m0.etcd?.alarms).toContain('NOSPACE');
    for (const i of [1, 2]) expect(now.find((e) => e.id === idOf(i))!.state, `member ${i} is not the one in alarm`).toBe('up');
    expect(await metric('ballast_upstream_healthy', `endpoint="${idOf(0)}"`)).toBe(0);
  });

  it('comes back once the space is freed and the alarm disarmed', async () => {
    const rev = JSON.parse((await etcd.etcdctl(['endpoint', 'status', '-w', 'json'], { endpoint: etcd.members[1]!.clientUrl })).stdout)[0].Status.header.revision as number;
    await etcd.etcdctl(['compact', String(rev), '--physical']);
    await etcd.etcdctl(['defrag'], { endpoint: etcd.members[0]!.clientUrl, timeoutMs: 30_000 });
    expect((await etcd.status(0)).dbSize).toBeLessThan(QUOTA);
    // Still down while the alarm stands: freeing space alone does not clear it.
    expect((await endpoints()).find((e) => e.id === idOf(0))!.state).toBe('down');
    await etcd.etcdctl(['alarm', 'disarm']);
    await eventually(async () => (await endpoints()).every((e) => e.state === 'up'), 'member 0 up again after disarm', 15_000);
    expect(await metric('ballast_upstream_healthy', `endpoint="${idOf(0)}"`)).toBe(1);
  });
});

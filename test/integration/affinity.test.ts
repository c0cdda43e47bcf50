import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { RendezvousBalancer } from '../../src/upstream/balancer/rendezvous.js';
import { Endpoint } from '../../src/upstream/endpoint.js';
import { parseAddress } from '../../src/config/address.js';
import { runCli, startInProcess, writeConfig, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { EtcdWriter, missingAcked } from '../support/etcd-writer.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePort, freePorts } from '../support/ports.js';
import { eventually } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';
import { systemClock } from '../../src/clock.js';

// Session affinity to etcd members by client identity, forward-only failover,
// and members discovered from etcd itself (etcd-io/etcd#20221,
// kubernetes/kubernetes#59848 stale reads; k3s-io/k3s#11349 stale server lists).

let dir: string;
let pki: Pki;
let etcd: EtcdCluster;
let proxy: InProcess;
let port: number;
const IDENTITIES = 30;

function configYaml(listenPort: number, adminPort?: number, discoveryHosts = '["127.0.0.1:*"]'): string {
  const f = pki.files;
  return `
${adminPort ? `admin: { listen: 127.0.0.1:${adminPort} }` : 'admin: { enabled: false }'}
log: { level: warn }
tls:
  guard: { cert: ${f['ballast-server.crt']}, key: ${f['ballast-server.key']}, clientCA: ${f['ca.crt']} }
  to-etcd: { cert: ${f['ballast-client.crt']}, key: ${f['ballast-client.key']}, ca: ${f['ca.crt']} }
listeners:
  - { name: etcd, listen: 127.0.0.1:${listenPort}, cluster: etcd, tls: guard }
clusters:
  - name: etcd
    endpoints: [${etcd.members[0]!.clientUrl}]
    discovery: etcd-members
    syncInterval: 1s
    # The test members share 127.0.0.1 on different ports; real members share a port.
    discoveryHosts: ${discoveryHosts}
    tls: to-etcd
    balance: affinity
    affinity: { key: client-identity, stickiness: sticky, ttl: 10m }
    health: { check: etcd }
`;
}

beforeAll(async () => {
  dir = await makeTempDir();
  pki = await makePki(dir);
  for (let i = 0; i < IDENTITIES; i++) await pki.issue(`client-${i}`, { cn: `client-${i}`, usage: ['client'] });
  const f = pki.files;
  etcd = await EtcdCluster.start({ size: 3, clientTls: { cert: f['etcd-server.crt']!, key: f['etcd-server.key']!, ca: f['ca.crt']!, clientCertAuth: true } });
  port = await freePort();
  // Only one seed endpoint: the other members must come from discovery.
  proxy = await startInProcess(configYaml(port));
  await eventually(() => {
    const c = proxy.ballast.clusters.get('etcd')!;
    return c.endpoints.length === 3 && c.endpoints.every((e) => e.state === 'up');
  }, 'three discovered members up', 20_000);
});

afterAll(async () => {
  await proxy?.stop();
  await etcd?.close();
  await removeDir(dir);
});

function clientFor(i: number, p = port): Etcd3 {
  return new Etcd3({
    hosts: `https://127.0.0.1:${p}`,
    credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs[`client-${i}`]!.cert), privateKey: Buffer.from(pki.certs[`client-${i}`]!.key) },
    dialTimeout: 2000,
    defaultCallOptions: () => ({ deadline: Date.now() + 3000 }),
  });
}

/** Which member (hex id) serves identity i on a fresh connection. */
async function memberOf(i: number, p = port): Promise<string> {
  const c = clientFor(i, p);
  try {
    const s = await c.maintenance.status();
    return BigInt(s.header.member_id).toString(16);
  } finally {
    c.close();
  }
}

function fingerprint(i: number): string {
  return new X509Certificate(pki.certs[`client-${i}`]!.cert).fingerprint256;
}

/** The placement rendezvous predicts from first principles, for the given live members. */
function predicted(liveIds: string[]): (i: number) => string {
  const b = new RendezvousBalancer({ stickiness: 'rehash', ttl: 0, preferLocal: undefined, clock: systemClock });
  b.update(
    liveIds.map((id) => {
      const r = parseAddress(id, { allowScheme: false, allowHostname: true });
      if (!r.ok) throw new Error(r.error);
      return new Endpoint(id, r.address, undefined, 100, 0);
    }),
  );
  return (i) => b.rank(fingerprint(i))[0]!.id;
}

describe('affinity by client identity', () => {
  it('places each identity on one member, the same across reconnects, as rendezvous predicts, spread over all three', async () => {
    const idToIndex = await etcd.memberIds();
    const endpointOfMember = (hex: string) => etcd.members[idToIndex.get(hex)!]!.clientUrl.replace('https://', '');
    const expect1 = predicted(etcd.members.map((m) => m.clientUrl.replace('https://', '')));
    const counts = new Map<string, number>();
    for (let i = 0; i < IDENTITIES; i++) {
      const a = await memberOf(i);
      const b = await memberOf(i);
      expect(b, `identity ${i} stays on its member across reconnects`).toBe(a);
      expect(endpointOfMember(a)).toBe(expect1(i));
      counts.set(a, (counts.get(a) ?? 0) + 1);
    }
    expect(counts.size).toBe(3);
    for (const n of counts.values()) expect(n).toBeGreaterThanOrEqual(2);
  });

  it('two ballast processes with the same config place every identity on the same member', async () => {
    const [p2, admin2] = await freePorts(2);
    const file = writeConfig(dir, configYaml(p2!, admin2!), 'second.yaml');
    const second = runCli(['run', '--config', file]);
    try {
      await eventually(async () => {
        const r = await fetch(`http://127.0.0.1:${admin2}/status`).then((x) => x.json() as Promise<{ clusters: { endpoints: { state: string }[] }[] }>).catch(() => undefined);
        return r?.clusters[0]?.endpoints.length === 3 && r.clusters[0].endpoints.every((e) => e.state === 'up');
      }, 'second ballast discovered and checked all members', 20_000);
      for (let i = 0; i < 12; i++) expect(await memberOf(i, p2!), `identity ${i}`).toBe(await memberOf(i));
    } finally {
      second.kill('SIGTERM');
      await second.exited;
    }
  });

  it('killing one member moves only its clients, each to its next-ranked member', async () => {
    const ids = await etcd.memberIds();
    const before: string[] = [];
    for (let i = 0; i < IDENTITIES; i++) before.push(await memberOf(i));
    const victimHex = before[0]!;
    const victim = ids.get(victimHex)!;
    const cluster = proxy.ballast.clusters.get('etcd')!;
    const urlOf = (j: number) => etcd.members[j]!.clientUrl.replace('https://', '');
    const victimEndpoint = cluster.endpoints.find((e) => e.id === urlOf(victim))!;
    // Its last sample before the fault: was it the leader, and in which term?
    const victimWasLeader = victimEndpoint.etcd !== undefined && victimEndpoint.etcd.leaderId === victimEndpoint.etcd.memberId;
    const victimTerm = victimEndpoint.etcd?.raftTerm ?? 0;
    await etcd.kill(victim);
    try {
      await eventually(() => cluster.endpoints.some((e) => e.state === 'down' || e.state === 'ejected'), 'killed member out of rotation');
      const survivors = etcd.members.filter((_, j) => j !== victim).map((m) => m.clientUrl.replace('https://', ''));
      // A moved client goes to its next-ranked member only if that member's
      // last sample shows it caught up; otherwise to one that is (the forward
      // rule, unit-tested in rendezvous.test.ts). When the victim was the
      // leader, the new leader's first entry reaches the survivors' samples
      // one check apart. So first wait until both survivors name the same
      // leader (a new one, in a later term, if the victim led), at the same
      // applied index, unchanged for a second: then rank alone decides.
      const survivorEndpoints = cluster.endpoints.filter((e) => survivors.includes(e.id));
      const sampleOf = (e: (typeof survivorEndpoints)[number]) => (e.etcd ? `${e.etcd.leaderId}/${e.etcd.raftTerm}/${e.lastRaftIndex}` : 'none');
      let seen = '';
      let since = Date.now();
      await eventually(() => {
        const now = survivorEndpoints.map(sampleOf).join(' ');
        if (now !== seen) {
          seen = now;
          since = Date.now();
        }
        const [a, b] = survivorEndpoints.map((e) => e.etcd);
        if (!a || !b || sampleOf(survivorEndpoints[0]!) !== sampleOf(survivorEndpoints[1]!)) return false;
        if (victimWasLeader && (a.leaderId === victimEndpoint.etcd?.memberId || a.raftTerm <= victimTerm)) return false;
        return survivorEndpoints[0]!.lastRaftIndex >= victimEndpoint.lastRaftIndex && Date.now() - since >= 1000;
      }, 'survivors agree on a leader and an applied index for a second', 20_000, 50);
      const describe = () => cluster.endpoints.map((e) => `${e.id} ${e.state} ${sampleOf(e)}`).join('; ');
      const next = predicted(survivors);
      const idToEndpoint = (hex: string) => etcd.members[ids.get(hex)!]!.clientUrl.replace('https://', '');
      for (let i = 0; i < IDENTITIES; i++) {
        const now = await memberOf(i);
        if (before[i] === victimHex) expect(idToEndpoint(now), `identity ${i} moved to its next-ranked member (${describe()})`).toBe(next(i));
        else expect(now, `identity ${i} did not move`).toBe(before[i]);
      }
      expect(cluster.affinity!.moves.get('member_down')).toBeGreaterThan(0);
    } finally {
      await etcd.restart(victim);
    }
    await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'restarted member up', 20_000);
  });
});

describe('monotonic reads through ballast', () => {
  it('a reader that reconnects often never sees the revision go backwards, across a member kill and restart', async () => {
    // Writer: continuous writes through ballast with its own identity.
    const w = new EtcdWriter(`https://127.0.0.1:${port}`, 'mono', {
      credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs['client-1']!.cert), privateKey: Buffer.from(pki.certs['client-1']!.key) },
    });
    w.start();
    await w.waitForAcks(10);
    const revisions: number[] = [];
    let running = true;
    let reads = 0;
    const reader = (async () => {
      while (running) {
        const c = clientFor(2);
        try {
          for (let j = 0; j < 5 && running; j++) {
            // Serializable: answered by the member itself, the read that can go back in time if a client is bounced to a lagging member.
            const r = await c.get('mono/').serializable(true).exec();
            revisions.push(Number(r.header.revision));
            reads++;
          }
        } catch {
          // failover window: reconnect
        } finally {
          c.close();
        }
      }
    })();
    await eventually(() => reads > 20, 'reader going');
    const victim = (await etcd.memberIds()).get(await memberOf(2))!;
    await etcd.kill(victim);
    const afterKill = reads;
    await eventually(() => reads > afterKill + 20, 'reads resume after the kill', 30_000);
    await etcd.restart(victim);
    const afterRestart = reads;
    await eventually(() => reads > afterRestart + 20, 'reads continue after the restart', 30_000);
    running = false;
    await reader;
    await w.stop();
    let regressions = 0;
    for (let k = 1; k < revisions.length; k++) if (revisions[k]! < revisions[k - 1]!) regressions++;
    expect(revisions.length).toBeGreaterThan(60);
    expect(regressions).toBe(0);
    expect(await missingAcked(etcd.clientUrls(), w.stats.acked, { credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs['etcd-server']!.cert), privateKey: Buffer.from(pki.certs['etcd-server']!.key) } })).toEqual([]);
    await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'all up again', 20_000);
  });
});

describe('members discovered from etcd itself', () => {
  it('refuses an advertised URL outside the seed hosts and ports (and discoveryHosts), says why, and keeps what it may use', async () => {
    const [p2] = (await freePorts(1)) as [number];
    const strict = await startInProcess(configYaml(p2, undefined, '[]'));
    try {
      const d = () => strict.ballast.discovery.get('etcd')!;
      await eventually(() => d().syncsOk >= 1, 'a sync', 20_000);
      const seed = etcd.members[0]!.clientUrl.replace('https://', '');
      expect(strict.ballast.clusters.get('etcd')!.endpoints.map((e) => e.id)).toEqual([seed]);
      expect(d().refused.map((r) => r.url).sort()).toEqual(etcd.members.slice(1, 3).map((m) => m.clientUrl).sort());
      for (const r of d().refused) expect(r.reason).toMatch(/^port \d+ is not allowed for 127\.0\.0\.1 .*127\.0\.0\.1:\* in discoveryHosts/);
      expect(strict.lines.filter((l) => l.level === 'warn' && /discovery refused member/.test(l.msg))).toHaveLength(2);
    } finally {
      await strict.stop();
    }
  });

  it('picks up a member replaced by runtime reconfiguration, with no config change and traffic flowing', async () => {
    const cluster = proxy.ballast.clusters.get('etcd')!;
    const w = new EtcdWriter(`https://127.0.0.1:${port}`, 'replace', {
      credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs['client-3']!.cert), privateKey: Buffer.from(pki.certs['client-3']!.key) },
    });
    w.start();
    await w.waitForAcks(10);
    // Replace a member that is not the seed (the seed stays as a discovery entry point).
    const leaving = 2;
    const leavingId = etcd.members[leaving]!.clientUrl.replace('https://', '');
    await etcd.removeMember(leaving);
    await eventually(() => !cluster.endpoints.some((e) => e.id === leavingId), 'removed member dropped from the endpoints', 20_000);
    const added = await etcd.addMember();
    const addedId = added.clientUrl.replace('https://', '');
    await eventually(() => cluster.find(addedId)?.state === 'up', 'new member discovered and healthy', 30_000);
    await w.waitForAcks(20, 30_000);
    await w.stop();
    expect(cluster.endpoints.length).toBe(3);
    expect(proxy.ballast.discovery.get('etcd')!.syncsOk).toBeGreaterThan(2);
    const hosts = etcd.clientUrls();
    expect(await missingAcked(hosts, w.stats.acked, { credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs['etcd-server']!.cert), privateKey: Buffer.from(pki.certs['etcd-server']!.key) } })).toEqual([]);
  });
});

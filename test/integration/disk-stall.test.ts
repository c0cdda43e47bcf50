import { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../src/upstream/endpoint.js';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { stallFdatasync, walFile, type DiskStall } from '../support/disk-stall.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { freePort } from '../support/ports.js';
import { eventually } from '../support/servers.js';

// A follower whose WAL fdatasync blocks (a stalled disk: etcd-io/etcd#13527,
// #14338, #15247) keeps answering Status with a leader and a frozen index and
// keeps serving serializable reads of what it last applied. Before issue #16
// ballast kept it up until the cluster wrote maxRaftLag (1000) entries past
// it: 3-4 s at 400 writes/s, never within a minute at a control plane's 10/s,
// while a client pinned to it read revision 65 of a cluster near 700.
// Real etcd, real strace; writes go straight to the other members.

let etcd: EtcdCluster;
let proxy: InProcess;
let port: number;
const downs: string[] = [];

beforeAll(async () => {
  etcd = await EtcdCluster.start({ size: 3 });
  port = await freePort();
  proxy = await startInProcess(`
log: { level: warn }
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    balance: affinity
    affinity: { key: source-ip }
    health: { check: etcd }
`);
  proxy.ballast.clusters.get('etcd')!.observe({ stateChanged: (_c, e, _from, to, reason) => to === 'down' && downs.push(`${e.id} ${reason}`) });
  await allUp();
}, 40_000);

afterAll(async () => {
  await proxy?.stop();
  await etcd?.close();
});

const cluster = () => proxy.ballast.clusters.get('etcd')!;
const endpointOf = (i: number): Endpoint => cluster().find(etcd.members[i]!.clientUrl.replace('http://', ''))!;
const allUp = () => eventually(() => cluster().endpoints.every((e) => e.state === 'up'), 'every member up in ballast', 30_000);

/** Writes straight to the members in `hosts` at about `rate` puts/s (0: as fast as 8 concurrent loops go). */
class Writer {
  private readonly client: Etcd3;
  private running = true;
  private readonly loops: Promise<void>[] = [];
  acked = 0;
  constructor(hosts: string[], rate: number) {
    this.client = new Etcd3({ hosts, dialTimeout: 2000, defaultCallOptions: () => ({ deadline: Date.now() + 2000 }) });
    const n = rate === 0 ? 8 : 1;
    for (let k = 0; k < n; k++) this.loops.push(this.loop(k, rate));
  }
  private async loop(k: number, rate: number): Promise<void> {
    let seq = 0;
    const start = Date.now();
    while (this.running) {
      try {
        await this.client.put(`stall/${k}/${seq++}`).value('x').exec();
        this.acked++;
      } catch {
        await sleep(20);
      }
      if (rate > 0) await sleep(Math.max(0, start + (seq * 1000) / rate - Date.now()));
    }
  }
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.client.close();
  }
}

/** One long-lived client through ballast doing serializable reads, remembering every revision and member. */
class PinnedReader {
  private readonly client = new Etcd3({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 2000, defaultCallOptions: () => ({ deadline: Date.now() + 1000 }) });
  private running = true;
  private readonly done: Promise<void>;
  readonly reads: { revision: number; member: string }[] = [];
  constructor() {
    this.done = (async () => {
      while (this.running) {
        try {
          const r = await this.client.get('stall/0/0').serializable(true).exec();
          this.reads.push({ revision: Number(r.header.revision), member: BigInt(r.header.member_id).toString(16) });
        } catch {
          // closed by ballast or a deadline: the client reconnects through ballast
        }
        await sleep(10);
      }
    })();
  }
  get last(): { revision: number; member: string } | undefined {
    return this.reads.at(-1);
  }
  /** Reads whose revision is older than one this client had already read. */
  regressions(): string[] {
    const out: string[] = [];
    let max = 0;
    for (const r of this.reads) {
      if (r.revision < max) out.push(`${r.revision} from ${r.member} after ${max}`);
      max = Math.max(max, r.revision);
    }
    return out;
  }
  async stop(): Promise<void> {
    this.running = false;
    await this.done;
    this.client.close();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The member the reader is pinned to, made a follower (leadership moved away if it was the leader). */
async function pinnedFollower(reader: PinnedReader): Promise<number> {
  await eventually(() => reader.reads.length > 5, 'reader going');
  const ids = await etcd.memberIds();
  const pinned = ids.get(reader.last!.member)!;
  const leader = await etcd.leaderIndex();
  if (leader === pinned) {
    const other = etcd.members[(pinned + 1) % 3]!;
    await etcd.etcdctl(['move-leader', other.id!], { endpoint: etcd.members[pinned]!.clientUrl });
    await eventually(async () => (await etcd.leaderIndex()) !== pinned, 'leadership moved off the pinned member');
  }
  return pinned;
}

describe('a follower whose disk stalls (WAL fdatasync held by strace)', () => {
  let stall: DiskStall | undefined;
  let writer: Writer | undefined;
  let reader: PinnedReader | undefined;
  afterEach(async () => {
    await stall?.stop();
    stall = undefined;
    await reader?.stop();
    reader = undefined;
    await writer?.stop();
    writer = undefined;
    await allUp();
    downs.length = 0;
  }, 40_000);

  it('an idle cluster, then one at 10 writes/s, with no stall: every member stays up', async () => {
    downs.length = 0;
    await sleep(3000); // idle: ~7 check intervals, no index moves anywhere
    writer = new Writer([etcd.members[0]!.clientUrl, etcd.members[1]!.clientUrl, etcd.members[2]!.clientUrl], 10);
    await sleep(4000);
    expect(writer.acked).toBeGreaterThan(20);
    expect(downs).toEqual([]);
    expect(cluster().endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
  }, 30_000);

  for (const [label, rate] of [
    ['10 writes/s', 10],
    ['as fast as 8 writers go (~200-400 writes/s)', 0],
  ] as const) {
    it(`at ${label}: the member goes down, and a client pinned to it never reads a revision older than one it has seen`, async () => {
      reader = new PinnedReader();
      const pinned = await pinnedFollower(reader);
      const m = etcd.members[pinned]!;
      const others = etcd.members.filter((_, i) => i !== pinned).map((x) => x.clientUrl);
      writer = new Writer(others, rate);
      await sleep(1000);
      const before = writer.acked;
      stall = await stallFdatasync(m.pid!, walFile(m.dataDir));
      const e = endpointOf(pinned);
      await eventually(() => e.state === 'down', `${m.name} marked down while its disk stalls (now ${e.state}: ${e.lastCheckReason})`, 15_000);
      const outMs = Date.now() - stall.since;
      const frozen = e.etcd!.raftAppliedIndex;
      // The cluster went on writing without it; the client moved on to a member that has.
      const frozenRevision = Math.max(...reader.reads.filter((r) => r.member === m.id).map((r) => r.revision));
      await eventually(() => reader!.last !== undefined && reader!.last.member !== m.id && reader!.last.revision > frozenRevision, 'the pinned client reads newer revisions from another member', 15_000);
      await sleep(500);
      const rateSeen = ((writer.acked - before) * 1000) / (Date.now() - stall.since + 1000);
      expect(downs.some((d) => d.startsWith(e.id) && (rate === 10 ? /frozen/.test(d) : /frozen|raft lag/.test(d))), downs.join('; ')).toBe(true);
      expect(reader.regressions()).toEqual([]);
      console.log(`[disk-stall] ${label}: ~${Math.round(rateSeen)} writes/s, ${m.name} out ${outMs}ms after the stall began (applied index frozen at ${frozen}); ${downs.join('; ')}`);
    }, 45_000);
  }
});

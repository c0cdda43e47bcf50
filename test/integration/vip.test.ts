import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CASE_LABELS, nowMs, VipLab, type VipCase } from '../../bench/vip-failover/lab.mjs';

// The VIP with real parts (bench/vip-failover/lab.mjs): three node network
// namespaces and a client namespace on a bridge (bench/lib/netns.mjs, names
// bl<pid>-*, addresses from 198.18.0.0/24 only inside them, all removed in
// afterAll, on SIGINT/SIGTERM and by a reaper if this process is killed);
// in each node a real etcd member (clients over mTLS), a backend answering
// the node's name, and `node dist/cli.js run` with vip: (leaseTTL 3s). A
// sampler lists, every 50 ms, which namespaces have the VIP; the client asks
// VIP:6443 every 100 ms. Each fault hits the current holder; another node
// must answer the client and no sample may ever show two holders. Times are
// measured (bench/README.md), not asserted: bounds are timeouts only.

function missing(): string[] {
  const out: string[] = [];
  for (const bin of ['ip', 'etcd', 'arping', 'curl']) {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    } catch {
      out.push(bin);
    }
  }
  return out;
}

const root = process.getuid?.() === 0;

describe.skipIf(!root)('vip in network namespaces (root)', () => {
  let lab: VipLab;

  beforeAll(async () => {
    // scripts/setup --test installs them; a missing one is a failure, not a skip.
    expect(missing()).toEqual([]);
    lab = await VipLab.start({ mode: 'ballast', leaseTTL: '3s' });
  }, 90_000);

  afterAll(async () => {
    await lab?.close();
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    expect(left).not.toContain(lab?.net.prefix ?? 'never');
  }, 30_000);

  it('one holder within a few seconds of start, and the client is answered by it', async () => {
    const holder = await lab.settle(20_000);
    expect(['n1', 'n2', 'n3']).toContain(holder);
    const answered = lab.answers.filter((a) => a.who !== undefined);
    expect(answered.at(-1)?.who).toBe(holder);
    expect(lab.twoHolderSamples(lab.startedAt)).toEqual([]);
  });

  const cases: VipCase[] = ['kill', 'stop', 'term', 'linkdown', 'partition', 'unready'];
  it.each(cases)('%s: another node answers the client, and no sample shows two holders', async (kind) => {
    const r = await lab.runCase(kind, { boundMs: 20_000, observeMs: 5000 });
    const context = `${CASE_LABELS[kind]}: ${JSON.stringify(r)}\n--- ${r.from} ---\n${lab.ballastLog(r.from)}`;
    expect(r.to, context).toBeDefined();
    expect(r.to, context).not.toBe(r.from);
    expect(r.twoHolders, context).toEqual([]);
    expect(r.samples, context).toBeGreaterThan(20);
  }, 60_000);

  it('over the whole run, no sample showed two holders, and the VIP settles on one node again', async () => {
    await lab.settle(20_000);
    expect(lab.samples.length).toBeGreaterThan(200);
    expect(lab.twoHolderSamples(0, nowMs())).toEqual([]);
  });
});

import { describe, expect, it } from 'vitest';
import type { Clock, TimerHandle } from '../../src/clock.js';
import { parseConfig, type VipConfig } from '../../src/config/load.js';
import { problems } from '../support/config-problems.js';
import type { CampaignResult, ElectionStore } from '../../src/vip/election-store.js';
import type { CommandResult, CommandRunner } from '../../src/vip/runner.js';
import { VipAddress } from '../../src/vip/vip-address.js';
import { VIP_KERNEL_LAG_MS, VIP_SAFETY_MARGIN_MS, VipElection, vipTimings } from '../../src/vip/vip-election.js';
import { memoryLogger } from '../support/ballast.js';
import { ManualClock } from '../support/manual-clock.js';

// The election state machine with an injected clock, a store that keeps
// etcd's lease semantics (TTL counted from when etcd receives a grant or a
// keepalive; a key on a lease goes with it), and a runner that plays the
// kernel: an address added with valid_lft T is gone T seconds after its last
// refresh. Real etcd, real `ip` and real namespaces are in
// test/integration/vip.test.ts.

const base = `
listeners:
  - { name: api, listen: 127.0.0.1:6443, cluster: api }
clusters:
  - { name: api, endpoints: [10.0.0.1:6443] }
  - { name: etcd, endpoints: [10.0.0.1:2379], health: { check: etcd } }
`;


describe('vip config', () => {
  it('reads the section with its defaults', () => {
    const c = parseConfig(`${base}vip:\n  address: 192.0.2.10/24\n  interface: eth0\n  cluster: etcd\n  node: cp-1\n`);
    expect(c.vip).toEqual({ cidr: '192.0.2.10/24', ip: '192.0.2.10', prefix: 24, family: 4, interface: 'eth0', cluster: 'etcd', leaseTTL: 3000, requireReady: true, node: 'cp-1' });
    const v6 = parseConfig(`${base}vip: { address: "2001:db8::10/64", interface: eth0, cluster: etcd, leaseTTL: 10s, requireReady: false }\n`);
    expect(v6.vip).toMatchObject({ family: 6, ip: '2001:db8::10', prefix: 64, leaseTTL: 10_000, requireReady: false });
    expect(v6.vip!.node.length).toBeGreaterThan(0);
  });

  it('names the problem', () => {
    expect(problems(`${base}vip: { address: 192.0.2.10, interface: eth0, cluster: etcd }\n`)[0]).toMatch(/^vip\.address: expected an IPv4 or IPv6 address with its prefix/);
    expect(problems(`${base}vip: { address: 192.0.2.10/33, interface: eth0, cluster: etcd }\n`)[0]).toMatch(/^vip\.address/);
    expect(problems(`${base}vip: { address: 192.0.2.10/24, interface: eth0, cluster: api }\n`)).toEqual(['vip.cluster: "api" is not an etcd cluster (needs health.check: etcd); the election runs in etcd']);
    expect(problems(`${base}vip: { address: 192.0.2.10/24, interface: eth0, cluster: nope }\n`)[0]).toMatch(/^vip\.cluster: no cluster named "nope"/);
    expect(problems(`${base}vip: { address: 192.0.2.10/24, interface: eth0, cluster: etcd, leaseTTL: 3500ms }\n`)[0]).toMatch(/^vip\.leaseTTL: must be whole seconds/);
    expect(problems(`${base}vip: { address: 192.0.2.10/24, interface: eth0, cluster: etcd, leaseTTL: 2s }\n`)[0]).toMatch(/^vip\.leaseTTL: must be at least 3000ms/);
    expect(problems(`${base}vip: { address: 192.0.2.10/24, interface: eth0, cluster: etcd, leaseTtl: 3s }\n`)[0]).toBe('vip: unknown key "leaseTtl" (did you mean "leaseTTL"?)');
  });

  it('keeps the address lifetime a safety margin inside the lease', () => {
    for (const ttl of [3, 4, 5, 10, 60]) {
      const t = vipTimings(ttl * 1000);
      expect(t.lifetimeSeconds).toBeGreaterThanOrEqual(1);
      // lease end >= sent + ttl;
      // address end <= sent + maxRoundTrip + lifetime + kernel lag (its lifetime check runs at most once a second)
      expect(t.maxRoundTripMs + t.lifetimeSeconds * 1000 + VIP_KERNEL_LAG_MS + VIP_SAFETY_MARGIN_MS).toBeLessThanOrEqual(ttl * 1000);
      expect(VIP_KERNEL_LAG_MS).toBeGreaterThanOrEqual(1000);
      expect(t.maxRoundTripMs).toBeGreaterThan(0);
      expect(t.renewIntervalMs * 3).toBeLessThanOrEqual(t.lifetimeSeconds * 1000);
    }
    expect(vipTimings(3000)).toMatchObject({ ttlSeconds: 3, lifetimeSeconds: 1, maxRoundTripMs: 500 });
    expect(vipTimings(10_000)).toMatchObject({ ttlSeconds: 10, lifetimeSeconds: 4, maxRoundTripMs: 4500 });
  });
});

// --- fakes with the semantics that matter ------------------------------------

/** etcd's lease rules on the manual clock; `partitioned` nodes' calls never answer. */
class FakeEtcd {
  leases = new Map<string, number>(); // id -> expires at
  key: { value: string; lease: string } | undefined;
  partitioned = new Set<string>();
  /** Extra delay (ms of manual clock) before a node's calls are answered. */
  delay = new Map<string, number>();
  /** Delay of the answer only: etcd acts at once (a renewal counts from when it arrives), the reply is slow. */
  replyDelay = new Map<string, number>();
  failNext = new Map<string, number>();
  /** The next call named `${node} ${what}` is applied by etcd but its answer is lost (the client times out). */
  applyThenFail = new Set<string>();
  calls: string[] = [];
  private seq = 0;

  constructor(private readonly clock: ManualClock) {}

  private expire(): void {
    for (const [id, at] of this.leases) if (this.clock.now() >= at) this.leases.delete(id);
    if (this.key && !this.leases.has(this.key.lease)) this.key = undefined;
  }

  store(node: string): ElectionStore {
    const call = <T>(what: string, fn: () => T): Promise<T> => {
      this.calls.push(`${node} ${what}`);
      if (this.partitioned.has(node)) return new Promise<T>(() => undefined);
      const fails = this.failNext.get(node) ?? 0;
      if (fails > 0) {
        this.failNext.set(node, fails - 1);
        return Promise.reject(new Error('etcdserver: request timed out'));
      }
      if (this.applyThenFail.delete(`${node} ${what}`)) {
        this.expire();
        try {
          fn();
        } catch {
          // the answer is lost either way
        }
        return Promise.reject(new Error('vip campaign: no answer from etcd within 500ms'));
      }
      const d = this.delay.get(node) ?? 0;
      const rd = this.replyDelay.get(node) ?? 0;
      if (rd > 0) {
        this.expire();
        let out: { v: T } | { e: Error };
        try {
          out = { v: fn() };
        } catch (err) {
          out = { e: err as Error };
        }
        return new Promise<T>((resolve, reject) => this.clock.setTimeout(() => ('v' in out ? resolve(out.v) : reject(out.e)), rd));
      }
      return new Promise<T>((resolve, reject) => {
        const run = () => {
          this.expire();
          try {
            resolve(fn());
          } catch (err) {
            reject(err as Error);
          }
        };
        if (d > 0) this.clock.setTimeout(run, d);
        else run();
      });
    };
    return {
      grant: (ttl) =>
        call('grant', () => {
          const id = `${node}-${++this.seq}`;
          this.leases.set(id, this.clock.now() + ttl * 1000);
          return id;
        }),
      keepAlive: (lease) =>
        call('keepalive', () => {
          if (!this.leases.has(lease)) return 0;
          this.leases.set(lease, this.clock.now() + 3000);
          return 3;
        }),
      campaign: (key, value, lease): Promise<CampaignResult> =>
        call('campaign', () => {
          expect(key).toBe('/ballast/vip/198.18.0.100');
          if (this.key) return { won: false, holder: this.key.value, lease: this.key.lease };
          this.key = { value, lease };
          return { won: true, holder: value };
        }),
      holder: () => call('holder', () => this.key?.value),
      revoke: (lease) =>
        call('revoke', () => {
          this.leases.delete(lease);
          if (this.key?.lease === lease) this.key = undefined;
        }),
      close: () => undefined,
    };
  }
}

/** One node's kernel: the VIP with its lifetime, and the commands that ran. */
class FakeKernel {
  expiresAt: number | undefined;
  commands: string[] = [];
  failIp = false;
  /** The next N `ip` commands do not finish in time (an overloaded node). */
  timeouts = 0;

  constructor(private readonly clock: ManualClock) {}

  /**
   * The kernel deletes an expired address late: its lifetime check runs at
   * most once a second (measured: up to 0.98 s late); the worst case here.
   */
  static readonly LAG_MS = 1000;

  get present(): boolean {
    return this.expiresAt !== undefined && this.clock.now() < this.expiresAt + FakeKernel.LAG_MS;
  }

  runner(log?: string[]): CommandRunner {
    return async (file, args): Promise<CommandResult> => {
      const line = `${file} ${args.join(' ')}`;
      this.commands.push(line);
      log?.push(line);
      if (file === 'arping') return { ok: true, stdout: '', stderr: '', code: 0 };
      if (this.failIp) return { ok: false, stdout: '', stderr: 'RTNETLINK answers: Operation not permitted', code: 2 };
      if (this.timeouts > 0) {
        this.timeouts--;
        return { ok: false, stdout: '', stderr: '', code: 'ETIMEDOUT' };
      }
      const [, verb] = args;
      if (verb === 'replace' || verb === 'change') {
        // Like the real kernel, `change` re-creates an address that expired.
        this.expiresAt = this.clock.now() + Number(args[args.indexOf('valid_lft') + 1]) * 1000;
        return { ok: true, stdout: '', stderr: '', code: 0 };
      }
      if (verb === 'del') {
        if (!this.present) return { ok: false, stdout: '', stderr: 'Error: ipv4: Address not found.', code: 2 };
        this.expiresAt = undefined;
        return { ok: true, stdout: '', stderr: '', code: 0 };
      }
      return { ok: true, stdout: this.present ? '2: eth0    inet 198.18.0.100/24 scope global eth0' : '', stderr: '', code: 0 };
    };
  }
}

const vipConfig = (node: string): VipConfig => ({ cidr: '198.18.0.100/24', ip: '198.18.0.100', prefix: 24, family: 4, interface: 'eth0', cluster: 'etcd', leaseTTL: 3000, requireReady: true, node });

/** One process's view of the clock: while paused (SIGSTOP) its timers do not fire; they fire late on resume. */
class PausableClock implements Clock {
  paused = false;
  private overdue: (() => void)[] = [];
  constructor(private readonly inner: ManualClock) {}
  now(): number {
    return this.inner.now();
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.inner.setTimeout(() => (this.paused ? this.overdue.push(fn) : fn()), ms);
  }
  clearTimeout(h: TimerHandle): void {
    this.inner.clearTimeout(h);
  }
  resume(): void {
    this.paused = false;
    const due = this.overdue;
    this.overdue = [];
    due.forEach((fn) => fn());
  }
}

function makeNode(name: string, manual: ManualClock, etcd: FakeEtcd, order?: string[]) {
  const clock = new PausableClock(manual);
  const kernel = new FakeKernel(manual);
  const { log, lines } = memoryLogger('debug');
  const ready = { reasons: [] as string[] };
  const address = new VipAddress(vipConfig(name), kernel.runner(order), log);
  const store = etcd.store(name);
  const wrapped: ElectionStore = {
    ...store,
    revoke: (l, t) => {
      order?.push('revoke');
      return store.revoke(l, t);
    },
  };
  const election = new VipElection(vipConfig(name), wrapped, address, () => ready.reasons, clock, log, () => clock.now());
  return { name, kernel, election, ready, lines, clock };
}

type Node = ReturnType<typeof makeNode>;

/** Advance in 50 ms steps, checking after each that at most one kernel has the address. */
async function run(clock: ManualClock, nodes: Node[], ms: number): Promise<{ maxHolders: number; holders: Set<string> }> {
  let maxHolders = 0;
  const holders = new Set<string>();
  for (let t = 0; t < ms; t += 50) {
    await clock.advance(50);
    const now = nodes.filter((n) => n.kernel.present);
    maxHolders = Math.max(maxHolders, now.length);
    now.forEach((n) => holders.add(n.name));
  }
  return { maxHolders, holders };
}

async function cluster(n = 3) {
  const clock = new ManualClock();
  const etcd = new FakeEtcd(clock);
  const nodes = Array.from({ length: n }, (_, i) => makeNode(`cp-${i + 1}`, clock, etcd));
  for (const x of nodes) await x.election.start();
  const first = await run(clock, nodes, 1000);
  const holder = nodes.find((x) => x.election.holding)!;
  return { clock, etcd, nodes, holder, first };
}

describe('vip election', () => {
  it('elects one holder, adds the address with a lifetime and refreshes it after each renewal', async () => {
    const { clock, nodes, holder, first } = await cluster();
    expect(first.maxHolders).toBe(1);
    expect(nodes.filter((n) => n.election.holding)).toHaveLength(1);
    expect(holder.kernel.commands).toContain('ip addr replace 198.18.0.100/24 dev eth0 valid_lft 1 preferred_lft 1');
    expect(holder.kernel.commands).toContain('arping -U -c 3 -I eth0 198.18.0.100');
    for (const n of nodes) expect(n.election.holder).toBe(holder.name);
    const before = holder.kernel.commands.filter((c) => c.startsWith('ip addr change')).length;
    const r = await run(clock, nodes, 10_000);
    expect(r.maxHolders).toBe(1);
    expect([...r.holders]).toEqual([holder.name]);
    expect(holder.kernel.commands.filter((c) => c.startsWith('ip addr change 198.18.0.100/24 dev eth0 valid_lft 1 preferred_lft 1')).length - before).toBeGreaterThanOrEqual(25);
    expect(holder.election.renewals.get('ok')).toBeGreaterThanOrEqual(25);
    expect(holder.election.transitions.get('won')).toBe(1);
  });

  it('removes a stale copy at start', async () => {
    const clock = new ManualClock();
    const n = makeNode('cp-1', clock, new FakeEtcd(clock));
    n.kernel.expiresAt = clock.now() + 60_000;
    await n.election.start();
    expect(n.kernel.present).toBe(false);
    expect(n.kernel.commands[0]).toBe('ip addr del 198.18.0.100/24 dev eth0');
    expect(n.lines.some((l) => /removed a stale 198\.18\.0\.100\/24/.test(String(l.msg)))).toBe(true);
  });

  it('an `ip` that times out at start is retried, and nothing is campaigned for until the stale copy is gone', async () => {
    const clock = new ManualClock();
    const etcd = new FakeEtcd(clock);
    const n = makeNode('cp-1', clock, etcd);
    n.kernel.expiresAt = clock.now() + 60_000;
    n.kernel.timeouts = 3;
    await n.election.start();
    expect(n.election.lastError).toMatch(/stale address removal: .*ip addr del 198\.18\.0\.100\/24 dev eth0.*ETIMEDOUT/);
    await clock.advance(300);
    expect(etcd.calls).toEqual([]);
    expect(n.kernel.present).toBe(true);
    await run(clock, [n], 1000);
    expect(n.kernel.commands.filter((c) => c.startsWith('ip addr del'))).toHaveLength(4);
    expect(n.election.holding).toBe(true);
  });

  it('an `ip` that is refused (no NET_ADMIN) fails the start', async () => {
    const clock = new ManualClock();
    const n = makeNode('cp-1', clock, new FakeEtcd(clock));
    n.kernel.failIp = true;
    await expect(n.election.start()).rejects.toThrow(/NET_ADMIN/);
  });

  it('a campaign applied by etcd whose answer was lost still makes this node the holder (not a key kept alive by nobody)', async () => {
    const clock = new ManualClock();
    const etcd = new FakeEtcd(clock);
    const a = makeNode('cp-1', clock, etcd);
    const b = makeNode('cp-2', clock, etcd);
    // cp-1's first txn is applied (the key is on its lease) but the answer is lost.
    etcd.applyThenFail.add('cp-1 campaign');
    await a.election.start();
    await clock.advance(10);
    expect(etcd.calls).toEqual(['cp-1 grant', 'cp-1 campaign']);
    expect(a.election.holding).toBe(false);
    await b.election.start();
    const r = await run(clock, [a, b], 3000);
    expect(r.maxHolders).toBe(1);
    expect(a.election.holding).toBe(true);
    expect(a.kernel.present).toBe(true);
    expect(b.election.holder).toBe('cp-1');
  });

  it('a failed renewal removes the address at once, and another node takes over', async () => {
    const { clock, etcd, nodes, holder } = await cluster();
    etcd.failNext.set(holder.name, 1);
    const order = holder.kernel.commands.length;
    await run(clock, nodes, 400);
    expect(holder.kernel.present).toBe(false);
    expect(holder.kernel.commands.slice(order)).toContain('ip addr del 198.18.0.100/24 dev eth0');
    expect(holder.election.transitions.get('renewal_failed')).toBe(1);
    expect(holder.election.renewals.get('failed')).toBe(1);
    const r = await run(clock, nodes, 2000);
    expect(r.maxHolders).toBe(1);
    expect(nodes.filter((n) => n.election.holding)).toHaveLength(1);
  });

  it('a late renewal does not refresh the address', async () => {
    const { clock, etcd, nodes, holder } = await cluster();
    etcd.delay.set(holder.name, 1200);
    const r = await run(clock, nodes, 4000);
    expect(holder.election.renewals.get('late')).toBeGreaterThanOrEqual(1);
    expect(holder.election.transitions.get('renewal_late')).toBeGreaterThanOrEqual(1);
    expect(r.maxHolders).toBe(1);
  });

  it.each([
    ['partitioned from etcd (calls never answer)', 'partition'],
    ['frozen (SIGSTOP: no code runs, time passes)', 'freeze'],
  ])('a holder %s loses the address before anyone else can win', async (_what, how) => {
    const { clock, etcd, nodes, holder } = await cluster();
    const others = nodes.filter((n) => n !== holder);
    if (how === 'partition') etcd.partitioned.add(holder.name);
    else holder.clock.paused = true;
    let maxHolders = 0;
    let takeover = 0;
    for (let t = 0; t < 8000; t += 50) {
      // SIGCONT after 6 s: the frozen holder's overdue timers fire late.
      if (t === 6000) holder.clock.resume();
      await clock.advance(50);
      const present = nodes.filter((n) => n.kernel.present);
      maxHolders = Math.max(maxHolders, present.length);
      if (takeover === 0 && others.some((n) => n.kernel.present)) takeover = t;
    }
    if (how === 'freeze') expect(holder.election.renewals.get('lost')).toBe(1);
    expect(maxHolders).toBe(1);
    expect(takeover).toBeGreaterThan(0);
    // The lease is 3 s; the takeover comes after it expires, within a few campaign rounds.
    expect(takeover).toBeLessThan(4500);
  });

  it('a holder frozen right after a renewal answered just in time loses the address a margin before the lease can end', async () => {
    const { clock, etcd, nodes, holder } = await cluster();
    const others = nodes.filter((n) => n !== holder);
    const t = holder.election.timings;
    // etcd renews at once, the answer comes back just inside maxRoundTrip;
    // the holder refreshes the address and then freezes (SIGSTOP).
    etcd.replyDelay.set(holder.name, t.maxRoundTripMs - 50);
    const refreshes = () => holder.kernel.commands.filter((c) => c.startsWith('ip addr change')).length;
    const before = refreshes();
    let sentAt = 0;
    for (let i = 0; i < 200 && refreshes() === before; i++) {
      const calls = etcd.calls.length;
      await clock.advance(10);
      if (etcd.calls.slice(calls).includes(`${holder.name} keepalive`)) sentAt = clock.now();
    }
    expect(refreshes()).toBe(before + 1);
    holder.clock.paused = true;
    let gone = 0;
    let taken = 0;
    for (let i = 0; i < 600 && taken === 0; i++) {
      await clock.advance(10);
      if (gone === 0 && !holder.kernel.present) gone = clock.now();
      if (others.some((n) => n.kernel.present)) taken = clock.now();
    }
    expect(gone).toBeGreaterThan(0);
    expect(taken).toBeGreaterThan(0);
    // The lease cannot end before sentAt + leaseTTL; the address is gone a margin before that.
    expect(sentAt + t.ttlSeconds * 1000 - gone).toBeGreaterThanOrEqual(VIP_SAFETY_MARGIN_MS - 20);
    expect(taken).toBeGreaterThan(gone);
  });

  it('losing readiness removes the address before revoking the lease; another node wins at once', async () => {
    const clock = new ManualClock();
    const etcd = new FakeEtcd(clock);
    const order: string[] = [];
    const a = makeNode('cp-1', clock, etcd, order);
    const b = makeNode('cp-2', clock, etcd);
    await a.election.start();
    await run(clock, [a], 500);
    await b.election.start();
    await run(clock, [a, b], 500);
    expect(a.election.holding).toBe(true);
    order.length = 0;
    a.ready.reasons = ['api: no healthy endpoint in cluster api'];
    const r = await run(clock, [a, b], 800);
    expect(order.slice(0, 2)).toEqual(['ip addr del 198.18.0.100/24 dev eth0', 'revoke']);
    expect(a.election.transitions.get('unready')).toBe(1);
    expect(b.election.holding).toBe(true);
    expect(r.maxHolders).toBe(1);
    // Not ready: no campaign, no lease.
    const calls = etcd.calls.length;
    await run(clock, [a, b], 1000);
    expect(etcd.calls.slice(calls).filter((c) => c.startsWith('cp-1'))).toEqual([]);
    expect(a.election.state).toBe('idle');
  });

  it('stop (SIGTERM, drain) removes the address first, then revokes the lease', async () => {
    const clock = new ManualClock();
    const etcd = new FakeEtcd(clock);
    const order: string[] = [];
    const a = makeNode('cp-1', clock, etcd, order);
    const b = makeNode('cp-2', clock, etcd);
    await a.election.start();
    await run(clock, [a], 500);
    await b.election.start();
    order.length = 0;
    await a.election.stop('shutdown');
    expect(order).toEqual(['ip addr del 198.18.0.100/24 dev eth0', 'revoke']);
    expect(a.election.transitions.get('shutdown')).toBe(1);
    expect(a.election.state).toBe('stopped');
    await run(clock, [a, b], 300);
    expect(b.election.holding).toBe(true);
  });

  it('an address that cannot be added is not held', async () => {
    const clock = new ManualClock();
    const etcd = new FakeEtcd(clock);
    const a = makeNode('cp-1', clock, etcd);
    await a.election.start();
    a.kernel.failIp = true;
    await run(clock, [a], 1000);
    expect(a.election.holding).toBe(false);
    expect(a.election.transitions.get('address_failed')).toBeGreaterThanOrEqual(1);
    expect(a.election.lastError).toMatch(/Operation not permitted.*NET_ADMIN/);
    expect(etcd.key).toBeUndefined();
  });
});

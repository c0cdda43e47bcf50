import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/config/address.js';
import { parseConfig } from '../../src/config/load.js';
import { systemClock } from '../../src/clock.js';
import { untried } from '../../src/upstream/balancer/balancer.js';
import { createBalancer } from '../../src/upstream/balancer/index.js';
import { LeastConnectionsBalancer } from '../../src/upstream/balancer/least-connections.js';
import { RandomTwoBalancer } from '../../src/upstream/balancer/random-two.js';
import { RoundRobinBalancer, smoothSchedule } from '../../src/upstream/balancer/round-robin.js';
import { Endpoint } from '../../src/upstream/endpoint.js';

// The non-affinity balance policies as pure objects: schedules, heaps and
// samples with the endpoints' active counts set by hand. (Raised from
// surviving mutants of `npm run mutation`; rendezvous has its own file.)

function ep(id: string, weight = 100, active = 0): Endpoint {
  const r = parseAddress(id, { allowScheme: false, allowHostname: true });
  if (!r.ok) throw new Error(r.error);
  const e = new Endpoint(id, r.address, undefined, weight, 0);
  e.active = active;
  return e;
}

const ids = (es: readonly (Endpoint | undefined)[]) => es.map((e) => e?.id);

describe('untried', () => {
  it('is true on a first attempt, and for endpoints not yet tried', () => {
    const [a, b] = [ep('10.0.0.1:1'), ep('10.0.0.2:1')];
    expect(untried(a, null)).toBe(true);
    expect(untried(a, [b])).toBe(true);
    expect(untried(a, [b, a])).toBe(false);
  });
});

describe('createBalancer', () => {
  it.each([
    ['round-robin', 'round-robin'],
    ['least-connections', 'least-connections'],
    ['random-two', 'random-two'],
    ['affinity', 'affinity'],
  ])('balance: %s makes the %s policy', (balance, policy) => {
    const c = parseConfig(`
listeners: [{ name: l, listen: 127.0.0.1:1, cluster: c }]
clusters: [{ name: c, endpoints: [10.0.0.1:1], balance: ${balance} }]
`).clusters[0]!;
    expect(createBalancer(c, systemClock).policy).toBe(policy);
  });
});

describe('RoundRobinBalancer', () => {
  it('cycles through equal-weight endpoints in order, and wraps', () => {
    const es = [ep('10.0.0.1:1'), ep('10.0.0.2:1'), ep('10.0.0.3:1')];
    const b = new RoundRobinBalancer();
    b.update(es);
    expect(ids(Array.from({ length: 7 }, () => b.pick({ key: '', tried: null })))).toEqual(ids([es[0], es[1], es[2], es[0], es[1], es[2], es[0]]));
  });

  it('skips endpoints already tried, and gives up when all were', () => {
    const es = [ep('10.0.0.1:1'), ep('10.0.0.2:1'), ep('10.0.0.3:1')];
    const b = new RoundRobinBalancer();
    b.update(es);
    expect(b.pick({ key: '', tried: [es[0]!] })).toBe(es[1]);
    expect(b.pick({ key: '', tried: [es[2]!, es[0]!] })).toBe(es[1]);
    expect(b.pick({ key: '', tried: es })).toBeUndefined();
  });

  it('picks nothing with no endpoints, and restarts the cycle when the set shrinks under it', () => {
    const b = new RoundRobinBalancer();
    b.update([]);
    expect(b.pick({ key: '', tried: null })).toBeUndefined();
    const es = [ep('10.0.0.1:1'), ep('10.0.0.2:1'), ep('10.0.0.3:1')];
    b.update(es);
    b.pick({ key: '', tried: null });
    b.pick({ key: '', tried: null });
    b.update([es[0]!, es[1]!]);
    expect(b.pick({ key: '', tried: null })).toBe(es[0]);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
    // A set that still covers the cursor keeps it.
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[0]);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[2]);
  });

  it('smoothSchedule interleaves by weight (nginx smooth WRR), reduced by the common divisor', () => {
    const [a, b, c] = [ep('10.0.0.1:1', 500), ep('10.0.0.2:1', 100), ep('10.0.0.3:1', 100)];
    expect(ids(smoothSchedule([a, b, c]))).toEqual(ids([a, a, b, a, c, a, a]));
    expect(smoothSchedule([])).toEqual([]);
    const [x, y] = [ep('10.0.0.4:1', 200), ep('10.0.0.5:1', 300)];
    expect(ids(smoothSchedule([x, y]))).toEqual(ids([y, x, y, x, y]));
    // Equal weights: the list itself, in order.
    expect(ids(smoothSchedule([b, c]))).toEqual(ids([b, c]));
  });

  it('caps a schedule of co-prime weights at 1000 entries, in proportion', () => {
    const [a, b] = [ep('10.0.0.1:1', 997), ep('10.0.0.2:1', 991)];
    const s = smoothSchedule([a, b]);
    expect(s.length).toBe(1000);
    const na = s.filter((e) => e === a).length;
    expect(Math.abs(na - 500)).toBeLessThanOrEqual(3);
  });
});

describe('LeastConnectionsBalancer', () => {
  it('picks the endpoint with the fewest active connections per weight', () => {
    const es = [ep('10.0.0.1:1', 100, 5), ep('10.0.0.2:1', 100, 2), ep('10.0.0.3:1', 100, 7)];
    const b = new LeastConnectionsBalancer();
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
    // Weight counts: 6 connections at weight 400 is a lighter load than 2 at 100.
    const heavy = [ep('10.0.0.4:1', 100, 2), ep('10.0.0.5:1', 400, 6)];
    b.update(heavy);
    expect(b.pick({ key: '', tried: null })).toBe(heavy[1]);
  });

  it('follows opens and closes', () => {
    const es = [ep('10.0.0.1:1'), ep('10.0.0.2:1'), ep('10.0.0.3:1'), ep('10.0.0.4:1'), ep('10.0.0.5:1')];
    const b = new LeastConnectionsBalancer();
    b.update(es);
    const picks: string[] = [];
    // Open 10 connections one by one on whatever it picks: they spread 2 each.
    for (let i = 0; i < 10; i++) {
      const e = b.pick({ key: '', tried: null })!;
      picks.push(e.id);
      e.active++;
      b.opened(e);
    }
    for (const e of es) expect(e.active).toBe(2);
    // Close two on one endpoint: it is the least loaded now.
    const target = es[3]!;
    target.active -= 2;
    b.closed(target);
    expect(b.pick({ key: '', tried: null })).toBe(target);
    target.active++;
    b.opened(target);
    expect(b.pick({ key: '', tried: null })).toBe(target);
    target.active += 2;
    b.opened(target);
    expect(b.pick({ key: '', tried: null })).not.toBe(target);
  });

  it('keeps the heap right under random opens and closes', () => {
    const es = Array.from({ length: 9 }, (_, i) => ep(`10.0.0.${i + 1}:1`, 100 * (1 + (i % 3))));
    const b = new LeastConnectionsBalancer();
    b.update(es);
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let step = 0; step < 500; step++) {
      const e = es[Math.floor(rnd() * es.length)]!;
      if (rnd() < 0.6 || e.active === 0) {
        e.active++;
        b.opened(e);
      } else {
        e.active--;
        b.closed(e);
      }
      const got = b.pick({ key: '', tried: null })!;
      const min = Math.min(...es.map((x) => x.active / x.weight));
      expect(got.active / got.weight).toBe(min);
    }
  });

  it('on failover, the least loaded endpoint not yet tried; nothing when all were', () => {
    const es = [ep('10.0.0.1:1', 100, 1), ep('10.0.0.2:1', 100, 4), ep('10.0.0.3:1', 100, 3)];
    const b = new LeastConnectionsBalancer();
    b.update(es);
    expect(b.pick({ key: '', tried: [es[0]!] })).toBe(es[2]);
    expect(b.pick({ key: '', tried: [es[0]!, es[2]!] })).toBe(es[1]);
    expect(b.pick({ key: '', tried: es })).toBeUndefined();
    b.update([]);
    expect(b.pick({ key: '', tried: null })).toBeUndefined();
  });

  it('an endpoint anywhere in the heap (a leaf too) rises to the root when its connections close', () => {
    const es = [ep('10.0.0.1:1', 100, 5), ep('10.0.0.2:1', 100, 5), ep('10.0.0.3:1', 100, 5), ep('10.0.0.4:1', 100, 5)];
    const b = new LeastConnectionsBalancer();
    b.update(es);
    for (const e of es) expect(e.heapIndex).toBeGreaterThanOrEqual(0);
    const leaf = es.find((e) => e.heapIndex === 3)!;
    leaf.active = 0;
    b.closed(leaf);
    expect(b.pick({ key: '', tried: null })).toBe(leaf);
  });

  it('on failover, the least loaded untried endpoint wherever it sits in the heap', () => {
    const es = [ep('10.0.0.1:1', 100, 1), ep('10.0.0.2:1', 100, 2), ep('10.0.0.3:1', 100, 5)];
    const b = new LeastConnectionsBalancer();
    b.update(es);
    expect(b.pick({ key: '', tried: [es[0]!] })).toBe(es[1]);
  });

  it('forgets endpoints that left the set: their counts no longer move the heap', () => {
    const [a, b2, c] = [ep('10.0.0.1:1', 100, 1), ep('10.0.0.2:1', 100, 2), ep('10.0.0.3:1', 100, 3)];
    const b = new LeastConnectionsBalancer();
    b.update([a, b2, c]);
    b.update([b2, c]);
    expect(a.heapIndex).toBe(-1);
    a.active = 0;
    b.closed(a);
    b.opened(a);
    expect(b.pick({ key: '', tried: null })).toBe(b2);
  });
});

describe('RandomTwoBalancer', () => {
  /** A random source that returns the given values in turn. */
  const seq = (...v: number[]) => {
    let i = 0;
    return () => v[i++ % v.length]!;
  };

  it('of the two sampled endpoints, takes the one with fewer connections per weight', () => {
    const es = [ep('10.0.0.1:1', 100, 5), ep('10.0.0.2:1', 100, 1), ep('10.0.0.3:1', 100, 3)];
    // i = floor(0.0*3) = 0, j = floor(0.0*2) = 0 -> bumped to 1: compares es[0] and es[1].
    const b = new RandomTwoBalancer(seq(0, 0));
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
    // i = 2, j = floor(0.99*2) = 1: es[2] (3) vs es[1] (1).
    const c = new RandomTwoBalancer(seq(0.99, 0.99));
    c.update(es);
    expect(c.pick({ key: '', tried: null })).toBe(es[1]);
    // i = 2, j = 0: es[2] (3) vs es[0] (5).
    const d = new RandomTwoBalancer(seq(0.99, 0));
    d.update(es);
    expect(d.pick({ key: '', tried: null })).toBe(es[2]);
  });

  it('weights the comparison, and a tie goes to the first sample', () => {
    const es = [ep('10.0.0.1:1', 100, 2), ep('10.0.0.2:1', 300, 3)];
    const b = new RandomTwoBalancer(seq(0, 0));
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
    const tie = [ep('10.0.0.3:1', 100, 2), ep('10.0.0.4:1', 100, 2)];
    const t = new RandomTwoBalancer(seq(0.6, 0));
    t.update(tie);
    expect(t.pick({ key: '', tried: null })).toBe(tie[1]);
  });

  it('never samples the same endpoint twice', () => {
    const es = [ep('10.0.0.1:1', 100, 9), ep('10.0.0.2:1', 100, 0)];
    // i = 0 and j would be 0 too: bumped to 1, so the idle endpoint is seen.
    const b = new RandomTwoBalancer(seq(0.2, 0.2));
    b.update(es);
    expect(b.pick({ key: '', tried: null })).toBe(es[1]);
  });

  it('one endpoint is the pick; none is no pick', () => {
    const one = ep('10.0.0.1:1');
    const b = new RandomTwoBalancer(() => 0.5);
    b.update([one]);
    expect(b.pick({ key: '', tried: null })).toBe(one);
    b.update([]);
    expect(b.pick({ key: '', tried: null })).toBeUndefined();
  });

  it('on failover, the least loaded untried endpoint, not the last one listed', () => {
    const es = [ep('10.0.0.1:1', 100, 1), ep('10.0.0.2:1', 100, 2), ep('10.0.0.3:1', 100, 5)];
    const b = new RandomTwoBalancer(() => 0);
    b.update(es);
    expect(b.pick({ key: '', tried: [es[0]!] })).toBe(es[1]);
  });

  it('on failover, the least loaded endpoint not yet tried; nothing when all were', () => {
    const es = [ep('10.0.0.1:1', 100, 1), ep('10.0.0.2:1', 100, 4), ep('10.0.0.3:1', 200, 6)];
    const b = new RandomTwoBalancer(() => 0);
    b.update(es);
    expect(b.pick({ key: '', tried: [es[0]!] })).toBe(es[2]);
    expect(b.pick({ key: '', tried: [es[0]!, es[2]!] })).toBe(es[1]);
    expect(b.pick({ key: '', tried: es })).toBeUndefined();
  });
});

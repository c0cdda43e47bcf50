import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/config/address.js';
import type { PickContext } from '../../src/upstream/balancer/balancer.js';
import { RendezvousBalancer } from '../../src/upstream/balancer/rendezvous.js';
import { Endpoint } from '../../src/upstream/endpoint.js';
import { ManualClock } from '../support/manual-clock.js';

// Rendezvous details that rendezvous.test.ts left open, raised from the
// mutants `npm run mutation` showed surviving: pinned placements (a
// cross-version contract), the barrier on a first placement and on a
// rebalance, the forward rule's floor, move reasons, prune boundaries.

function ep(id: string, raftIndex = 0, at = 1000): Endpoint {
  const r = parseAddress(id, { allowScheme: true, allowHostname: true });
  if (!r.ok) throw new Error(r.error);
  const e = new Endpoint(id, r.address, undefined, 100, 0);
  if (raftIndex > 0) e.noteRaft(at, raftIndex);
  return e;
}

function balancer(opts: Partial<ConstructorParameters<typeof RendezvousBalancer>[0]> = {}) {
  const clock = new ManualClock();
  return { clock, b: new RendezvousBalancer({ stickiness: 'sticky', ttl: 60_000, preferLocal: undefined, clock, ...opts }) };
}

const three = () => [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];

/** A client key whose ranking over `ms` is [ms[first], ms[second], ...]. */
function keyRanked(b: RendezvousBalancer, ms: Endpoint[], first: number, second: number): string {
  for (let i = 0; i < 10_000; i++) {
    const k = `client-${i}`;
    const r = b.rank(k);
    if (r[0] === ms[first] && r[1] === ms[second]) return k;
  }
  throw new Error('no such key');
}

describe('RendezvousBalancer details', () => {
  it('is the affinity policy', () => {
    expect(balancer().b.policy).toBe('affinity');
  });

  it('places clients where every released version placed them (pinned: a change re-places every client of every replica)', () => {
    const { b } = balancer();
    b.update(three());
    const placed = ['kube-apiserver-etcd-client', 'client-0', 'client-1', 'client-2', 'client-3', 'client-4', 'client-5', 'client-6'].map((k) => b.rank(k).map((e) => e.id.slice(7, 8)).join(''));
    expect(placed).toEqual(PINNED);
  });

  it('a new client lands on the best member with a barrier at the highest applied index when that member is behind it', () => {
    const { b } = balancer();
    const ms = [ep('10.0.0.1:2379', 100), ep('10.0.0.2:2379', 100), ep('10.0.0.3:2379', 100)];
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    const ctx: PickContext = { key: k, tried: null };
    expect(b.pick(ctx)).toBe(ms[0]);
    expect(ctx.barrier).toBeUndefined(); // at the highest index already: no wait
    ms[2]!.noteRaft(2000, 150);
    const k2 = keyRanked(b, ms, 0, 2);
    const ctx2: PickContext = { key: k2, tried: null };
    expect(b.pick(ctx2)).toBe(ms[0]);
    expect(ctx2.barrier).toBe(150);
  });

  it('a rebalance (rehash, member back and caught up) moves the client with a barrier, counted as rebalance, not behind', () => {
    const { b } = balancer({ stickiness: 'rehash' });
    const ms = [ep('10.0.0.1:2379', 100), ep('10.0.0.2:2379', 100), ep('10.0.0.3:2379', 100)];
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
    b.update([ms[1]!, ms[2]!]);
    expect(b.pick({ key: k, tried: null })).toBe(ms[1]);
    ms[0]!.noteRaft(3000, 120);
    b.update(ms);
    const ctx: PickContext = { key: k, tried: null };
    expect(b.pick(ctx)).toBe(ms[0]);
    expect(ctx.barrier).toBe(120);
    expect(b.moves.get('rebalance')).toBe(1);
    expect(b.moves.get('member_down')).toBe(1);
    expect(b.behindMoves).toBe(0);
  });

  it('a client whose member is draining (removed) moves as member_removed', () => {
    const { b } = balancer();
    const ms = three();
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    b.pick({ key: k, tried: null });
    ms[0]!.state = 'draining';
    b.update([ms[1]!, ms[2]!]);
    expect(b.pick({ key: k, tried: null })).toBe(ms[1]);
    expect(b.moves.get('member_removed')).toBe(1);
    expect(b.moves.get('member_down')).toBeUndefined();
  });

  it('fails over to the highest-ranked member at the most advanced index, not one merely caught up with the member left', () => {
    const { b } = balancer();
    const ms = [ep('10.0.0.1:2379', 10), ep('10.0.0.2:2379', 12), ep('10.0.0.3:2379', 15)];
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
    b.update([ms[1]!, ms[2]!]);
    const ctx: PickContext = { key: k, tried: null };
    // ms[1] (12) is ahead of the member left (10) but behind ms[2] (15).
    expect(b.pick(ctx)).toBe(ms[2]);
    expect(ctx.barrier).toBe(15);
    expect(b.behindMoves).toBe(0);
  });

  it('with every member tried, picks nothing and keeps the placement', () => {
    const { b } = balancer();
    const ms = three().slice(0, 2);
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
    expect(b.pick({ key: k, tried: ms })).toBeUndefined();
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
  });

  it('a sticky client returns to its ranked member exactly when the ttl ends', async () => {
    const { b, clock } = balancer({ stickiness: 'sticky', ttl: 60_000 });
    const ms = three();
    b.update(ms);
    const k = keyRanked(b, ms, 0, 1);
    b.pick({ key: k, tried: null });
    b.update([ms[1]!, ms[2]!]);
    expect(b.pick({ key: k, tried: null })).toBe(ms[1]);
    b.update(ms);
    await clock.advance(59_999);
    expect(b.pick({ key: k, tried: null })).toBe(ms[1]);
    await clock.advance(1);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
  });

  describe('prune', () => {
    it('forgets a client idle for longer than idleMs, not one idle exactly that long', async () => {
      const { b, clock } = balancer();
      b.update(three());
      b.pick({ key: 'k', tried: null });
      await clock.advance(600_000);
      b.prune(clock.now(), 600_000);
      expect(b.placementCount).toBe(1);
      await clock.advance(1);
      b.prune(clock.now(), 600_000);
      expect(b.placementCount).toBe(0);
    });

    it('keeps an idle client while it is sticky, until the ttl is over', async () => {
      const { b, clock } = balancer({ stickiness: 'sticky', ttl: 60_000 });
      const ms = three();
      b.update(ms);
      const k = keyRanked(b, ms, 0, 1);
      b.pick({ key: k, tried: null });
      b.update([ms[1]!, ms[2]!]);
      b.pick({ key: k, tried: null }); // moved: sticky for 60 s
      await clock.advance(30_000);
      b.prune(clock.now(), 10_000);
      expect(b.placementCount).toBe(1);
      await clock.advance(30_000); // exactly at the end of the ttl: still sticky
      b.prune(clock.now(), 10_000);
      expect(b.placementCount).toBe(1);
      await clock.advance(1);
      b.prune(clock.now(), 10_000);
      expect(b.placementCount).toBe(0);
    });

    it('rehash moves are never sticky: an idle moved client is forgotten after idleMs', async () => {
      const { b, clock } = balancer({ stickiness: 'rehash', ttl: 60_000 });
      const ms = three();
      b.update(ms);
      const k = keyRanked(b, ms, 0, 1);
      b.pick({ key: k, tried: null });
      b.update([ms[1]!, ms[2]!]);
      b.pick({ key: k, tried: null });
      await clock.advance(20_000);
      b.prune(clock.now(), 10_000);
      expect(b.placementCount).toBe(0);
    });
  });

  it('preferLocal matches a member by its full id as well as by host', () => {
    const { b } = balancer({ preferLocal: '10.0.0.1:2380' });
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.1:2380'), ep('10.0.0.1:2381')];
    b.update(ms);
    for (let i = 0; i < 50; i++) expect(b.pick({ key: `client-${i}`, tried: null })).toBe(ms[1]);
  });
});

/** Ranks (last digit of the member's address) computed by this version; see the test above. */
const PINNED = ['123', '321', '312', '312', '132', '123', '123', '312'];

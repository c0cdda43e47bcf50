import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/config/address.js';
import { RendezvousBalancer, fmix32, hashString } from '../../src/upstream/balancer/rendezvous.js';
import { Endpoint } from '../../src/upstream/endpoint.js';
import { ManualClock } from '../support/manual-clock.js';

// Rendezvous placement: pure, stable, minimal movement, forward-only failover.

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

const keys = Array.from({ length: 3000 }, (_, i) => `client-${i}`);

describe('RendezvousBalancer', () => {
  it('hashes are stable across processes and versions (FNV-1a + murmur finalizer)', () => {
    // Pinned values: if these change, every ballast replica re-places every client.
    expect(hashString('')).toBe(0x811c9dc5);
    expect(hashString('kube-apiserver-etcd-client')).toBe(hashString('kube-apiserver-etcd-client'));
    expect(hashString('a')).toBe(0xe40c292c);
    expect(fmix32(0)).toBe(0);
    expect(fmix32(1)).toBe(0x514e28b7);
  });

  it('spreads clients evenly over the members', () => {
    const { b } = balancer();
    const members = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(members);
    const counts = new Map<string, number>();
    for (const k of keys) {
      const e = b.pick({ key: k, tried: null })!;
      counts.set(e.id, (counts.get(e.id) ?? 0) + 1);
    }
    for (const m of members) {
      const share = (counts.get(m.id) ?? 0) / keys.length;
      expect(share).toBeGreaterThan(0.28);
      expect(share).toBeLessThan(0.39);
    }
  });

  it('places the same client on the same member in every replica, with no shared state', () => {
    const a = balancer().b;
    const c = balancer().b;
    // Different object identities and list order: placement depends only on ids.
    a.update([ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')]);
    c.update([ep('10.0.0.3:2379'), ep('10.0.0.1:2379'), ep('10.0.0.2:2379')]);
    for (const k of keys.slice(0, 500)) expect(c.pick({ key: k, tried: null })!.id).toBe(a.pick({ key: k, tried: null })!.id);
  });

  it('when a member fails, only its clients move, each to its next-ranked member', () => {
    const { b } = balancer();
    const members = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(members);
    const before = new Map(keys.map((k) => [k, b.pick({ key: k, tried: null })!]));
    const expectedNext = new Map(keys.map((k) => [k, b.rank(k)[1]!]));
    members[1]!.state = 'down';
    b.update([members[0]!, members[2]!]);
    let moved = 0;
    for (const k of keys) {
      const now = b.pick({ key: k, tried: null })!;
      if (before.get(k) === members[1]) {
        moved++;
        expect(now).toBe(expectedNext.get(k));
      } else {
        expect(now).toBe(before.get(k));
      }
    }
    expect(moved / keys.length).toBeGreaterThan(0.28);
    expect(moved / keys.length).toBeLessThan(0.39);
    expect(b.moves.get('member_down')).toBe(moved);
  });

  it('adding a member moves only about 1/(n+1) of the clients, all to the new member', () => {
    const { b } = balancer({ stickiness: 'rehash' });
    const three = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(three);
    const before = new Map(keys.map((k) => [k, b.pick({ key: k, tried: null })!.id]));
    const fourth = ep('10.0.0.4:2379');
    b.update([...three, fourth]);
    let moved = 0;
    for (const k of keys) {
      const now = b.pick({ key: k, tried: null })!.id;
      if (now !== before.get(k)) {
        moved++;
        expect(now).toBe(fourth.id);
      }
    }
    expect(moved / keys.length).toBeGreaterThan(0.2);
    expect(moved / keys.length).toBeLessThan(0.3);
    expect(b.moves.get('rebalance')).toBe(moved);
  });

  it('fails over forward: to a member caught up with the one left, else the ranked one; every move waits at a barrier', () => {
    const { b } = balancer();
    const m1 = ep('10.0.0.1:2379', 1000);
    const m2 = ep('10.0.0.2:2379', 900); // behind
    const m3 = ep('10.0.0.3:2379', 1000);
    b.update([m1, m2, m3]);
    // Find a client placed on m1 whose next-ranked member is the lagging m2.
    const k = keys.find((x) => b.rank(x)[0] === m1 && b.rank(x)[1] === m2)!;
    expect(b.pick({ key: k, tried: null })).toBe(m1);
    b.update([m2, m3]);
    const ctx = { key: k, tried: null, barrier: 0 };
    expect(b.pick(ctx)).toBe(m3); // skips m2, which has applied less
    // Even a member whose sample shows it caught up gets a barrier: the client
    // may have read from m1 after m1's last sample.
    expect(ctx.barrier).toBe(1000);
    // Now m3 fails too and only the lagging member is left: the client goes
    // there, but the connection must first wait for it to reach m3's index.
    b.update([m2]);
    const ctx2 = { key: k, tried: null, barrier: 0 };
    expect(b.pick(ctx2)).toBe(m2);
    expect(ctx2.barrier).toBe(1000);
  });

  it('sticky: a moved client stays on its new member when the old one recovers, until the ttl', async () => {
    const { b, clock } = balancer({ stickiness: 'sticky', ttl: 60_000 });
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(ms);
    const k = keys.find((x) => b.rank(x)[0] === ms[0])!;
    b.pick({ key: k, tried: null });
    b.update([ms[1]!, ms[2]!]);
    const moved = b.pick({ key: k, tried: null })!;
    expect(moved).not.toBe(ms[0]);
    b.update(ms); // the old member is back
    expect(b.pick({ key: k, tried: null })).toBe(moved);
    await clock.advance(61_000);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
  });

  it('rehash: a moved client returns to its ranked member as soon as it is healthy', () => {
    const { b } = balancer({ stickiness: 'rehash' });
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(ms);
    const k = keys.find((x) => b.rank(x)[0] === ms[0])!;
    b.pick({ key: k, tried: null });
    b.update([ms[1]!, ms[2]!]);
    expect(b.pick({ key: k, tried: null })).not.toBe(ms[0]);
    b.update(ms);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
  });

  it('never moves back to a member that is behind, even when rehashing', () => {
    const { b } = balancer({ stickiness: 'rehash' });
    const ms = [ep('10.0.0.1:2379', 10), ep('10.0.0.2:2379', 100), ep('10.0.0.3:2379', 100)];
    b.update(ms);
    const k = keys.find((x) => b.rank(x)[0] === ms[0])!;
    b.update([ms[1]!, ms[2]!]);
    const now = b.pick({ key: k, tried: null })!;
    b.update(ms); // member 1 is back but still behind
    expect(b.pick({ key: k, tried: null })).toBe(now);
    ms[0]!.noteRaft(2000, 120); // caught up
    b.update(ms);
    expect(b.pick({ key: k, tried: null })).toBe(ms[0]);
  });

  it('compares members sampled at different moments by the sample taken after the one left was last seen', () => {
    const a = ep('10.0.0.1:2379', 1000, 5000); // last seen at t=5000, index 1000
    const b = ep('10.0.0.2:2379', 980, 4000); // older sample: cannot judge yet
    expect(b.caughtUpWith(a)).toBe('unknown');
    b.noteRaft(5100, 990); // sampled after a and still 10 behind: behind (no slack)
    expect(b.caughtUpWith(a)).toBe(false);
    b.noteRaft(5200, 1000); // caught up
    expect(b.caughtUpWith(a)).toBe(true);
  });

  it('preferLocal ranks the local member first for every client', () => {
    const { b } = balancer({ preferLocal: '10.0.0.2' });
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(ms);
    for (const k of keys.slice(0, 200)) expect(b.pick({ key: k, tried: null })).toBe(ms[1]);
    b.update([ms[0]!, ms[2]!]);
    const spread = new Set(keys.slice(0, 200).map((k) => b.pick({ key: k, tried: null })!.id));
    expect(spread.size).toBe(2); // without the local member, clients spread as usual
  });

  it('preferLocal: auto ranks first the one member on this machine, found from its addresses, without a per-node config', () => {
    const mine = new Set(['10.0.0.3', 'cp-3']);
    const { b } = balancer({ preferLocal: 'auto', localHosts: () => mine });
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(ms);
    for (const k of keys.slice(0, 200)) expect(b.pick({ key: k, tried: null })).toBe(ms[2]);
    // By name too.
    const named = balancer({ preferLocal: 'auto', localHosts: () => mine }).b;
    const byName = [ep('cp-1:2379'), ep('cp-3:2379')];
    named.update(byName);
    expect(named.pick({ key: 'x', tried: null })).toBe(byName[1]);
    // The local member down: clients spread over the others as usual.
    b.update([ms[0]!, ms[1]!]);
    expect(new Set(keys.slice(0, 200).map((k) => b.pick({ key: k, tried: null })!.id)).size).toBe(2);
  });

  it('preferLocal: auto prefers none when several members are on this machine (a lab) or none is', () => {
    for (const mine of [new Set(['127.0.0.1']), new Set(['192.0.2.1'])]) {
      const { b } = balancer({ preferLocal: 'auto', localHosts: () => mine });
      b.update([ep('127.0.0.1:2379'), ep('127.0.0.1:2380'), ep('127.0.0.1:2381')]);
      expect(new Set(keys.slice(0, 300).map((k) => b.pick({ key: k, tried: null })!.id)).size).toBe(3);
    }
  });

  it('skips members this connection already failed to reach, and moves the client off them', () => {
    const { b } = balancer();
    const ms = [ep('10.0.0.1:2379'), ep('10.0.0.2:2379'), ep('10.0.0.3:2379')];
    b.update(ms);
    const k = keys[0]!;
    const first = b.pick({ key: k, tried: null })!;
    const second = b.pick({ key: k, tried: [first] })!;
    expect(second).not.toBe(first);
    expect(b.pick({ key: k, tried: null })).toBe(second); // the placement followed
  });

  it('forgets clients not seen for a while', async () => {
    const { b, clock } = balancer();
    b.update([ep('10.0.0.1:2379')]);
    for (const k of keys.slice(0, 10)) b.pick({ key: k, tried: null });
    expect(b.placementCount).toBe(10);
    await clock.advance(700_000);
    b.prune(clock.now(), 600_000);
    expect(b.placementCount).toBe(0);
  });
});

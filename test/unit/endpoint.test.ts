import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/config/address.js';
import { canTransition, Endpoint, type EndpointState, type TrackedConnection } from '../../src/upstream/endpoint.js';

// One endpoint as a pure object: its state machine's allowed moves, raft
// samples for "fail over forward", and byte accounting at scrape and close.
// (Raised from surviving mutants of `npm run mutation`.)

function ep(id = '10.0.0.1:2379'): Endpoint {
  const r = parseAddress(id, { allowScheme: true, allowHostname: true });
  if (!r.ok) throw new Error(r.error);
  return new Endpoint(id, r.address, undefined, 100, 42);
}

describe('endpoint state machine', () => {
  const states: EndpointState[] = ['unknown', 'up', 'down', 'ejected', 'draining'];
  const allowed = new Set(['unknown>up', 'unknown>down', 'unknown>ejected', 'unknown>draining', 'up>down', 'up>ejected', 'up>draining', 'down>up', 'down>draining', 'ejected>up', 'ejected>down', 'ejected>draining']);

  it('allows exactly the moves of the diagram (down never goes to ejected; draining is final)', () => {
    for (const from of states) for (const to of states) expect(canTransition(from, to), `${from} -> ${to}`).toBe(allowed.has(`${from}>${to}`));
  });

  it('is eligible while unknown or up only', () => {
    const e = ep();
    const eligible = states.filter((s) => {
      e.state = s;
      return e.eligible;
    });
    expect(eligible).toEqual(['unknown', 'up']);
  });

  it('starts unknown, since its creation time', () => {
    const e = ep();
    expect(e.state).toBe('unknown');
    expect(e.since).toBe(42);
    expect(e.reason).toBe('not checked yet');
    expect(e.lastCheckReason).toBe('');
    expect(e.heapIndex).toBe(-1);
  });
});

describe('endpoint address', () => {
  it('host and port of an inet endpoint; localhost and 0 for a unix socket', () => {
    expect([ep('10.0.0.9:2380').host, ep('10.0.0.9:2380').port]).toEqual(['10.0.0.9', 2380]);
    const u = ep('unix:///run/etcd.sock');
    expect([u.host, u.port]).toEqual(['localhost', 0]);
  });
});

describe('raft samples', () => {
  it('keeps the highest index seen and when, not the latest', () => {
    const e = ep();
    e.noteRaft(100, 10);
    e.noteRaft(200, 8);
    expect([e.lastRaftIndex, e.lastRaftAt]).toEqual([10, 100]);
    e.noteRaft(300, 10);
    expect([e.lastRaftIndex, e.lastRaftAt]).toEqual([10, 300]);
    e.noteRaft(400, 12);
    expect([e.lastRaftIndex, e.lastRaftAt]).toEqual([12, 400]);
  });

  it('keeps the last 16 samples, oldest first', () => {
    const e = ep();
    for (let i = 1; i <= 20; i++) e.noteRaft(i * 10, i);
    const h = e.raftHistory();
    expect(h.length).toBe(16);
    expect(h[0]).toEqual({ at: 50, index: 5 });
    expect(h.at(-1)).toEqual({ at: 200, index: 20 });
  });

  it('replaceRaftHistory starts over from the given samples', () => {
    const e = ep();
    e.noteRaft(1000, 99);
    e.replaceRaftHistory([
      { at: 10, index: 3 },
      { at: 20, index: 5 },
    ]);
    expect([e.lastRaftIndex, e.lastRaftAt]).toEqual([5, 20]);
    expect(e.raftHistory()).toEqual([
      { at: 10, index: 3 },
      { at: 20, index: 5 },
    ]);
    e.replaceRaftHistory([]);
    expect([e.lastRaftIndex, e.lastRaftAt, e.raftHistory().length]).toEqual([0, 0, 0]);
  });

  describe('caughtUpWith', () => {
    it('is true when the other was never sampled, or this one is at or past it', () => {
      const a = ep('10.0.0.1:1');
      const b = ep('10.0.0.2:1');
      expect(a.caughtUpWith(b)).toBe(true);
      b.noteRaft(100, 10);
      a.noteRaft(50, 10);
      expect(a.caughtUpWith(b)).toBe(true);
    });

    it('compares the first sample taken at or after the other was last seen', () => {
      const a = ep('10.0.0.1:1');
      const b = ep('10.0.0.2:1');
      a.noteRaft(50, 5); // before b's sample: not comparable
      b.noteRaft(100, 10);
      a.noteRaft(100, 9); // at the same moment, one behind
      a.noteRaft(150, 9);
      expect(a.caughtUpWith(b)).toBe(false);
      expect(a.caughtUpWith(b, 1)).toBe(true);
      expect(a.caughtUpWith(b, 0)).toBe(false);
    });

    it('a sample that reaches the other at or after its time counts as caught up', () => {
      const a = ep('10.0.0.1:1');
      const b = ep('10.0.0.2:1');
      b.noteRaft(100, 10);
      a.noteRaft(100, 7);
      a.noteRaft(90, 7);
      const c = ep('10.0.0.3:1');
      c.noteRaft(120, 9);
      expect(c.caughtUpWith(b, 1)).toBe(true);
      expect(c.caughtUpWith(b)).toBe(false);
      expect(a.caughtUpWith(b, 3)).toBe(true);
    });

    it("is 'unknown' when this one has no sample since the other's", () => {
      const a = ep('10.0.0.1:1');
      const b = ep('10.0.0.2:1');
      a.noteRaft(50, 5);
      b.noteRaft(100, 10);
      expect(a.caughtUpWith(b)).toBe('unknown');
      expect(ep('10.0.0.3:1').caughtUpWith(b)).toBe('unknown');
    });
  });
});

describe('byte accounting', () => {
  function conn(up: number, down: number): TrackedConnection & { up: number; down: number } {
    const c = { up, down, close: () => undefined, bytesUp: () => c.up, bytesDown: () => c.down };
    return c;
  }

  it('sweeps open connections into the totals without counting a byte twice, and settles the rest at close', () => {
    const e = ep();
    const c = conn(10, 100);
    const d = conn(1, 2);
    e.connections.add(c);
    e.connections.add(d);
    e.sweepBytes();
    expect([e.bytesUp, e.bytesDown]).toEqual([11, 102]);
    e.sweepBytes();
    expect([e.bytesUp, e.bytesDown]).toEqual([11, 102]);
    c.up = 15;
    c.down = 130;
    e.sweepBytes();
    expect([e.bytesUp, e.bytesDown]).toEqual([16, 132]);
    c.up = 20;
    c.down = 131;
    e.connections.delete(c);
    e.settleBytes(c);
    expect([e.bytesUp, e.bytesDown]).toEqual([21, 133]);
    // A settled connection is forgotten: settling a new one with the same counts starts from zero.
    const fresh = conn(3, 4);
    e.settleBytes(fresh);
    expect([e.bytesUp, e.bytesDown]).toEqual([24, 137]);
  });

  it('settles a connection never swept in full', () => {
    const e = ep();
    e.settleBytes(conn(7, 8));
    expect([e.bytesUp, e.bytesDown]).toEqual([7, 8]);
  });
});

import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Cluster, type CheckResult } from '../../src/upstream/cluster.js';
import type { EtcdMemberStatus, TrackedConnection } from '../../src/upstream/endpoint.js';
import { memoryLogger } from '../support/ballast.js';
import { ManualClock } from '../support/manual-clock.js';

// The cluster's endpoint state machine fed by hand: check results (rise,
// fall, reasons, counters) and data-path outcomes (outlier ejection), with
// no checker running. (Raised from surviving mutants of `npm run mutation`;
// health.test.ts drives the same code through a HealthChecker.)

function setup(extra = '', health = 'check: tcp, interval: 1s, timeout: 200ms, rise: 2, fall: 2, jitter: 0') {
  const config = parseConfig(`
listeners: [{ name: l, listen: 127.0.0.1:1, cluster: c }]
clusters:
  - name: c
    endpoints: [10.0.0.1:1, 10.0.0.2:1]
    health: { ${health} }
${extra}`).clusters[0]!;
  const clock = new ManualClock();
  const { log, lines } = memoryLogger('debug');
  const cluster = new Cluster(config, clock, log, () => 0.5);
  const changed: number[] = [];
  cluster.observe({ stateChanged: () => undefined, changed: () => changed.push(clock.now()) });
  return { clock, cluster, lines, changed, ep: (i: number) => cluster.endpoints[i]! };
}

const pass: CheckResult = { ok: true, code: 'ok', reason: 'ok', durationMs: 1 };
const fail = (reason = 'connection refused'): CheckResult => ({ ok: false, code: 'refused', reason, durationMs: 1 });

function conn(): TrackedConnection & { closedWith: string[] } {
  const c = { closedWith: [] as string[], close: (r: string) => c.closedWith.push(r), bytesUp: () => 0, bytesDown: () => 0 };
  return c;
}

describe('check results', () => {
  it('counts passes and failures, and keeps the latest reason of a down endpoint without a new transition', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportCheck(e, fail('refused once'));
    cluster.reportCheck(e, fail('refused twice'));
    expect(e.state).toBe('down');
    expect(e.reason).toBe('refused twice');
    cluster.reportCheck(e, fail('timeout after 200ms'));
    expect(e.reason).toBe('timeout after 200ms');
    expect([e.checksOk, e.checksFailed]).toEqual([1, 3]);
    expect(e.stateChanges.get('down')).toBe(1);
    expect(e.stateChanges.get('up')).toBe(1);
    expect(e.checkResults.get('refused')).toBe(3);
  });

  it('ignores results for a draining endpoint or one no longer in the cluster', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.transition(e, 'draining', 'removed from config');
    cluster.reportCheck(e, fail());
    cluster.reportCheck(e, fail());
    expect([e.state, e.checksFailed, e.lastCheckAt]).toEqual(['draining', 0, e.lastCheckAt]);
    expect(e.checkResults.get('refused')).toBeUndefined();
  });

  it('tells observers about etcd samples, and records the applied index (the raft index when none)', () => {
    const { cluster, changed, ep } = setup();
    cluster.reportCheck(ep(0), pass);
    expect(changed).toEqual([]);
    const etcd: EtcdMemberStatus = { memberId: 'a', leaderId: 'a', raftIndex: 50, raftAppliedIndex: 48, raftTerm: 2, isLearner: false, alarms: [], dbSize: 1, version: '3.4.23' };
    cluster.reportCheck(ep(0), { ...pass, etcd });
    expect(changed.length).toBe(1);
    expect(ep(0).lastRaftIndex).toBe(48);
    expect(ep(0).etcd).toBe(etcd);
    cluster.reportCheck(ep(1), { ...pass, etcd: { ...etcd, raftAppliedIndex: 0 } });
    expect(ep(1).lastRaftIndex).toBe(50);
  });

  it('an inconclusive result changes nothing but the reason shown', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportCheck(e, { ok: false, code: 'inconclusive', reason: 'check delayed 400ms', durationMs: 1, inconclusive: true });
    cluster.reportCheck(e, { ok: false, code: 'inconclusive', reason: 'check delayed 400ms', durationMs: 1, inconclusive: true });
    expect([e.state, e.failStreak, e.checksFailed, e.lastCheckOk]).toEqual(['up', 0, 0, true]);
    expect(e.lastCheckReason).toBe('check delayed 400ms');
  });

  it('an ejected endpoint that keeps failing checks goes down after `fall`', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportFailure(e, 'connect_refused');
    cluster.reportFailure(e, 'connect_refused');
    expect(e.state).toBe('ejected');
    cluster.reportCheck(e, fail());
    expect(e.state).toBe('ejected');
    cluster.reportCheck(e, fail());
    expect(e.state).toBe('down');
  });
});

describe('outlier ejection', () => {
  it('counts each outcome, and ejects after consecutiveFailures with the reason and duration', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportFailure(e, 'connect_timeout');
    expect(e.state).toBe('up');
    cluster.reportFailure(e, 'reset');
    expect(e.state).toBe('ejected');
    expect(e.reason).toBe('2 consecutive failures (last: reset), ejected for 1000ms');
    cluster.reportFailure(e, 'reset');
    expect(e.outcomes.get('reset')).toBe(2);
    expect(e.outcomes.get('connect_timeout')).toBe(1);
    expect(e.lastOutcome).toBe('reset');
  });

  it('consecutiveFailures: 0 never ejects', () => {
    const { cluster, ep } = setup('    outlier: { consecutiveFailures: 0 }');
    const e = ep(0);
    cluster.reportCheck(e, pass);
    for (let i = 0; i < 10; i++) cluster.reportFailure(e, 'connect_refused');
    expect(e.state).toBe('up');
  });

  it('comes back from ejection only after `rise` passes AND the ejection time, saying so', async () => {
    const { cluster, clock, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportFailure(e, 'connect_refused');
    cluster.reportFailure(e, 'connect_refused');
    await clock.advance(1000);
    cluster.reportCheck(e, pass);
    expect(e.state).toBe('ejected'); // time is up, but one pass of two
    cluster.reportCheck(e, pass);
    expect(e.state).toBe('up');
    expect(e.reason).toBe('ok after ejection');
    const f = setup();
    const g = f.ep(0);
    f.cluster.reportCheck(g, pass);
    f.cluster.reportFailure(g, 'connect_refused');
    f.cluster.reportFailure(g, 'connect_refused');
    f.cluster.reportCheck(g, pass);
    f.cluster.reportCheck(g, pass);
    f.cluster.reportCheck(g, pass);
    expect(g.state).toBe('ejected'); // enough passes, but still within the ejection
  });
});

describe('ejection back-off', () => {
  it('doubles each ejection, and starts again from the base after staying up longer than maxEjection', async () => {
    const { cluster, clock, ep } = setup();
    const e = ep(0);
    const eject = () => {
      cluster.reportFailure(e, 'connect_refused');
      cluster.reportFailure(e, 'connect_refused');
    };
    const recover = async () => {
      await clock.advance(e.ejectedUntil - clock.now());
      cluster.reportCheck(e, pass);
      cluster.reportCheck(e, pass);
      expect(e.state).toBe('up');
    };
    cluster.reportCheck(e, pass);
    await clock.advance(60_000);
    eject();
    expect(e.reason).toMatch(/ejected for 1000ms$/);
    await recover();
    eject();
    expect(e.reason).toMatch(/ejected for 2000ms$/);
    await recover();
    await clock.advance(30_000); // up exactly maxEjection: not forgiven yet
    eject();
    expect(e.reason).toMatch(/ejected for 4000ms$/);
    await recover();
    await clock.advance(30_001);
    eject();
    expect(e.reason).toMatch(/ejected for 1000ms$/);
  });

  it('without active checks, the ejection simply expires', async () => {
    const { cluster, clock, ep } = setup('', 'check: none');
    const e = ep(0);
    cluster.transition(e, 'up', 'no checks');
    cluster.reportFailure(e, 'reset');
    cluster.reportFailure(e, 'reset');
    expect(e.state).toBe('ejected');
    await clock.advance(999);
    expect(e.state).toBe('ejected');
    await clock.advance(1);
    expect([e.state, e.reason]).toEqual(['up', 'ejection expired']);
  });
});

describe('transitions', () => {
  it('coming up stamps upSince and clears passive failures; other moves leave them', async () => {
    const { cluster, clock, ep } = setup();
    const e = ep(0);
    await clock.advance(500);
    cluster.reportFailure(e, 'connect_refused');
    expect(e.passiveFailures).toBe(1);
    cluster.reportCheck(e, pass);
    expect(e.upSince).toBe(clock.now());
    expect(e.passiveFailures).toBe(0);
    const upAt = e.upSince;
    await clock.advance(500);
    cluster.reportFailure(e, 'connect_refused');
    cluster.reportCheck(e, fail());
    cluster.reportCheck(e, fail());
    expect(e.state).toBe('down');
    expect(e.upSince).toBe(upAt);
    expect(e.passiveFailures).toBe(1);
  });

  it('logs up at info and the rest at warn, with the endpoint and the move', () => {
    const { cluster, lines, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    cluster.reportCheck(e, fail());
    cluster.reportCheck(e, fail());
    const up = lines.find((l) => l.msg === 'c/10.0.0.1:1 unknown -> up (ok)');
    const down = lines.find((l) => l.msg === 'c/10.0.0.1:1 up -> down (connection refused)');
    expect(up).toMatchObject({ level: 'info', cluster: 'c', endpoint: '10.0.0.1:1', from: 'unknown', to: 'up', reason: 'ok' });
    expect(down).toMatchObject({ level: 'warn', cluster: 'c', endpoint: '10.0.0.1:1', from: 'up', to: 'down' });
    expect(cluster.transition(e, 'ejected', 'nope')).toBe(false);
    expect(lines.find((l) => l.msg === 'refused an impossible endpoint state change')).toMatchObject({ endpoint: '10.0.0.1:1', from: 'down', to: 'ejected', reason: 'nope' });
  });

  it('a move to the same state only updates the reason', () => {
    const { cluster, ep } = setup();
    const e = ep(0);
    cluster.reportCheck(e, pass);
    expect(cluster.transition(e, 'up', 'still fine')).toBe(false);
    expect(e.reason).toBe('still fine');
    expect(e.stateChanges.get('up')).toBe(1);
  });

  it('closes connections only when an endpoint stops being eligible, never when it comes up or drains', () => {
    const { cluster, ep } = setup('    onDown: close');
    const [a, b] = [ep(0), ep(1)];
    const c = conn();
    a.connections.add(c);
    cluster.reportCheck(b, pass);
    cluster.reportCheck(a, pass); // unknown -> up: both eligible before and after
    expect(c.closedWith).toEqual([]);
    cluster.transition(a, 'draining', 'removed');
    expect(c.closedWith).toEqual([]);
    const d = conn();
    b.connections.add(d);
    cluster.reportCheck(b, fail());
    cluster.reportCheck(b, fail());
    expect(d.closedWith).toEqual([]); // the last one standing keeps them
  });
});

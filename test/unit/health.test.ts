import { describe, expect, it } from 'vitest';
import { parseConfig, type ClusterConfig } from '../../src/config/load.js';
import { Cluster, type CheckResult } from '../../src/upstream/cluster.js';
import type { Endpoint, EndpointState } from '../../src/upstream/endpoint.js';
import type { HealthCheck } from '../../src/upstream/health/health-check.js';
import { HealthChecker } from '../../src/upstream/health/health-checker.js';
import { memoryLogger } from '../support/ballast.js';
import { ManualClock } from '../support/manual-clock.js';

// Health logic with an injected clock: rise and fall, quick re-checks, the
// forgiveness of timeouts ballast caused itself, ejection back-off, panic.

function clusterConfig(health = 'check: tcp, interval: 1s, timeout: 200ms, rise: 2, fall: 2, jitter: 0', extra = ''): ClusterConfig {
  return parseConfig(`
listeners: [{ name: l, listen: 127.0.0.1:1, cluster: c }]
clusters:
  - name: c
    endpoints: [10.0.0.1:1, 10.0.0.2:1, 10.0.0.3:1]
    health: { ${health} }
${extra}`).clusters[0]!;
}

/** A check whose answers the test scripts per endpoint: 'ok', 'fail', or 'hang' (never answers). */
class ScriptedCheck implements HealthCheck {
  readonly kind = 'scripted';
  answer = new Map<string, 'ok' | 'fail' | 'hang'>();
  runs: string[] = [];
  run(e: Endpoint, signal: AbortSignal): Promise<Omit<CheckResult, 'durationMs'>> {
    this.runs.push(e.id);
    const a = this.answer.get(e.id) ?? 'ok';
    if (a === 'ok') return Promise.resolve({ ok: true, code: 'ok', reason: 'ok' });
    if (a === 'fail') return Promise.resolve({ ok: false, code: 'refused', reason: 'connection refused' });
    return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
  }
  forget(): void {}
  close(): void {}
}

/** A ScriptedCheck with a read barrier the test opens per endpoint (as a linearizable read would, once served). */
class BarrierCheck extends ScriptedCheck {
  open = new Set<string>();
  barrierCalls: string[] = [];
  readBarrier(e: Endpoint, timeoutMs: number): Promise<void> {
    this.barrierCalls.push(`${e.id} ${timeoutMs}`);
    return this.open.has(e.id) ? Promise.resolve() : Promise.reject(new Error('etcdserver: leader changed'));
  }
}

function setup(health?: string, extra?: string) {
  const clock = new ManualClock();
  const { log, lines } = memoryLogger('debug');
  const cluster = new Cluster(clusterConfig(health, extra), clock, log, () => 0.5);
  const check = new ScriptedCheck();
  const checker = new HealthChecker(cluster, check, clock, log, () => 0.5);
  cluster.prober = checker;
  const transitions: string[] = [];
  cluster.observe({ stateChanged: (_c, e, from, to, reason) => transitions.push(`${e.id} ${from}->${to} (${reason})`) });
  checker.start();
  const ep = (i: number) => cluster.endpoints[i]!;
  return { clock, cluster, check, checker, transitions, lines, ep };
}

describe('HealthChecker with an injected clock', () => {
  it('marks endpoints up on their first good check', async () => {
    const { clock, cluster } = setup();
    await clock.advance(200);
    expect(cluster.endpoints.map((e) => e.state)).toEqual<EndpointState[]>(['up', 'up', 'up']);
  });

  it('takes `fall` failures to go down, re-checking quickly instead of waiting an interval', async () => {
    const { clock, check, transitions, ep } = setup();
    await clock.advance(200);
    check.answer.set('10.0.0.2:1', 'hang');
    const t0 = clock.now();
    // Next scheduled check is an interval away; then the first timeout (200ms)
    // triggers a re-check 50ms later (timeout/4), whose timeout marks it down.
    await clock.advance(1000 + 200 + 50 + 200);
    expect(ep(1).state).toBe('down');
    expect(ep(1).reason).toBe('timeout after 200ms');
    expect(clock.now() - t0).toBeLessThanOrEqual(1450);
    expect(transitions).toContain('10.0.0.2:1 up->down (timeout after 200ms)');
    // One failure alone would not have done it.
    expect(ep(0).state).toBe('up');
  });

  it('does not go down on a single failure (fall 2)', async () => {
    const { clock, check, ep } = setup();
    await clock.advance(200);
    check.answer.set('10.0.0.1:1', 'fail');
    await clock.advance(870); // one failed check (at +1050), its quick re-check not yet due
    expect(ep(0).failStreak).toBe(1);
    expect(ep(0).state).toBe('up');
    check.answer.set('10.0.0.1:1', 'ok');
    await clock.advance(1000);
    expect(ep(0).state).toBe('up');
    expect(ep(0).failStreak).toBe(0);
  });

  it('takes `rise` successes to come back up, at the normal interval', async () => {
    const { clock, check, ep } = setup();
    check.answer.set('10.0.0.3:1', 'fail');
    await clock.advance(500);
    expect(ep(2).state).toBe('down');
    check.answer.set('10.0.0.3:1', 'ok');
    await clock.advance(1000);
    expect(ep(2).state).toBe('down'); // one success
    await clock.advance(1000);
    expect(ep(2).state).toBe('up');
  });

  it('treats a timeout that fired late (ballast itself was blocked) as inconclusive, not a failure', async () => {
    const { clock, check, cluster, ep } = setup('check: tcp, interval: 1s, timeout: 200ms, rise: 2, fall: 1, jitter: 0');
    await clock.advance(200);
    check.answer.set('10.0.0.1:1', 'hang');
    await clock.advance(900); // the next check starts and hangs
    // The event loop is blocked for 3s: the timeout timer fires 3s late.
    clock.stall(3000);
    await clock.advance(0);
    expect(ep(0).state).toBe('up');
    expect(ep(0).checkResults.get('inconclusive')).toBeGreaterThanOrEqual(1);
    expect(ep(0).lastCheckReason).toMatch(/^check delayed \d+ms by ballast's own load$/);
    // Once time flows normally again, a real hang is caught.
    for (let i = 0; i < 20; i++) await clock.advance(50);
    expect(ep(0).state).toBe('down');
    expect(cluster.eligibleCount).toBe(2);
  });

  it('does not forgive a late timeout when the other endpoints keep answering: that one hangs', async () => {
    const { clock, check, ep } = setup('check: tcp, interval: 1s, timeout: 200ms, rise: 2, fall: 1, jitter: 0');
    await clock.advance(200);
    check.answer.set('10.0.0.1:1', 'hang');
    await clock.advance(900); // its next check starts and hangs
    // A short stall (400ms) makes its timeout late, but the others were
    // checked ok moments ago: the loop served them, the endpoint is at fault.
    clock.stall(400);
    await clock.advance(0);
    expect(ep(0).state).toBe('down');
    expect(ep(0).reason).toBe('timeout after 200ms');
  });

  it('spreads checks with jitter so many ballasts do not probe in step', async () => {
    const clock = new ManualClock();
    const { log } = memoryLogger();
    const cfg = clusterConfig('check: tcp, interval: 1s, timeout: 200ms, jitter: 0.2');
    const cluster = new Cluster(cfg, clock, log);
    const check = new ScriptedCheck();
    let r = 0;
    const randoms = [0, 1, 0.25, 0.75];
    const checker = new HealthChecker(cluster, check, clock, log, () => randoms[r++ % randoms.length]!);
    checker.start();
    const times: number[] = [];
    const orig = check.run.bind(check);
    check.run = (e, s) => {
      if (e.id === '10.0.0.1:1') times.push(clock.now());
      return orig(e, s);
    };
    await clock.advance(5000);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    expect(new Set(gaps.map((g) => Math.round(g))).size).toBeGreaterThan(1);
    for (const g of gaps) {
      expect(g).toBeGreaterThanOrEqual(800);
      expect(g).toBeLessThanOrEqual(1200);
    }
    checker.stop();
  });

  it('removed endpoints stop being checked; added ones start', async () => {
    const { clock, cluster, check } = setup();
    await clock.advance(200);
    cluster.setEndpoints([cluster.config.endpoints[0]!]);
    check.runs = [];
    await clock.advance(3000);
    expect(new Set(check.runs)).toEqual(new Set(['10.0.0.1:1']));
  });
});

describe('Cluster: passive detection, ejection and panic', () => {
  it('ejects after consecutive connect failures, with exponential back-off, and an active check brings it back', async () => {
    const { clock, cluster, check, ep, transitions } = setup('check: tcp, interval: 1s, timeout: 200ms, rise: 1, fall: 2, jitter: 0', '    outlier: { consecutiveFailures: 2, baseEjection: 1s, maxEjection: 8s }\n');
    await clock.advance(200);
    const e = ep(0);
    cluster.reportFailure(e, 'connect_refused');
    expect(e.state).toBe('up');
    cluster.reportFailure(e, 'connect_refused');
    expect(e.state).toBe('ejected');
    expect(transitions.at(-1)).toBe('10.0.0.1:1 up->ejected (2 consecutive failures (last: connect_refused), ejected for 1000ms)');
    // Checks pass, but not before the ejection time is over.
    await clock.advance(900);
    expect(e.state).toBe('ejected');
    await clock.advance(1200);
    expect(e.state).toBe('up');
    // Second ejection lasts twice as long.
    cluster.reportFailure(e, 'reset');
    cluster.reportFailure(e, 'reset');
    expect(e.state).toBe('ejected');
    expect(e.ejectedUntil - clock.now()).toBe(2000);
    check.answer.set('10.0.0.1:1', 'ok');
    await clock.advance(2500);
    expect(e.state).toBe('up');
  });

  it('a successful connection resets the failure streak', async () => {
    const { clock, cluster, ep } = setup();
    await clock.advance(200);
    const e = ep(0);
    cluster.reportFailure(e, 'connect_timeout');
    const fake = { close() {}, bytesUp: () => 0, bytesDown: () => 0 };
    cluster.opened(e, fake);
    cluster.closed(e, fake);
    cluster.reportFailure(e, 'connect_timeout');
    expect(e.state).toBe('up');
  });

  it('with every endpoint down, routes to all of them (panic: open) and says so', async () => {
    const { clock, cluster, check, lines } = setup();
    for (const id of ['10.0.0.1:1', '10.0.0.2:1', '10.0.0.3:1']) check.answer.set(id, 'fail');
    await clock.advance(500);
    expect(cluster.eligibleCount).toBe(0);
    expect(cluster.panicMode).toBe(true);
    const picked = cluster.pick({ key: '', tried: null });
    expect(picked).toBeDefined();
    expect(cluster.panicRoutes).toBe(1);
    expect(lines.some((l) => l.msg.includes('panic mode routes to all 3 endpoints'))).toBe(true);
    check.answer.set('10.0.0.2:1', 'ok');
    await clock.advance(2500);
    expect(cluster.panicMode).toBe(false);
    expect(cluster.pick({ key: '', tried: null })!.id).toBe('10.0.0.2:1');
  });

  it('with panic: refuse, no endpoint is picked when all are down', async () => {
    const { clock, cluster, check } = setup(undefined, '    panic: refuse\n');
    for (const id of ['10.0.0.1:1', '10.0.0.2:1', '10.0.0.3:1']) check.answer.set(id, 'fail');
    await clock.advance(500);
    expect(cluster.pick({ key: '', tried: null })).toBeUndefined();
    expect(cluster.noEndpointRefusals).toBe(1);
  });

  it('closes connections to an endpoint that goes down (onDown: close), but not when it is the last one standing', async () => {
    const { clock, cluster, check, ep } = setup(undefined, '    onDown: close\n');
    await clock.advance(200);
    const closedReasons: string[] = [];
    const conn = (e: Endpoint) => {
      const c = { close: (r: string) => { closedReasons.push(`${e.id}:${r}`); cluster.closed(e, c); }, bytesUp: () => 0, bytesDown: () => 0 };
      cluster.opened(e, c);
      return c;
    };
    conn(ep(0));
    conn(ep(0));
    conn(ep(1));
    check.answer.set('10.0.0.1:1', 'fail');
    await clock.advance(1500);
    expect(ep(0).state).toBe('down');
    expect(closedReasons).toEqual(['10.0.0.1:1:endpoint_down', '10.0.0.1:1:endpoint_down']);
    // The last healthy endpoints going down: their connections are kept.
    check.answer.set('10.0.0.2:1', 'fail');
    check.answer.set('10.0.0.3:1', 'fail');
    await clock.advance(1500);
    expect(ep(1).state).toBe('down');
    expect(closedReasons.length).toBeGreaterThanOrEqual(2);
    expect(closedReasons.filter((r) => r.startsWith('10.0.0.2:1')).length).toBeLessThanOrEqual(1);
  });

  it('slow start gives a recovered endpoint a growing share', async () => {
    const clock = new ManualClock();
    const { log } = memoryLogger();
    let rnd = 0;
    const seq = [0.9, 0.95, 0.3, 0.99];
    const cluster = new Cluster(clusterConfig('check: none', '    slowStart: 10s\n'), clock, log, () => seq[rnd++ % seq.length]!);
    const e = cluster.endpoints[0]!;
    cluster.transition(e, 'down', 'test');
    cluster.transition(e, 'up', 'test');
    // Just up: share ~10%, so most picks that land on it are moved elsewhere.
    let onIt = 0;
    for (let i = 0; i < 30; i++) if (cluster.pick({ key: '', tried: null }) === e) onIt++;
    expect(onIt).toBeLessThan(10);
    await clock.advance(11_000);
    onIt = 0;
    for (let i = 0; i < 30; i++) if (cluster.pick({ key: '', tried: null }) === e) onIt++;
    expect(onIt).toBe(10);
  });

  it('refuses impossible transitions and logs them', () => {
    const clock = new ManualClock();
    const { log, lines } = memoryLogger();
    const cluster = new Cluster(clusterConfig('check: none'), clock, log);
    const e = cluster.endpoints[0]!;
    cluster.transition(e, 'down', 'x');
    expect(cluster.transition(e, 'ejected', 'y')).toBe(false);
    expect(e.state).toBe('down');
    expect(lines.some((l) => l.msg === 'refused an impossible endpoint state change')).toBe(true);
  });

  describe('awaitRaft: the wait before an affinity client lands on a member', () => {
    function withBarrier() {
      const clock = new ManualClock();
      const { log, lines } = memoryLogger('debug');
      const cluster = new Cluster(clusterConfig('check: tcp, interval: 400ms, timeout: 250ms, rise: 1, fall: 1, jitter: 0'), clock, log, () => 0.5);
      const check = new BarrierCheck();
      cluster.prober = new HealthChecker(cluster, check, clock, log, () => 0.5);
      return { clock, cluster, check, lines, e: cluster.endpoints[1]! };
    }

    it('with a read barrier, samples do not decide: it waits until the barrier passes, retrying while it fails', async () => {
      const { clock, cluster, check, e } = withBarrier();
      // The sample says e is far ahead of the hint: without a barrier this would resolve at once.
      e.lastRaftIndex = 5000;
      let done: boolean | undefined;
      void cluster.awaitRaft(e, 1000).then((r) => (done = r));
      await clock.advance(300);
      expect(done).toBeUndefined();
      expect(check.barrierCalls.length).toBeGreaterThan(3); // re-sent while it fails, each read bounded
      expect(check.barrierCalls[0]).toBe(`${e.id} 2000`);
      check.open.add(e.id);
      await clock.advance(60); // the next read (one every 50 ms) is answered
      expect(done).toBe(true);
    });

    it('a read releases only the clients that were waiting when it was sent, and many waiters share the reads', async () => {
      const { clock, cluster, e } = withBarrier();
      const pending: (() => void)[] = [];
      // A prober whose reads the test answers one by one.
      cluster.prober = { probeNow() {}, endpointsChanged() {}, stop() {}, readBarrier: () => new Promise<void>((r) => pending.push(r)) };
      const done: Record<string, boolean | undefined> = {};
      void cluster.awaitRaft(e, 1).then((r) => (done.a = r));
      expect(pending.length).toBe(1); // the first read goes out at once
      await clock.advance(10);
      for (const k of ['b', 'c', 'd', 'e']) void cluster.awaitRaft(e, 1).then((r) => (done[k] = r));
      await clock.advance(5);
      pending[0]!(); // answered: proves the member was caught up when it was sent, before b..e arrived
      await clock.advance(1);
      expect(done).toEqual({ a: true });
      await clock.advance(40); // the next read, sent after b..e started waiting
      expect(pending.length).toBe(2);
      pending[1]!();
      await clock.advance(1);
      expect(done).toEqual({ a: true, b: true, c: true, d: true, e: true });
      await clock.advance(500);
      expect(pending.length).toBe(2); // nobody waits: no more reads
    });

    it('gives up after ten intervals plus a timeout, counts the client as moved behind, and logs it', async () => {
      const { clock, cluster, e, lines } = withBarrier();
      let done: boolean | undefined;
      void cluster.awaitRaft(e, 1000).then((r) => (done = r));
      await clock.advance(4000);
      expect(done).toBeUndefined();
      await clock.advance(300);
      expect(done).toBe(false);
      expect(lines.some((l) => /did not catch up/.test(String(l.msg)))).toBe(true);
    });

    it('without a read barrier (not an etcd check), waits for a sample at or past the hint', async () => {
      const clock = new ManualClock();
      const { log } = memoryLogger('debug');
      const cluster = new Cluster(clusterConfig('check: tcp, interval: 400ms, timeout: 250ms, rise: 1, fall: 1, jitter: 0'), clock, log, () => 0.5);
      cluster.prober = new HealthChecker(cluster, new ScriptedCheck(), clock, log, () => 0.5);
      const e = cluster.endpoints[1]!;
      e.lastRaftIndex = 900;
      let done: boolean | undefined;
      void cluster.awaitRaft(e, 1000).then((r) => (done = r));
      await clock.advance(100);
      expect(done).toBeUndefined();
      e.lastRaftIndex = 1000;
      await clock.advance(10);
      expect(done).toBe(true);
    });
  });
});

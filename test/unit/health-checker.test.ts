import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Cluster, type CheckResult } from '../../src/upstream/cluster.js';
import type { Endpoint } from '../../src/upstream/endpoint.js';
import type { HealthCheck } from '../../src/upstream/health/health-check.js';
import { HealthChecker } from '../../src/upstream/health/health-checker.js';
import { memoryLogger } from '../support/ballast.js';
import { ManualClock } from '../support/manual-clock.js';

// HealthChecker timing rules with a hand-driven clock, beyond health.test.ts:
// the first check's longer timeout, a throwing check, jitter bounds, quick
// confirmation from `ejected`, slot bookkeeping on membership changes and
// stop, and the edges of forgiving a late timeout. (Raised from surviving
// mutants of `npm run mutation`.)

type Answer = 'ok' | 'fail' | 'hang' | 'stuck' | 'throw' | 'local_error' | { slowMs: number };

class RecordingCheck implements HealthCheck {
  readonly kind = 'recording';
  answer = new Map<string, Answer>();
  runs: { id: string; at: number; timeoutMs: number }[] = [];
  forgotten: string[] = [];
  closed = 0;
  constructor(private readonly clock: ManualClock) {}
  run(e: Endpoint, signal: AbortSignal, timeoutMs: number): Promise<Omit<CheckResult, 'durationMs'>> {
    this.runs.push({ id: e.id, at: this.clock.now(), timeoutMs });
    const a = this.answer.get(e.id) ?? 'ok';
    if (a === 'ok') return Promise.resolve({ ok: true, code: 'ok', reason: 'ok' });
    if (a === 'fail') return Promise.resolve({ ok: false, code: 'refused', reason: 'connection refused' });
    if (a === 'throw') return Promise.reject(new Error('socket hang up'));
    if (a === 'local_error') return Promise.resolve({ ok: false, code: 'local_error', reason: 'ballast is out of file descriptors (EMFILE)' });
    // A check that ignores its abort signal and never settles.
    if (a === 'stuck') return new Promise(() => undefined);
    if (typeof a === 'object') return new Promise((resolve) => this.clock.setTimeout(() => resolve({ ok: true, code: 'ok', reason: 'ok' }), a.slowMs));
    return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
  }
  forget(e: Endpoint): void {
    this.forgotten.push(e.id);
  }
  close(): void {
    this.closed++;
  }
  times(id: string): number[] {
    return this.runs.filter((r) => r.id === id).map((r) => r.at);
  }
}

function setup(opts: { health?: string; endpoints?: string[]; random?: () => number } = {}) {
  const endpoints = opts.endpoints ?? ['10.0.0.1:1', '10.0.0.2:1'];
  const config = parseConfig(`
listeners: [{ name: l, listen: 127.0.0.1:1, cluster: c }]
clusters:
  - name: c
    endpoints: [${endpoints.join(', ')}]
    health: { ${opts.health ?? 'check: tcp, interval: 1s, timeout: 200ms, rise: 2, fall: 2, jitter: 0'} }
`).clusters[0]!;
  const clock = new ManualClock();
  const { log } = memoryLogger('debug');
  const cluster = new Cluster(config, clock, log, () => 0.5);
  const check = new RecordingCheck(clock);
  const checker = new HealthChecker(cluster, check, clock, log, opts.random ?? (() => 0));
  cluster.prober = checker;
  checker.start();
  return { clock, cluster, check, checker, ep: (i: number) => cluster.endpoints[i]! };
}

describe('HealthChecker timing', () => {
  it('gives the first check of an endpoint at least a second (it pays for the first connection), later ones the configured timeout', async () => {
    const { clock, check } = setup();
    await clock.advance(2500);
    const mine = check.runs.filter((r) => r.id === '10.0.0.1:1').map((r) => r.timeoutMs);
    expect(mine).toEqual([1000, 200, 200]);
    const long = setup({ health: 'check: tcp, interval: 2s, timeout: 1500ms, rise: 1, fall: 1, jitter: 0' });
    await long.clock.advance(2500);
    expect(long.check.runs.filter((r) => r.id === '10.0.0.1:1').map((r) => r.timeoutMs)).toEqual([1500, 1500]);
  });

  it('a check that throws is a failure with code error and the message as reason', async () => {
    const { clock, check, ep } = setup();
    check.answer.set('10.0.0.1:1', 'throw');
    await clock.advance(200);
    expect(ep(0).state).toBe('down');
    expect(ep(0).reason).toBe('socket hang up');
    expect(ep(0).checkResults.get('error')).toBe(2);
    expect(ep(0).lastCheckOk).toBe(false);
  });

  it('a check that never settles (ignoring its abort signal) still times out, counted as timeout', async () => {
    const { clock, check, ep } = setup();
    await clock.advance(100);
    check.answer.set('10.0.0.1:1', 'stuck');
    await clock.advance(1000 + 200 + 50 + 200);
    expect(ep(0).state).toBe('down');
    expect(ep(0).reason).toBe('timeout after 200ms');
    expect(ep(0).checkResults.get('timeout')).toBe(2);
  });

  it("ballast's own trouble (out of descriptors) neither fails nor passes an endpoint", async () => {
    const { clock, check, ep } = setup();
    await clock.advance(100);
    check.answer.set('10.0.0.1:1', 'local_error');
    await clock.advance(5000);
    expect(ep(0).state).toBe('up');
    expect([ep(0).failStreak, ep(0).checksFailed]).toEqual([0, 0]);
    expect(ep(0).lastCheckReason).toBe('ballast is out of file descriptors (EMFILE)');
    expect(ep(0).checkResults.get('local_error')).toBeGreaterThan(2);
  });

  it('reports how long the check took', async () => {
    const { clock, check, ep } = setup();
    check.answer.set('10.0.0.1:1', { slowMs: 30 });
    await clock.advance(100);
    expect(ep(0).lastCheckMs).toBe(30);
  });

  it('moves each check by up to ±jitter of the interval', async () => {
    const low = setup({ health: 'check: tcp, interval: 1s, timeout: 200ms, rise: 1, fall: 1, jitter: 0.2', random: () => 0 });
    await low.clock.advance(1700);
    const t0 = low.check.times('10.0.0.1:1');
    expect(t0.slice(1).map((t, i) => t - t0[i]!)).toEqual([800, 800]);
    const high = setup({ health: 'check: tcp, interval: 1s, timeout: 200ms, rise: 1, fall: 1, jitter: 0.2', random: () => 0.999 });
    await high.clock.advance(2500);
    const t1 = high.check.times('10.0.0.1:1');
    expect(t1.slice(1).map((t, i) => Math.round(t - t1[i]!))).toEqual([1200, 1200]);
  });

  it('confirms a failure quickly from ejected, but re-checks a down endpoint at the interval', async () => {
    const { clock, check, cluster, ep } = setup();
    await clock.advance(200);
    expect(ep(0).state).toBe('up');
    check.answer.set('10.0.0.1:1', 'fail');
    cluster.reportFailure(ep(0), 'connect_refused');
    cluster.reportFailure(ep(0), 'connect_refused');
    expect(ep(0).state).toBe('ejected');
    const before = check.times('10.0.0.1:1').length;
    await clock.advance(0); // the ejection probes at once: a failure
    await clock.advance(60); // its confirmation is due after timeout/4 (50ms), not an interval
    expect(check.times('10.0.0.1:1').length).toBe(before + 2);
    expect(ep(0).state).toBe('down');
    await clock.advance(900);
    expect(check.times('10.0.0.1:1').length).toBe(before + 2); // down: the next check is an interval away
    await clock.advance(200);
    expect(check.times('10.0.0.1:1').length).toBe(before + 3);
  });
});

describe('HealthChecker bookkeeping', () => {
  it('a membership change keeps the running schedule of endpoints that stay, and forgets only those that left', async () => {
    const { clock, check, checker, cluster } = setup({ endpoints: ['10.0.0.1:1', '10.0.0.2:1', '10.0.0.3:1'] });
    await clock.advance(100);
    for (let i = 0; i < 3; i++) checker.endpointsChanged();
    await clock.advance(3000);
    expect(check.times('10.0.0.1:1').length).toBe(4); // at 0, 1000, 2000, 3000: not once per call
    expect(check.forgotten).toEqual([]);
    cluster.setEndpoints(cluster.endpoints.slice(0, 2).map((e) => ({ id: e.id, address: e.address, servername: undefined, weight: 100 })));
    checker.endpointsChanged();
    expect(check.forgotten).toEqual(['10.0.0.3:1']);
    const third = check.times('10.0.0.3:1').length;
    await clock.advance(3000);
    expect(check.times('10.0.0.3:1').length).toBe(third);
  });

  it('after stop: no more checks, none reported from one in flight, the check closed, and membership changes ignored', async () => {
    const { clock, check, checker, ep } = setup();
    await clock.advance(100);
    check.answer.set('10.0.0.1:1', 'hang');
    await clock.advance(950); // a hanging check in flight
    const failed = ep(0).checksFailed;
    const runs = check.runs.length;
    checker.stop();
    expect(check.closed).toBe(1);
    checker.endpointsChanged();
    await clock.advance(5000);
    expect(check.runs.length).toBe(runs);
    expect(ep(0).checksFailed).toBe(failed);
  });
});

describe('forgiving a late timeout', () => {
  /** One check of endpoint 0 that hangs, with the event loop stalled so its timer fires `lateBy` ms late. */
  async function lateTimeout(s: ReturnType<typeof setup>, lateBy: number) {
    s.check.answer.set(s.ep(0).id, 'hang');
    await s.clock.advance(900); // the next check starts now and hangs (timeout 200ms)
    const failed = s.ep(0).checksFailed;
    s.clock.stall(200 + lateBy);
    await s.clock.advance(1);
    return { failed: s.ep(0).checksFailed - failed, reason: s.ep(0).lastCheckReason };
  }

  it('forgives a timeout that fired more than half the timeout late when there is no other endpoint to compare with', async () => {
    const s = setup({ endpoints: ['10.0.0.1:1'] });
    await s.clock.advance(100);
    const r = await lateTimeout(s, 150);
    expect(r.failed).toBe(0);
    expect(r.reason).toMatch(/^check delayed \d+ms by ballast's own load$/);
  });

  it('does not forgive one that fired exactly half the timeout late (the bound is strict)', async () => {
    const s = setup({ endpoints: ['10.0.0.1:1'] });
    await s.clock.advance(100);
    const r = await lateTimeout(s, 100);
    expect(r.failed).toBe(1);
    expect(r.reason).toBe('timeout after 200ms');
  });

  it('forgives it when the other endpoints were checked recently but failed: they do not prove the loop was fast', async () => {
    const s = setup();
    await s.clock.advance(100);
    s.check.answer.set('10.0.0.2:1', 'fail');
    const r = await lateTimeout(s, 150);
    expect(s.ep(1).lastCheckOk).toBe(false);
    expect(r.failed).toBe(0);
  });
});

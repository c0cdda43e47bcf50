import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Cluster, type CheckResult } from '../../src/upstream/cluster.js';
import type { Endpoint, EtcdMemberStatus } from '../../src/upstream/endpoint.js';
import { EtcdCheck } from '../../src/upstream/health/etcd-check.js';
import type { HealthCheck } from '../../src/upstream/health/health-check.js';
import { HealthChecker } from '../../src/upstream/health/health-checker.js';
import { memoryLogger } from '../support/ballast.js';
import { ManualClock } from '../support/manual-clock.js';

// The etcd check's verdict on members whose applied index stands still
// (a stalled disk: etcd-io/etcd#13527, #14338, #15247), with a hand-driven
// clock. Statuses are scripted as functions of time; the verdict is the real
// EtcdCheck's (judge), the timing the real HealthChecker's.

const IDS = ['10.0.0.1:2379', '10.0.0.2:2379', '10.0.0.3:2379'];

/** applied(i, now): the applied index member i reports at clock time now; 'hang' never answers. */
type Script = (i: number, now: number) => number | 'hang';

class ScriptedStatusCheck implements HealthCheck {
  readonly kind = 'etcd';
  constructor(
    private readonly judge: EtcdCheck,
    private readonly clock: ManualClock,
    public script: Script,
  ) {}
  run(e: Endpoint, signal: AbortSignal): Promise<Omit<CheckResult, 'durationMs'>> {
    const i = IDS.indexOf(e.id);
    const applied = this.script(i, this.clock.now());
    if (applied === 'hang') return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
    const status: EtcdMemberStatus = {
      memberId: `m${i}`,
      leaderId: 'm0',
      raftIndex: applied,
      raftAppliedIndex: applied,
      raftTerm: 2,
      isLearner: false,
      alarms: [],
      dbSize: 1,
      version: '3.4.23',
    };
    return Promise.resolve(this.judge.judge(e, status));
  }
  forget(): void {}
  close(): void {}
}

function setup(script: Script, health = '') {
  const clock = new ManualClock();
  const { log } = memoryLogger('warn');
  const config = parseConfig(`
listeners: [{ name: l, listen: 127.0.0.1:1, cluster: etcd }]
clusters:
  - name: etcd
    endpoints: [${IDS.join(', ')}]
    health: { check: etcd${health} }
`).clusters[0]!;
  const cluster = new Cluster(config, clock, log, () => 0.5);
  const judge = new EtcdCheck(cluster, () => cluster.config.health, () => undefined, clock);
  const check = new ScriptedStatusCheck(judge, clock, script);
  // random 0.5: no jitter, so every interval is exactly 400ms.
  const checker = new HealthChecker(cluster, check, clock, log, () => 0.5);
  cluster.prober = checker;
  const transitions: { at: number; text: string }[] = [];
  cluster.observe({ stateChanged: (_c, e, from, to, reason) => transitions.push({ at: clock.now(), text: `${e.id} ${from}->${to} (${reason.replace(/\d+ms/, 'Nms')})` }) });
  checker.start();
  return { clock, cluster, check, transitions, t0: clock.now() };
}

/** A cluster applying `rate` writes/s from t0; member 1 applies `lagMs` behind the others. */
function writing(t0: number, rate: number, lagMs = 20): (i: number, now: number) => number {
  return (i, now) => 100 + Math.max(0, Math.floor(((now - t0 - (i === 1 ? lagMs : 0)) * rate) / 1000));
}

describe('stall detection independent of the write rate (etcd check)', () => {
  for (const rate of [10, 400]) {
    it(`a member whose applied index freezes while its peers move goes down within stallIntervals, at ${rate} writes/s`, async () => {
      let stalledAt = Infinity;
      const moving = writing(0, rate);
      const { clock, cluster, transitions, t0 } = setup((i, now) => moving(i, i === 1 ? Math.min(now - t0, stalledAt) : now - t0));
      await clock.advance(5000);
      expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
      stalledAt = clock.now() - t0;
      const stallTime = clock.now();
      await clock.advance(5000);
      expect(transitions.map((t) => t.text)).toEqual([
        expect.stringMatching(/^10\.0\.0\.1:2379 unknown->up \(leader/),
        expect.stringMatching(/^10\.0\.0\.2:2379 unknown->up \(follower/),
        expect.stringMatching(/^10\.0\.0\.3:2379 unknown->up \(follower/),
        expect.stringMatching(/^10\.0\.0\.2:2379 up->down \(applied index \d+ frozen for Nms while 10\.0\.0\.(1|3):2379 applied \d+\)$/),
      ]);
      // Three intervals frozen (the first sample at the frozen index is at
      // most an interval after the stall), then fall (2) failures, the second
      // a quick re-check: 4 × 400ms + the re-check.
      const down = transitions[3]!.at;
      expect(down - stallTime).toBeLessThanOrEqual(4 * 400 + 100);
    });
  }

  it('an idle cluster (no index moves anywhere) stays up for an hour', async () => {
    const { clock, cluster, transitions } = setup(() => 4242);
    await clock.advance(3_600_000);
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
    expect(transitions).toHaveLength(3);
  });

  it('a steady low write rate (one write every 5 s, 0.2/s, a follower applying 150ms late) stays up for an hour', async () => {
    const { clock, cluster, transitions, t0 } = setup((i, now) => writing(t0, 0.2, 150)(i, now));
    await clock.advance(3_600_000);
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
    expect(transitions).toHaveLength(3);
  });

  it('a steady 10 writes/s with one follower applying 300ms behind (slow, not stalled) stays up', async () => {
    const { clock, cluster, transitions, t0 } = setup((i, now) => writing(t0, 10, 300)(i, now));
    await clock.advance(600_000);
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
    expect(transitions).toHaveLength(3);
  });

  it('a member frozen behind an idle cluster (it missed the last writes) goes down: its reads are stale', async () => {
    // Member 1 stopped at 100; the others applied up to 105 and then went idle.
    const { clock, cluster } = setup((i, now) => (i === 1 ? 100 : 100 + Math.min(5, Math.floor((now - 1_000_000) / 100))));
    await clock.advance(5000);
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'down', 'up']);
  });

  it('comes back up once it applies again (rise successes)', async () => {
    let frozen = true;
    let frozenAt = 0;
    const { clock, cluster, transitions, t0 } = setup((i, now) => {
      const t = i === 1 && frozen ? frozenAt : now - t0;
      return writing(0, 10)(i, t);
    });
    await clock.advance(1000);
    frozenAt = clock.now() - t0;
    await clock.advance(3000);
    expect(cluster.endpoints[1]!.state).toBe('down');
    frozen = false;
    await clock.advance(2000);
    expect(cluster.endpoints[1]!.state).toBe('up');
    expect(transitions.map((t) => t.text.split(' (')[0])).toEqual(['10.0.0.1:2379 unknown->up', '10.0.0.2:2379 unknown->up', '10.0.0.3:2379 unknown->up', '10.0.0.2:2379 up->down', '10.0.0.2:2379 down->up']);
  });

  it('stallIntervals: 0 turns the rule off (raft lag alone decides)', async () => {
    const { clock, cluster, t0 } = setup((i, now) => writing(0, 10)(i, i === 1 ? 0 : now - t0), ', stallIntervals: 0');
    await clock.advance(10_000);
    expect(cluster.endpoints.map((e) => e.state)).toEqual(['up', 'up', 'up']);
  });

  it('stallIntervals is honoured: 6 intervals take longer than 3', async () => {
    const downAt: number[] = [];
    for (const n of [3, 6]) {
      const { clock, transitions, t0 } = setup((i, now) => writing(0, 10)(i, i === 1 ? 0 : now - t0), `, stallIntervals: ${n}`);
      await clock.advance(10_000);
      const d = transitions.find((t) => t.text.includes('->down'));
      expect(d).toBeDefined();
      downAt.push(d!.at - t0);
    }
    expect(downAt[1]! - downAt[0]!).toBeGreaterThanOrEqual(3 * 400 * 0.9);
  });

  it('stallIntervals is refused outside etcd checks, with the key path', () => {
    expect(() => parseConfig('listeners: [{ name: l, listen: 127.0.0.1:1, cluster: c }]\nclusters: [{ name: c, endpoints: [10.0.0.1:1], health: { check: tcp, stallIntervals: 3 } }]')).toThrow(
      'clusters[0].health.stallIntervals: applies to check: etcd only',
    );
  });

  it('a member whose Status hangs goes down by timeout, whatever the indexes', async () => {
    let hang = false;
    const { clock, cluster, t0 } = setup((i, now) => (i === 2 && hang ? 'hang' : writing(t0, 10)(i, now)));
    await clock.advance(1000);
    hang = true;
    const t = clock.now();
    await clock.advance(400 + 250 + 63 + 250 + 10);
    expect(cluster.endpoints[2]!.state).toBe('down');
    expect(cluster.endpoints[2]!.reason).toBe('timeout after 250ms');
    expect(clock.now() - t).toBeLessThan(1000);
  });
});

import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import type { Prober } from './cluster.js';
import type { Endpoint } from './endpoint.js';

// The wait before an affinity client lands on a member: it left another
// member (or ballast has no memory of it), and must not read older data there
// than it read before.

/** What the barrier needs from its cluster. */
export interface CatchUpHost {
  readonly name: string;
  readonly clock: Clock;
  readonly log: Logger;
  readonly config: { readonly health: { readonly interval: number; readonly timeout: number } };
  readonly prober: Prober | undefined;
  readonly affinity: { noteBehind(): void } | undefined;
}

/** How often a new barrier read starts while clients wait on a member. */
const STAGGER_MS = 50;
/** Reads in flight stay bounded: each gives up after this. */
const READ_TIMEOUT_MS = 2000;

interface Waiter {
  since: number;
  deadline: number;
  done: (ok: boolean) => void;
}

interface MemberWait {
  waiters: Waiter[];
  timer: TimerHandle | undefined;
}

export class CatchUpBarrier {
  private readonly members = new Map<Endpoint, MemberWait>();

  constructor(private readonly host: CatchUpHost) {}

  /**
   * Resolves true once `e` has caught up, false after at most ten check
   * intervals plus a timeout (4.25 s by default: long enough for an etcd
   * election and a commit by the new leader, which is what lets followers
   * apply the old leader's last entries). On false the client is routed
   * anyway, and counted. The target leaving the eligible set does not end the
   * wait: a member found stalled while a client waits on it, or every member
   * down (panic mode), is exactly when routing anyway would let the client
   * read back in time.
   *
   * With the etcd check, "caught up" is proven, not estimated: a linearizable
   * read served by `e` (the check's read barrier) completes only once `e` has
   * applied everything committed when it was sent, which includes every
   * revision the client can have read anywhere before this call. Raft indexes
   * from health samples cannot prove that: the member the client left may
   * have applied (and served) entries after its last sample. `index` (the
   * most advanced applied index sampled) is then only a hint; without a
   * barrier the wait is for a fresh sample at or past it.
   */
  wait(e: Endpoint, index: number): Promise<boolean> {
    const { clock, config, prober } = this.host;
    const now = clock.now();
    const deadline = now + 10 * config.health.interval + config.health.timeout;
    const giveUp = (): false => {
      this.host.affinity?.noteBehind();
      this.host.log.warn({ cluster: this.host.name, endpoint: e.id, want: index, have: e.lastRaftIndex }, `${this.host.name}: ${e.id} did not catch up with the member its client left (${e.lastRaftIndex} < ${index}); routing anyway`);
      return false;
    };
    const barrier = prober?.readBarrier;
    if (barrier !== undefined) {
      return new Promise((resolve) => {
        let m = this.members.get(e);
        if (m === undefined) this.members.set(e, (m = { waiters: [], timer: undefined }));
        m.waiters.push({ since: now, deadline, done: (ok) => resolve(ok || giveUp()) });
        if (m.timer === undefined) this.tick(e, m, barrier);
      });
    }
    return new Promise((resolve) => {
      const poll = () => {
        if (e.lastRaftIndex >= index) return resolve(true);
        if (clock.now() >= deadline) return resolve(giveUp());
        // Fresh samples arrive in a few ms on a LAN: look often, briefly.
        prober?.probeNow(e);
        clock.setTimeout(poll, 5);
      };
      poll();
    });
  }

  /** Cluster stopped: every waiter gives up. */
  stop(): void {
    for (const m of this.members.values()) {
      if (m.timer !== undefined) this.host.clock.clearTimeout(m.timer);
      for (const w of m.waiters) w.done(false);
    }
    this.members.clear();
  }

  /**
   * One member's barrier reads, shared by every client waiting on it: a read
   * started at time s, once answered, releases every waiter that began
   * waiting at or before s. While anyone waits, a new read starts every
   * STAGGER_MS without cancelling the ones in flight, so a read stuck behind
   * an election (etcd answers it only when a leader exists, or drops it)
   * costs at most one stagger after the new leader, and the reads sent stay
   * bounded per member however many clients move at once.
   */
  private tick(e: Endpoint, m: MemberWait, barrier: (e: Endpoint, timeoutMs: number) => Promise<void>): void {
    const { clock, log, name } = this.host;
    m.timer = undefined;
    const started = clock.now();
    m.waiters = m.waiters.filter((w) => {
      if (started < w.deadline) return true;
      w.done(false);
      return false;
    });
    if (m.waiters.length === 0) {
      this.members.delete(e);
      return;
    }
    const timeoutMs = Math.max(1, Math.min(READ_TIMEOUT_MS, Math.max(...m.waiters.map((w) => w.deadline)) - started));
    barrier(e, timeoutMs).then(
      () => {
        const released = m.waiters.filter((w) => w.since <= started);
        if (released.length === 0) return;
        m.waiters = m.waiters.filter((w) => w.since > started);
        const waitedMs = Math.round(clock.now() - Math.min(...released.map((w) => w.since)));
        for (const w of released) w.done(true);
        log.info({ cluster: name, endpoint: e.id, clients: released.length, waitedMs, readSentMs: Math.round(started) }, `${name}: ${e.id} caught up (linearizable read answered); ${released.length} moved client(s) connect now`);
      },
      () => {
        // No leader yet, or the member is restarting: a later read will tell.
      },
    );
    m.timer = clock.setTimeout(() => this.tick(e, m, barrier), STAGGER_MS);
  }
}

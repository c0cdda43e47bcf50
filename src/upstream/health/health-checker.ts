import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../../clock.js';
import type { Cluster, Prober } from '../cluster.js';
import type { Endpoint } from '../endpoint.js';
import type { HealthCheck } from './health-check.js';

// Runs one cluster's active checks: one timer per endpoint, one check in
// flight per endpoint, results handed to the cluster's state machine.
//
// Timing rules, each answering a failure seen in the field:
//  - jitter spreads checks so many ballasts don't probe in step;
//  - a failed check is re-run at once (after `retryDelay`) instead of a full
//    interval later, so `fall` failures take fall × timeout, not fall × interval;
//  - a timeout that fired late because ballast's own event loop was blocked
//    is "inconclusive", not a failure: an overloaded proxy must not eject
//    healthy members (k3s#10240, talos#8112);
//  - checks never touch the data path: they run beside it on their own sockets.

interface Slot {
  endpoint: Endpoint;
  timer: TimerHandle | undefined;
  inFlight: AbortController | undefined;
}

export class HealthChecker implements Prober {
  private readonly slots = new Map<Endpoint, Slot>();
  private stopped = false;

  constructor(
    private readonly cluster: Cluster,
    private readonly check: HealthCheck,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly random: () => number = Math.random,
  ) {}

  start(): void {
    this.endpointsChanged();
  }

  endpointsChanged(): void {
    if (this.stopped) return;
    const current = new Set(this.cluster.endpoints);
    for (const [e, slot] of this.slots) {
      if (!current.has(e)) {
        this.cancel(slot);
        this.slots.delete(e);
        this.check.forget(e);
      }
    }
    for (const e of current) {
      if (this.slots.has(e)) continue;
      const slot: Slot = { endpoint: e, timer: undefined, inFlight: undefined };
      this.slots.set(e, slot);
      // The first check of a new endpoint runs soon, spread over a fraction of
      // the interval so a restart doesn't fire every check at once.
      this.schedule(slot, this.random() * Math.min(this.interval, 100));
    }
  }

  /** The check's read barrier, when it has one (etcd). */
  get readBarrier(): ((e: Endpoint, timeoutMs: number) => Promise<void>) | undefined {
    const check = this.check;
    return check.readBarrier ? (e, timeoutMs) => check.readBarrier!(e, timeoutMs) : undefined;
  }

  probeNow(e: Endpoint): void {
    const slot = this.slots.get(e);
    if (!slot || slot.inFlight || this.stopped) return;
    this.schedule(slot, 0);
  }

  stop(): void {
    this.stopped = true;
    for (const slot of this.slots.values()) this.cancel(slot);
    this.slots.clear();
    this.check.close();
  }

  private get interval(): number {
    return this.cluster.config.health.interval;
  }

  private cancel(slot: Slot): void {
    if (slot.timer) this.clock.clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.inFlight?.abort();
    slot.inFlight = undefined;
  }

  private schedule(slot: Slot, delay: number): void {
    if (slot.timer) this.clock.clearTimeout(slot.timer);
    slot.timer = this.clock.setTimeout(() => {
      slot.timer = undefined;
      void this.run(slot);
    }, delay);
  }

  private nextDelay(e: Endpoint, ok: boolean | undefined): number {
    const h = this.cluster.config.health;
    if (ok === false && (e.state === 'up' || e.state === 'unknown' || e.state === 'ejected')) {
      // Falling: confirm quickly.
      return Math.min(h.interval, Math.max(10, Math.round(h.timeout / 4)));
    }
    if (ok === undefined) return Math.min(h.interval, 50);
    const j = h.jitter;
    return h.interval * (1 - j + 2 * j * this.random());
  }

  private async run(slot: Slot): Promise<void> {
    if (this.stopped || slot.inFlight) return;
    const e = slot.endpoint;
    // The first check of an endpoint also pays for its first connection
    // (TLS handshake, HTTP/2 and gRPC channel setup in a cold process): give
    // it a second rather than calling a member down at every start. Unknown
    // endpoints are routed to meanwhile, so this delays nothing.
    const timeout = e.state === 'unknown' ? Math.max(this.cluster.config.health.timeout, FIRST_CHECK_TIMEOUT) : this.cluster.config.health.timeout;
    const ac = new AbortController();
    slot.inFlight = ac;
    const started = this.clock.now();
    let timedOut = false;
    let lateBy = 0;
    const timer = this.clock.setTimeout(() => {
      timedOut = true;
      lateBy = this.clock.now() - (started + timeout);
      ac.abort();
    }, timeout);
    let result;
    try {
      result = await Promise.race([this.check.run(e, ac.signal, timeout), aborted(ac.signal)]);
    } catch (err) {
      result = { ok: false, code: 'error', reason: (err as Error).message };
    }
    this.clock.clearTimeout(timer);
    if (slot.inFlight !== ac) return; // cancelled (endpoint removed or stopped)
    slot.inFlight = undefined;
    const durationMs = Math.round(this.clock.now() - started);
    if (timedOut) {
      // Forgive a timeout we may have caused: the timer itself fired much
      // later than asked, so ballast's event loop was slow too. Only when the
      // other endpoints are not answering either, though: if they pass their
      // checks meanwhile, the loop was fast enough for them and this endpoint
      // is the one that hangs.
      const now = this.clock.now();
      const others = this.cluster.endpoints.filter((o) => o !== e);
      const othersAnswer = others.some((o) => o.lastCheckOk === true && now - o.lastCheckAt < 2 * this.interval + timeout);
      if (lateBy > Math.max(50, timeout / 2) && !othersAnswer) {
        this.cluster.reportCheck(e, { ok: false, code: 'inconclusive', reason: `check delayed ${Math.round(lateBy)}ms by ballast's own load`, durationMs, inconclusive: true });
        this.schedule(slot, this.nextDelay(e, undefined));
        return;
      }
      result = { ok: false, code: 'timeout', reason: `timeout after ${timeout}ms` };
    }
    if (result.code === 'local_error' || result.inconclusive) {
      // Our own trouble (out of descriptors) or a cluster-wide election: it
      // says nothing about this endpoint, so it neither fails nor passes.
      this.cluster.reportCheck(e, { ...result, durationMs, inconclusive: true });
      this.schedule(slot, this.nextDelay(e, undefined));
      return;
    }
    this.cluster.reportCheck(e, { ...result, durationMs });
    this.schedule(slot, this.nextDelay(e, result.ok));
  }
}

const FIRST_CHECK_TIMEOUT = 1000;

function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(new Error('aborted'));
    signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
  });
}

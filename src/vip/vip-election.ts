import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.js';
import type { VipConfig } from '../config/load.js';
import type { ElectionStore } from './election-store.js';
import { VipCommandError, type VipAddress } from './vip-address.js';

// Who holds the virtual IP: a small state machine over an etcd lease.
//
//   idle ──ready──▶ campaigning ──txn won──▶ holding
//     ▲                 │  ▲                    │
//     └────unready──────┘  └── renewal failed, late or lost, unready, stop ──┘
//
// A ready ballast keeps a lease and tries, every campaignInterval, to create
// the VIP's key on it (txn: createRevision == 0). The winner adds the address
// with a kernel lifetime of T seconds and renews the lease every
// renewInterval; each renewal that etcd answered within maxRoundTrip pushes
// the address's lifetime out to T again. Anything else (an error, a late
// answer, a lease etcd no longer knows, lost readiness, shutdown) removes the
// address first and then gives the lease up.
//
// Why no two holders: a renewal sent at s keeps the lease alive until at
// least s + leaseTTL (etcd starts the TTL when it receives it). The address is
// refreshed only if that happens by s + maxRoundTrip, and then lives T more
// seconds plus the kernel's lag: the kernel deletes expired addresses in a
// periodic check that runs at most once a second (ADDRCONF_TIMER_FUZZ_MAX in
// net/ipv4/devinet.c), so an address can outlive its valid_lft by up to ~1 s
// (measured in namespaces: valid_lft 1 gone after 1.02-1.29 s, and after
// 1.98 s when another address changed just before it expired). With
// maxRoundTrip = leaseTTL − T − 1 s (kernel) − 0.5 s (margin) the address is
// gone at least half a second before the lease can expire, and nobody can win
// before the lease expires. The kernel enforces the lifetime, so this holds
// for a holder that is killed, frozen or cut off and runs no code at all.

export type VipState = 'idle' | 'campaigning' | 'holding' | 'stopped';

/** Why the holder changed: won (this node took the VIP), or why it let it go. */
export const VIP_TRANSITION_REASONS = ['won', 'unready', 'shutdown', 'renewal_failed', 'renewal_late', 'lease_lost', 'address_failed'] as const;
export type VipTransitionReason = (typeof VIP_TRANSITION_REASONS)[number];
export const VIP_RENEWAL_RESULTS = ['ok', 'failed', 'late', 'lost'] as const;
export type VipRenewalResult = (typeof VIP_RENEWAL_RESULTS)[number];

export interface VipTimings {
  ttlSeconds: number;
  /** Kernel lifetime of the address (valid_lft, preferred_lft), seconds. */
  lifetimeSeconds: number;
  renewIntervalMs: number;
  campaignIntervalMs: number;
  /** A renewal answered later than this after it was sent does not refresh the address. */
  maxRoundTripMs: number;
}

/** How long the kernel may keep an address past its valid_lft: its lifetime check runs at most once a second. */
export const VIP_KERNEL_LAG_MS = 1000;
/** Margin kept between the address's latest end (lifetime + kernel lag) and the lease's earliest end: scheduling, clock rate. */
export const VIP_SAFETY_MARGIN_MS = 500;

export function vipTimings(leaseTTLms: number): VipTimings {
  const ttlSeconds = Math.round(leaseTTLms / 1000);
  // What is left of the lease once the kernel's lag and the margin are taken out,
  // split between the address's lifetime and the renewal's round trip.
  const budgetMs = ttlSeconds * 1000 - VIP_KERNEL_LAG_MS - VIP_SAFETY_MARGIN_MS;
  const lifetimeSeconds = Math.max(1, Math.floor(budgetMs / 2000));
  const maxRoundTripMs = budgetMs - lifetimeSeconds * 1000;
  // Three refreshes per lifetime: one late or lost renewal does not let the address lapse.
  const renewIntervalMs = Math.floor((lifetimeSeconds * 1000) / 3);
  return { ttlSeconds, lifetimeSeconds, renewIntervalMs, campaignIntervalMs: Math.min(250, renewIntervalMs), maxRoundTripMs };
}

export function vipKey(cfg: Pick<VipConfig, 'ip'>): string {
  return `/ballast/vip/${cfg.ip}`;
}

export class VipElection {
  state: VipState = 'idle';
  /** Node that holds the VIP as this node last saw it (itself when holding); undefined: nobody or not known. */
  holder: string | undefined;
  /** Wall-clock ms since `holder` has been the holder as seen from here. */
  holderSince = 0;
  /** Wall-clock ms of this node's last move (won or released). */
  since = 0;
  lastError: string | undefined;
  readonly transitions = new Map<VipTransitionReason, number>();
  readonly renewals = new Map<VipRenewalResult, number>();
  readonly timings: VipTimings;
  readonly key: string;
  private lease: string | undefined;
  private timer: TimerHandle | undefined;
  private busy: Promise<void> | undefined;
  private stopped = false;

  constructor(
    readonly config: VipConfig,
    private readonly store: ElectionStore,
    private readonly address: VipAddress,
    /** Reasons this ballast should not hold the VIP now; empty when it may. */
    private readonly notReady: () => string[],
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly wallNow: () => number = Date.now,
  ) {
    this.timings = vipTimings(config.leaseTTL);
    this.key = vipKey(config);
  }

  get holding(): boolean {
    return this.state === 'holding';
  }

  /**
   * Remove a stale copy of the VIP this node does not hold (a crash, a kill -9
   * within the lifetime), then campaign. A missing tool or capability fails
   * the start; an `ip` that did not answer in time (an overloaded node) is
   * retried before each campaign round, and no campaign happens until the
   * stale copy is known to be gone.
   */
  async start(): Promise<void> {
    try {
      await this.removeStale();
    } catch (err) {
      if (!(err instanceof VipCommandError && err.timedOut)) throw err;
      this.noteError('stale address removal', err);
    }
    this.since = this.wallNow();
    this.log.info({ vip: this.config.cidr, interface: this.config.interface, node: this.config.node, key: this.key, ...this.timings }, `vip: campaigning for ${this.config.cidr} as ${this.config.node}`);
    this.schedule(0);
  }

  /** Planned handover (SIGTERM, drain): remove the address first, then revoke the lease so another node wins at once. */
  async stop(reason: VipTransitionReason = 'shutdown'): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    // Off the interface before anything else, even with a renewal in flight.
    const wasHolding = this.holding;
    if (wasHolding) await this.safeRemove();
    await this.busy;
    if (wasHolding || this.holding) await this.release(reason, true, undefined, !this.holding || wasHolding);
    else if (this.lease !== undefined) await this.dropLease(true);
    this.state = 'stopped';
    this.store.close();
  }

  private staleRemoved = false;

  private async removeStale(): Promise<void> {
    if (await this.address.remove()) this.log.warn({ vip: this.config.cidr, interface: this.config.interface }, `vip: removed a stale ${this.config.cidr} from ${this.config.interface} (this node does not hold it)`);
    this.staleRemoved = true;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.busy = this.tick().finally(() => {
        this.busy = undefined;
        const t = this.timings;
        this.schedule(this.holding ? t.renewIntervalMs : t.campaignIntervalMs);
      });
    }, ms);
  }

  /** One step of the machine. */
  async tick(): Promise<void> {
    if (this.stopped) return;
    const reasons = this.notReady();
    if (this.holding) {
      if (reasons.length > 0) {
        await this.release('unready', true, reasons);
        this.state = 'idle';
        return;
      }
      await this.renew();
      return;
    }
    if (reasons.length > 0) {
      if (this.state !== 'idle') this.log.info({ vip: this.config.cidr, notReady: reasons }, `vip: not campaigning for ${this.config.cidr} while not ready: ${reasons.join('; ')}`);
      this.state = 'idle';
      if (this.lease !== undefined) await this.dropLease(true);
      return;
    }
    if (!this.staleRemoved) {
      try {
        await this.removeStale();
      } catch (err) {
        this.noteError('stale address removal', err);
        return;
      }
    }
    this.state = 'campaigning';
    await this.campaign();
  }

  private async campaign(): Promise<void> {
    const t = this.timings;
    let sent = this.clock.now();
    try {
      if (this.lease !== undefined) {
        const left = await this.store.keepAlive(this.lease, t.maxRoundTripMs);
        if (left <= 0) this.lease = undefined;
      }
      if (this.lease === undefined) {
        sent = this.clock.now();
        this.lease = await this.store.grant(t.ttlSeconds, t.maxRoundTripMs);
      }
      if (this.stopped) return;
      const r = await this.store.campaign(this.key, this.config.node, this.lease, t.maxRoundTripMs);
      this.lastError = undefined;
      if (!r.won && r.lease !== undefined && r.lease === this.lease) {
        // An earlier campaign timed out here but was applied in etcd: the key
        // is on our own lease (renewed at `sent` above), so this node won.
        // Without this, it would keep the key alive and never hold the VIP.
        this.log.info({ vip: this.config.cidr, lease: this.lease }, 'vip: an earlier campaign whose answer was lost had won; holding');
      } else if (!r.won) {
        this.observe(r.holder);
        return;
      }
    } catch (err) {
      this.noteError('campaign', err);
      this.observe(undefined);
      return;
    }
    if (this.stopped) {
      await this.dropLease(true);
      return;
    }
    this.state = 'holding';
    this.count(this.transitions, 'won');
    this.since = this.wallNow();
    this.observe(this.config.node);
    if (!(await this.applyAddress(sent, 'add'))) return;
    this.log.info({ vip: this.config.cidr, interface: this.config.interface, node: this.config.node, lifetimeSeconds: t.lifetimeSeconds }, `vip: ${this.config.node} now holds ${this.config.cidr} on ${this.config.interface}`);
    this.address.announce();
  }

  private async renew(): Promise<void> {
    const t = this.timings;
    const sent = this.clock.now();
    let left: number;
    try {
      left = await this.store.keepAlive(this.lease!, t.maxRoundTripMs);
    } catch (err) {
      this.count(this.renewals, 'failed');
      this.noteError('lease renewal', err);
      await this.release('renewal_failed', true);
      return;
    }
    if (left <= 0) {
      this.count(this.renewals, 'lost');
      this.lastError = 'etcd no longer knows the lease (it expired)';
      await this.release('lease_lost', false);
      return;
    }
    if (this.clock.now() - sent > t.maxRoundTripMs) {
      this.count(this.renewals, 'late');
      this.lastError = `lease renewal answered after ${Math.round(this.clock.now() - sent)}ms (limit ${t.maxRoundTripMs}ms)`;
      await this.release('renewal_late', true);
      return;
    }
    this.count(this.renewals, 'ok');
    await this.applyAddress(sent, 'refresh');
  }

  /**
   * Put the address on (or push its lifetime out) on the strength of a lease
   * renewal sent at `sent`; checked before and after the command, so a
   * process frozen around it cannot leave an address outliving the lease.
   */
  private async applyAddress(sent: number, mode: 'add' | 'refresh'): Promise<boolean> {
    const t = this.timings;
    if (this.clock.now() - sent > t.maxRoundTripMs) {
      this.count(this.renewals, 'late');
      await this.release('renewal_late', true);
      return false;
    }
    try {
      if (mode === 'add') await this.address.add(t.lifetimeSeconds);
      else await this.address.refresh(t.lifetimeSeconds);
    } catch (err) {
      this.noteError('address', err);
      await this.release('address_failed', true);
      return false;
    }
    if (this.stopped || !this.holding || this.clock.now() - sent > t.maxRoundTripMs) {
      // Stopped meanwhile, or frozen around the command: take it off again at once.
      if (this.holding) await this.release('renewal_late', true);
      else await this.safeRemove();
      return false;
    }
    return true;
  }

  /** Leave the holder state: the address goes first, then the lease. */
  private async release(reason: VipTransitionReason, revoke: boolean, why?: string[], alreadyRemoved = false): Promise<void> {
    const was = this.holding;
    if (was) this.state = this.stopped ? 'stopped' : 'campaigning';
    if (!alreadyRemoved) await this.safeRemove();
    if (was) {
      this.count(this.transitions, reason);
      this.since = this.wallNow();
      if (this.holder === this.config.node) this.observe(undefined);
      const detail = why?.join('; ') ?? this.lastError;
      this.log.warn({ vip: this.config.cidr, node: this.config.node, reason, ...(detail ? { detail } : {}) }, `vip: ${this.config.node} released ${this.config.cidr} (${reason}${detail ? `: ${detail}` : ''})`);
    }
    await this.dropLease(revoke);
  }

  private async safeRemove(): Promise<void> {
    try {
      await this.address.remove();
    } catch (err) {
      this.noteError('address removal', err);
      this.log.error({ vip: this.config.cidr, err: (err as Error).message }, `vip: could not remove ${this.config.cidr}: ${(err as Error).message}; the kernel drops it within ${this.timings.lifetimeSeconds}s of its last refresh`);
    }
  }

  private async dropLease(revoke: boolean): Promise<void> {
    const lease = this.lease;
    this.lease = undefined;
    if (!revoke || lease === undefined) return;
    try {
      await this.store.revoke(lease, this.timings.maxRoundTripMs);
    } catch (err) {
      // It expires on its own within leaseTTL.
      this.log.debug({ vip: this.config.cidr, err: (err as Error).message }, 'vip: lease revoke failed; it expires on its own');
    }
  }

  private observe(holder: string | undefined): void {
    if (holder === this.holder) return;
    this.holder = holder;
    this.holderSince = this.wallNow();
    if (holder !== undefined && holder !== this.config.node) this.log.info({ vip: this.config.cidr, holder }, `vip: ${this.config.cidr} is held by ${holder}`);
  }

  private noteError(what: string, err: unknown): void {
    const msg = `${what}: ${((err as Error).message ?? String(err)).split('\n')[0]}`;
    if (msg !== this.lastError) this.log.warn({ vip: this.config.cidr, err: msg }, `vip: ${msg}`);
    this.lastError = msg;
  }

  private count<K>(m: Map<K, number>, k: K): void {
    m.set(k, (m.get(k) ?? 0) + 1);
  }
}

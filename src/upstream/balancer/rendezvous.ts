import { hostname, networkInterfaces } from 'node:os';
import type { Clock } from '../../clock.js';
import type { Endpoint } from '../endpoint.js';
import { untried, type Balancer, type PickContext } from './balancer.js';

// Session affinity to etcd members by rendezvous (highest-random-weight)
// hashing. Chosen over a hash ring because the member sets are tiny (3-7):
// scoring every member is cheaper than maintaining virtual nodes, the spread
// is even without tuning, and the properties the control plane needs fall out
// of the definition:
//  - placement is a pure function of (client key, eligible set): every ballast
//    replica puts a client on the same member with no shared state;
//  - when a member leaves, only its clients move, each to its next-ranked
//    member; when one joins, only the clients that now rank it first move.
//
// On top of the pure function sits a small placement table, because a move
// must also respect time: a client that moves must not land on a member that
// has applied less of the raft log than the one it leaves ("fail over forward,
// never back in time"), and a client that moved stays put for `ttl` (sticky)
// so a flapping member does not bounce it twice.

export type MoveReason = 'member_down' | 'member_removed' | 'rebalance';

export interface AffinityOptions {
  stickiness: 'sticky' | 'rehash';
  ttl: number;
  /**
   * Endpoint id (host:port) or host that ranks first for every client; `auto`:
   * the one eligible endpoint whose host is an address (or the name) of this
   * machine, if exactly one is.
   */
  preferLocal: string | undefined;
  clock: Clock;
  /** This machine's addresses and host name, for `preferLocal: auto`. */
  localHosts?: () => ReadonlySet<string>;
}

/** Every address of this machine's interfaces, and its host name, lower-cased. */
export function machineHosts(): ReadonlySet<string> {
  const out = new Set<string>([hostname().toLowerCase()]);
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address.toLowerCase());
  return out;
}

interface Placement {
  endpoint: Endpoint;
  /** Until when the client stays on `endpoint` even if its ranked member is back (sticky). */
  stickyUntil: number;
  lastSeen: number;
  /** Eligible-set generation at which the placement was last confirmed: the O(1) fast path. */
  generation: number;
}

export class RendezvousBalancer implements Balancer {
  readonly policy = 'affinity';
  private eligible: readonly Endpoint[] = [];
  private readonly placements = new Map<string, Placement>();
  /** Counted moves by reason, read by the metrics collector. */
  readonly moves = new Map<MoveReason, number>();
  /** Moves that had to land on a member behind the one left (none was caught up). */
  behindMoves = 0;

  constructor(private readonly opts: AffinityOptions) {}

  get placementCount(): number {
    return this.placements.size;
  }

  private generation = 0;

  /** For preferLocal: the endpoint that ranks first (resolved at each update for `auto`). */
  private local: string | undefined;

  update(eligible: readonly Endpoint[]): void {
    this.eligible = [...eligible];
    this.generation++;
    const p = this.opts.preferLocal;
    if (p === 'auto') {
      const mine = (this.opts.localHosts ?? machineHosts)();
      const local = eligible.filter((e) => mine.has(e.host.toLowerCase()));
      // Two or more members on this machine (a lab): none is "the" local one.
      this.local = local.length === 1 ? local[0]!.id : undefined;
    } else {
      this.local = p === undefined ? undefined : eligible.find((e) => e.id === p || e.host === p)?.id;
    }
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const now = this.opts.clock.now();
    const placed = this.placements.get(ctx.key);
    // Nothing changed since this client was last placed: no scoring at all.
    if (placed !== undefined && placed.generation === this.generation && ctx.tried === null && (placed.stickyUntil === 0 || placed.stickyUntil > now)) {
      placed.lastSeen = now;
      return placed.endpoint;
    }
    const best = this.best(ctx.key, ctx.tried, undefined);
    if (best === undefined) return undefined;
    if (placed === undefined) {
      this.placements.set(ctx.key, { endpoint: best, stickyUntil: 0, lastSeen: now, generation: this.generation });
      // A client we have no memory of (first connection, or ballast
      // restarted) may have read from any member before: it starts on a
      // member that has applied everything known to be applied anywhere.
      const floor = this.highestApplied();
      if (floor > best.lastRaftIndex) ctx.barrier = floor;
      return best;
    }
    placed.lastSeen = now;
    if (ctx.tried === null) placed.generation = this.generation;
    const current = placed.endpoint;
    const usable = this.eligible.includes(current) && untried(current, ctx.tried);
    if (usable) {
      if (best === current) return current;
      // The client's ranked member differs from where it is (a member joined or
      // recovered). Stay while sticky; move back only forward in the log.
      if (this.opts.stickiness === 'sticky' && placed.stickyUntil > now) return current;
      if (best.caughtUpWith(current) !== true) return current;
      this.move(placed, best, 'rebalance', now, false);
      // The client may have read from `current` after its last sample: the
      // connection waits at the barrier like any other move.
      const floor = this.highestApplied();
      if (floor > 0) ctx.barrier = floor;
      return best;
    }
    // Its member is gone (down, ejected, removed, or just failed to connect):
    // the highest-ranked member that is not behind it, else the least behind.
    const reason: MoveReason = current.state === 'draining' ? 'member_removed' : 'member_down';
    const next = this.forward(ctx.key, ctx.tried, current);
    if (next === undefined) return undefined;
    this.move(placed, next.endpoint, reason, now, false);
    if (next.waitFor > 0) ctx.barrier = next.waitFor;
    return next.endpoint;
  }

  opened(): void {}
  closed(): void {}

  /** Forget clients not seen for a while (the table must not grow with every source IP ever seen). */
  prune(now: number, idleMs: number): void {
    for (const [key, p] of this.placements) if (now - p.lastSeen > idleMs && p.stickyUntil < now) this.placements.delete(key);
  }

  /** Where a key would go now, without recording anything (status, tests). */
  rank(key: string): Endpoint[] {
    const h = hashString(key);
    return [...this.eligible].sort((a, b) => this.score(h, b) - this.score(h, a));
  }

  private move(p: Placement, to: Endpoint, reason: MoveReason, now: number, behind: boolean): void {
    p.endpoint = to;
    p.stickyUntil = this.opts.stickiness === 'sticky' && reason !== 'rebalance' ? now + this.opts.ttl : 0;
    this.moves.set(reason, (this.moves.get(reason) ?? 0) + 1);
    if (behind) this.behindMoves++;
  }

  private best(key: string, tried: readonly Endpoint[] | null, skip: Endpoint | undefined): Endpoint | undefined {
    const h = hashString(key);
    let best: Endpoint | undefined;
    let bestScore = -1;
    for (const e of this.eligible) {
      if (e === skip || !untried(e, tried)) continue;
      const s = this.score(h, e);
      if (s > bestScore) {
        best = e;
        bestScore = s;
      }
    }
    return best;
  }

  /**
   * The member a client leaving `from` goes to: the highest-ranked one whose
   * last sample shows it caught up with `from` and with the most advanced
   * member (its barrier will pass soonest), else the highest-ranked one. The
   * connection then waits at a barrier (Cluster.awaitRaft) until that member
   * has applied everything committed, which includes whatever the client
   * read from `from` after `from`'s last sample: samples alone cannot prove
   * that (right after a leader dies or is removed, its followers have not
   * applied its last entries until a new leader commits). The wait, not a
   * guess, keeps a client's revisions from going backwards. Without raft
   * samples (not an etcd check) there is nothing to wait for.
   */
  private forward(key: string, tried: readonly Endpoint[] | null, from: Endpoint): { endpoint: Endpoint; waitFor: number } | undefined {
    const ranked = this.rank(key).filter((e) => e !== from && untried(e, tried));
    if (ranked.length === 0) return undefined;
    // The most advanced applied index known anywhere, not only the left
    // member's: every entry applied anywhere is committed, so every member
    // reaches it once a leader commits.
    const floor = Math.max(from.lastRaftIndex, this.highestApplied());
    const caughtUp = ranked.find((e) => e.caughtUpWith(from) === true && e.lastRaftIndex >= floor);
    return { endpoint: caughtUp ?? ranked[0]!, waitFor: floor };
  }

  private highestApplied(): number {
    let h = 0;
    for (const e of this.eligible) if (e.lastRaftIndex > h) h = e.lastRaftIndex;
    return h;
  }

  /** A wait for a member to catch up ran out: the client moved to a member behind the one it left. */
  noteBehind(): void {
    this.behindMoves++;
  }

  private score(clientHash: number, e: Endpoint): number {
    // 2^32 is above every hash score: the local member outranks all others.
    if (this.local !== undefined && e.id === this.local) return 0x1_0000_0000;
    return fmix32((clientHash ^ endpointHash(e)) >>> 0);
  }
}

const endpointHashes = new WeakMap<Endpoint, number>();
function endpointHash(e: Endpoint): number {
  let h = endpointHashes.get(e);
  if (h === undefined) {
    h = fmix32(hashString(e.id) + 0x9e3779b9);
    endpointHashes.set(e, h);
  }
  return h;
}

/** FNV-1a over UTF-16 code units: stable across processes and versions. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** MurmurHash3's finalizer: every input bit flips about half the output bits. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

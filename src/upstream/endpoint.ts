import type { Address } from '../config/address.js';

// One upstream server. Its health is a small state machine; every move goes
// through Cluster.transition so it is validated, logged and counted once.
//
//   unknown ─┬─> up <──────> down
//            │    │  ^         ^
//            │    v  │         │
//            └─> ejected ──────┘        any ──> draining (removed from config/membership)
//
// `unknown` endpoints are eligible: a fresh ballast must route before its first
// check completes, as HAProxy does with servers that have `check`.

export type EndpointState = 'unknown' | 'up' | 'down' | 'ejected' | 'draining';

const ALLOWED: Record<EndpointState, readonly EndpointState[]> = {
  unknown: ['up', 'down', 'ejected', 'draining'],
  up: ['down', 'ejected', 'draining'],
  down: ['up', 'draining'],
  ejected: ['up', 'down', 'draining'],
  draining: [],
};

export function canTransition(from: EndpointState, to: EndpointState): boolean {
  return ALLOWED[from].includes(to);
}

/** What the data path reports about one attempt; the control plane decides what it means. */
export const CONNECT_OUTCOMES = ['connect_refused', 'connect_timeout', 'connect_error', 'tls_error', 'reset', 'local_error'] as const;
export type ConnectOutcome = (typeof CONNECT_OUTCOMES)[number];

/** A live proxied connection as the control plane sees it. */
export interface TrackedConnection {
  close(reason: string): void;
  /** Bytes client->upstream and upstream->client so far. */
  bytesUp(): number;
  bytesDown(): number;
}

/** A connection still connecting to an endpoint (TCP or TLS handshake in progress). */
export interface PendingConnect {
  /** The endpoint went down: give up on it (without blaming it) and try another. */
  redirect(): void;
}

export interface EtcdMemberStatus {
  memberId: string;
  leaderId: string;
  raftIndex: number;
  raftAppliedIndex: number;
  raftTerm: number;
  isLearner: boolean;
  alarms: { memberId: string; alarm: string }[];
  dbSize: number;
  version: string;
}

export class Endpoint {
  state: EndpointState = 'unknown';
  reason = 'not checked yet';
  /** Clock time of the last state change. */
  since = 0;

  // Connections: `active` is read by the balancers on every pick.
  active = 0;
  total = 0;
  readonly connections = new Set<TrackedConnection>();
  /** Connects in progress: moved elsewhere at once if the endpoint goes down. */
  readonly connecting = new Set<PendingConnect>();
  /** Bytes of closed connections plus the part of open ones already swept. */
  bytesUp = 0;
  bytesDown = 0;

  // Active health.
  okStreak = 0;
  failStreak = 0;
  lastCheckAt = 0;
  lastCheckMs = 0;
  lastCheckOk: boolean | undefined;
  lastCheckReason = '';
  checksOk = 0;
  checksFailed = 0;
  etcd: EtcdMemberStatus | undefined;
  /** performance.now() of the last etcd status (to tell a fresh view from an old one). */
  etcdAt = 0;
  /** Highest raft index this member was seen at, and when: "fail over forward" compares with it. */
  lastRaftIndex = 0;
  lastRaftAt = 0;
  /** Recent (time, raft index) samples, oldest first, to compare members sampled at different moments. */
  private readonly raftSamples: { at: number; index: number }[] = [];

  // Passive detection (outlier ejection).
  passiveFailures = 0;
  ejections = 0;
  ejectedUntil = 0;
  lastOutcome: ConnectOutcome | undefined;
  /** Passive failures by outcome, for metrics. */
  readonly outcomes = new Map<ConnectOutcome, number>();

  /** When the endpoint last came up, for slow start. */
  upSince = 0;

  /** Position in the least-connections heap, -1 when not in it. */
  heapIndex = -1;

  /** Last TLS session from this endpoint, offered for resumption on the next connect. */
  tlsSession: Buffer | undefined;

  /** Per-state change counters for metrics: state -> count. */
  readonly stateChanges = new Map<EndpointState, number>();
  /** Health check results for metrics: result reason code -> count. */
  readonly checkResults = new Map<string, number>();

  constructor(
    readonly id: string,
    readonly address: Address,
    readonly servername: string | undefined,
    readonly weight: number,
    now: number,
  ) {
    this.since = now;
  }

  get eligible(): boolean {
    return this.state === 'up' || this.state === 'unknown';
  }

  /** Host for connect() and for server-name checks. */
  get host(): string {
    return this.address.kind === 'inet' ? this.address.host : 'localhost';
  }

  get port(): number {
    return this.address.kind === 'inet' ? this.address.port : 0;
  }

  noteRaft(at: number, index: number): void {
    if (index >= this.lastRaftIndex) {
      this.lastRaftIndex = index;
      this.lastRaftAt = at;
    }
    this.raftSamples.push({ at, index });
    if (this.raftSamples.length > RAFT_SAMPLES) this.raftSamples.shift();
  }

  raftHistory(): readonly { at: number; index: number }[] {
    return this.raftSamples;
  }

  /** Worker processes take the primary's samples (re-timed to their own clock). */
  replaceRaftHistory(samples: { at: number; index: number }[]): void {
    this.raftSamples.length = 0;
    this.lastRaftIndex = 0;
    this.lastRaftAt = 0;
    for (const s of samples) this.noteRaft(s.at, s.index);
  }

  /**
   * Whether this member is known to have applied at least what `other` had
   * when `other` was last seen. Samples of two members are taken at
   * different moments, so this member's sample at or after `other`'s is the
   * one compared, allowing `slack` entries of normal replication delay. With
   * no such sample yet (an instant failover), the answer is 'unknown': the
   * member's own health check (raft lag within maxRaftLag) is all we have.
   */
  caughtUpWith(other: Endpoint, slack = FORWARD_SLACK): boolean | 'unknown' {
    if (other.lastRaftAt === 0 || this.lastRaftIndex >= other.lastRaftIndex) return true;
    for (const s of this.raftSamples) if (s.at >= other.lastRaftAt) return s.index + slack >= other.lastRaftIndex;
    return 'unknown';
  }

  /** Sweep the byte counters of open connections into the totals (scrape time, not per chunk). */
  sweepBytes(): void {
    for (const c of this.connections) {
      const up = c.bytesUp();
      const down = c.bytesDown();
      const s = swept.get(c);
      this.bytesUp += up - (s?.up ?? 0);
      this.bytesDown += down - (s?.down ?? 0);
      swept.set(c, { up, down });
    }
  }

  /** Account a closing connection's bytes that were not swept yet. */
  settleBytes(c: TrackedConnection): void {
    const s = swept.get(c);
    this.bytesUp += c.bytesUp() - (s?.up ?? 0);
    this.bytesDown += c.bytesDown() - (s?.down ?? 0);
    if (s) swept.delete(c);
  }
}

const RAFT_SAMPLES = 16;
/**
 * Raft entries a member may trail the one it is compared with and still count
 * as caught up. Zero: a client moves only to a member known to have applied
 * everything the member it leaves had applied when last seen; when that is not
 * known yet, the connection waits for it (Cluster.awaitRaft) rather than
 * risk serving older data (a revision going backwards).
 */
export const FORWARD_SLACK = 0;

// Already-counted bytes of open connections, kept beside rather than on the
// connection so the hot-path object stays small.
const swept = new WeakMap<TrackedConnection, { up: number; down: number }>();

import type { Endpoint } from '../endpoint.js';

// Balance policies are small classes behind one interface, chosen by name
// (grpc-js's pick-first/round-robin shape). The cluster hands a policy the
// current eligible endpoints whenever health or membership changes; the data
// path then only calls pick(), which is O(1) or O(log n) and allocates nothing
// on the common path.

export interface PickContext {
  /** Affinity key of the client (identity fingerprint, CN, SAN or source IP); '' when unused. */
  key: string;
  /** Endpoints this connection already failed to reach; null on the first attempt. */
  tried: readonly Endpoint[] | null;
  /**
   * Set by the affinity balancer when the chosen member is not yet known to
   * have applied this raft index (the member the client leaves had): the
   * connection waits for it before connecting. 0: no wait.
   */
  barrier?: number;
}

export interface Balancer {
  readonly policy: string;
  /** The eligible set changed (health, membership, panic mode). */
  update(eligible: readonly Endpoint[]): void;
  pick(ctx: PickContext): Endpoint | undefined;
  /** An endpoint's active connection count went up or down. */
  opened(e: Endpoint): void;
  closed(e: Endpoint): void;
}

export function untried(e: Endpoint, tried: readonly Endpoint[] | null): boolean {
  return tried === null || !tried.includes(e);
}

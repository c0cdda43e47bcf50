import type { Clock } from '../../clock.js';
import type { Endpoint } from '../endpoint.js';

// Tells a member whose raft loop has stopped (its WAL fdatasync blocks on a
// stalled or failing disk) from a member of an idle cluster. Such a member
// keeps answering Maintenance.Status with a leader and a frozen index, and
// keeps serving serializable reads of what it last applied
// (etcd-io/etcd#13527, #14338, #15247). A raft-lag threshold catches it only
// after the cluster has written that many entries past it: seconds at 400
// writes/s, minutes or never at a control plane's 10 writes/s.
//
// The rule here does not depend on the write rate: a member is stalled when
// its applied index has not moved for `intervals` check intervals while a
// peer, sampled during that same window, has applied past it (and has been
// ahead for at least one interval, far longer than a healthy follower needs
// to apply what its leader committed). An idle cluster moves nowhere, so no
// member is ever ahead; under a steady low rate a healthy member moves at its
// next check after a peer does, which resets its window.

interface Track {
  applied: number;
  /** Clock time of the first sample at this applied index. */
  frozenSince: number;
  /** Clock time of the first peer sample, taken since frozenSince, ahead of `applied`. */
  aheadSince: number | undefined;
  peer: string;
  peerApplied: number;
}

export interface Stall {
  applied: number;
  frozenMs: number;
  peer: string;
  peerApplied: number;
}

export class AppliedProgress {
  private readonly tracks = new Map<Endpoint, Track>();

  constructor(private readonly clock: Clock) {}

  /**
   * Record `e`'s applied index as of now and judge it. `intervals` of 0
   * turns the rule off (samples are still recorded for its peers).
   */
  observe(e: Endpoint, applied: number, intervals: number, intervalMs: number, jitter: number): Stall | undefined {
    const now = this.clock.now();
    let t = this.tracks.get(e);
    if (t === undefined || t.applied !== applied) {
      t = { applied, frozenSince: now, aheadSince: undefined, peer: '', peerApplied: 0 };
      this.tracks.set(e, t);
    }
    for (const [o, ot] of this.tracks) {
      if (o !== e && ot.aheadSince === undefined && applied > ot.applied) {
        ot.aheadSince = now;
        ot.peer = e.id;
        ot.peerApplied = applied;
      }
    }
    if (intervals <= 0 || t.aheadSince === undefined) return undefined;
    // Checks are spread by jitter: N jittered intervals count as N.
    const unit = intervalMs * (1 - jitter);
    const frozenMs = now - t.frozenSince;
    if (frozenMs >= intervals * unit && now - t.aheadSince >= unit) return { applied, frozenMs, peer: t.peer, peerApplied: t.peerApplied };
    return undefined;
  }

  forget(e: Endpoint): void {
    this.tracks.delete(e);
  }
}

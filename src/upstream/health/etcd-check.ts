import type { Etcd3 } from 'etcd3';
import { systemClock, type Clock } from '../../clock.js';
import type { HealthConfig } from '../../config/load.js';
import type { Cluster } from '../cluster.js';
import type { Endpoint, EtcdMemberStatus } from '../endpoint.js';
import { AppliedProgress } from './applied-progress.js';
import { describeError, failed, type HealthCheck } from './health-check.js';
import type { CheckTls } from './http-check.js';
import { createEtcdClient, hexId } from '../etcd-client.js';

export { hexId } from '../etcd-client.js';

const BARRIER_KEY = Buffer.from('\u0000ballast/read-barrier');

// etcd's own view of a member, through its maintenance API over the cluster's
// TLS. A member is up only if it answers, knows a leader, carries no alarm of
// its own, is a voting member, and has not fallen more than maxRaftLag entries
// behind the most advanced member seen, and its applied index has not stood
// still while a peer's moved (AppliedProgress: a stalled disk). The last two
// rules are the ones TCP checks cannot make: a member cut off from the quorum,
// or whose WAL fdatasync blocks, keeps answering (and serving stale
// serializable reads) long after it stopped applying
// (kubernetes/kubernetes#128812, #59074, #72796; etcd-io/etcd#13527).

export class EtcdCheck implements HealthCheck {
  readonly kind = 'etcd';
  private readonly clients = new Map<Endpoint, { version: number; client: Etcd3 }>();
  private readonly progress: AppliedProgress;

  constructor(
    private readonly cluster: Cluster,
    private readonly health: () => HealthConfig,
    private readonly tls: () => CheckTls | undefined,
    clock: Clock = systemClock,
  ) {
    this.progress = new AppliedProgress(clock);
  }

  async run(e: Endpoint, signal: AbortSignal, timeoutMs: number): ReturnType<HealthCheck['run']> {
    const client = await this.clientFor(e);
    let raw;
    try {
      raw = await client.maintenance.status({ deadline: new Date(Date.now() + timeoutMs + 50) });
    } catch (err) {
      if (signal.aborted) throw err;
      const d = describeError(err);
      const msg = (err as Error).message ?? '';
      if (/UNAVAILABLE|ECONNREFUSED|No connection established/i.test(msg)) return failed(d.code === 'error' ? 'unavailable' : d.code, `unavailable: ${msg.split('\n')[0]}`);
      return failed(d.code, d.reason);
    }
    return this.judge(e, toStatus(raw));
  }

  /** The verdict on one member's status, taken now (the rules above). */
  judge(e: Endpoint, status: EtcdMemberStatus): Awaited<ReturnType<HealthCheck['run']>> {
    const h = this.health();
    const result = { etcd: status };
    // Every answered status is a sample, whatever the verdict: peers are judged against it.
    const stall = this.progress.observe(e, status.raftAppliedIndex, h.stallIntervals, h.interval, h.jitter);
    if (status.leaderId === '0') {
      // A member without a leader while others have one is cut off (the
      // partition case). When no member knows a leader, the cluster is
      // electing: marking everyone down would only flap readiness, and
      // panic mode would route to all of them anyway.
      //
      // A leader claim only counts from a member whose own last check passed,
      // and only for a leader that is itself healthy: right after a leader
      // dies, the survivors' last samples still name it (and its own last
      // sample names itself) until their election timers fire.
      const interval = this.health().interval;
      const now = performance.now();
      const claimsLiveLeader = (o: Endpoint) => {
        if (o === e || o.etcd === undefined || now - o.etcdAt > 3 * interval || o.lastCheckOk !== true || !o.eligible) return false;
        const leaderId = o.etcd.leaderId;
        if (leaderId === '0') return false;
        const leader = this.cluster.endpoints.find((x) => x.etcd?.memberId === leaderId);
        return leader !== undefined && leader !== e && leader.eligible && leader.lastCheckOk === true;
      };
      if (!this.cluster.endpoints.some(claimsLiveLeader)) {
        return { ok: false, code: 'election', reason: 'no leader: election in progress', inconclusive: true, ...result };
      }
      return { ...failed('no_leader', 'no leader'), ...result };
    }
    const mine = status.alarms.filter((a) => a.memberId === '' || a.memberId === status.memberId).map((a) => a.alarm);
    if (mine.length > 0) return { ...failed('alarm', `alarm ${mine.join(', ')}`), ...result };
    if (status.isLearner) return { ...failed('learner', 'learner (not a voting member yet)'), ...result };
    // Compare only with samples taken before this one, so the timing of
    // checks under write load can make a member look ahead, never behind.
    let highest = 0;
    for (const other of this.cluster.endpoints) {
      if (other !== e && other.etcd !== undefined && other.lastCheckOk === true) highest = Math.max(highest, other.etcd.raftAppliedIndex);
    }
    // Applied, not committed: serializable reads reflect what a member applied.
    const lag = highest - status.raftAppliedIndex;
    if (h.maxRaftLag > 0 && lag > h.maxRaftLag) return { ...failed('raft_lag', `raft lag ${lag} > ${h.maxRaftLag}`), ...result };
    if (stall !== undefined) {
      return { ...failed('stalled', `applied index ${stall.applied} frozen for ${Math.round(stall.frozenMs)}ms while ${stall.peer} applied ${stall.peerApplied}`), ...result };
    }
    return { ok: true, code: 'ok', reason: status.memberId === status.leaderId ? `leader, raft index ${status.raftIndex}` : `follower, raft index ${status.raftIndex}`, ...result };
  }

  /**
   * A linearizable read served by `e`: etcd answers it only after `e` has
   * applied the leader's commit index as of the request (ReadIndex), so every
   * revision any client read from any member before this call is then visible
   * on `e`. During an election it cannot complete; the caller retries until
   * its own deadline. The key is never written: the read costs one round trip
   * to the leader and no data.
   *
   * It counts only if no leader change overlapped it: `e` must name a leader
   * before the read, and the read must be answered in the same raft term.
   * etcd before the 2026 fixes (Debian's 3.4.23 included) can answer a read
   * that races a leader change with a stale index (etcd-io/etcd#20418, fixed
   * by #21375 and #21399); a 100-cycle soak here saw a client read one
   * revision back after a barrier that crossed the removal of a leader.
   */
  async readBarrier(e: Endpoint, timeoutMs: number): Promise<void> {
    const client = await this.clientFor(e);
    const deadline = new Date(Date.now() + timeoutMs);
    const before = (await client.maintenance.status({ deadline })) as unknown as RawStatus;
    if (hexId(before.leader) === '0') throw new Error('no leader');
    const res = await client.kv.range({ key: BARRIER_KEY, limit: 1, count_only: true, serializable: false }, { deadline });
    if (res.header.raft_term !== before.raftTerm) throw new Error(`raft term changed during the read (${before.raftTerm} -> ${res.header.raft_term})`);
  }

  private async clientFor(e: Endpoint): Promise<Etcd3> {
    const t = this.tls();
    const version = t?.version ?? 0;
    const cached = this.clients.get(e);
    if (cached?.version === version) return cached.client;
    if (cached) cached.client.close();
    const scheme = t?.ca ? 'https' : 'http';
    const host = e.address.kind === 'inet' ? (e.address.family === 6 ? `[${e.host}]` : e.host) : 'localhost';
    const servername = t?.servername(e);
    const client = await createEtcdClient({
      hosts: e.address.kind === 'unix' ? `unix://${e.address.path}` : `${scheme}://${host}:${e.port}`,
      ...(t?.ca ? { credentials: { rootCertificate: t.ca, ...(t.cert ? { certChain: t.cert, privateKey: t.key! } : {}) } } : {}),
      // The checker owns retries and timeouts (createEtcdClient turns off
      // etcd3's own, which would hide the very failures we look for).
      dialTimeout: Math.max(1000, this.health().timeout),
      grpcOptions: {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.min_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        ...(servername ? { 'grpc.ssl_target_name_override': servername, 'grpc.default_authority': servername } : {}),
      },
    });
    this.clients.set(e, { version, client });
    return client;
  }

  forget(e: Endpoint): void {
    this.progress.forget(e);
    this.clients.get(e)?.client.close();
    this.clients.delete(e);
  }

  close(): void {
    for (const c of this.clients.values()) c.client.close();
    this.clients.clear();
  }
}

interface RawStatus {
  header: { member_id: string };
  leader: string;
  raftIndex: string;
  raftAppliedIndex?: string;
  raftTerm: string;
  isLearner?: boolean;
  errors?: string[];
  dbSize: string;
  version: string;
}

function toStatus(raw: RawStatus): EtcdMemberStatus {
  const alarms = (raw.errors ?? []).map(parseAlarm).filter((a): a is { memberId: string; alarm: string } => a !== undefined);
  return {
    memberId: hexId(raw.header.member_id),
    leaderId: hexId(raw.leader),
    raftIndex: Number(raw.raftIndex),
    raftAppliedIndex: Number(raw.raftAppliedIndex ?? raw.raftIndex),
    raftTerm: Number(raw.raftTerm),
    isLearner: raw.isLearner === true,
    alarms,
    dbSize: Number(raw.dbSize),
    version: raw.version,
  };
}

/** etcd prints "memberID:8211f1d0f64f3269 alarm:NOSPACE " in status errors. */
function parseAlarm(text: string): { memberId: string; alarm: string } | undefined {
  const m = /memberID:\s*([0-9a-fA-Fx]+)\s+alarm:\s*([A-Z_]+)/.exec(text);
  if (!m) return undefined;
  const id = m[1]!;
  // The memberID in the alarm string is decimal in etcd 3.4.
  return { memberId: /^[0-9]+$/.test(id) ? hexId(id) : id.toLowerCase(), alarm: m[2]! };
}


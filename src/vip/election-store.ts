import type { Etcd3 } from 'etcd3';
import type { Cluster } from '../upstream/cluster.js';
import { loadEtcd3 } from '../upstream/etcd-client.js';
import type { CheckTls } from '../upstream/health/http-check.js';

// Where the VIP election is kept: one key per VIP in etcd, created only when
// absent (txn createRevision == 0) and attached to the holder's lease, so it
// disappears when the lease expires or is revoked. The election logic sees
// only this interface; EtcdElectionStore talks to the named cluster's members
// with the cluster's TLS profile (mTLS), through the etcd3 client.

export interface CampaignResult {
  won: boolean;
  /** The key's value (the holder's node name) when another lease holds it; undefined when nobody does. */
  holder: string | undefined;
  /** The lease the key is attached to, when the txn found it (a campaign whose answer was lost may have won on our own lease). */
  lease?: string | undefined;
}

export interface ElectionStore {
  /** A new lease; its id. */
  grant(ttlSeconds: number, timeoutMs: number): Promise<string>;
  /** Renew; the lease's remaining TTL in seconds, 0 when etcd no longer knows it. */
  keepAlive(lease: string, timeoutMs: number): Promise<number>;
  /** Create `key` = `value` on `lease` if the key does not exist. */
  campaign(key: string, value: string, lease: string, timeoutMs: number): Promise<CampaignResult>;
  /** Who holds `key` now (undefined: nobody). */
  holder(key: string, timeoutMs: number): Promise<string | undefined>;
  /** Revoke the lease (its key goes with it); a lease etcd does not know is not an error. */
  revoke(lease: string, timeoutMs: number): Promise<void>;
  close(): void;
}

export class ElectionTimeoutError extends Error {
  readonly code = 'BALLAST_VIP_ETCD_TIMEOUT';
}

function within<T>(p: Promise<T>, ms: number, what: string, onTimeout?: () => void): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      t = setTimeout(() => {
        onTimeout?.();
        reject(new ElectionTimeoutError(`${what}: no answer from etcd within ${ms}ms`));
      }, ms);
    }),
  ]).finally(() => clearTimeout(t));
}

export class EtcdElectionStore implements ElectionStore {
  private client: { hosts: string; version: number; etcd: Etcd3 } | undefined;

  constructor(
    private readonly cluster: () => Cluster | undefined,
    private readonly tls: () => CheckTls | undefined,
  ) {}

  async grant(ttlSeconds: number, timeoutMs: number): Promise<string> {
    const etcd = await this.etcd(timeoutMs);
    const res = await within(etcd.leaseClient.leaseGrant({ TTL: ttlSeconds }), timeoutMs, 'lease grant');
    return String(res.ID);
  }

  async keepAlive(lease: string, timeoutMs: number): Promise<number> {
    const etcd = await this.etcd(timeoutMs);
    const end = Date.now() + timeoutMs;
    // LeaseKeepAlive is a stream: one request, one answer, then close it. A
    // stream to a dead member fails fast; the next attempt picks another.
    let last: unknown;
    while (Date.now() < end) {
      try {
        return await within(this.keepAliveOnce(etcd, lease), end - Date.now(), 'lease keepalive');
      } catch (err) {
        last = err;
        if (err instanceof ElectionTimeoutError) throw err;
      }
    }
    throw last instanceof Error ? last : new ElectionTimeoutError(`lease keepalive: no answer from etcd within ${timeoutMs}ms`);
  }

  private async keepAliveOnce(etcd: Etcd3, lease: string): Promise<number> {
    const stream = await etcd.leaseClient.leaseKeepAlive();
    try {
      return await new Promise<number>((resolve, reject) => {
        stream.on('data', (res: { TTL: string }) => resolve(Number(res.TTL)));
        stream.on('error', reject);
        stream.on('end', () => reject(new Error('lease keepalive stream ended without an answer')));
        stream.write({ ID: lease });
      });
    } finally {
      try {
        stream.end();
        stream.cancel();
      } catch {
        // already closed
      }
    }
  }

  async campaign(key: string, value: string, lease: string, timeoutMs: number): Promise<CampaignResult> {
    const etcd = await this.etcd(timeoutMs);
    const k = Buffer.from(key);
    const res = await within(
      etcd.kv.txn(
        {
          compare: [{ key: k, target: 'Create', result: 'Equal', create_revision: 0 }],
          success: [{ request_put: { key: k, value: Buffer.from(value), lease } }],
          failure: [{ request_range: { key: k } }],
        },
      ),
      timeoutMs,
      'vip campaign',
    );
    if (res.succeeded) return { won: true, holder: value };
    const kv = res.responses[0]?.response_range.kvs[0];
    return { won: false, holder: kv ? kv.value.toString() : undefined, lease: kv ? String(kv.lease) : undefined };
  }

  async holder(key: string, timeoutMs: number): Promise<string | undefined> {
    const etcd = await this.etcd(timeoutMs);
    const res = await within(etcd.kv.range({ key: Buffer.from(key) }), timeoutMs, 'vip holder');
    return res.kvs[0]?.value.toString();
  }

  async revoke(lease: string, timeoutMs: number): Promise<void> {
    const etcd = await this.etcd(timeoutMs);
    try {
      await within(etcd.leaseClient.leaseRevoke({ ID: lease }), timeoutMs, 'lease revoke');
    } catch (err) {
      if (!/lease not found|requested lease not found/i.test((err as Error).message)) throw err;
    }
  }

  close(): void {
    this.client?.etcd.close();
    this.client = undefined;
  }

  /** One client over the cluster's current members (discovery may change them); rebuilt when they or the TLS material change. */
  private async etcd(timeoutMs: number): Promise<Etcd3> {
    const cl = this.cluster();
    if (!cl) throw new Error('vip: the etcd cluster is gone from the config');
    const t = this.tls();
    const scheme = t?.ca ? 'https' : 'http';
    // Members the cluster's etcd health check says are up (or not yet
    // checked): a silent member (a partition that keeps the link up) would
    // otherwise take a share of the calls and time each of them out, so the
    // new holder's campaigns and renewals fail at random and the VIP flaps.
    // Which member answers does not matter for safety: leases are the cluster's.
    const usable = cl.endpoints.filter((e) => e.state === 'up' || e.state === 'unknown');
    const hostsList = (usable.length > 0 ? usable : cl.endpoints).flatMap((e) => (e.address.kind === 'inet' ? [`${scheme}://${e.address.family === 6 ? `[${e.address.host}]` : e.address.host}:${e.address.port}`] : []));
    const hosts = [...new Set(hostsList)].sort().join(',');
    const version = t?.version ?? 0;
    if (this.client?.hosts === hosts && this.client.version === version) return this.client.etcd;
    this.client?.etcd.close();
    const { etcd3, cockatiel } = await loadEtcd3();
    const { ConstantBackoff, handleAll, noop, retry } = cockatiel;
    const n = hosts.split(',').length;
    const etcd = new etcd3.Etcd3({
      hosts: hosts.split(','),
      ...(t?.ca ? { credentials: { rootCertificate: t.ca, ...(t.cert ? { certChain: t.cert, privateKey: t.key! } : {}) } } : {}),
      // A dead member costs one fast attempt, then the next host is tried;
      // the caller's overall timeout bounds the whole call.
      faultHandling: { host: () => noop, global: retry(handleAll, { maxAttempts: Math.max(0, n - 1), backoff: new ConstantBackoff(0) }) },
      defaultCallOptions: () => ({ deadline: Date.now() + Math.max(200, Math.floor(timeoutMs / 2)) }),
      dialTimeout: Math.max(200, Math.floor(timeoutMs / 2)),
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.min_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 },
    });
    this.client = { hosts, version, etcd };
    return etcd;
  }
}

import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../../clock.js';
import { addressKey, parseAddress } from '../../config/address.js';
import type { EndpointSpec } from '../../config/load.js';
import type { Cluster } from '../cluster.js';
import { hexId, loadEtcd3 } from '../etcd-client.js';
import { MemberFilter } from './member-filter.js';
import type { CheckTls } from '../health/http-check.js';

// Members from etcd itself: every syncInterval (and at once when a member goes
// down) ask the cluster for its member list and make the endpoints match the
// voting members' client URLs. The configured endpoints are seeds: always
// asked again, so a ballast that lost every member it knew still finds the
// cluster (k3s-io/k3s#11349). A failed sync changes nothing.

export interface MemberInfo {
  id: string;
  name: string;
  clientURLs: string[];
  isLearner: boolean;
}

export class EtcdMemberDiscovery {
  syncsOk = 0;
  syncsFailed = 0;
  lastError: string | undefined;
  lastSyncAt = 0;
  members: MemberInfo[] = [];
  /** Members whose advertised URL was refused at the last sync, and why. */
  refused: { member: string; url: string; reason: string }[] = [];
  private readonly warned = new Set<string>();
  private timer: TimerHandle | undefined;
  private client: { hosts: string; version: number; etcd: Etcd3 } | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private consecutiveFailures = 0;

  constructor(
    private readonly cluster: Cluster,
    private readonly seeds: () => EndpointSpec[],
    private readonly tls: () => CheckTls | undefined,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.cluster.observe({
      stateChanged: (_c, _e, _from, to) => {
        if (to === 'down' || to === 'ejected') this.syncSoon();
      },
    });
    this.schedule(0);
  }

  /** Sync now unless one is running (coalesces bursts of member failures). */
  syncSoon(): void {
    if (this.stopped || this.running) return;
    this.schedule(0);
  }

  sync(): Promise<void> {
    this.running ??= this.doSync().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      // After a failed sync, retry sooner (doubling from 500ms) rather than a
      // full syncInterval later: a ballast that starts beside a cluster that
      // is still electing should not wait minutes to learn its members.
      void this.sync().then(() => {
        const interval = this.cluster.config.syncInterval;
        this.schedule(this.lastError === undefined ? interval : Math.min(interval, 500 * 2 ** Math.min(this.consecutiveFailures - 1, 10)));
      });
    }, delay);
  }

  private async doSync(): Promise<void> {
    const etcd = await this.clientFor();
    let res;
    try {
      res = await etcd.cluster.memberList({});
    } catch (err) {
      this.syncsFailed++;
      this.consecutiveFailures++;
      this.lastError = (err as Error).message.split('\n')[0];
      this.log.warn({ cluster: this.cluster.name, err: this.lastError }, `${this.cluster.name}: member discovery failed; keeping the last known members`);
      return;
    }
    const members: MemberInfo[] = (res.members ?? []).map((m) => ({
      id: hexId(String(m.ID)),
      name: m.name,
      clientURLs: m.clientURLs ?? [],
      isLearner: m.isLearner === true,
    }));
    const voting = members.filter((m) => !m.isLearner && m.clientURLs.length > 0).length;
    if (voting > this.cluster.config.discoveryMaxMembers) {
      this.syncsFailed++;
      this.consecutiveFailures++;
      this.lastError = `member list has ${voting} voting members, more than discoveryMaxMembers (${this.cluster.config.discoveryMaxMembers})`;
      this.log.warn({ cluster: this.cluster.name, voting }, `${this.cluster.name}: ${this.lastError}; keeping the last known members (raise clusters[].discoveryMaxMembers if this is real)`);
      return;
    }
    const specs = this.toSpecs(members);
    if (specs.length === 0) {
      this.syncsFailed++;
      this.consecutiveFailures++;
      this.lastError = 'member list has no voting member with a client URL';
      this.log.warn({ cluster: this.cluster.name }, `${this.cluster.name}: ${this.lastError}; keeping the last known members`);
      return;
    }
    this.syncsOk++;
    this.consecutiveFailures = 0;
    this.lastError = undefined;
    this.lastSyncAt = this.clock.now();
    this.members = members;
    const { added, removed } = this.cluster.setEndpoints(specs);
    if (added.length > 0 || removed.length > 0) {
      this.log.info(
        { cluster: this.cluster.name, added: added.map((e) => e.id), removed: removed.map((e) => e.id), members: members.map((m) => m.name) },
        `${this.cluster.name}: membership changed (+${added.length} -${removed.length})`,
      );
    }
  }

  private toSpecs(members: MemberInfo[]): EndpointSpec[] {
    const seeds = this.seeds();
    const cfg = this.cluster.config;
    const seedSchemes = new Set(seeds.map((s) => (s.address.kind === 'inet' ? s.address.scheme : undefined)).filter((x) => x !== undefined));
    const scheme = seedSchemes.size === 1 ? ([...seedSchemes][0] as 'http' | 'https') : cfg.tls !== undefined || cfg.health.tls !== undefined ? 'https' : 'http';
    const filter = new MemberFilter(seeds.map((s) => s.address), cfg.discoveryHosts, scheme);
    const refused: typeof this.refused = [];
    const out: EndpointSpec[] = [];
    for (const m of members) {
      // Learners are never picked: they do not serve linearizable requests.
      // A member added but not started yet has no client URL.
      if (m.isLearner || m.clientURLs.length === 0) continue;
      const url = m.clientURLs[0]!;
      const r = parseAddress(url.replace(/^unix:\/\//, 'unix:'), { allowScheme: true, allowHostname: true });
      if (!r.ok) continue;
      const verdict = filter.check(url, r.address);
      if (!verdict.ok) {
        refused.push({ member: m.name || m.id, url, reason: verdict.reason });
        const key = `${m.id} ${url}`;
        if (!this.warned.has(key)) {
          this.warned.add(key);
          this.log.warn(
            { cluster: this.cluster.name, member: m.name, memberId: m.id, url, reason: verdict.reason },
            `${this.cluster.name}: discovery refused member ${m.name || m.id} at ${url}: ${verdict.reason}; add its host to clusters[].discoveryHosts if it is genuine`,
          );
        }
        continue;
      }
      const id = addressKey(r.address);
      const seed = seeds.find((s) => s.id === id);
      out.push({ address: r.address, id, servername: seed?.servername, weight: seed?.weight ?? 100 });
    }
    this.refused = refused;
    return out;
  }

  /** One client over the seeds and the known members; rebuilt when either changes. */
  private async clientFor(): Promise<Etcd3> {
    const t = this.tls();
    const hostsList = new Set<string>();
    const scheme = t?.ca ? 'https' : 'http';
    for (const s of [...this.seeds(), ...this.cluster.endpoints.map((e) => ({ address: e.address }))]) {
      const a = s.address;
      if (a.kind === 'inet') hostsList.add(`${scheme}://${a.family === 6 ? `[${a.host}]` : a.host}:${a.port}`);
    }
    const hosts = [...hostsList].sort().join(',');
    const version = t?.version ?? 0;
    if (this.client?.hosts === hosts && this.client.version === version) return this.client.etcd;
    this.client?.etcd.close();
    const { etcd3, cockatiel } = await loadEtcd3();
    const { ConstantBackoff, handleAll, noop, retry } = cockatiel;
    const etcd = new etcd3.Etcd3({
      hosts: hosts.split(','),
      ...(t?.ca ? { credentials: { rootCertificate: t.ca, ...(t.cert ? { certChain: t.cert, privateKey: t.key! } : {}) } } : {}),
      // Each attempt goes to the next host with its own deadline: a dead or
      // hung member must not stall discovery.
      faultHandling: { host: () => noop, global: retry(handleAll, { maxAttempts: Math.max(0, hostsList.size - 1), backoff: new ConstantBackoff(0) }) },
      defaultCallOptions: () => ({ deadline: Date.now() + 1000 }),
      dialTimeout: 1000,
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    });
    this.client = { hosts, version, etcd };
    return etcd;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.client?.etcd.close();
    this.client = undefined;
  }
}

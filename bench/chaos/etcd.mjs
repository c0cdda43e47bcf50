// A real etcd cluster on loopback for the soak: TLS client URLs with client
// certificates required, plain-HTTP peer traffic that crosses one TcpRelay
// per member so a member can be cut off from its peers (isolate/heal), and
// the operations the faults need: kill -9 + restart on the same ports and
// data dir, SIGSTOP/SIGCONT, and replacement by runtime reconfiguration.
// Ported from test/support/etcd-cluster.ts, reduced to what the soak uses.
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { hardKill, runBounded, sleep, spawnTracked } from './procs.mjs';
import { TcpRelay, socketOwnerPid } from './relay.mjs';

const ETCD = process.env.BALLAST_ETCD_BIN ?? 'etcd';
const ETCDCTL = process.env.BALLAST_ETCDCTL_BIN ?? 'etcdctl';
const HOST = '127.0.0.1';

export async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      await new Promise((resolve, reject) => {
        s.once('error', reject);
        s.listen({ port: 0, host: HOST, exclusive: true }, resolve);
      });
      servers.push(s);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r()))));
  }
}

/** Hex member id from the decimal string etcd's JSON and etcd3 report. */
export const hexId = (id) => BigInt(id).toString(16);

export class EtcdChaosCluster {
  /** @type {Array<{name:string, id?:string, clientUrl:string, clientPort:number, peerUrl:string, peerListenPort:number, dataDir:string, logFile:string, child?:any, running:boolean, stopped:boolean, removed:boolean, isolated:boolean, args:string[]}>} */
  members = [];
  #relays = new Map(); // member name -> relay
  #next = 0;
  #closed = false;

  /** tls: { ca, cert, key } file paths (cert has server+client usage); client: PEM buffers { ca, cert, key } for probes. */
  constructor({ dir, tls, token = `chaos-${process.pid}-${Date.now()}`, electionMs = 1000, heartbeatMs = 100, preVote = true }) {
    this.preVote = preVote;
    this.dir = dir;
    this.tls = tls;
    this.token = token;
    this.electionMs = electionMs;
    this.heartbeatMs = heartbeatMs;
    this.pem = { ca: fs.readFileSync(tls.ca), cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) };
  }

  async start(size = 3, timeoutMs = 30_000) {
    for (let i = 0; i < size; i++) await this.#allocate();
    const initial = this.members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
    for (const m of this.members) this.#spawn(m, this.#args(m, 'new', initial));
    await Promise.all(this.members.map((m) => this.waitHealthy(m, timeoutMs)));
    await this.memberIds();
  }

  /** Members that are part of the cluster (not removed). */
  get active() {
    return this.members.filter((m) => !m.removed);
  }

  /** Members whose requests should complete: running, not stopped, not isolated, not removed. */
  get responsive() {
    return this.members.filter((m) => m.running && !m.stopped && !m.removed && !m.isolated);
  }

  clientUrls() {
    return this.active.map((m) => m.clientUrl);
  }

  async #allocate() {
    const [clientPort, peerListenPort] = await freePorts(2);
    const name = `etcd-${this.#next++}`;
    const relay = new TcpRelay(0, HOST, peerListenPort, { identify: (s) => this.#identify(s) });
    await relay.start();
    this.#relays.set(name, relay);
    const m = {
      name,
      clientUrl: `https://${HOST}:${clientPort}`,
      clientPort,
      peerUrl: `http://${HOST}:${relay.port}`,
      peerListenPort,
      dataDir: path.join(this.dir, name),
      logFile: path.join(this.dir, `${name}.log`),
      child: undefined,
      running: false,
      stopped: false,
      removed: false,
      isolated: false,
      args: [],
    };
    this.members.push(m);
    return m;
  }

  #args(m, state, initial) {
    return [
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${m.clientUrl}`,
      `--advertise-client-urls=${m.clientUrl}`,
      `--listen-peer-urls=http://${HOST}:${m.peerListenPort}`,
      `--initial-advertise-peer-urls=${m.peerUrl}`,
      `--initial-cluster=${initial}`,
      `--initial-cluster-token=${this.token}`,
      `--initial-cluster-state=${state}`,
      `--heartbeat-interval=${this.heartbeatMs}`,
      `--election-timeout=${this.electionMs}`,
      // etcd 3.5's default (3.4 ships with it off): without it a member that
      // was cut off rejoins with a higher term and deposes a healthy leader,
      // an etcd outage of seconds that says nothing about the proxy.
      `--pre-vote=${this.preVote}`,
      `--cert-file=${this.tls.cert}`,
      `--key-file=${this.tls.key}`,
      `--trusted-ca-file=${this.tls.ca}`,
      '--client-cert-auth=true',
      '--logger=zap',
      `--log-outputs=${m.logFile}`,
    ];
  }

  #spawn(m, args) {
    if (this.#closed) throw new Error('cluster closed');
    m.args = args;
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_') && !k.startsWith('ETCDCTL_')) env[k] = v;
    const child = spawnTracked(ETCD, args, { logFile: m.logFile, env });
    m.child = child;
    m.running = true;
    m.stopped = false;
    child.exited.then(() => {
      if (m.child === child) {
        m.running = false;
        m.stopped = false;
      }
    });
  }

  async #identify(socket) {
    const byPid = new Map();
    for (const m of this.members) if (m.running && m.child) byPid.set(m.child.pid, m.name);
    const pid = await socketOwnerPid(socket, byPid.keys());
    return pid === undefined ? undefined : byPid.get(pid);
  }

  // --- HTTP gateway -----------------------------------------------------------

  gateway(m, route, body = {}, timeoutMs = 2000) {
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = https.request(
        new URL(route, m.clientUrl),
        { method: 'POST', agent: false, ca: this.pem.ca, cert: this.pem.cert, key: this.pem.key, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            clearTimeout(timer);
            const text = Buffer.concat(chunks).toString();
            if ((res.statusCode ?? 0) >= 300) return reject(new Error(`${route}: HTTP ${res.statusCode} ${text.slice(0, 200)}`));
            try {
              resolve(JSON.parse(text));
            } catch {
              reject(new Error(`${route}: bad JSON`));
            }
          });
        },
      );
      const timer = setTimeout(() => req.destroy(new Error(`${route}: timed out after ${timeoutMs}ms`)), timeoutMs);
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      req.end(payload);
    });
  }

  /** Linearizable read through member m: it has a leader and has applied what the leader committed. */
  probe(m, timeoutMs = 2000) {
    return this.gateway(m, '/v3/kv/range', { key: Buffer.from('chaos-health').toString('base64') }, timeoutMs);
  }

  async status(m, timeoutMs = 1000) {
    const r = await this.gateway(m, '/v3/maintenance/status', {}, timeoutMs);
    return { memberId: hexId(r.header?.member_id ?? '0'), leader: hexId(r.leader ?? '0'), raftIndex: Number(r.raftIndex ?? 0), raftTerm: Number(r.raftTerm ?? 0) };
  }

  async memberList() {
    let last;
    for (const m of this.responsive) {
      try {
        const r = await this.gateway(m, '/v3/cluster/member/list', {});
        return (r.members ?? []).map((x) => ({ id: hexId(x.ID ?? '0'), name: String(x.name ?? ''), peerURLs: (x.peerURLs ?? []).map(String), clientURLs: (x.clientURLs ?? []).map(String) }));
      } catch (e) {
        last = e;
      }
    }
    throw new Error(`member list: no member answered (${last?.message ?? 'none responsive'})`);
  }

  /** Fills in members[].id; returns hex id -> member. */
  async memberIds() {
    const list = await this.memberList();
    for (const x of list) {
      const m = this.members.find((y) => (x.name ? y.name === x.name : x.peerURLs.includes(y.peerUrl)));
      if (m) m.id = x.id;
    }
    return new Map(this.members.filter((m) => m.id).map((m) => [m.id, m]));
  }

  byId(hex) {
    return this.members.find((m) => m.id === hex);
  }

  /** The member a quorum of responsive members names as leader, or undefined. */
  async leader() {
    const st = await Promise.all(this.responsive.map((m) => this.status(m).catch(() => undefined)));
    const votes = new Map();
    for (const s of st) if (s && s.leader !== '0') votes.set(s.leader, (votes.get(s.leader) ?? 0) + 1);
    const quorum = Math.floor(this.active.length / 2) + 1;
    for (const [id, n] of votes) if (n >= quorum) return this.byId(id);
    return undefined;
  }

  async waitHealthy(m, timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
      if (!m.running) throw new Error(`${m.name} is not running (see ${m.logFile})`);
      try {
        await this.probe(m, Math.max(200, Math.min(2000, deadline - Date.now())));
        return;
      } catch (e) {
        last = e;
      }
      await sleep(150);
    }
    throw new Error(`${m.name} not healthy after ${timeoutMs}ms: ${last?.message} (see ${m.logFile})`);
  }

  /** Every member of the cluster answers a linearizable read. */
  async waitAllHealthy(timeoutMs = 30_000) {
    await Promise.all(this.active.map((m) => this.waitHealthy(m, timeoutMs)));
  }

  // --- faults -------------------------------------------------------------------

  async kill(m) {
    if (!m.running) return;
    hardKill(m.child.pid);
    await m.child.exited;
  }

  async restart(m, timeoutMs = 20_000) {
    if (m.running) throw new Error(`${m.name} still running`);
    this.#spawn(m, m.args);
    await this.waitHealthy(m, timeoutMs);
  }

  stop(m) {
    process.kill(m.child.pid, 'SIGSTOP');
    m.stopped = true;
  }

  cont(m) {
    process.kill(m.child.pid, 'SIGCONT');
    m.stopped = false;
  }

  /** Cut m off from its peers both ways ('blackhole': bytes silently dropped, like a partition). */
  isolate(m, mode = 'blackhole') {
    this.#relays.get(m.name).block(mode);
    for (const [name, relay] of this.#relays) if (name !== m.name) relay.blockFrom(m.name, mode);
    m.isolated = true;
  }

  async heal(m, timeoutMs = 20_000) {
    this.#relays.get(m.name).unblock();
    for (const [name, relay] of this.#relays) if (name !== m.name) relay.unblockFrom(m.name);
    m.isolated = false;
    await this.waitHealthy(m, timeoutMs);
  }

  etcdctl(args, { endpoints, timeoutMs = 5000 } = {}) {
    const eps = endpoints ?? this.responsive.map((m) => m.clientUrl);
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCDCTL_')) env[k] = v;
    env.ETCDCTL_API = '3';
    return runBounded(ETCDCTL, [`--endpoints=${eps.join(',')}`, `--cacert=${this.tls.ca}`, `--cert=${this.tls.cert}`, `--key=${this.tls.key}`, `--command-timeout=${timeoutMs}ms`, ...args], { env, timeoutMs: timeoutMs + 2000 });
  }

  /**
   * Runtime reconfiguration: `member remove` m through the others (it shuts
   * itself down; killed if not), then `member add` a new member on fresh
   * ports, start it with --initial-cluster-state existing, wait until it
   * serves linearizable reads. etcd 3.4 refuses reconfiguration for ~5 s
   * after a member (re)joins or while one is down ("unhealthy cluster"):
   * both steps retry until the deadline.
   */
  async replace(m, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    if (!m.id) await this.memberIds();
    const retryable = /unhealthy cluster|not enough started members|deadline exceeded|timed out|timeout|leader changed|no leader|context canceled/i;
    for (;;) {
      const others = this.responsive.filter((x) => x !== m).map((x) => x.clientUrl);
      const r = await this.etcdctl(['member', 'remove', m.id], { endpoints: others });
      if (r.code === 0 || /member not found/i.test(r.stderr)) break;
      const list = await this.memberList().catch(() => undefined);
      if (list && !list.some((x) => x.id === m.id)) break;
      if (!retryable.test(r.stderr + r.stdout) || Date.now() > deadline) throw new Error(`member remove ${m.name}: ${r.stderr.trim()}`);
      await sleep(500);
    }
    m.removed = true;
    await Promise.race([m.child.exited, sleep(3000)]);
    await this.kill(m);
    await this.#relays.get(m.name)?.close();
    this.#relays.delete(m.name);

    const fresh = await this.#allocate();
    for (;;) {
      const r = await this.etcdctl(['member', 'add', fresh.name, `--peer-urls=${fresh.peerUrl}`]);
      if (r.code === 0) break;
      const list = await this.memberList().catch(() => []);
      if (list.some((x) => x.peerURLs.includes(fresh.peerUrl))) break;
      if (!retryable.test(r.stderr + r.stdout) || Date.now() > deadline) throw new Error(`member add ${fresh.name}: ${r.stderr.trim()}`);
      await sleep(500);
    }
    const list = await this.memberList();
    const parts = [];
    for (const x of list) {
      const name = x.name || (x.peerURLs.includes(fresh.peerUrl) ? fresh.name : '');
      if (name) for (const u of x.peerURLs) parts.push(`${name}=${u}`);
    }
    fresh.id = list.find((x) => x.peerURLs.includes(fresh.peerUrl))?.id;
    this.#spawn(fresh, this.#args(fresh, 'existing', parts.join(',')));
    await this.waitHealthy(fresh, Math.max(5000, deadline - Date.now()));
    await this.memberIds();
    return fresh;
  }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    const running = this.members.filter((m) => m.running && m.child);
    for (const m of running) hardKill(m.child.pid);
    await Promise.race([Promise.all(running.map((m) => m.child.exited)), sleep(10_000)]);
    await Promise.all([...this.#relays.values()].map((r) => r.close()));
    this.#relays.clear();
  }
}

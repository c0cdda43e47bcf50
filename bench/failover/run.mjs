#!/usr/bin/env node
// Failover time through a proxy, ballast next to HAProxy, in the same run
// (issue 3's measurement):
//
//   node bench/failover/run.mjs              # 5 runs per case and proxy, about 5 minutes
//   node bench/failover/run.mjs --runs 3 --cases kill-follower,stop-follower
//
// A 3-member TLS etcd 3.4 on loopback (bench/chaos/etcd.mjs). One client per
// proxy (client.mjs: one HTTP/2 connection, raw gRPC KV/Put every 10 ms, 1 s
// deadline per call, like kube-apiserver's grpc-go client) writes through its
// proxy. At t0 the harness kill -9s or SIGSTOPs the member that client's
// connection is on (asked with Maintenance/Status over the same connection),
// arranged beforehand with `etcdctl move-leader` to be a follower or the
// leader. Failover time = first successful write started at or after t0,
// minus t0. For leader faults, etcd's own election time (a surviving member's
// Status names a new leader) and the first write accepted by a surviving
// member directly (no proxy) are measured in the same runs.
import { execFileSync, fork } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { EtcdChaosCluster, freePorts } from '../chaos/etcd.mjs';
import { killAll, runBounded, sleep, spawnTracked } from '../chaos/procs.mjs';
import { SHIPPED_NODE_OPTIONS } from '../lib/targets.mjs';
import { GrpcChannel, nowMs } from './grpc.mjs';
import { node24 } from '../lib/node24.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const CLI = path.join(REPO, 'dist/cli.js');
const ALL_CASES = ['kill-follower', 'stop-follower', 'kill-leader', 'stop-leader'];
const ALL_PROXIES = ['ballast', 'haproxy-kubeadm', 'haproxy-tuned'];

const HELP = `usage: node bench/failover/run.mjs [options]
  --runs N             runs per case and proxy (default 5)
  --cases a,b          ${ALL_CASES.join(',')} (default all)
  --proxies a,b        ${ALL_PROXIES.join(',')} (default all)
  --bound S            give up on a run after S seconds without a successful write (default 15)
  --max-timeouts N     stop a (case, proxy) after N runs that hit the bound (default 2; 0 = never)
  --pace MS            one write started every MS (default 10)
  --deadline MS        deadline of each write (default 1000)
  --backoff MS         client reconnect backoff after a failed attempt (default 100)
  --ballast-node PATH  node for ballast (default Node 24 if present, else this node)
  --ballast-log LEVEL  ballast's log level (default info: state changes, kept per run in latest.json)
  --out DIR            where latest.md and latest.json go (default bench/failover/results)
  --tmp DIR            where the work dir (etcd data) goes (default /dev/shm if present: fsync
                       latency of a shared disk would add noise to every number alike)
  --keep               keep the work dir (etcd data and logs, proxy configs and logs)
`;

let values;
try {
  ({ values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
      cases: { type: 'string', default: ALL_CASES.join(',') },
      proxies: { type: 'string', default: ALL_PROXIES.join(',') },
      bound: { type: 'string', default: '15' },
      'max-timeouts': { type: 'string', default: '2' },
      pace: { type: 'string', default: '10' },
      deadline: { type: 'string', default: '1000' },
      backoff: { type: 'string', default: '100' },
      'ballast-node': { type: 'string' },
      'ballast-log': { type: 'string', default: 'info' },
      out: { type: 'string', default: path.join(HERE, 'results') },
      tmp: { type: 'string', default: fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir() },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n${HELP}`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const int = (v, what, min) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    process.stderr.write(`--${what}: expected a whole number >= ${min}, got "${v}"\n`);
    process.exit(2);
  }
  return n;
};
const list = (v, all, what) => {
  const xs = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const x of xs) if (!all.includes(x)) {
    process.stderr.write(`--${what}: unknown "${x}" (have: ${all.join(', ')})\n`);
    process.exit(2);
  }
  return all.filter((a) => xs.includes(a));
};
const RUNS = int(values.runs, 'runs', 1);
const BOUND_MS = int(values.bound, 'bound', 1) * 1000;
const MAX_TIMEOUTS = int(values['max-timeouts'], 'max-timeouts', 0);
const PACE_MS = int(values.pace, 'pace', 1);
const DEADLINE_MS = int(values.deadline, 'deadline', 10);
const BACKOFF_MS = int(values.backoff, 'backoff', 0);
const RELAPSE_MS = 2000; // how long writes are watched after the first success
const CASES = list(values.cases, ALL_CASES, 'cases');
const PROXIES = list(values.proxies, ALL_PROXIES, 'proxies');
const BALLAST_NODE = values['ballast-node'] ?? node24();

const log = (s) => process.stdout.write(`${s}\n`);
const fmtMs = (ms) => (ms === undefined ? '-' : !Number.isFinite(ms) ? `>${BOUND_MS / 1000} s` : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`);

// --- processes we own ----------------------------------------------------------------

const clientChildren = new Map(); // pid -> ChildProcess
let cleaningUp = false;
let workDir; // removed on a signal too (etcd data on /dev/shm is memory)
async function cleanup(code) {
  if (cleaningUp) return;
  cleaningUp = true;
  for (const [pid] of clientChildren) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await killAll(5000);
  if (workDir && !values.keep) fs.rmSync(workDir, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGINT', () => void cleanup(130));
process.on('SIGTERM', () => void cleanup(143));

/** A forked client.mjs with a request/response IPC. */
function startClient(name, port, certs) {
  const child = fork(path.join(HERE, 'client.mjs'), [JSON.stringify({ name, port, ca: certs.ca, cert: certs.clientCrt, key: certs.clientKey, paceMs: PACE_MS, deadlineMs: DEADLINE_MS, backoffMs: BACKOFF_MS })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  clientChildren.set(child.pid, child);
  const pending = new Map();
  let next = 0;
  child.on('message', (m) => {
    const p = pending.get(m.id);
    if (p) {
      pending.delete(m.id);
      p(m);
    }
  });
  child.on('exit', () => {
    clientChildren.delete(child.pid);
    for (const p of pending.values()) p({ error: 'client exited' });
    pending.clear();
  });
  return {
    pid: child.pid,
    call(cmd, args = {}, timeoutMs = BOUND_MS + 5000) {
      const id = next++;
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          pending.delete(id);
          resolve({ error: `client ${name}: ${cmd} timed out` });
        }, timeoutMs);
        pending.set(id, (m) => {
          clearTimeout(t);
          resolve(m);
        });
        child.send({ id, cmd, ...args });
      });
    },
  };
}

// --- setup -----------------------------------------------------------------------------

function makeCerts(dir) {
  execFileSync(process.execPath, [CLI, 'certs', '--out', dir, '--server', 'etcd:127.0.0.1,localhost', '--server', 'ballast:127.0.0.1,localhost', '--client', 'ballast-client', '--client', 'kube-apiserver-etcd-client'], { stdio: 'ignore' });
  const f = (n) => path.join(dir, n);
  // HAProxy wants certificate and key in one PEM.
  fs.writeFileSync(f('ballast.pem'), fs.readFileSync(f('ballast.crt'), 'utf8') + fs.readFileSync(f('ballast.key'), 'utf8'), { mode: 0o600 });
  fs.writeFileSync(f('ballast-client.pem'), fs.readFileSync(f('ballast-client.crt'), 'utf8') + fs.readFileSync(f('ballast-client.key'), 'utf8'), { mode: 0o600 });
  return {
    ca: f('ca.crt'),
    etcdCrt: f('etcd.crt'),
    etcdKey: f('etcd.key'),
    ballastCrt: f('ballast.crt'),
    ballastKey: f('ballast.key'),
    ballastPem: f('ballast.pem'),
    originCrt: f('ballast-client.crt'),
    originKey: f('ballast-client.key'),
    originPem: f('ballast-client.pem'),
    clientCrt: f('kube-apiserver-etcd-client.crt'),
    clientKey: f('kube-apiserver-etcd-client.key'),
  };
}

function ballastConfig({ port, adminPort, certs, endpoints, level }) {
  return `admin: { listen: 127.0.0.1:${adminPort} }
log: { level: ${level} }
tls:
  guard: { cert: ${certs.ballastCrt}, key: ${certs.ballastKey}, clientCA: ${certs.ca} }
  to-etcd: { cert: ${certs.originCrt}, key: ${certs.originKey}, ca: ${certs.ca} }
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd, tls: guard }
clusters:
  - name: etcd
    endpoints: [${endpoints.join(', ')}]
    tls: to-etcd
    balance: affinity
    health: { check: etcd }
`;
}

// The kubeadm HA guide's haproxy.cfg (kubernetes/kubeadm docs/ha-considerations.md),
// adapted to etcd: its defaults (redispatch, retries 1, timeout connect 5s,
// client/server 20s, check 10s), `option httpchk` with HAProxy's default
// server timing (inter 2s, rise 2, fall 3). Its `option ssl-hello-chk` (an
// SSLv3 hello) cannot pass against etcd's TLS 1.2+ listener with client
// certificates required, so the check is the guide's httpchk, over TLS with
// the client certificate: GET /health, expect 200. http-only options of the
// guide's `mode http` defaults (httplog, forwardfor, http-server-close,
// http-request/keep-alive timeouts) do nothing for mode tcp and are left out.
// Stickiness (the guide has none; a client must stay on one member like
// ballast's affinity): the guide's roundrobin plus a stick table on the source
// address. With `balance source` instead, a retry after a refused connect
// hashes to the same dead server until the check marks it down, so
// `option redispatch` cannot help; with the stick table it can.
function haproxyKubeadmConfig({ port, sock, certs, members }) {
  return `global
    maxconn 4000
    stats socket ${sock} mode 600 level admin
defaults
    mode tcp
    option redispatch
    retries 1
    timeout queue 20s
    timeout connect 5s
    timeout client 20s
    timeout server 20s
    timeout check 10s
frontend etcd
    bind 127.0.0.1:${port} ssl crt ${certs.ballastPem} ca-file ${certs.ca} verify required alpn h2
    default_backend etcd
backend etcd
    balance roundrobin
    stick-table type ip size 1k expire 30m
    stick on src
    option httpchk GET /health
    http-check expect status 200
${members.map((m, i) => `    server etcd-${i} 127.0.0.1:${m.clientPort} ssl crt ${certs.originPem} ca-file ${certs.ca} verify required alpn h2 check check-alpn http/1.1`).join('\n')}
`;
}

// Tuned: the same, with checks every 500 ms (no 'timeout check': the whole
// check is bounded by inter), fall 2, sessions of a server marked down shut,
// connect timeout 1 s.
function haproxyTunedConfig({ port, sock, certs, members }) {
  return `global
    maxconn 4000
    stats socket ${sock} mode 600 level admin
defaults
    mode tcp
    option redispatch
    retries 1
    timeout queue 20s
    timeout connect 1s
    timeout client 20s
    timeout server 20s
frontend etcd
    bind 127.0.0.1:${port} ssl crt ${certs.ballastPem} ca-file ${certs.ca} verify required alpn h2
    default_backend etcd
backend etcd
    balance roundrobin
    stick-table type ip size 1k expire 30m
    stick on src
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 500 fall 2 rise 2 on-marked-down shutdown-sessions
${members.map((m, i) => `    server etcd-${i} 127.0.0.1:${m.clientPort} ssl crt ${certs.originPem} ca-file ${certs.ca} verify required alpn h2 check-alpn http/1.1`).join('\n')}
`;
}

function haproxyCmd(sock, cmd) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sock });
    let out = '';
    const t = setTimeout(() => s.destroy(new Error('stats socket timeout')), 2000);
    // One command per connection: HAProxy answers and closes.
    s.on('connect', () => s.write(`${cmd}\n`));
    s.on('data', (d) => (out += d));
    s.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    s.on('close', () => {
      clearTimeout(t);
      resolve(out);
    });
  });
}

/** svname -> status ("UP", "DOWN", "UP 1/2", ...) of the etcd backend's servers. */
async function haproxyServers(sock) {
  const text = await haproxyCmd(sock, 'show stat');
  const lines = text.split('\n').filter(Boolean);
  const head = lines[0].replace(/^# /, '').split(',');
  const iPx = head.indexOf('pxname');
  const iSv = head.indexOf('svname');
  const iSt = head.indexOf('status');
  const out = {};
  for (const l of lines.slice(1)) {
    const f = l.split(',');
    if (f[iPx] === 'etcd' && f[iSv] !== 'BACKEND' && f[iSv] !== 'FRONTEND') out[f[iSv]] = f[iSt];
  }
  return out;
}

class ProxyTarget {
  constructor(name, port) {
    this.name = name;
    this.port = port;
  }
}

class BallastProxy extends ProxyTarget {
  constructor({ port, adminPort, configFile, logFile }) {
    super('ballast', port);
    Object.assign(this, { adminPort, configFile, logFile });
  }
  async start() {
    this.child = spawnTracked(BALLAST_NODE, [...SHIPPED_NODE_OPTIONS.split(' '), CLI, 'run', '--config', this.configFile], { logFile: this.logFile });
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (this.child.exitInfo) throw new Error(`ballast exited at start; see ${this.logFile}`);
      if (await this.allUp().catch(() => false)) return;
      await sleep(100);
    }
    throw new Error(`ballast: members not all up after 20 s; see ${this.logFile}`);
  }
  async status() {
    const r = await fetch(`http://127.0.0.1:${this.adminPort}/status`, { signal: AbortSignal.timeout(2000) });
    return r.json();
  }
  async view() {
    const st = await this.status();
    return Object.fromEntries(st.clusters[0].endpoints.map((e) => [e.id, `${e.state}${e.reason ? ` (${e.reason})` : ''}`]));
  }
  async allUp() {
    const st = await this.status();
    const eps = st.clusters[0].endpoints;
    this.lastView = Object.fromEntries(eps.map((e) => [e.id, e.state]));
    return eps.length === 3 && eps.every((e) => e.state === 'up');
  }
  /** ballast's log lines between two wall-clock times, stamped relative to zeroWall (the fault). */
  logBetween(fromWall, toWall, zeroWall) {
    let text = '';
    try {
      text = fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return [];
    }
    const out = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const j = JSON.parse(line);
        const t = typeof j.time === 'number' ? j.time : Date.parse(j.time);
        if (t >= fromWall && t <= toWall) out.push(`${t >= zeroWall ? '+' : ''}${t - zeroWall}ms ${j.msg}`);
      } catch {
        // not JSON
      }
    }
    return out;
  }
}

class HaproxyProxy extends ProxyTarget {
  constructor({ name, port, configFile, sock, logFile }) {
    super(name, port);
    Object.assign(this, { configFile, sock, logFile });
  }
  async start() {
    const check = await runBounded('haproxy', ['-c', '-f', this.configFile], { timeoutMs: 10_000 });
    if (check.code !== 0) throw new Error(`${this.name}: haproxy -c failed: ${check.stderr}${check.stdout}`);
    this.child = spawnTracked('haproxy', ['-f', this.configFile, '-db'], { logFile: this.logFile });
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (this.child.exitInfo) throw new Error(`${this.name} exited at start; see ${this.logFile}`);
      if (await this.allUp().catch(() => false)) return;
      await sleep(200);
    }
    throw new Error(`${this.name}: servers not all UP after 20 s; see ${this.logFile}`);
  }
  async view() {
    return haproxyServers(this.sock);
  }
  async allUp() {
    this.lastView = await haproxyServers(this.sock);
    const s = Object.values(this.lastView);
    return s.length === 3 && s.every((x) => x === 'UP');
  }
}

async function waitFor(what, fn, timeoutMs, everyMs = 100, detail = () => '') {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await fn()) return true;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`${what}: not after ${timeoutMs} ms${last ? ` (last error: ${last.message})` : ''}${detail()}`);
}

/** Retry a call that may fail while etcd elects or a member restarts. */
async function retry(fn, timeoutMs = 10_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() + everyMs > deadline) throw e;
      await sleep(everyMs);
    }
  }
}

/** Sockets to and from a port, with queues and TCP info (ss), for a run that hung. */
function sockets(port) {
  try {
    return execFileSync('ss', ['-tnpi', `( sport = :${port} or dport = :${port} )`], { encoding: 'utf8', timeout: 5000 }).slice(0, 6000);
  } catch (e) {
    return `ss: ${e.message}`;
  }
}

// --- etcd's own view, measured beside the proxy (leader faults) ----------------------------

/**
 * From t0: when a surviving member's Status first names a new leader, and
 * when a write straight to a surviving member (no proxy) first succeeds.
 */
function etcdOwnClock(cluster, survivors, oldLeaderId, boundMs) {
  const pem = cluster.pem;
  const chans = survivors.map((m) => new GrpcChannel({ url: m.clientUrl, tls: pem, backoffMs: 100 }));
  let electedMs;
  let directWriteMs;
  let stop = false;
  let t0 = 0;
  const pollStatus = async (ch) => {
    while (!stop && electedMs === undefined && nowMs() - t0 < boundMs) {
      const r = await ch.status(300);
      if (r.ok && r.status.leader !== '0' && r.status.leader !== oldLeaderId && electedMs === undefined) electedMs = r.endedAt - t0;
      await sleep(10);
    }
  };
  const writes = async (ch) => {
    const pending = [];
    let i = 0;
    while (!stop && directWriteMs === undefined && nowMs() - t0 < boundMs) {
      pending.push(
        ch.put(`failover/direct/${i++ % 100}`, 'x', DEADLINE_MS).then((r) => {
          if (r.ok && r.startedAt >= t0 && (directWriteMs === undefined || r.endedAt - t0 < directWriteMs)) directWriteMs = r.endedAt - t0;
        }),
      );
      await sleep(PACE_MS);
    }
    await Promise.all(pending);
  };
  return {
    ready: () => Promise.all(chans.map((c) => c.connect())),
    async run(at) {
      t0 = at;
      await Promise.all([...chans.map(pollStatus), ...chans.map(writes)]);
      stop = true;
      for (const c of chans) c.close();
      return { electedMs, directWriteMs };
    },
    close() {
      stop = true;
      for (const c of chans) c.close();
    },
  };
}

// --- one run ------------------------------------------------------------------------------

async function oneRun({ cluster, proxy, client, kase, runIndex }) {
  const [fault, wantRole] = kase.split('-');
  const rec = { proxy: proxy.name, case: kase, fault, wantRole, run: runIndex, at: new Date().toISOString(), loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100) };
  const phase = phases(rec);
  // 1. Everything healthy, and the proxy under test sees it.
  await cluster.waitAllHealthy(30_000);
  await waitFor(`${proxy.name} sees all members up`, () => proxy.allUp(), 30_000, 100, () => ` (view: ${JSON.stringify(proxy.lastView)})`);
  phase('ready');
  // 2. A fresh connection: where does the proxy put this client now?
  let pinned;
  await waitFor(`${proxy.name}: client status`, async () => {
    const r = await client.call('reconnect', {}, 5000);
    if (!r.ok) return false;
    const st = await client.call('status', {}, 5000);
    if (!st.ok) return false;
    pinned = cluster.byId(st.memberId);
    return pinned !== undefined;
  }, 10_000, 200);
  // 3. Make the pinned member the leader, or a follower, as the case wants.
  const leader = await retry(async () => {
    const l = await cluster.leader();
    if (!l) throw new Error('no leader');
    return l;
  });
  if ((leader === pinned) !== (wantRole === 'leader')) {
    const target = wantRole === 'leader' ? pinned : cluster.members.find((m) => m !== pinned);
    const r = await cluster.etcdctl(['move-leader', target.id], { timeoutMs: 5000 });
    rec.moveLeader = { to: target.name, code: r.code, err: r.code === 0 ? undefined : r.stderr.trim().slice(0, 300) };
    await waitFor('leader moved', async () => (await cluster.leader()) === target, 8000, 100).catch(() => {});
    await cluster.waitAllHealthy(30_000);
    await waitFor(`${proxy.name} sees all members up after move-leader`, () => proxy.allUp(), 30_000, 100, () => ` (view: ${JSON.stringify(proxy.lastView)})`);
  }
  phase('placed');
  // 4. Writes on, until they flow steadily.
  await client.call('start');
  // Steady: writes flowing without failures and without a stall (a member
  // that just rejoined, a leader that just moved) in the last 300 ms.
  const steady = await waitFor(`${proxy.name}: steady writes`, async () => {
    const r = await client.call('recent', { ms: 300 });
    rec.steadyLatencyMs = r.latencyMs;
    return r.ok >= Math.min(15, 150 / PACE_MS) && r.failed === 0 && r.maxLatencyMs < 100;
  }, 10_000, 100).catch(() => false);
  if (!steady) {
    // No fault on a client that is not writing: the run is void, and what the
    // client, the proxy and the sockets looked like is kept.
    rec.notSteady = { recent: await client.call('recent', { ms: 1000 }), client: await client.call('diag'), sockets: sockets(proxy.port), proxyView: await proxy.view().catch((e) => e.message) };
    if (proxy instanceof BallastProxy) rec.ballastLog = proxy.logBetween(Date.now() - 20_000, Date.now(), Date.now());
    rec.error = `writes through ${proxy.name} not steady for 10 s before the fault (no fault injected; see notSteady)`;
    await client.call('stop');
    return rec;
  }
  phase('steady');
  // 5. Still on the same member (a move-leader could have moved it)? Which role has it now?
  const st = await client.call('status', {}, 5000);
  if (st.ok) pinned = cluster.byId(st.memberId) ?? pinned;
  rec.statusBeforeFault = st.ok ? 'ok' : (st.code ?? st.error);
  const ms = await retry(() => cluster.status(pinned));
  const role = ms.leader === ms.memberId ? 'leader' : 'follower';
  rec.role = role;
  rec.case = `${fault}-${role}`;
  rec.member = pinned.name;
  const survivors = cluster.members.filter((m) => m !== pinned);
  const own = role === 'leader' ? etcdOwnClock(cluster, survivors, pinned.id, BOUND_MS) : undefined;
  try {
    if (own) await own.ready();
    return await faultAndMeasure({ cluster, proxy, client, rec, pinned, own, fault, phase });
  } finally {
    own?.close();
  }
}

async function faultAndMeasure({ cluster, proxy, client, rec, pinned, own, fault, phase }) {
  // 6. The fault.
  const wall0 = Date.now();
  const t0 = nowMs();
  let ownRun;
  if (fault === 'kill') {
    const exited = cluster.kill(pinned); // SIGKILL is sent synchronously; this waits for the exit
    if (own) ownRun = own.run(t0);
    await exited;
  } else {
    cluster.stop(pinned);
    if (own) ownRun = own.run(t0);
  }
  const w = await client.call('watch', { t0, boundMs: BOUND_MS });
  rec.failoverMs = w.failoverMs ?? null;
  rec.timedOut = w.failoverMs === undefined;
  rec.failures = w.failuresBeforeFirstOk;
  rec.clientEvents = w.events;
  rec.writes = w.writes;
  if (rec.timedOut) rec.hung = { client: await client.call('diag'), sockets: sockets(proxy.port), proxyView: await proxy.view().catch((e) => e.message) };
  else {
    // Does it stay up? Writes go on for RELAPSE_MS after the first success;
    // a failure there (the proxy closing or moving the client again, e.g.
    // marking the new leader down mid-election) is a relapse, and "stable"
    // is the first success after the last failure.
    const until = w.firstOkAt + RELAPSE_MS;
    await sleep(Math.max(0, until - nowMs()));
    let r = await client.call('relapse', { from: w.firstOkStartedAt, until });
    // A relapse not over yet: wait (within the bound) for the success that ends it.
    while (Object.keys(r.failures).length && r.okAfterAt === undefined && nowMs() < t0 + BOUND_MS) {
      await sleep(50);
      r = await client.call('relapse', { from: w.firstOkStartedAt, until });
    }
    rec.relapse = Object.keys(r.failures).length ? r.failures : null;
    rec.stableMs = rec.relapse === null ? rec.failoverMs : r.okAfterAt === undefined ? null : r.okAfterAt - t0;
  }
  phase('failover');
  if (ownRun) {
    const o = await ownRun;
    rec.electionMs = o.electedMs ?? null;
    rec.directWriteMs = o.directWriteMs ?? null;
  }
  await client.call('stop');
  // Where did it land?
  const after = await client.call('status', {}, 3000);
  rec.landedOn = after.ok ? (cluster.byId(after.memberId)?.name ?? after.memberId) : `(${after.code ?? after.error})`;
  try {
    rec.proxyView = await proxy.view();
  } catch {
    // not essential
  }
  if (proxy instanceof BallastProxy) rec.ballastLog = proxy.logBetween(wall0 - 100, Date.now(), wall0);
  // 7. Restore.
  if (fault === 'kill') await cluster.restart(pinned, 30_000);
  else {
    cluster.cont(pinned);
    await cluster.waitHealthy(pinned, 30_000);
  }
  phase('restored');
  return rec;
}

/** rec.phases: ms spent in each step of a run (where the bench's time goes). */
function phases(rec) {
  let last = Date.now();
  rec.phases = {};
  return (name) => {
    const now = Date.now();
    rec.phases[name] = now - last;
    last = now;
  };
}

// --- stats and report -------------------------------------------------------------------------

function median(xs) {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function summarize(records) {
  const out = {};
  for (const kase of ALL_CASES) {
    const rows = {};
    for (const p of PROXIES) {
      const rs = records.filter((r) => r.case === kase && r.proxy === p && !r.error);
      if (rs.length === 0) continue;
      const xs = rs.map((r) => (r.timedOut ? Infinity : r.failoverMs));
      const lat = rs.map((r) => r.steadyLatencyMs).filter((x) => typeof x === 'number');
      const stable = rs.map((r) => (r.timedOut || r.stableMs === null || r.stableMs === undefined ? Infinity : r.stableMs));
      rows[p] = {
        median: median(xs),
        min: Math.min(...xs),
        max: Math.max(...xs),
        runs: rs.length,
        timeouts: rs.filter((r) => r.timedOut).length,
        relapses: rs.filter((r) => r.relapse).length,
        stableMedian: median(stable),
        values: xs.map((x) => (Number.isFinite(x) ? Math.round(x) : null)),
        steadyLatencyMs: median(lat),
      };
    }
    if (kase.endsWith('leader')) {
      const rs = records.filter((r) => r.case === kase && !r.error);
      const el = rs.map((r) => r.electionMs).filter((x) => typeof x === 'number');
      const dw = rs.map((r) => r.directWriteMs).filter((x) => typeof x === 'number');
      for (const p of PROXIES) {
        if (!rows[p]) continue;
        const d = rs.filter((r) => r.proxy === p && typeof r.electionMs === 'number').map((r) => (r.timedOut ? Infinity : r.failoverMs - r.electionMs));
        if (d.length) rows[p].overElectionMs = median(d);
      }
      if (el.length) rows['etcd: new leader'] = { median: median(el), min: Math.min(...el), max: Math.max(...el), runs: el.length, timeouts: rs.length - el.length, values: el.map(Math.round) };
      if (dw.length) rows['etcd: direct write'] = { median: median(dw), min: Math.min(...dw), max: Math.max(...dw), runs: dw.length, timeouts: rs.length - dw.length, values: dw.map(Math.round) };
    }
    if (Object.keys(rows).length) out[kase] = rows;
  }
  return out;
}

const TARGETS = {
  'kill-follower': { text: 'ballast < 100 ms', ok: (s) => s.ballast?.median < 100 },
  'stop-follower': { text: 'ballast < 1 s and ahead of haproxy-tuned', ok: (s) => s.ballast?.median < 1000 && (s['haproxy-tuned'] === undefined || s.ballast.median < s['haproxy-tuned'].median) },
  'stop-leader': { text: "ballast within 0.3 s of etcd's election (median of per-run differences)", ok: (s) => s.ballast?.overElectionMs <= 300 },
  'kill-leader': { text: "ballast within 0.3 s of etcd's election (median of per-run differences)", ok: (s) => s.ballast?.overElectionMs <= 300 },
};

function renderMarkdown(summary, meta) {
  const lines = [];
  lines.push(`# Failover time through the proxy`, '');
  lines.push(`${meta.date} · ${meta.versions} · ${meta.cpus} CPUs (load average at the end ${meta.loadavgAtEnd.join(' ')}) · ${meta.settings} · ${meta.durationS} s`, '');
  lines.push(`ballast's etcd check (defaults as built in dist/): ${meta.ballastEtcdCheck} · tree ${meta.git.commit ?? '?'}${meta.git.srcChanged.length ? ` with uncommitted changes in ${meta.git.srcChanged.map((l) => l.slice(3)).join(', ')}` : ''}`, '');
  lines.push(
    'Time from the fault (kill -9 or SIGSTOP of the etcd member the client is connected to) until the first write *started after the fault* succeeds through the proxy. Median, min and max over runs; `>N s` = no successful write within the bound.',
    `**relapses**: runs in which a write started after that first success failed within ${RELAPSE_MS / 1000} s (the proxy closed or moved the client again); **stable**: time until the first success after the last such failure (= the failover time when there was no relapse). **etcd: new leader**: a surviving member's Status names a new leader, polled directly every 10 ms; **etcd: direct write**: first write accepted by a surviving member without a proxy (both from the leader runs of all proxies).`,
    '',
  );
  if (meta.errors?.length) {
    lines.push('Runs that did not complete (left out of the tables; details in latest.json):', '');
    for (const e of meta.errors) lines.push(`- ${e}`);
    lines.push('');
  }
  for (const [kase, rows] of Object.entries(summary)) {
    lines.push(`## ${kase}`, '');
    lines.push('| | median | min | max | runs | timeouts | relapses | stable (median) | all runs (ms) |', '|---|---|---|---|---|---|---|---|---|');
    for (const [name, r] of Object.entries(rows)) {
      const etcd = name.startsWith('etcd:');
      lines.push(`| ${name} | ${fmtMs(r.median)} | ${fmtMs(r.min)} | ${fmtMs(r.max)} | ${r.runs} | ${r.timeouts} | ${etcd ? '' : r.relapses} | ${etcd ? '' : fmtMs(r.stableMedian)} | ${r.values.map((v) => (v === null ? '>bound' : v)).join(', ')} |`);
    }
    const b = rows.ballast?.median;
    const t = rows['haproxy-tuned']?.median;
    const extra = [];
    if (b !== undefined && t !== undefined) extra.push(`ballast/haproxy-tuned (medians): ${Number.isFinite(b) && Number.isFinite(t) ? `${(b / t).toFixed(2)}x` : '-'}`);
    const over = Object.entries(rows).filter(([, r]) => r.overElectionMs !== undefined);
    if (over.length) extra.push(`failover minus etcd's election in the same run (median): ${over.map(([n, r]) => `${n} ${Number.isFinite(r.overElectionMs) ? `${Math.round(r.overElectionMs)} ms` : '-'}`).join(', ')}`);
    const lat = Object.entries(rows).filter(([, r]) => r.steadyLatencyMs !== undefined);
    if (lat.length) extra.push(`write latency before the fault (median): ${lat.map(([n, r]) => `${n} ${r.steadyLatencyMs.toFixed(1)} ms`).join(', ')}`);
    const tg = TARGETS[kase];
    if (tg && rows.ballast) extra.push(`target: ${tg.text}: **${tg.ok(rows) ? 'met' : 'not met'}**`);
    if (extra.length) lines.push('', ...extra.map((x) => `- ${x}`));
    lines.push('');
  }
  return lines.join('\n');
}

// --- main ---------------------------------------------------------------------------------------

async function main() {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} missing: build first (npx tsc -p tsconfig.json)`);
  const started = Date.now();
  // What ballast runs with: its etcd check defaults as built into dist/ now (ballast loads them at start).
  const { HEALTH_DEFAULTS } = await import(path.join(REPO, 'dist/config/load.js'));
  const d = HEALTH_DEFAULTS.etcd;
  const ballastEtcdCheck = `interval ${d.interval} ms, timeout ${d.timeout} ms, rise ${d.rise}, fall ${d.fall}, jitter ${d.jitter}`;
  const dir = fs.mkdtempSync(path.join(values.tmp, 'ballast-failover-'));
  workDir = dir;
  log(`work dir ${dir}`);
  const certs = makeCerts(dir);
  const cluster = new EtcdChaosCluster({ dir, tls: { ca: certs.ca, cert: certs.etcdCrt, key: certs.etcdKey } });
  const proxies = [];
  const clients = {};
  const records = [];
  let failed = false;
  try {
    await cluster.start(3);
    log(`etcd: ${cluster.members.map((m) => `${m.name} ${m.clientUrl} ${m.id}`).join(', ')}`);
    const [pB, pA, pK, pT] = await freePorts(4);
    const endpoints = cluster.members.map((m) => m.clientUrl);
    for (const p of PROXIES) {
      if (p === 'ballast') {
        const configFile = path.join(dir, 'ballast.yaml');
        fs.writeFileSync(configFile, ballastConfig({ port: pB, adminPort: pA, certs, endpoints, level: values['ballast-log'] }));
        proxies.push(new BallastProxy({ port: pB, adminPort: pA, configFile, logFile: path.join(dir, 'ballast.log') }));
      } else {
        const tuned = p === 'haproxy-tuned';
        const port = tuned ? pT : pK;
        const configFile = path.join(dir, `${p}.cfg`);
        const sock = path.join(dir, `${p}.sock`);
        fs.writeFileSync(configFile, (tuned ? haproxyTunedConfig : haproxyKubeadmConfig)({ port, sock, certs, members: cluster.members }));
        proxies.push(new HaproxyProxy({ name: p, port, configFile, sock, logFile: path.join(dir, `${p}.log`) }));
      }
    }
    await Promise.all(proxies.map((p) => p.start()));
    log(`proxies up: ${proxies.map((p) => `${p.name} :${p.port}`).join(', ')}`);
    for (const p of proxies) clients[p.name] = startClient(p.name, p.port, certs);

    const timeouts = new Map(); // `${case}/${proxy}` -> count
    const done = new Map(); // `${case}/${proxy}` -> runs recorded
    for (const kase of CASES) {
      // Runs are recorded under the role the member had at t0 (move-leader
      // arranges it, elections can undo it): go on until this case has RUNS
      // of each proxy, at most RUNS + 3 rounds.
      for (let i = 0; i < RUNS + 3; i++) {
        for (const proxy of proxies) {
          const key = `${kase}/${proxy.name}`;
          if (MAX_TIMEOUTS > 0 && (timeouts.get(key) ?? 0) >= MAX_TIMEOUTS) continue;
          if ((done.get(key) ?? 0) >= RUNS) continue;
          let rec;
          try {
            rec = await oneRun({ cluster, proxy, client: clients[proxy.name], kase, runIndex: i });
          } catch (e) {
            rec = { proxy: proxy.name, case: kase, run: i, at: new Date().toISOString(), error: e.message };
            failed = true;
            await clients[proxy.name].call('stop');
            // Bring everything back before going on.
            for (const m of cluster.members) {
              if (m.stopped) cluster.cont(m);
              if (!m.running) await cluster.restart(m, 30_000).catch(() => {});
            }
          }
          records.push(rec);
          const k2 = `${rec.case}/${proxy.name}`;
          if (!rec.error) done.set(k2, (done.get(k2) ?? 0) + 1);
          if (rec.timedOut) timeouts.set(k2, (timeouts.get(k2) ?? 0) + 1);
          const role = rec.role && rec.role !== rec.wantRole ? ` (wanted ${rec.wantRole})` : '';
          log(`${rec.case.padEnd(14)} ${proxy.name.padEnd(16)} run ${i + 1}: ${rec.error ? `ERROR ${rec.error}` : `${fmtMs(rec.timedOut ? Infinity : rec.failoverMs).padStart(8)}${role}  ${rec.member} -> ${rec.landedOn}${rec.electionMs !== undefined ? `  (etcd: leader ${fmtMs(rec.electionMs ?? Infinity)}, direct write ${fmtMs(rec.directWriteMs ?? Infinity)})` : ''}`}`);
        }
      }
    }
    for (const [key, n] of timeouts) if (MAX_TIMEOUTS > 0 && n >= MAX_TIMEOUTS) log(`${key}: stopped after ${n} runs that hit the ${BOUND_MS / 1000} s bound`);

    const summary = summarize(records);
    const versions = [
      `ballast ${JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')).version} on Node ${execFileSync(BALLAST_NODE, ['-v'], { encoding: 'utf8' }).trim()}`,
      `${execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0].replace(/ - https.*/, '').replace('version ', '')}`,
      `etcd ${/etcd Version: (\S+)/.exec(execFileSync('etcd', ['--version'], { encoding: 'utf8' }))?.[1]}`,
      `harness Node ${process.version}`,
    ].join(', ');
    const git = (args) => {
      try {
        return execFileSync('git', ['-C', REPO, ...args], { encoding: 'utf8', timeout: 5000 }).replace(/\n$/, '');
      } catch {
        return undefined;
      }
    };
    const meta = {
      date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      versions,
      ballastEtcdCheck,
      git: { commit: git(['rev-parse', '--short', 'HEAD']), srcChanged: git(['status', '--porcelain', 'src'])?.split('\n').filter(Boolean) ?? [] },
      cpus: os.availableParallelism(),
      settings: `etcd data on ${values.tmp}, ${RUNS} runs per case and proxy, bound ${BOUND_MS / 1000} s, a write every ${PACE_MS} ms with a ${DEADLINE_MS} ms deadline, reconnect backoff ${BACKOFF_MS} ms after a failed attempt (immediate after losing a ready connection)`,
      durationS: Math.round((Date.now() - started) / 1000),
      loadavgAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100),
      errors: records.filter((r) => r.error).map((r) => `${r.case} / ${r.proxy} run ${r.run + 1} (${r.at ?? ''}): ${r.error}`),
    };
    const md = renderMarkdown(summary, meta);
    log('');
    log(md);
    fs.mkdirSync(values.out, { recursive: true });
    fs.writeFileSync(path.join(values.out, 'latest.md'), `${md}\n`);
    fs.writeFileSync(
      path.join(values.out, 'latest.json'),
      `${JSON.stringify({ meta, configs: Object.fromEntries(proxies.map((p) => [p.name, fs.readFileSync(p.configFile, 'utf8').replaceAll(dir, '$DIR')])), summary: JSON.parse(JSON.stringify(summary, (k, v) => (v === Infinity ? null : v))), records }, null, 1)}\n`,
    );
    log(`wrote ${path.relative(process.cwd(), path.join(values.out, 'latest.md'))} and latest.json (${meta.durationS} s)`);
  } finally {
    for (const c of Object.values(clients)) await c.call('exit', {}, 2000);
    for (const p of proxies) {
      if (p.child && !p.child.exitInfo) {
        process.kill(p.child.pid, 'SIGTERM');
        await Promise.race([p.child.exited, sleep(3000)]);
      }
    }
    await cluster.close();
    await killAll(5000);
    if (!values.keep) fs.rmSync(dir, { recursive: true, force: true });
    else log(`kept ${dir}`);
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => cleanup(code),
  (err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    void cleanup(1);
  },
);

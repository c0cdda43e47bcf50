// Real etcd clusters on loopback for integration tests.
//
//   const cluster = await EtcdCluster.start({ size: 3 });
//   try { ...cluster.clientUrls()... } finally { await cluster.close(); }
//
// Every member is a real `etcd` process (3.4) with its own data dir and zap
// log file under one temp dir; nothing is written to the test's stdout.
// Processes are tracked so that a crashing test leaves no etcd behind: an
// 'exit' hook kills them, and a small reaper process kills them if the test
// process itself is SIGKILLed. Only processes this module spawned are ever
// signalled, always by PID.
//
// Health, status and member lists go through etcd's JSON gRPC gateway on the
// client URL (cheap, no child process per poll); `etcdctl()` runs the real
// CLI for anything else.
//
// With `partitionable: true`, peer traffic crosses a TcpRelay per member, so
// `isolate(i)` can cut member i off from its peers (both directions) while it
// keeps answering clients; see isolate().
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { freePorts } from './ports.js';
import { TcpRelay, socketOwnerPid, type BlockMode } from './tcp-relay.js';

export interface EtcdTlsFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface EtcdClientTls extends EtcdTlsFiles {
  /** --client-cert-auth: etcd refuses clients without a cert signed by `ca`. Default true. */
  clientCertAuth?: boolean;
  /**
   * Cert/key that etcdctl and the fixture's own probes present. Default: `cert`/`key`
   * above, which then need the clientAuth usage as well as serverAuth (etcd 3.4's
   * gateway also dials the server with them, so they need both anyway).
   */
  client?: { cert: string; key: string };
}

export interface EtcdClusterOptions {
  /** Number of members. Default 3. */
  size?: number;
  /** If set, client URLs are https and (by default) etcd requires client certs. */
  clientTls?: EtcdClientTls;
  /** If set, peer URLs are https (with --peer-client-cert-auth); cert needs server+client usage. */
  peerTls?: EtcdTlsFiles;
  /** --heartbeat-interval in ms. Default etcd's 100. */
  heartbeatMs?: number;
  /** --election-timeout in ms. Default etcd's 1000. */
  electionMs?: number;
  /** --quota-backend-bytes (small values let tests trigger NOSPACE alarms). */
  quotaBackendBytes?: number;
  /** Parent directory for the cluster's temp dir. Default os.tmpdir(). */
  dir?: string;
  /** IPv4 address or hostname for every URL. Default 127.0.0.1. */
  host?: string;
  /** Route peer traffic through TcpRelays so isolate()/heal() work. Default false. */
  partitionable?: boolean;
  /** Extra flags appended to every member's command line, e.g. ['--pre-vote=true']. */
  extraArgs?: string[];
  /** Extra flags for member i only, after extraArgs (e.g. a small --quota-backend-bytes on one member). */
  memberArgs?: (i: number) => string[];
  /** How long start() waits for every member to be healthy. Default 20 s. */
  startTimeoutMs?: number;
}

export interface EtcdMember {
  /** etcd --name: etcd-0, etcd-1, ... (added members continue the sequence). */
  name: string;
  /** Hex member id (as etcdctl prints it), once known. */
  id?: string;
  clientUrl: string;
  /** Advertised peer URL (the relay's when partitionable). */
  peerUrl: string;
  clientPort: number;
  /** Advertised peer port (the relay's when partitionable). */
  peerPort: number;
  /** Port etcd itself listens on for peers (= peerPort unless partitionable). */
  peerListenPort: number;
  dataDir: string;
  /** zap JSON log (etcd's stderr is appended to it too). */
  logFile: string;
  /** PID of the live process; undefined when not running. */
  pid: number | undefined;
  /** A process is alive (possibly SIGSTOPped). */
  running: boolean;
  /** SIGSTOPped: the process hangs with its sockets open. */
  stopped: boolean;
  /** Removed from the cluster with removeMember(); never restarted. */
  removed: boolean;
  /** Cut off from its peers with isolate(). */
  isolated: boolean;
}

/** Parsed Maintenance.Status of one member (ids are hex, '0' = none). */
export interface EtcdMemberStatus {
  memberId: string;
  leader: string;
  raftTerm: number;
  raftIndex: number;
  raftAppliedIndex: number;
  revision: number;
  dbSize: number;
  dbSizeInUse: number;
  version: string;
  /** e.g. ['memberID:... alarm:NOSPACE'] */
  errors: string[];
}

export interface EtcdctlOptions {
  /** Endpoint(s) to use. Default: every running member that is not stopped, isolated or removed. */
  endpoint?: string | string[];
  /** Kill etcdctl after this long (also passed as --command-timeout). Default 10 s. */
  timeoutMs?: number;
  /** Written to etcdctl's stdin (e.g. `put key` reads the value from stdin: no argv size limit). */
  input?: string | Uint8Array;
}

/** An etcd member id as etcd's JSON and the etcd3 client report it (decimal string) -> hex. */
export function toHexMemberId(id: string | bigint): string {
  return BigInt(id).toString(16);
}

const ETCD_BIN = process.env.BALLAST_ETCD_BIN ?? 'etcd';
const ETCDCTL_BIN = process.env.BALLAST_ETCDCTL_BIN ?? 'etcdctl';
const PROBE_TIMEOUT_MS = 2_000;
const POLL_MS = 150;

// ---------------------------------------------------------------------------
// Process bookkeeping shared by every cluster in this process.

const liveChildren = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;
let reaper: ChildProcess | undefined;

function hardKill(pid: number): void {
  try {
    process.kill(pid, 'SIGCONT');
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of liveChildren) if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) hardKill(c.pid);
    for (const d of liveDirs) {
      try {
        fs.rmSync(d, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
  });
}

// The reaper is a tiny node process reading lines on stdin: "+pid"/"-pid"
// (etcd processes started/exited) and "D<dir>"/"U<dir>" (cluster temp dirs
// created/removed). When its stdin closes (this process exited, even by
// SIGKILL) it SIGKILLs the pids still listed, if they still are etcd
// processes, then removes the dirs still listed.
const REAPER_SCRIPT = `
const fs = require('fs');
const pids = new Set();
const dirs = new Set();
let buf = '';
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => {});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    const op = line[0], arg = line.slice(1);
    if (op === 'D') dirs.add(arg);
    else if (op === 'U') dirs.delete(arg);
    else {
      const pid = Number(arg);
      if (!Number.isInteger(pid) || pid <= 1) continue;
      if (op === '+') pids.add(pid); else pids.delete(pid);
    }
  }
});
const isEtcd = (pid) => { try { return fs.readFileSync('/proc/' + pid + '/comm', 'utf8').trim() === 'etcd'; } catch { return false; } };
process.stdin.on('end', () => {
  const mine = [...pids].filter(isEtcd);
  for (const pid of mine) { try { process.kill(pid, 'SIGCONT'); process.kill(pid, 'SIGKILL'); } catch {} }
  const deadline = Date.now() + 3000;
  const finish = () => {
    if (mine.some(isEtcd) && Date.now() < deadline) return setTimeout(finish, 50);
    for (const d of dirs) { try { fs.rmSync(d, { recursive: true, force: true }); } catch {} }
    process.exit(0);
  };
  finish();
});
`;

function reaperTell(line: string): void {
  if (process.platform !== 'linux') return;
  if (!reaper || reaper.exitCode !== null || reaper.signalCode !== null) {
    try {
      reaper = spawn(process.execPath, ['-e', REAPER_SCRIPT], {
        stdio: ['pipe', 'ignore', 'ignore'],
        env: { PATH: process.env.PATH ?? '' },
      });
      reaper.on('error', () => {});
      reaper.stdin?.on('error', () => {});
      reaper.unref();
      (reaper.stdin as unknown as { unref?: () => void } | null)?.unref?.();
      // Re-announce the live children to a fresh reaper.
      for (const c of liveChildren) if (c.pid !== undefined) reaper.stdin?.write(`+${c.pid}\n`);
      for (const d of liveDirs) reaper.stdin?.write(`D${d}\n`);
    } catch {
      reaper = undefined;
      return;
    }
  }
  reaper.stdin?.write(line + '\n');
}

// ---------------------------------------------------------------------------

interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  done: boolean;
  exitInfo: string;
}

interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

class PortInUseError extends Error {}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Last `maxLines` lines (within the last `maxBytes`) of a file, or a note if unreadable. */
export async function logTail(file: string, maxLines = 25, maxBytes = 6_000): Promise<string> {
  try {
    const fh = await fsp.open(file, 'r');
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, maxBytes);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      const lines = buf.toString('utf8').split('\n').filter((l) => l.length > 0);
      return lines.slice(-maxLines).join('\n');
    } finally {
      await fh.close();
    }
  } catch (e) {
    return `(no log: ${(e as Error).message})`;
  }
}

function num(v: unknown): number {
  const n = Number(v ?? 0);
  return Number.isFinite(n) ? n : 0;
}

export class EtcdCluster {
  readonly members: EtcdMember[] = [];
  /** The cluster's own temp dir (removed by close()). */
  readonly dir: string;
  readonly options: Readonly<EtcdClusterOptions>;
  readonly host: string;
  /** --initial-cluster-token, unique per cluster. */
  readonly token: string;

  #procs = new Map<number, Proc>();
  #relays = new Map<number, TcpRelay>();
  #spawnArgs = new Map<number, string[]>();
  #clientTls: TlsMaterial | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(opts: EtcdClusterOptions, dir: string) {
    this.options = opts;
    this.dir = dir;
    this.host = opts.host ?? '127.0.0.1';
    this.token = `ballast-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  }

  /**
   * Starts `size` members (--initial-cluster-state new) and waits until each
   * one serves a linearizable read. Throws with the failing member's log tail
   * if one is not healthy within `startTimeoutMs`. A member losing a port race
   * (EADDRINUSE) makes it retry with fresh ports (3 attempts).
   */
  static async start(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    for (let attempt = 1; ; attempt++) {
      const dir = await fsp.mkdtemp(path.join(opts.dir ?? os.tmpdir(), 'ballast-etcd-'));
      liveDirs.add(dir);
      reaperTell(`D${dir}`);
      installExitHook();
      const cluster = new EtcdCluster(opts, dir);
      try {
        await cluster.#boot();
        return cluster;
      } catch (e) {
        await cluster.close();
        if (e instanceof PortInUseError && attempt < 3) continue;
        throw e;
      }
    }
  }

  get #scheme(): string {
    return this.options.clientTls ? 'https' : 'http';
  }

  get #peerScheme(): string {
    return this.options.peerTls ? 'https' : 'http';
  }

  async #boot(): Promise<void> {
    const { clientTls } = this.options;
    if (clientTls) {
      const client = clientTls.client ?? clientTls;
      const [ca, cert, key] = await Promise.all([
        fsp.readFile(clientTls.ca),
        fsp.readFile(client.cert),
        fsp.readFile(client.key),
      ]);
      this.#clientTls = { ca, cert, key };
    }
    const size = this.options.size ?? 3;
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`EtcdCluster: bad size ${size}`);
    for (let i = 0; i < size; i++) await this.#allocateMember(i);
    const initialCluster = this.members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
    for (let i = 0; i < size; i++) this.#spawn(i, this.#memberArgs(i, 'new', initialCluster));
    const timeout = this.options.startTimeoutMs ?? 20_000;
    await Promise.all(this.members.map((_, i) => this.waitHealthy(i, timeout)));
    await this.memberIds();
  }

  /** Creates members[i] with fresh ports (and its relay when partitionable). */
  async #allocateMember(i: number): Promise<EtcdMember> {
    // Members are allocated one after another and nothing listens on their
    // ports until all are spawned, so the kernel may hand an earlier member's
    // port out again (once: "initial cluster … has duplicate url"). Skip those.
    const taken = new Set(this.members.filter((m) => m !== undefined).flatMap((m) => [m.clientPort, m.peerPort, m.peerListenPort]));
    let clientPort = 0;
    let peerListenPort = 0;
    for (let tries = 0; ; tries++) {
      [clientPort, peerListenPort] = (await freePorts(2, this.host)) as [number, number];
      if (!taken.has(clientPort) && !taken.has(peerListenPort)) break;
      if (tries >= 20) throw new Error(`EtcdCluster: no ports distinct from the other members' after ${tries + 1} tries`);
    }
    let peerPort = peerListenPort;
    if (this.options.partitionable) {
      const relay = new TcpRelay(0, this.host, peerListenPort, {
        host: this.host,
        identify: (s) => this.#identifyPeer(s),
      });
      await relay.start();
      this.#relays.set(i, relay);
      peerPort = relay.port;
    }
    const name = `etcd-${i}`;
    const m: EtcdMember = {
      name,
      clientUrl: `${this.#scheme}://${this.host}:${clientPort}`,
      peerUrl: `${this.#peerScheme}://${this.host}:${peerPort}`,
      clientPort,
      peerPort,
      peerListenPort,
      dataDir: path.join(this.dir, name),
      logFile: path.join(this.dir, `${name}.log`),
      pid: undefined,
      running: false,
      stopped: false,
      removed: false,
      isolated: false,
    };
    this.members[i] = m;
    return m;
  }

  #memberArgs(i: number, state: 'new' | 'existing', initialCluster: string): string[] {
    const m = this.#member(i);
    const o = this.options;
    const args = [
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${m.clientUrl}`,
      `--advertise-client-urls=${m.clientUrl}`,
      `--listen-peer-urls=${this.#peerScheme}://${this.host}:${m.peerListenPort}`,
      `--initial-advertise-peer-urls=${m.peerUrl}`,
      `--initial-cluster=${initialCluster}`,
      `--initial-cluster-token=${this.token}`,
      `--initial-cluster-state=${state}`,
      `--heartbeat-interval=${o.heartbeatMs ?? 100}`,
      `--election-timeout=${o.electionMs ?? 1000}`,
      '--logger=zap',
      `--log-outputs=${m.logFile}`,
    ];
    if (o.clientTls) {
      args.push(
        `--cert-file=${o.clientTls.cert}`,
        `--key-file=${o.clientTls.key}`,
        `--trusted-ca-file=${o.clientTls.ca}`,
        `--client-cert-auth=${o.clientTls.clientCertAuth ?? true}`,
      );
    }
    if (o.peerTls) {
      args.push(
        `--peer-cert-file=${o.peerTls.cert}`,
        `--peer-key-file=${o.peerTls.key}`,
        `--peer-trusted-ca-file=${o.peerTls.ca}`,
        '--peer-client-cert-auth=true',
      );
    }
    if (o.quotaBackendBytes !== undefined) args.push(`--quota-backend-bytes=${o.quotaBackendBytes}`);
    if (o.extraArgs) args.push(...o.extraArgs);
    if (o.memberArgs) args.push(...o.memberArgs(i));
    return args;
  }

  #spawn(i: number, args: string[]): void {
    if (this.#closed) throw new Error('EtcdCluster is closed');
    const m = this.#member(i);
    this.#spawnArgs.set(i, args);
    const env: NodeJS.ProcessEnv = {};
    // etcd reads ETCD_* variables as flags: never let the caller's leak in.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_') && !k.startsWith('ETCDCTL_')) env[k] = v;
    fs.mkdirSync(this.dir, { recursive: true });
    const fd = fs.openSync(m.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(ETCD_BIN, args, { stdio: ['ignore', 'ignore', fd], env });
    } finally {
      fs.closeSync(fd);
    }
    const pid = child.pid;
    if (pid === undefined) {
      child.on('error', () => {});
      throw new Error(`could not spawn ${ETCD_BIN} for ${m.name} (is etcd installed?)`);
    }
    liveChildren.add(child);
    reaperTell(`+${pid}`);
    const proc: Proc = { child, pid, done: false, exitInfo: '', exited: Promise.resolve() };
    proc.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        proc.done = true;
        proc.exitInfo = signal ? `signal ${signal}` : `exit code ${code}`;
        liveChildren.delete(child);
        reaperTell(`-${pid}`);
        if (this.#procs.get(i) === proc) {
          m.running = false;
          m.stopped = false;
          m.pid = undefined;
        }
        resolve();
      });
    });
    child.on('error', () => {});
    this.#procs.set(i, proc);
    m.pid = pid;
    m.running = true;
    m.stopped = false;
  }

  #member(i: number): EtcdMember {
    const m = this.members[i];
    if (!m) throw new RangeError(`no etcd member #${i} (cluster has ${this.members.length})`);
    return m;
  }

  /** Members whose requests can be expected to complete. */
  #responsive(): number[] {
    return this.members.flatMap((m, i) => (m.running && !m.stopped && !m.removed && !m.isolated ? [i] : []));
  }

  /** Client URLs of running, non-removed members (stopped or isolated ones included). */
  clientUrls(): string[] {
    return this.members.filter((m) => m.running && !m.removed).map((m) => m.clientUrl);
  }

  /** TLS options for Node/etcd3 clients (undefined without clientTls): PEM buffers. */
  clientTlsMaterial(): { ca: Buffer; cert: Buffer; key: Buffer } | undefined {
    return this.#clientTls ? { ...this.#clientTls } : undefined;
  }

  /** etcdctl TLS flags (empty without clientTls). */
  etcdctlTlsFlags(): string[] {
    const t = this.options.clientTls;
    if (!t) return [];
    const c = t.client ?? t;
    return [`--cacert=${t.ca}`, `--cert=${c.cert}`, `--key=${c.key}`];
  }

  async #describe(i: number): Promise<string> {
    const m = this.#member(i);
    const proc = this.#procs.get(i);
    const state = m.removed
      ? 'removed'
      : proc?.done
        ? `exited (${proc.exitInfo})`
        : m.stopped
          ? `SIGSTOPped, pid ${m.pid}`
          : m.running
            ? `pid ${m.pid}${m.isolated ? ', isolated' : ''}`
            : 'not running';
    return `etcd member ${m.name} (#${i}, ${m.clientUrl}, ${state})\n--- tail of ${m.logFile} ---\n${await logTail(m.logFile)}`;
  }

  // -- HTTP to the gRPC gateway --------------------------------------------

  async #gateway(i: number, route: string, body: unknown, timeoutMs = PROBE_TIMEOUT_MS): Promise<any> {
    const m = this.#member(i);
    const url = new URL(route, m.clientUrl);
    const payload = JSON.stringify(body);
    const tls = this.#clientTls;
    return new Promise((resolve, reject) => {
      const opts: https.RequestOptions = {
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      };
      if (tls) Object.assign(opts, { ca: tls.ca, cert: tls.cert, key: tls.key });
      const req = (url.protocol === 'https:' ? https : http).request(url, opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString('utf8');
          if ((res.statusCode ?? 0) >= 300) {
            reject(new Error(`${route} -> HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
            return;
          }
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error(`${route}: bad JSON: ${text.slice(0, 300)}`));
          }
        });
      });
      const timer = setTimeout(() => {
        req.destroy(new Error(`${route} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      req.end(payload);
    });
  }

  /** Linearizable read through member i: succeeds only with a leader and caught up. */
  async #probe(i: number, timeoutMs: number): Promise<void> {
    await this.#gateway(i, '/v3/kv/range', { key: Buffer.from('ballast-health').toString('base64') }, timeoutMs);
  }

  /** Maintenance.Status of member i (local to the member: works when isolated, not when stopped). */
  async status(i: number, timeoutMs = PROBE_TIMEOUT_MS): Promise<EtcdMemberStatus> {
    const r = await this.#gateway(i, '/v3/maintenance/status', {}, timeoutMs);
    return {
      memberId: toHexMemberId(r.header?.member_id ?? '0'),
      leader: toHexMemberId(r.leader ?? '0'),
      raftTerm: num(r.raftTerm ?? r.raft_term),
      raftIndex: num(r.raftIndex ?? r.raft_index),
      raftAppliedIndex: num(r.raftAppliedIndex ?? r.raft_applied_index),
      revision: num(r.header?.revision),
      dbSize: num(r.dbSize ?? r.db_size),
      dbSizeInUse: num(r.dbSizeInUse ?? r.db_size_in_use),
      version: String(r.version ?? ''),
      errors: Array.isArray(r.errors) ? r.errors.map(String) : [],
    };
  }

  async #memberList(): Promise<Array<{ id: string; name: string; peerURLs: string[]; clientURLs: string[] }>> {
    let last: unknown;
    for (const i of this.#responsive()) {
      try {
        const r = await this.#gateway(i, '/v3/cluster/member/list', {});
        return (r.members ?? []).map((x: any) => ({
          id: toHexMemberId(x.ID ?? '0'),
          name: String(x.name ?? ''),
          peerURLs: (x.peerURLs ?? []).map(String),
          clientURLs: (x.clientURLs ?? []).map(String),
        }));
      } catch (e) {
        last = e;
      }
    }
    throw new Error(`member list: no member answered (${(last as Error | undefined)?.message ?? 'none responsive'})`);
  }

  // -- waiting ---------------------------------------------------------------

  /**
   * Waits until member i serves a linearizable read (so it has a leader and
   * is caught up). Each try is bounded, so a SIGSTOPped member makes this
   * time out; throws with the member's state and log tail.
   */
  async waitHealthy(i: number, timeoutMs = 20_000): Promise<void> {
    const m = this.#member(i);
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      if (this.#closed) throw new Error(`${m.name}: cluster closed while waiting for health`);
      if (m.removed || !m.running) {
        const proc = this.#procs.get(i);
        if (proc?.done && /address already in use/.test(await logTail(m.logFile, 60))) {
          throw new PortInUseError(`port race: ${await this.#describe(i)}`);
        }
        throw new Error(`not healthy: ${await this.#describe(i)}`);
      }
      const left = deadline - Date.now();
      try {
        await this.#probe(i, Math.max(200, Math.min(PROBE_TIMEOUT_MS, left)));
        return;
      } catch (e) {
        last = e;
      }
      if (Date.now() + POLL_MS >= deadline) {
        throw new Error(
          `not healthy after ${timeoutMs} ms (last error: ${(last as Error).message}): ${await this.#describe(i)}`,
        );
      }
      await sleep(POLL_MS);
    }
  }

  /**
   * Index in `members` of the current leader. Asks every running member and
   * accepts a leader only when a quorum of the cluster reports it for the same
   * term. Isolated members do not vote, and a killed, stopped, removed or
   * isolated member never counts as leader, so right after kill/stop/isolate
   * of the leader this waits for the others to elect a new one. Retries
   * through elections until `timeoutMs`.
   */
  async leaderIndex(timeoutMs = 15_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let seen = '';
    for (;;) {
      const candidates = this.members.flatMap((m, i) => (m.running && !m.stopped && !m.removed ? [i] : []));
      const quorum = Math.floor(this.members.filter((m) => !m.removed).length / 2) + 1;
      const statuses = await Promise.all(candidates.map((i) => this.status(i, 1_000).catch(() => undefined)));
      const votes = new Map<string, number>();
      // Only a member that can serve counts as leader: the others keep
      // reporting a killed, stopped or isolated leader until they elect anew.
      const unfit = new Set(
        this.members.filter((m) => m.id && (!m.running || m.stopped || m.removed || m.isolated)).map((m) => m.id),
      );
      for (const [j, s] of statuses.entries()) {
        if (!s || s.leader === '0' || unfit.has(s.leader) || this.members[candidates[j]!]!.isolated) continue;
        const k = `${s.leader}@${s.raftTerm}`;
        votes.set(k, (votes.get(k) ?? 0) + 1);
      }
      seen = statuses.map((s, j) => `${this.members[candidates[j]!]!.name}:${s ? `${s.leader}@${s.raftTerm}` : '?'}`).join(' ');
      for (const [k, n] of votes) {
        if (n < quorum) continue;
        const leader = k.slice(0, k.indexOf('@'));
        let idx = this.members.findIndex((m) => m.id === leader);
        if (idx < 0) idx = (await this.memberIds().catch(() => new Map<string, number>())).get(leader) ?? -1;
        if (idx >= 0) return idx;
      }
      if (Date.now() >= deadline) throw new Error(`no agreed leader after ${timeoutMs} ms (leader@term: ${seen})`);
      await sleep(POLL_MS);
    }
  }

  /** hex member id -> index in `members` (also fills in `members[i].id`). */
  async memberIds(): Promise<Map<string, number>> {
    const list = await this.#memberList();
    for (const x of list) {
      const i = this.members.findIndex((m) => (x.name ? m.name === x.name : x.peerURLs.includes(m.peerUrl)));
      if (i >= 0) this.members[i]!.id = x.id;
    }
    const out = new Map<string, number>();
    this.members.forEach((m, i) => {
      if (m.id) out.set(m.id, i);
    });
    return out;
  }

  // -- etcdctl ---------------------------------------------------------------

  /**
   * Runs `etcdctl` (ETCDCTL_API=3, TLS flags added when clientTls is set).
   * Rejects with stderr on a non-zero exit or on timeout.
   */
  async etcdctl(args: string[], opts: EtcdctlOptions = {}): Promise<{ stdout: string; stderr: string }> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const endpoints =
      opts.endpoint === undefined
        ? this.#responsive().map((i) => this.members[i]!.clientUrl)
        : ([] as string[]).concat(opts.endpoint);
    if (endpoints.length === 0) throw new Error('etcdctl: no responsive etcd member to talk to');
    const full = [`--endpoints=${endpoints.join(',')}`, ...this.etcdctlTlsFlags()];
    if (!args.some((a) => a.startsWith('--command-timeout'))) full.push(`--command-timeout=${timeoutMs}ms`);
    full.push(...args);
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCDCTL_')) env[k] = v;
    env.ETCDCTL_API = '3';
    const what = `etcdctl ${args.join(' ').slice(0, 200)}`;
    return new Promise((resolve, reject) => {
      const child = spawn(ETCDCTL_BIN, full, { stdio: ['pipe', 'pipe', 'pipe'], env });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timedOut = false;
      child.stdout.on('data', (c: Buffer) => out.push(c));
      child.stderr.on('data', (c: Buffer) => err.push(c));
      child.stdin.on('error', () => {});
      const timer = setTimeout(() => {
        timedOut = true;
        if (child.pid !== undefined) hardKill(child.pid);
      }, timeoutMs + 2_000);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`${what}: ${e.message}`));
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out).toString('utf8');
        const stderr = Buffer.concat(err).toString('utf8');
        if (code === 0) {
          resolve({ stdout, stderr });
          return;
        }
        const why = timedOut ? `timed out after ${timeoutMs} ms` : signal ? `killed by ${signal}` : `exit code ${code}`;
        reject(Object.assign(new Error(`${what} failed (${why}): ${stderr.trim() || stdout.trim()}`), { stdout, stderr, code }));
      });
      child.stdin.end(opts.input ?? '');
    });
  }

  // -- process control -------------------------------------------------------

  /** SIGKILL member i and wait for the process to exit. No-op if not running. */
  async kill(i: number): Promise<void> {
    this.#member(i);
    const proc = this.#procs.get(i);
    if (!proc || proc.done) return;
    hardKill(proc.pid);
    await proc.exited;
  }

  /** SIGSTOP member i: it hangs with its sockets open (clients connect, then time out). */
  stop(i: number): void {
    const m = this.#member(i);
    const proc = this.#procs.get(i);
    if (!proc || proc.done) throw new Error(`stop: ${m.name} is not running`);
    process.kill(proc.pid, 'SIGSTOP');
    m.stopped = true;
  }

  /** SIGCONT member i. */
  cont(i: number): void {
    const m = this.#member(i);
    const proc = this.#procs.get(i);
    if (!proc || proc.done) throw new Error(`cont: ${m.name} is not running`);
    process.kill(proc.pid, 'SIGCONT');
    m.stopped = false;
  }

  /** Start a killed member again on the same ports and data dir; waits until healthy. */
  async restart(i: number, timeoutMs = 20_000): Promise<void> {
    const m = this.#member(i);
    if (m.removed) throw new Error(`restart: ${m.name} was removed from the cluster`);
    if (m.running) throw new Error(`restart: ${m.name} is still running (kill it first)`);
    const args = this.#spawnArgs.get(i);
    if (!args) throw new Error(`restart: ${m.name} was never started`);
    this.#spawn(i, args);
    await this.waitHealthy(i, timeoutMs);
  }

  // -- membership ------------------------------------------------------------

  /**
   * Runtime reconfiguration: `etcdctl member add` a new member (next name,
   * fresh ports), start it with --initial-cluster-state existing, wait healthy.
   * etcd 3.4 refuses `member add` until the serving member has been connected
   * to every voting member for 5 s ("unhealthy cluster"): this retries for up
   * to `timeoutMs`, so it fails if a member is down.
   */
  async addMember(timeoutMs = 30_000): Promise<EtcdMember> {
    const deadline = Date.now() + timeoutMs;
    const i = this.members.length;
    const m = await this.#allocateMember(i);
    let added = false;
    try {
      for (;;) {
        try {
          await this.etcdctl(['member', 'add', m.name, `--peer-urls=${m.peerUrl}`], { timeoutMs: 5_000 });
          added = true;
          break;
        } catch (e) {
          // A timed-out add may still have gone through.
          const list = await this.#memberList().catch(() => []);
          if (list.some((x) => x.peerURLs.includes(m.peerUrl))) {
            added = true;
            break;
          }
          const msg = (e as Error).message;
          if (!/unhealthy cluster|not enough started members|deadline exceeded|timed out|leader changed|no leader/i.test(msg) || Date.now() > deadline) {
            throw e;
          }
          await sleep(500);
        }
      }
      const list = await this.#memberList();
      const parts: string[] = [];
      for (const x of list) {
        const name = x.name || (x.peerURLs.includes(m.peerUrl) ? m.name : '');
        if (!name) continue;
        for (const u of x.peerURLs) parts.push(`${name}=${u}`);
      }
      const self = list.find((x) => x.peerURLs.includes(m.peerUrl));
      if (self) m.id = self.id;
      this.#spawn(i, this.#memberArgs(i, 'existing', parts.join(',')));
      await this.waitHealthy(i, Math.max(5_000, deadline - Date.now()));
      await this.memberIds();
      return m;
    } catch (e) {
      if (!added) {
        // Never joined: forget it.
        await this.#relays.get(i)?.close();
        this.#relays.delete(i);
        this.members.splice(i, 1);
      }
      throw e;
    }
  }

  /**
   * `etcdctl member remove` member i through the other members, then kill its
   * process. It stays in `members` with removed = true. Retries while etcd 3.4
   * answers "unhealthy cluster" (the serving member must have been connected
   * to a quorum for 5 s).
   */
  async removeMember(i: number, timeoutMs = 30_000): Promise<void> {
    const m = this.#member(i);
    if (m.removed) return;
    if (!m.id) await this.memberIds();
    const id = m.id;
    if (!id) throw new Error(`removeMember: ${m.name} has no known member id`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const others = this.#responsive()
        .filter((j) => j !== i)
        .map((j) => this.members[j]!.clientUrl);
      try {
        if (others.length === 0) throw new Error('no other responsive member');
        await this.etcdctl(['member', 'remove', id], { endpoint: others, timeoutMs: 5_000 });
        break;
      } catch (e) {
        const msg = (e as Error).message;
        if (/member not found/i.test(msg)) break;
        const list = await this.#memberList().catch(() => undefined);
        if (list && !list.some((x) => x.id === id)) break;
        if (!/unhealthy cluster|not enough started members|deadline exceeded|timed out|leader changed|no leader/i.test(msg) || Date.now() > deadline) {
          throw e;
        }
        await sleep(500);
      }
    }
    m.removed = true;
    await this.kill(i);
    await this.#relays.get(i)?.close();
    this.#relays.delete(i);
  }

  // -- partitions --------------------------------------------------------------

  async #identifyPeer(socket: import('node:net').Socket): Promise<string | undefined> {
    const byPid = new Map<number, string>();
    this.#procs.forEach((p, i) => {
      if (!p.done) byPid.set(p.pid, this.members[i]!.name);
    });
    const pid = await socketOwnerPid(socket, byPid.keys());
    return pid === undefined ? undefined : byPid.get(pid);
  }

  /** The relay in front of member i's peer listener (partitionable clusters only). */
  peerRelay(i: number): TcpRelay | undefined {
    return this.#relays.get(i);
  }

  /**
   * Cuts member i off from its peers, both ways, while it keeps serving
   * clients (needs `partitionable: true`). The relay in front of i's peer
   * listener is blocked, and the other members' relays drop connections that
   * member i makes (the caller is identified through /proc). 'blackhole'
   * (default) drops bytes silently like a partition; 'reset' refuses fast.
   * Returns at once: an isolated follower loses its leader after about one
   * election timeout; an isolated leader steps down after one (CheckQuorum).
   */
  async isolate(i: number, opts: { mode?: BlockMode } = {}): Promise<void> {
    const m = this.#member(i);
    const own = this.#relays.get(i);
    if (!own) throw new Error('isolate() needs EtcdCluster.start({ partitionable: true })');
    const mode = opts.mode ?? 'blackhole';
    own.block(mode);
    for (const [j, relay] of this.#relays) if (j !== i) relay.blockFrom(m.name, mode);
    m.isolated = true;
  }

  /** Undoes isolate(i) and waits until member i serves linearizable reads again (caught up). */
  async heal(i: number, timeoutMs = 20_000): Promise<void> {
    const m = this.#member(i);
    const own = this.#relays.get(i);
    if (!own) throw new Error('heal() needs EtcdCluster.start({ partitionable: true })');
    own.unblock();
    for (const [j, relay] of this.#relays) if (j !== i) relay.unblockFrom(m.name);
    m.isolated = false;
    if (m.running && !m.stopped) await this.waitHealthy(i, timeoutMs);
  }

  // -- teardown ----------------------------------------------------------------

  /** SIGKILL every process this cluster started, wait for exits, close relays, rm -rf the temp dir. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#doClose();
    return this.#closing;
  }

  async #doClose(): Promise<void> {
    this.#closed = true;
    const procs = [...this.#procs.values()].filter((p) => !p.done);
    for (const p of procs) hardKill(p.pid);
    await Promise.race([Promise.all(procs.map((p) => p.exited)), sleep(10_000)]);
    await Promise.all([...this.#relays.values()].map((r) => r.close()));
    this.#relays.clear();
    await fsp.rm(this.dir, { recursive: true, force: true, maxRetries: 3, retryDelay: 100 });
    liveDirs.delete(this.dir);
    reaperTell(`U${this.dir}`);
  }
}

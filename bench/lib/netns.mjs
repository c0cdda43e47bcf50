// A small network of Linux network namespaces for tests and benches that
// move addresses between "nodes" (the VIP, keepalived): one namespace holds a
// bridge, and every node and client namespace is joined to it by a veth pair.
//
//   <prefix>br:  br0 ── p1 ═══ eth0  <prefix>n1   198.18.0.1/24
//                   ├── p2 ═══ eth0  <prefix>n2   198.18.0.2/24
//                   ├── p3 ═══ eth0  <prefix>n3   198.18.0.3/24
//                   └── pc ═══ eth0  <prefix>cl   198.18.0.100/24
//
// Rules this module keeps (the host is shared):
// - every name starts with a per-run prefix, `bl<pid>-`; nothing is created
//   outside the namespaces it makes (the veths are created inside them, the
//   host's interfaces and routes are never touched);
// - addresses come only from 198.18.0.0/15 (or 192.0.2.0/24), and only inside
//   these namespaces;
// - everything is removed by close(), on process exit, on SIGINT/SIGTERM/
//   SIGHUP, and, if this process is SIGKILLed, by a small reaper process that
//   notices its stdin close; at start, leftovers of dead runs (the prefix's
//   pid no longer alive) are swept;
// - processes are killed by PID only: the ones this module spawned, and the
//   ones `ip netns pids` lists inside a namespace this run (or a dead run of
//   this module) created;
// - every wait is bounded in time.
//
// Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns`) and iproute2.
import { execFile, execFileSync, spawn } from 'node:child_process';

export const NS_PREFIX_RE = /^bl(\d+)-/;

/** The prefix of this run's namespaces. */
export function nsPrefix(pid = process.pid) {
  return `bl${pid}-`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Run `ip …` (or another file) with a hard time limit; never throws: { ok, stdout, stderr, code }. */
export function run(file, args, timeoutMs = 5000) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve({ ok: true, stdout, stderr, code: 0 });
      resolve({ ok: false, stdout: stdout ?? '', stderr: stderr ?? '', code: err.killed ? 'ETIMEDOUT' : (err.code ?? 1) });
    });
  });
}

/** `ip …` that must succeed. */
export async function ip(args, timeoutMs = 5000) {
  const r = await run('ip', args, timeoutMs);
  if (!r.ok) throw new Error(`ip ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

function ipSync(args) {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

function hardKill(pid) {
  try {
    process.kill(pid, 'SIGCONT');
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

/** Namespace names on the host (`ip netns list`). */
export function listNamespaces() {
  return ipSync(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

/** Kill what runs in namespace `ns` (by the PIDs `ip netns pids` lists) and delete it. Synchronous: usable in an exit hook. */
function destroyNamespaceSync(ns) {
  for (let round = 0; round < 3; round++) {
    const pids = ipSync(['netns', 'pids', ns]).split('\n').map(Number).filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid);
    if (pids.length === 0) break;
    pids.forEach(hardKill);
    const end = Date.now() + 2000;
    while (pids.some(alive) && Date.now() < end) execFileSync('sleep', ['0.05']);
  }
  ipSync(['netns', 'del', ns]);
}

/**
 * Remove namespaces left by dead runs of this module (`bl<pid>-*` whose pid is
 * not alive): the processes inside them first, then the namespaces. Returns
 * the names removed.
 */
export function sweepStale() {
  const removed = [];
  for (const ns of listNamespaces()) {
    const m = NS_PREFIX_RE.exec(ns);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || alive(pid)) continue;
    destroyNamespaceSync(ns);
    removed.push(ns);
  }
  return removed;
}

// The reaper: started once per process, reads "+ns"/"-ns" lines on stdin; when
// stdin closes (this process died, even by SIGKILL) it kills what runs in the
// namespaces still listed and deletes them.
const REAPER = `
const { execFileSync } = require('child_process');
const names = new Set(); let buf = '';
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => {});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\\n')) >= 0) { const l = buf.slice(0, i); buf = buf.slice(i + 1); if (l[0] === '+') names.add(l.slice(1)); else names.delete(l.slice(1)); } });
const ip = (a) => { try { return execFileSync('ip', a, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }); } catch { return ''; } };
process.stdin.on('end', () => {
  for (const ns of names) {
    for (const p of ip(['netns', 'pids', ns]).split('\\n').map(Number).filter((p) => p > 1)) { try { process.kill(p, 'SIGCONT'); process.kill(p, 'SIGKILL'); } catch {} }
  }
  setTimeout(() => { for (const ns of names) ip(['netns', 'del', ns]); process.exit(0); }, 300);
});
`;
let reaper;
function reaperTell(line) {
  if (!reaper || reaper.exitCode !== null) {
    reaper = spawn(process.execPath, ['-e', REAPER], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    reaper.on('error', () => {});
    reaper.stdin.on('error', () => {});
    reaper.unref();
    reaper.stdin.unref?.();
    for (const lab of labs) for (const ns of lab.created) reaper.stdin.write(`+${ns}\n`);
  }
  reaper.stdin.write(line + '\n');
}

const labs = new Set();
let hooksInstalled = false;
function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const lab of labs) lab.closeSync();
  });
  for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
    process.once(sig, () => {
      for (const lab of labs) lab.closeSync();
      process.exit(128 + n);
    });
  }
}

export class NetnsLab {
  /**
   * Make the bridge namespace, `nodes` node namespaces and one client
   * namespace, addresses `${subnet}.<i>/24` (nodes 1..n, client 100). Sweeps
   * dead runs' leftovers first.
   */
  static async create({ nodes = 3, subnet = '198.18.0', prefix = nsPrefix(), log = () => {} } = {}) {
    if (!/^(198\.1[89]\.\d{1,3}|192\.0\.2)$/.test(subnet)) throw new Error(`NetnsLab: subnet ${subnet} is not inside 198.18.0.0/15 or 192.0.2.0/24`);
    const swept = sweepStale();
    if (swept.length > 0) log(`netns: removed ${swept.length} namespace(s) left by dead runs: ${swept.join(' ')}`);
    installHooks();
    const lab = new NetnsLab(prefix, subnet);
    labs.add(lab);
    try {
      await lab.#build(nodes);
    } catch (e) {
      lab.closeSync();
      throw e;
    }
    return lab;
  }

  /** Namespaces this lab created (removed by close()). */
  created = [];
  /** @type {{ name: string, ns: string, ip: string, port: string, iface: string }[]} */
  nodes = [];
  client;
  bridgeNs;
  #procs = new Set();
  #closed = false;

  constructor(prefix, subnet) {
    this.prefix = prefix;
    this.subnet = subnet;
    this.bridgeNs = `${prefix}br`;
  }

  async #addNs(ns) {
    await ip(['netns', 'add', ns]);
    this.created.push(ns);
    reaperTell(`+${ns}`);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  }

  async #attach(ns, port, addr) {
    // The veth is created inside the bridge namespace with its peer moved
    // straight into the node's: it never exists on the host.
    await ip(['-n', this.bridgeNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await ip(['-n', this.bridgeNs, 'link', 'set', port, 'master', 'br0', 'up']);
    await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    await ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0']);
  }

  async #build(n) {
    await this.#addNs(this.bridgeNs);
    await ip(['-n', this.bridgeNs, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
    await ip(['-n', this.bridgeNs, 'link', 'set', 'br0', 'up']);
    for (let i = 1; i <= n; i++) {
      const node = { name: `n${i}`, ns: `${this.prefix}n${i}`, ip: `${this.subnet}.${i}`, port: `p${i}`, iface: 'eth0' };
      await this.#addNs(node.ns);
      await this.#attach(node.ns, node.port, node.ip);
      this.nodes.push(node);
    }
    this.client = { name: 'client', ns: `${this.prefix}cl`, ip: `${this.subnet}.100`, port: 'pc', iface: 'eth0' };
    await this.#addNs(this.client.ns);
    await this.#attach(this.client.ns, this.client.port, this.client.ip);
  }

  node(name) {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`NetnsLab: no node ${name}`);
    return n;
  }

  /**
   * Spawn `cmd args` inside namespace `ns` (`ip netns exec` execs it, so the
   * child's PID is the command's). Tracked: close() kills it.
   */
  spawn(ns, cmd, args, opts = {}) {
    if (this.#closed) throw new Error('NetnsLab is closed');
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    this.#procs.add(child);
    child.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.#procs.delete(child);
        resolve(code ?? signal);
      }),
    );
    child.on('error', () => {});
    return child;
  }

  /** Run `cmd args` inside `ns` to completion (bounded). */
  exec(ns, cmd, args, timeoutMs = 5000) {
    return run('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs);
  }

  /** Which of the node namespaces have `addr` on eth0 now (one `ip -n … addr show` per node, in parallel). */
  async holders(addr) {
    const res = await Promise.all(this.nodes.map((n) => run('ip', ['-n', n.ns, '-o', '-4', 'addr', 'show', 'dev', n.iface], 2000)));
    const out = [];
    res.forEach((r, i) => {
      if (r.stdout.split('\n').some((l) => l.includes(` ${addr}/`))) out.push(this.nodes[i].name);
    });
    return out;
  }

  /** Cut a node's cable: its port on the bridge goes down (the node sees NO-CARRIER). */
  linkDown(name) {
    return ip(['-n', this.bridgeNs, 'link', 'set', this.node(name).port, 'down']);
  }

  linkUp(name) {
    return ip(['-n', this.bridgeNs, 'link', 'set', this.node(name).port, 'up']);
  }

  /** A silent partition: the node's port leaves the bridge; both ends stay up with carrier, frames go nowhere. */
  partition(name) {
    return ip(['-n', this.bridgeNs, 'link', 'set', this.node(name).port, 'nomaster']);
  }

  heal(name) {
    return ip(['-n', this.bridgeNs, 'link', 'set', this.node(name).port, 'master', 'br0']);
  }

  /** Kill the processes this lab spawned, then everything inside its namespaces, then the namespaces. */
  async close() {
    if (this.#closed) return;
    const procs = [...this.#procs];
    for (const c of procs) if (c.pid !== undefined) hardKill(c.pid);
    await Promise.race([Promise.all(procs.map((c) => c.exited)), sleep(5000)]);
    this.closeSync();
  }

  closeSync() {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#procs) if (c.pid !== undefined) hardKill(c.pid);
    // Node namespaces first: the bridge's ports go with their veth peers.
    for (const ns of [...this.created].reverse()) {
      destroyNamespaceSync(ns);
      if (reaper && reaper.exitCode === null) reaper.stdin.write(`-${ns}\n`);
    }
    this.created = [];
    labs.delete(this);
  }
}

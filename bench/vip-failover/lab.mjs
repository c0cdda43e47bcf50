// The VIP lab: three control-plane "nodes" and a client in their own network
// namespaces on one bridge (bench/lib/netns.mjs), with real parts in each node:
//
//   etcd     a member of one 3-member etcd 3.4 cluster, clients over mTLS
//            (https://<node-ip>:2379, certificates from src/tls/certs.ts),
//            peers over plain http
//   backend  a TCP server on 127.0.0.1:7000 answering the node's name
//   ballast  `node dist/cli.js run`: listener 0.0.0.0:6443 → the backend, and
//            either its own VIP (mode "ballast": vip: in the config) or none,
//            with keepalived moving the address (mode "keepalived": VRRP,
//            advert_int 1, a track_script on ballast's /readyz)
//
// The client (bench/vip-failover/client.mjs, in the client namespace) asks
// VIP:6443 every 100 ms; a sampler asks, every 50 ms, which node namespaces
// have the VIP on eth0. runCase() injects one fault into the current holder
// and reports how long until another node answered the client and how many
// samples showed two holders. Used by test/integration/vip.test.ts and
// bench/vip-failover/run.mjs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetnsLab, run } from '../lib/netns.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(REPO, 'dist/cli.js');
const HERE = path.dirname(fileURLToPath(import.meta.url));

export const VIP = '198.18.0.10';
export const VIP_PORT = 6443;
const BACKEND_PORT = 7000;
const ADMIN_PORT = 9100;

/** kill: SIGKILL; stop: SIGSTOP (SIGCONT after the takeover); term: SIGTERM; linkdown: the node's bridge port down; partition: the port off the bridge, link up; unready: the node's backend killed. */
export const CASES = ['kill', 'stop', 'term', 'linkdown', 'partition', 'unready'];
export const CASE_LABELS = {
  kill: 'kill -9 of the holder',
  stop: 'SIGSTOP of the holder (SIGCONT 1 s after the takeover)',
  term: 'SIGTERM of the holder',
  linkdown: "holder's link down (bridge port down)",
  partition: "holder partitioned, link up (bridge port detached)",
  unready: "holder's backend killed (unready)",
};

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(fn, what, ms, every = 50) {
  const end = nowMs() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (nowMs() > end) throw new Error(`vip lab: ${what} not within ${ms} ms`);
    await sleep(every);
  }
}

function lines(stream, onLine) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/** Keep the last `max` lines of a child's stdout+stderr. */
function tail(child, max = 60) {
  const out = [];
  const push = (l) => {
    out.push(l);
    if (out.length > max) out.shift();
  };
  lines(child.stdout, push);
  lines(child.stderr, push);
  return out;
}

export class VipLab {
  /**
   * @param {{ mode?: 'ballast'|'keepalived', leaseTTL?: string, log?: (s: string) => void, nodeBin?: string }} opts
   */
  static async start(opts = {}) {
    const lab = new VipLab(opts);
    try {
      await lab.#start();
    } catch (e) {
      await lab.close();
      throw e;
    }
    return lab;
  }

  mode;
  /** @type {NetnsLab} */
  net;
  /** {t, holders[]} every 50 ms. */
  samples = [];
  /** client attempts {s, e, who?, err?} */
  answers = [];
  ballast = new Map();
  keepalived = new Map();
  backends = new Map();
  etcd = new Map();
  dir;
  shm;
  #sampling = false;
  #sampler;
  #client;
  #closed = false;

  constructor(opts) {
    this.mode = opts.mode ?? 'ballast';
    this.leaseTTL = opts.leaseTTL ?? '3s';
    this.log = opts.log ?? (() => {});
    this.nodeBin = opts.nodeBin ?? process.execPath;
  }

  async #start() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `ballast-vip-${process.pid}-`));
    this.shm = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `ballast-vip-${process.pid}-`));
    process.on('exit', this.#rmDirs);
    this.net = await NetnsLab.create({ log: this.log });
    await this.#pki();
    for (const n of this.net.nodes) this.#startEtcd(n);
    await Promise.all(this.net.nodes.map((n) => until(() => this.#etcdHealthy(n), `etcd ${n.name} healthy`, 30_000, 200)));
    await Promise.all(this.net.nodes.map((n) => this.startBackend(n.name)));
    this.#startSampler();
    this.#startClient();
    this.startedAt = nowMs();
    await Promise.all(this.net.nodes.map((n) => this.startBallast(n.name)));
    if (this.mode === 'keepalived') await Promise.all(this.net.nodes.map((n) => this.startKeepalived(n.name)));
  }

  #rmDirs = () => {
    for (const d of [this.dir, this.shm]) if (d) fs.rmSync(d, { recursive: true, force: true });
  };

  async #pki() {
    const { createCA, issueCert } = await import(path.join(REPO, 'dist/tls/certs.js'));
    const ca = await createCA({ cn: 'vip-lab-etcd-ca' });
    const ips = ['127.0.0.1', ...this.net.nodes.map((n) => n.ip)];
    const server = await issueCert(ca, { cn: 'etcd', ips, dns: ['localhost'], usage: ['server', 'client'] });
    const client = await issueCert(ca, { cn: 'ballast-etcd-client', usage: ['client'] });
    this.files = { ca: path.join(this.dir, 'ca.crt'), cert: path.join(this.dir, 'etcd.crt'), key: path.join(this.dir, 'etcd.key'), ccert: path.join(this.dir, 'client.crt'), ckey: path.join(this.dir, 'client.key') };
    fs.writeFileSync(this.files.ca, ca.cert);
    fs.writeFileSync(this.files.cert, server.cert);
    fs.writeFileSync(this.files.key, server.key, { mode: 0o600 });
    fs.writeFileSync(this.files.ccert, client.cert);
    fs.writeFileSync(this.files.ckey, client.key, { mode: 0o600 });
  }

  #startEtcd(n) {
    const cluster = this.net.nodes.map((m) => `${m.name}=http://${m.ip}:2380`).join(',');
    const log = path.join(this.dir, `etcd-${n.name}.log`);
    const args = [
      `--name=${n.name}`,
      `--data-dir=${path.join(this.shm, `etcd-${n.name}`)}`,
      `--listen-client-urls=https://${n.ip}:2379,https://127.0.0.1:2379`,
      `--advertise-client-urls=https://${n.ip}:2379`,
      `--listen-peer-urls=http://${n.ip}:2380`,
      `--initial-advertise-peer-urls=http://${n.ip}:2380`,
      `--initial-cluster=${cluster}`,
      `--initial-cluster-token=vip-lab-${process.pid}`,
      '--initial-cluster-state=new',
      `--cert-file=${this.files.cert}`,
      `--key-file=${this.files.key}`,
      `--trusted-ca-file=${this.files.ca}`,
      '--client-cert-auth=true',
      // etcd 3.5+ (what kubeadm runs) defaults to pre-vote; 3.4 does not, and
      // without it a healed member's higher term forces a leader election.
      '--pre-vote=true',
      '--logger=zap',
      `--log-outputs=${log}`,
    ];
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ETCD')));
    const child = this.net.spawn(n.ns, 'etcd', args, { env, stdio: ['ignore', 'ignore', 'ignore'] });
    this.etcd.set(n.name, { child, log });
  }

  async #etcdHealthy(n) {
    const r = await this.net.exec(n.ns, 'curl', ['-sf', '-m', '2', '--cacert', this.files.ca, '--cert', this.files.ccert, '--key', this.files.ckey, `https://${n.ip}:2379/health`], 4000);
    return r.ok && r.stdout.includes('"health":"true"');
  }

  ballastConfig(name) {
    const n = this.net.node(name);
    const vip =
      this.mode === 'ballast'
        ? `vip:\n  address: ${VIP}/24\n  interface: eth0\n  cluster: etcd\n  leaseTTL: ${this.leaseTTL}\n  requireReady: true\n  node: ${n.name}\n`
        : '';
    return `admin: { listen: 127.0.0.1:${ADMIN_PORT} }
log: { level: info }
drainTimeout: 1s
tls:
  etcd-client: { ca: ${this.files.ca}, cert: ${this.files.ccert}, key: ${this.files.ckey} }
listeners:
  - { name: api, listen: "0.0.0.0:${VIP_PORT}", cluster: api }
clusters:
  - name: api
    endpoints: ["127.0.0.1:${BACKEND_PORT}"]
    connectTimeout: 200ms
    health: { check: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }
    panic: refuse
  - name: etcd
    endpoints: [${this.net.nodes.map((m) => `"${m.ip}:2379"`).join(', ')}]
    tls: etcd-client
    health: { check: etcd, interval: 1s, timeout: 500ms }
${vip}`;
  }

  async startBallast(name) {
    const n = this.net.node(name);
    const cfg = path.join(this.dir, `ballast-${name}.yaml`);
    fs.writeFileSync(cfg, this.ballastConfig(name));
    const child = this.net.spawn(n.ns, this.nodeBin, [CLI, 'run', '--config', cfg]);
    const out = tail(child, 200);
    const b = { child, out, exited: child.exited };
    this.ballast.set(name, b);
    await until(() => out.some((l) => l.includes('ballast running')) || child.exitCode !== null, `ballast ${name} running`, 20_000);
    if (child.exitCode !== null) throw new Error(`ballast ${name} exited (${child.exitCode}):\n${out.join('\n')}`);
    return b;
  }

  async startBackend(name) {
    const n = this.net.node(name);
    const child = this.net.spawn(n.ns, this.nodeBin, [path.join(HERE, 'backend.mjs'), name, '127.0.0.1', String(BACKEND_PORT)]);
    const out = tail(child);
    this.backends.set(name, { child });
    await until(() => out.includes('listening') || child.exitCode !== null, `backend ${name} listening`, 10_000);
    if (child.exitCode !== null) throw new Error(`backend ${name} exited: ${out.join('\n')}`);
  }

  async startKeepalived(name) {
    const n = this.net.node(name);
    const i = this.net.nodes.indexOf(n);
    const check = path.join(this.dir, `ready-${name}.sh`);
    fs.writeFileSync(check, `#!/bin/sh\nexec curl -sf -m 1 -o /dev/null http://127.0.0.1:${ADMIN_PORT}/readyz\n`, { mode: 0o755 });
    const cfg = path.join(this.dir, `keepalived-${name}.conf`);
    fs.writeFileSync(
      cfg,
      `global_defs {
  router_id ${name}
  enable_script_security
  script_user root
}
vrrp_script ballast_ready {
  script "${check}"
  interval 1
  timeout 1
  fall 1
  rise 1
}
vrrp_instance vip {
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority ${150 - i * 10}
  advert_int 1
  virtual_ipaddress {
    ${VIP}/24 dev eth0
  }
  track_script {
    ballast_ready
  }
}
`,
    );
    const child = this.net.spawn(n.ns, 'keepalived', ['-n', '-l', '-P', '-f', cfg, '-p', path.join(this.dir, `ka-${name}.pid`), '-r', path.join(this.dir, `ka-vrrp-${name}.pid`)]);
    const out = tail(child, 100);
    this.keepalived.set(name, { child, out, exited: child.exited });
    await sleep(200);
    if (child.exitCode !== null) throw new Error(`keepalived ${name} exited: ${out.join('\n')}`);
  }

  /** keepalived's processes in a node's namespace (the parent and its VRRP child). */
  async keepalivedPids(name) {
    const r = await run('ip', ['netns', 'pids', this.net.node(name).ns]);
    return r.stdout
      .split('\n')
      .map(Number)
      .filter((p) => p > 1)
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'keepalived';
        } catch {
          return false;
        }
      });
  }

  #startSampler() {
    this.#sampling = true;
    this.#sampler = (async () => {
      let next = nowMs();
      while (this.#sampling) {
        const t = nowMs();
        const holders = await this.net.holders(VIP);
        this.samples.push({ t, holders });
        next += 50;
        const wait = next - nowMs();
        if (wait > 0) await sleep(wait);
        else next = nowMs();
      }
    })();
  }

  #startClient() {
    const child = this.net.spawn(this.net.client.ns, this.nodeBin, [path.join(HERE, 'client.mjs'), VIP, String(VIP_PORT), '100', '500']);
    lines(child.stdout, (l) => {
      try {
        this.answers.push(JSON.parse(l));
      } catch {
        // not ours
      }
    });
    child.stderr.resume();
    this.#client = child;
  }

  /** Samples since t that show more than one holder. */
  twoHolderSamples(from, to = Infinity) {
    return this.samples.filter((s) => s.t >= from && s.t <= to && s.holders.length > 1);
  }

  /**
   * Wait until the VIP has settled: the last `quietMs` of samples show the
   * same single holder and the client's last answers came from it. Returns
   * the holder's name.
   */
  async settle(boundMs = 20_000, quietMs = 1000) {
    return until(
      () => {
        const t = nowMs();
        const recent = this.samples.filter((s) => s.t >= t - quietMs);
        if (recent.length < quietMs / 100) return undefined;
        const h = recent[0].holders;
        if (h.length !== 1 || !recent.every((s) => s.holders.length === 1 && s.holders[0] === h[0])) return undefined;
        const last = this.answers.filter((a) => a.e >= t - 300);
        if (last.length === 0 || !last.every((a) => a.who === h[0])) return undefined;
        return h[0];
      },
      'one settled holder answering the client',
      boundMs,
    );
  }

  /** First answer by a node other than `old` that ended after t0. */
  firstOtherAnswer(old, t0) {
    return this.answers.find((a) => a.e > t0 && a.who !== undefined && a.who !== old);
  }

  // --- faults -----------------------------------------------------------------

  /** The process the fault is aimed at: ballast, or keepalived's processes in keepalived mode. */
  async #targets(name) {
    if (this.mode === 'keepalived') return this.keepalivedPids(name);
    const b = this.ballast.get(name);
    return b && b.child.exitCode === null ? [b.child.pid] : [];
  }

  async #signal(name, sig) {
    const pids = await this.#targets(name);
    if (pids.length === 0) throw new Error(`vip lab: nothing to signal on ${name}`);
    // keepalived: SIGTERM goes to the parent (it stops its VRRP child); kill/stop hit both.
    const which = sig === 'SIGTERM' && this.mode === 'keepalived' ? [this.keepalived.get(name).child.pid] : pids;
    for (const p of which) process.kill(p, sig);
  }

  async inject(kind, name) {
    switch (kind) {
      case 'kill':
        return this.#signal(name, 'SIGKILL');
      case 'stop':
        return this.#signal(name, 'SIGSTOP');
      case 'term':
        return this.#signal(name, 'SIGTERM');
      case 'linkdown':
        return this.net.linkDown(name);
      case 'partition':
        return this.net.partition(name);
      case 'unready': {
        const b = this.backends.get(name);
        process.kill(b.child.pid, 'SIGKILL');
        await b.child.exited;
        return;
      }
      default:
        throw new Error(`vip lab: unknown case ${kind}`);
    }
  }

  async restore(kind, name) {
    switch (kind) {
      case 'stop':
        return this.#signal(name, 'SIGCONT');
      case 'kill':
      case 'term':
        await this.#restart(name);
        return;
      case 'linkdown':
        return this.net.linkUp(name);
      case 'partition':
        return this.net.heal(name);
      case 'unready':
        return this.startBackend(name);
    }
  }

  async #restart(name) {
    const m = this.mode === 'keepalived' ? this.keepalived : this.ballast;
    const p = m.get(name);
    const exited = await Promise.race([p.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!exited) throw new Error(`vip lab: ${this.mode} on ${name} did not exit within 10 s`);
    // keepalived killed by -9 leaves its VRRP child and the address behind: clean them up.
    if (this.mode === 'keepalived') {
      for (const pid of await this.keepalivedPids(name)) process.kill(pid, 'SIGKILL');
      await sleep(100);
      await this.startKeepalived(name);
    } else await this.startBallast(name);
  }

  /** Remove a copy of the VIP a killed keepalived left on `name` (keepalived only; ballast never needs this). */
  async dropStale(name) {
    await run('ip', ['-n', this.net.node(name).ns, 'addr', 'del', `${VIP}/24`, 'dev', 'eth0']);
  }

  /**
   * One case: the current holder gets the fault; measures the time until
   * another node answers the client, and the samples with two holders from
   * the fault until `observeMs` later (restored after that, then settled).
   */
  async runCase(kind, { boundMs = 20_000, observeMs = 6000 } = {}) {
    let holder;
    if (this.mode === 'keepalived') {
      // keepalived may stay with two MASTERs after a healed split brain
      // (nopreempt): keep the one the client reaches and take the others' copies.
      holder = await this.settle(10_000).catch(() => undefined);
      if (!holder) {
        const h = await this.net.holders(VIP);
        const last = this.answers.filter((a) => a.who).at(-1)?.who;
        for (const n of h) if (n !== last) await this.dropStale(n);
        this.log(`vip lab: keepalived did not settle; removed the VIP from ${h.filter((n) => n !== last).join(', ') || 'nobody'}`);
      }
    }
    holder ??= await this.settle();
    const etcdLeader = await this.#holderIsEtcdLeader(holder);
    const t0 = nowMs();
    await this.inject(kind, holder);
    const other = await until(() => this.firstOtherAnswer(holder, t0), `another node answering after ${kind} of ${holder}`, boundMs).catch(() => undefined);
    if (kind === 'stop' && other) {
      await sleep(1000);
      await this.restore(kind, holder);
    }
    const end = t0 + Math.max(observeMs, other ? other.e - t0 + 2000 : 0);
    if (nowMs() < end) await sleep(end - nowMs());
    const two = this.twoHolderSamples(t0, end);
    const inWindow = this.samples.filter((s) => s.t >= t0 && s.t <= end);
    const noHolderMs = inWindow.filter((s) => s.holders.length === 0).length * 50;
    if (kind !== 'stop' || !other) await this.restore(kind, holder);
    let staleLeft = false;
    if (this.mode === 'keepalived') {
      // A killed keepalived leaves the address on its interface for good; a
      // healed split brain takes adverts to resolve. Whatever is left after
      // 3.5 s is removed by hand so it does not leak into the next case.
      await sleep(3500);
      const h = await this.net.holders(VIP);
      if (h.length > 1 && h.includes(holder)) {
        staleLeft = true;
        await this.dropStale(holder);
      }
    }
    return {
      kind,
      mode: this.mode,
      from: holder,
      to: other?.who,
      answerMs: other ? Math.round(other.e - t0) : undefined,
      twoHolderSamples: two.length,
      samples: inWindow.length,
      noHolderMs,
      staleLeft,
      etcdLeader,
      twoHolders: two.slice(0, 3).map((s) => `${Math.round(s.t - t0)}ms:${s.holders.join('+')}`),
    };
  }

  /** Whether the holder's etcd member is the raft leader (a partition of the leader needs an etcd election first). */
  async #holderIsEtcdLeader(name) {
    const n = this.net.node(name);
    const r = await this.net.exec(n.ns, 'curl', ['-sf', '-m', '2', '--cacert', this.files.ca, '--cert', this.files.ccert, '--key', this.files.ckey, '-X', 'POST', '-d', '{}', `https://${n.ip}:2379/v3/maintenance/status`], 4000);
    try {
      const j = JSON.parse(r.stdout);
      return j.header.member_id === j.leader;
    } catch {
      return undefined;
    }
  }

  /** Last lines of a node's ballast output (for failure messages). */
  ballastLog(name, n = 30) {
    return (this.ballast.get(name)?.out ?? []).slice(-n).join('\n');
  }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#sampling = false;
    await Promise.race([this.#sampler, sleep(3000)]);
    await this.net?.close();
    this.#rmDirs();
    process.off('exit', this.#rmDirs);
  }
}

// The chaos soak: a real 3-member TLS etcd (client certificates required),
// ballast in front of it as a child process (mTLS termination and
// origination, affinity by client identity, etcd health checks, member
// discovery, admin server), clients with distinct identities writing unique
// keys and reading continuously through ballast, and one fault per cycle:
//
//   kill     kill -9 of a member, restarted on the same ports and data dir
//   stop     SIGSTOP of a member for 3 s, then SIGCONT
//   isolate  a member cut off from its peers for 4 s (TCP relays, see relay.mjs), then healed
//   replace  a member removed (etcdctl member remove) and replaced by a new one on new ports
//   reload   ballast's server certificate rotated and its config rewritten, then SIGHUP
//   restart  ballast SIGTERMed (drain) and started again on the same ports
//
// The victim of a member fault is the member some client is on (clients take
// turns), so every member fault hits at least one client. Between faults the
// soak waits, bounded, until every member serves linearizable reads, ballast
// sees every member up, and every client has written again.
//
// At the end a checker reads every acknowledged key back from the members
// (lost: acked but missing or with another mod revision) and counts
// regressions: within one client's sequence of serializable read revisions, a
// read returning a lower revision than one the same client read earlier.
// Error window: per client, from the start of the first write that failed to
// the next acknowledged write, attributed to the fault of the cycle in which
// the first failure started.
//
// Only loopback; every wait is bounded; every process is started here and
// killed by PID.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { EtcdChaosCluster, freePorts, hexId } from './etcd.mjs';
import { killAll, runBounded, sampleProc, sleep, spawnTracked } from './procs.mjs';
import { SHIPPED_NODE_OPTIONS } from '../lib/targets.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(REPO, 'dist/cli.js');
export const FAULTS = ['kill', 'stop', 'isolate', 'replace', 'reload', 'restart'];
export const FAULT_LABELS = {
  kill: 'kill -9 member + restart',
  stop: 'SIGSTOP member 3 s',
  isolate: 'member isolated from peers 4 s',
  replace: 'member removed + replaced',
  reload: 'ballast SIGHUP (cert rotated)',
  restart: 'ballast SIGTERM + start',
};

// --- PKI --------------------------------------------------------------------------

async function makePki(dir, clients) {
  const { createCA, issueCert } = await import(path.join(REPO, 'dist/tls/certs.js'));
  const ca = await createCA({ cn: 'chaos-etcd-ca' });
  const certs = {
    'etcd-server': await issueCert(ca, { cn: 'etcd', ips: ['127.0.0.1'], dns: ['localhost'], usage: ['server', 'client'] }),
    'ballast-server': await issueCert(ca, { cn: 'ballast', ips: ['127.0.0.1'], dns: ['localhost'], usage: ['server'] }),
    'ballast-client': await issueCert(ca, { cn: 'ballast-etcd-client', usage: ['client'] }),
  };
  for (let i = 0; i < clients; i++) certs[`client-${i}`] = await issueCert(ca, { cn: `chaos-client-${i}`, o: ['system:masters'], usage: ['client'] });
  const files = { ca: path.join(dir, 'ca.crt') };
  fs.writeFileSync(files.ca, ca.cert, { mode: 0o600 });
  for (const [name, c] of Object.entries(certs)) {
    files[`${name}.crt`] = path.join(dir, `${name}.crt`);
    files[`${name}.key`] = path.join(dir, `${name}.key`);
    fs.writeFileSync(files[`${name}.crt`], c.cert, { mode: 0o600 });
    fs.writeFileSync(files[`${name}.key`], c.key, { mode: 0o600 });
  }
  return {
    ca,
    certs,
    files,
    /** Issue a new ballast server certificate and swap it in by rename (what cert-manager does). */
    async rotateServer() {
      const c = await issueCert(ca, { cn: 'ballast', ips: ['127.0.0.1'], dns: ['localhost'], usage: ['server'] });
      for (const [ext, text] of [['crt', c.cert], ['key', c.key]]) {
        const tmp = `${files[`ballast-server.${ext}`]}.tmp`;
        fs.writeFileSync(tmp, text, { mode: 0o600 });
        fs.renameSync(tmp, files[`ballast-server.${ext}`]);
      }
      certs['ballast-server'] = c;
      return new X509Certificate(c.cert).serialNumber;
    },
  };
}

// --- ballast as a child process ----------------------------------------------------

class BallastProc {
  constructor({ nodeBin, configFile, logFile, port, adminPort }) {
    Object.assign(this, { nodeBin, configFile, logFile, port, adminPort });
    this.child = undefined;
    this.starts = 0;
  }

  get pid() {
    return this.child?.pid;
  }

  async start(timeoutMs = 20_000) {
    this.child = spawnTracked(this.nodeBin, [...SHIPPED_NODE_OPTIONS.split(' '), CLI, 'run', '--config', this.configFile], { logFile: this.logFile });
    this.starts++;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitInfo) throw new Error(`ballast exited at start (${JSON.stringify(this.child.exitInfo)}); see ${this.logFile}`);
      const r = await this.get('/readyz').catch(() => undefined);
      if (r?.status === 200) return;
      await sleep(100);
    }
    throw new Error(`ballast not ready after ${timeoutMs}ms; see ${this.logFile}`);
  }

  async get(p, timeoutMs = 2000) {
    const r = await fetch(`http://127.0.0.1:${this.adminPort}${p}`, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: r.status, text: await r.text() };
  }

  async status() {
    return JSON.parse((await this.get('/status')).text);
  }

  async metrics() {
    return parseMetrics((await this.get('/metrics')).text);
  }

  hup() {
    process.kill(this.child.pid, 'SIGHUP');
  }

  /** SIGTERM and wait for the exit (SIGKILL after timeoutMs). */
  async terminate(timeoutMs = 15_000) {
    const c = this.child;
    if (!c || c.exitInfo) return c?.exitInfo;
    process.kill(c.pid, 'SIGTERM');
    const t = setTimeout(() => {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, timeoutMs);
    const info = await c.exited;
    clearTimeout(t);
    return info;
  }
}

/** Prometheus text -> [{ name, labels, value }]. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

export function metricSum(metrics, name, match = {}) {
  let n = 0;
  for (const m of metrics) if (m.name === name && Object.entries(match).every(([k, v]) => m.labels[k] === v)) n += m.value;
  return n;
}

// --- clients -----------------------------------------------------------------------

class ChaosClient {
  constructor({ index, port, pem, paceMs, cycle }) {
    this.index = index;
    this.prefix = `chaos/c${index}/`;
    this.paceMs = paceMs;
    this.cycle = cycle; // () => current cycle index
    this.acked = new Map(); // key -> revision
    this.writeFailures = 0;
    this.readFailures = 0;
    this.reads = 0;
    this.windows = []; // { cycle, startedAt, ms, failures }
    this.failingSince = 0;
    this.failingCycle = -1;
    this.failuresInWindow = 0;
    this.lastAckAt = 0;
    this.lastMember = '';
    this.maxRead = { rev: 0, member: '', at: 0 };
    this.regressions = []; // { cycle, at, rev, prevMax, member, prevMember }
    this.memberMoves = 0;
    this.lastReadMember = '';
    this.lastError = '';
    this.seq = 0;
    this.client = new Etcd3({
      hosts: `https://127.0.0.1:${port}`,
      credentials: { rootCertificate: pem.ca, certChain: pem.cert, privateKey: pem.key },
      dialTimeout: 1000,
      // Like kube-apiserver's grpc-go client: a deadline per call, no circuit
      // breaker; the loop retries with a new key after a failure.
      defaultCallOptions: () => ({ deadline: Date.now() + 1000 }),
      faultHandling: { host: () => noop, global: noop },
      grpcOptions: {
        'grpc.initial_reconnect_backoff_ms': 50,
        'grpc.min_reconnect_backoff_ms': 50,
        'grpc.max_reconnect_backoff_ms': 500,
        'grpc.ssl_target_name_override': 'localhost',
        'grpc.default_authority': 'localhost',
      },
    });
  }

  start() {
    this.running = true;
    this.loops = Promise.all([this.#writeLoop(), this.#readLoop()]);
  }

  async stop() {
    this.running = false;
    await this.loops;
    this.client.close();
  }

  async #writeLoop() {
    while (this.running) {
      const key = `${this.prefix}${String(this.seq).padStart(9, '0')}`;
      const startedAt = Date.now();
      try {
        const res = await this.client.put(key).value(`v${this.seq}`).exec();
        const now = Date.now();
        this.acked.set(key, Number(res.header.revision));
        this.lastMember = hexId(res.header.member_id);
        if (this.failingSince > 0) {
          this.windows.push({ cycle: this.failingCycle, startedAt: this.failingSince, ms: now - this.failingSince, failures: this.failuresInWindow });
          this.failingSince = 0;
          this.failuresInWindow = 0;
        }
        this.lastAckAt = now;
      } catch (err) {
        // Not acknowledged: it may or may not have been applied; both are fine.
        this.writeFailures++;
        this.failuresInWindow++;
        this.lastError = String(err?.message ?? err).split('\n')[0];
        if (this.failingSince === 0) {
          this.failingSince = startedAt;
          this.failingCycle = this.cycle();
        }
      }
      this.seq++;
      await sleep(this.paceMs);
    }
  }

  async #readLoop() {
    while (this.running) {
      try {
        // Serializable: answered by the member itself from what it has applied;
        // the read that goes back in time if a client is moved to a member behind.
        const res = await this.client.get('chaos/probe').serializable(true).exec();
        const rev = Number(res.header.revision);
        const member = hexId(res.header.member_id);
        this.reads++;
        if (this.lastReadMember !== '' && member !== this.lastReadMember) this.memberMoves++;
        this.lastReadMember = member;
        if (rev < this.maxRead.rev) {
          this.regressions.push({ cycle: this.cycle(), at: Date.now(), rev, prevMax: this.maxRead.rev, member, prevMember: this.maxRead.member, behindBy: this.maxRead.rev - rev });
        } else {
          this.maxRead = { rev, member, at: Date.now() };
        }
      } catch {
        this.readFailures++;
      }
      await sleep(this.paceMs);
    }
  }
}

// --- the soak --------------------------------------------------------------------

function ballastYaml({ port, adminPort, files, seeds, syncInterval }) {
  return `# written by bench/chaos/soak.mjs
admin: { listen: 127.0.0.1:${adminPort} }
log: { level: info }
drainTimeout: 2s
tls:
  guard:
    cert: ${files['ballast-server.crt']}
    key: ${files['ballast-server.key']}
    clientCA: ${files.ca}
    allow: [{ cn: "chaos-client-*" }]
  to-etcd:
    cert: ${files['ballast-client.crt']}
    key: ${files['ballast-client.key']}
    ca: ${files.ca}
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd, tls: guard, accessLog: true }
clusters:
  - name: etcd
    endpoints: [${seeds.join(', ')}]
    discovery: etcd-members
    syncInterval: ${syncInterval}
    discoveryHosts: ["127.0.0.1:*"]
    tls: to-etcd
    balance: affinity
    affinity: { key: client-identity }
    health: { check: etcd }
`;
}

const median = (xs) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};

/**
 * Run the soak. Returns the report object (see renderMarkdown in report.mjs).
 * cycles: faults to inject; faults: kinds taken in turn; clients: identities.
 */
export async function runSoak({
  cycles = 10,
  faults = FAULTS,
  clients = 4,
  log = () => {},
  nodeBin = process.execPath,
  dir,
  keepDir = false,
  paceMs = 20,
  recoveryTimeoutMs = 60_000,
} = {}) {
  for (const f of faults) if (!FAULTS.includes(f)) throw new Error(`unknown fault "${f}" (have ${FAULTS.join(', ')})`);
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p tsconfig.json)`);
  const started = Date.now();
  const work = fs.mkdtempSync(path.join(dir ?? os.tmpdir(), 'ballast-chaos-'));
  log(`work dir ${work}`);
  let etcd;
  const chaosClients = [];
  let cycle = -1;
  let success = false;
  try {
    const pki = await makePki(work, clients);
    etcd = new EtcdChaosCluster({ dir: work, tls: { ca: pki.files.ca, cert: pki.files['etcd-server.crt'], key: pki.files['etcd-server.key'] } });
    await etcd.start(3);
    log(`etcd up: ${etcd.clientUrls().join(' ')}`);
    const [port, adminPort] = await freePorts(2);
    const configFile = path.join(work, 'ballast.yaml');
    let syncInterval = '1s';
    const writeConfig = () => fs.writeFileSync(configFile, ballastYaml({ port, adminPort, files: pki.files, seeds: etcd.clientUrls(), syncInterval }));
    writeConfig();
    const ballast = new BallastProc({ nodeBin, configFile, logFile: path.join(work, 'ballast.log'), port, adminPort });
    await ballast.start();
    log(`ballast up: pid ${ballast.pid}, listener 127.0.0.1:${port}, admin 127.0.0.1:${adminPort}`);

    const caPem = Buffer.from(pki.ca.cert);
    for (let i = 0; i < clients; i++) {
      const c = new ChaosClient({ index: i, port, paceMs, cycle: () => cycle, pem: { ca: caPem, cert: Buffer.from(pki.certs[`client-${i}`].cert), key: Buffer.from(pki.certs[`client-${i}`].key) } });
      chaosClients.push(c);
      c.start();
    }
    await waitFor(() => chaosClients.every((c) => c.acked.size >= 10), 'every client writing', 30_000);

    const samples = [];
    const sample = (at) => {
      const s = sampleProc(ballast.pid);
      if (s) samples.push({ cycle: at, pid: ballast.pid, ...s });
    };
    sample(-1);

    const records = [];
    const pickVictim = async (n) => {
      const c = chaosClients[n % chaosClients.length];
      await etcd.memberIds().catch(() => undefined);
      let m = etcd.byId(c.lastMember);
      if (!m || m.removed || !m.running) m = etcd.active[n % etcd.active.length];
      const leader = await etcd.leader().catch(() => undefined);
      return { m, role: leader === undefined ? 'unknown' : leader === m ? 'leader' : 'follower', client: c.index };
    };

    for (cycle = 0; cycle < cycles; cycle++) {
      const kind = faults[cycle % faults.length];
      const rec = { cycle, kind, startedAt: Date.now() };
      try {
        switch (kind) {
          case 'kill': {
            const v = await pickVictim(cycle);
            Object.assign(rec, { victim: v.m.name, role: v.role, clientOfVictim: v.client });
            await etcd.kill(v.m);
            await sleep(2000);
            await etcd.restart(v.m);
            break;
          }
          case 'stop': {
            const v = await pickVictim(cycle);
            Object.assign(rec, { victim: v.m.name, role: v.role, clientOfVictim: v.client });
            etcd.stop(v.m);
            await sleep(3000);
            etcd.cont(v.m);
            await etcd.waitHealthy(v.m, 20_000);
            break;
          }
          case 'isolate': {
            const v = await pickVictim(cycle);
            Object.assign(rec, { victim: v.m.name, role: v.role, clientOfVictim: v.client });
            etcd.isolate(v.m);
            await sleep(4000);
            await etcd.heal(v.m);
            break;
          }
          case 'replace': {
            const v = await pickVictim(cycle);
            Object.assign(rec, { victim: v.m.name, role: v.role, clientOfVictim: v.client });
            const fresh = await etcd.replace(v.m);
            rec.replacement = fresh.name;
            break;
          }
          case 'reload': {
            const before = await ballast.metrics();
            const okBefore = metricSum(before, 'ballast_config_reloads_total', { result: 'ok' });
            const failedBefore = metricSum(before, 'ballast_config_reloads_total', { result: 'failed' });
            rec.serial = await pki.rotateServer();
            syncInterval = syncInterval === '1s' ? '2s' : '1s';
            writeConfig();
            ballast.hup();
            await waitFor(async () => metricSum(await ballast.metrics(), 'ballast_config_reloads_total', { result: 'ok' }) > okBefore, 'reload counted ok', 10_000);
            // The certificate in use must be the new one.
            rec.servedSerial = await servedSerial(port, pki);
            const after = await ballast.metrics();
            rec.reloadsFailed = metricSum(after, 'ballast_config_reloads_total', { result: 'failed' }) - failedBefore;
            if (rec.servedSerial !== rec.serial) rec.problem = `after the reload ballast still serves certificate ${rec.servedSerial}, not ${rec.serial}`;
            if (rec.reloadsFailed > 0) rec.problem = `${rec.reloadsFailed} reload(s) failed`;
            break;
          }
          case 'restart': {
            const t0 = Date.now();
            const info = await ballast.terminate(15_000);
            rec.exit = info;
            rec.drainMs = Date.now() - t0;
            if (info?.code !== 0) rec.problem = `ballast exited with ${JSON.stringify(info)} on SIGTERM`;
            writeConfig(); // seeds: the members as they are now
            await ballast.start();
            rec.downMs = Date.now() - t0;
            rec.pid = ballast.pid;
            break;
          }
        }
      } catch (err) {
        rec.error = err.message;
      }
      rec.faultEndedAt = Date.now();
      // Recovery: members serve linearizable reads, ballast sees them all up, every client writes again.
      try {
        await etcd.waitAllHealthy(recoveryTimeoutMs);
        await waitFor(
          async () => {
            const st = await ballast.status();
            const eps = st.clusters[0].endpoints.filter((e) => e.state !== 'draining');
            const want = new Set(etcd.clientUrls().map((u) => u.replace('https://', '')));
            return eps.length === want.size && eps.every((e) => want.has(e.id) && e.state === 'up');
          },
          'ballast sees every member up',
          recoveryTimeoutMs,
        );
        await waitFor(() => chaosClients.every((c) => c.lastAckAt > rec.faultEndedAt && c.failingSince === 0), 'every client writing again', recoveryTimeoutMs);
      } catch (err) {
        rec.recoveryTimeout = err.message;
      }
      rec.recoveredAt = Date.now();
      rec.ms = rec.recoveredAt - rec.startedAt;
      sample(cycle);
      records.push(rec);
      const w = chaosClients.flatMap((c) => c.windows.filter((x) => x.cycle === cycle).map((x) => x.ms));
      const s = samples[samples.length - 1];
      log(
        `cycle ${String(cycle + 1).padStart(3)}/${cycles} ${kind.padEnd(7)} ${rec.victim ? `${rec.victim} (${rec.role})` : ''} ` +
          `windows [${w.join(', ')}] ms, cycle ${(rec.ms / 1000).toFixed(1)} s, ballast rss ${Math.round((s?.rssKiB ?? 0) / 1024)} MiB fds ${s?.fds ?? '?'}` +
          `${rec.error ? ` ERROR ${rec.error}` : ''}${rec.recoveryTimeout ? ` RECOVERY TIMEOUT ${rec.recoveryTimeout}` : ''}${rec.problem ? ` PROBLEM ${rec.problem}` : ''}`,
      );
    }
    cycle = cycles; // failures from here on are not any fault's

    // --- check --------------------------------------------------------------
    await sleep(500);
    for (const c of chaosClients) await c.stop();
    const finalMetrics = await ballast.metrics().catch(() => []);
    const finalStatus = await ballast.status().catch(() => undefined);
    const exit = await ballast.terminate(15_000);
    const check = await checkAcked(etcd, pki, chaosClients);

    for (const r of records) {
      const ws = chaosClients.flatMap((c) => c.windows.filter((x) => x.cycle === r.cycle).map((x) => ({ client: c.index, offsetMs: x.startedAt - r.startedAt, ms: x.ms, failures: x.failures })));
      r.windows = ws.map((x) => x.ms);
      r.windowDetails = ws;
    }
    const byKind = {};
    for (const kind of faults) {
      const cyclesOf = records.filter((r) => r.kind === kind);
      const windows = [];
      let failedWrites = 0;
      for (const r of cyclesOf) {
        for (const c of chaosClients) {
          const ws = c.windows.filter((x) => x.cycle === r.cycle);
          if (ws.length === 0) continue;
          windows.push({ cycle: r.cycle, client: c.index, ms: Math.max(...ws.map((x) => x.ms)), totalMs: ws.reduce((n, x) => n + x.ms, 0), count: ws.length });
          failedWrites += ws.reduce((n, x) => n + x.failures, 0);
        }
      }
      const ms = windows.map((w) => w.ms);
      byKind[kind] = {
        label: FAULT_LABELS[kind],
        count: cyclesOf.length,
        clientFaults: cyclesOf.length * chaosClients.length,
        affected: windows.length,
        medianMs: median(ms),
        worstMs: ms.length ? Math.max(...ms) : 0,
        failedWrites,
        byRole: Object.fromEntries(
          ['leader', 'follower']
            .map((role) => {
              const cs = new Set(cyclesOf.filter((r) => r.role === role).map((r) => r.cycle));
              const rm = windows.filter((w) => cs.has(w.cycle)).map((w) => w.ms);
              return [role, { count: cs.size, medianMs: median(rm), worstMs: rm.length ? Math.max(...rm) : 0 }];
            })
            .filter(([, v]) => v.count > 0),
        ),
        meanCycleMs: cyclesOf.length ? Math.round(cyclesOf.reduce((n, r) => n + r.ms, 0) / cyclesOf.length) : 0,
      };
    }
    const rssSeries = samples.map((s) => s.rssKiB);
    const fdSeries = samples.map((s) => s.fds);
    // Growth is judged within one ballast process: a restart resets both.
    const lastPid = samples[samples.length - 1]?.pid;
    const longest = longestRun(samples);
    const logErrors = scanLog(path.join(work, 'ballast.log'));
    attachEvents(records, path.join(work, 'ballast.log'));
    const report = {
      date: new Date().toISOString(),
      versions: await versions(nodeBin),
      settings: { cycles, faults, clients, paceMs, recoveryTimeoutMs, cpus: os.availableParallelism(), etcd: `3 members, --pre-vote=${etcd.preVote}, heartbeat ${etcd.heartbeatMs} ms, election timeout ${etcd.electionMs} ms, client certs required, peers through TCP relays`, ballast: 'mTLS termination (allow CN chaos-client-*) + origination, affinity by client identity, check: etcd (defaults), discovery: etcd-members, drainTimeout 2s' },
      durationMs: Date.now() - started,
      perCycleMs: Math.round(records.reduce((n, r) => n + r.ms, 0) / Math.max(1, records.length)),
      byKind,
      cycles: records,
      totals: {
        ackedWrites: check.acked,
        lost: check.lost.length,
        lostKeys: check.lost.slice(0, 20),
        revisionMismatches: check.mismatched.length,
        mismatchedKeys: check.mismatched.slice(0, 20),
        reads: chaosClients.reduce((n, c) => n + c.reads, 0),
        regressions: chaosClients.reduce((n, c) => n + c.regressions.length, 0),
        // One line per (client, cycle, member, revision read): how many reads it lasted.
        regressionDetails: dedupeRegressions(chaosClients, records).slice(0, 30),
        regressionEvents: new Set(chaosClients.flatMap((c) => c.regressions.map((r) => `${c.index}/${r.cycle}`))).size,
        writeFailures: chaosClients.reduce((n, c) => n + c.writeFailures, 0),
        readFailures: chaosClients.reduce((n, c) => n + c.readFailures, 0),
        memberMoves: chaosClients.reduce((n, c) => n + c.memberMoves, 0),
        faultErrors: records.filter((r) => r.error).length,
        recoveryTimeouts: records.filter((r) => r.recoveryTimeout).length,
        problems: records.filter((r) => r.problem).map((r) => `cycle ${r.cycle + 1} ${r.kind}: ${r.problem}`),
      },
      ballast: {
        samples,
        rssKiB: { first: rssSeries[0], last: rssSeries[rssSeries.length - 1], max: Math.max(...rssSeries) },
        fds: { first: fdSeries[0], last: fdSeries[fdSeries.length - 1], max: Math.max(...fdSeries) },
        longestProcess: longest,
        lastPid,
        starts: ballast.starts,
        finalExit: exit,
        metrics: summarizeMetrics(finalMetrics),
        endpoints: finalStatus?.clusters?.[0]?.endpoints?.map((e) => `${e.id} ${e.state}`) ?? [],
        logErrors,
      },
      clients: chaosClients.map((c) => ({ index: c.index, acked: c.acked.size, writeFailures: c.writeFailures, readFailures: c.readFailures, reads: c.reads, regressions: c.regressions.length, memberMoves: c.memberMoves, windows: c.windows.length })),
      workDir: keepDir ? work : undefined,
    };
    success = true;
    return report;
  } finally {
    for (const c of chaosClients) if (c.running) await c.stop().catch(() => undefined);
    await etcd?.close().catch(() => undefined);
    await killAll();
    if (!keepDir && success) fs.rmSync(work, { recursive: true, force: true });
    else log(`work dir kept: ${work}`);
  }
}

function dedupeRegressions(clients, records) {
  const out = new Map();
  for (const c of clients) {
    for (const r of c.regressions) {
      const k = `${c.index}/${r.cycle}/${r.member}/${r.rev}`;
      const x = out.get(k);
      if (x) {
        x.reads++;
        x.lastAt = r.at;
      } else out.set(k, { client: c.index, kind: records[r.cycle]?.kind ?? (r.cycle < 0 ? 'warm-up' : 'after'), offsetMs: records[r.cycle] ? r.at - records[r.cycle].startedAt : undefined, reads: 1, firstAt: r.at, lastAt: r.at, ...r });
    }
  }
  return [...out.values()].map(({ firstAt, lastAt, at, ...x }) => ({ ...x, lastedMs: lastAt - firstAt }));
}

/** The longest stretch of samples from one ballast process: its RSS and fd growth. */
function longestRun(samples) {
  let best = [];
  let cur = [];
  for (const s of samples) {
    if (cur.length > 0 && cur[0].pid !== s.pid) cur = [];
    cur.push(s);
    if (cur.length > best.length) best = [...cur];
  }
  if (best.length === 0) return undefined;
  return {
    pid: best[0].pid,
    samples: best.length,
    fromCycle: best[0].cycle + 1,
    toCycle: best[best.length - 1].cycle + 1,
    rssKiB: { first: best[0].rssKiB, last: best[best.length - 1].rssKiB, max: Math.max(...best.map((s) => s.rssKiB)) },
    fds: { first: best[0].fds, last: best[best.length - 1].fds, max: Math.max(...best.map((s) => s.fds)) },
  };
}

/** ballast's own account of each cycle: endpoint state changes, closes, membership, reloads (offsets from the cycle start). */
function attachEvents(records, file) {
  let lines = [];
  try {
    lines = fs.readFileSync(file, 'utf8').split('\n');
  } catch {
    return;
  }
  const events = [];
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    let j;
    try {
      j = JSON.parse(line);
    } catch {
      continue;
    }
    const msg = String(j.msg ?? '');
    if (!/ -> |closed \d+ connections|membership changed|panic mode|draining|reload|started|stopped|keeping its connections/.test(msg)) continue;
    events.push({ at: Date.parse(j.time), msg: msg.slice(0, 140) });
  }
  for (const r of records) r.events = events.filter((e) => e.at >= r.startedAt - 50 && e.at <= r.recoveredAt).map((e) => `+${e.at - r.startedAt}ms ${e.msg}`);
}

function scanLog(file) {
  const counts = new Map();
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  for (const line of text.split('\n')) {
    if (!line.includes('"level":"error"') && !line.includes('"level":"fatal"')) continue;
    let msg = line;
    try {
      msg = JSON.parse(line).msg;
    } catch {
      // not JSON
    }
    msg = String(msg).replace(/\d+/g, 'N').slice(0, 160);
    counts.set(msg, (counts.get(msg) ?? 0) + 1);
  }
  return [...counts].map(([msg, n]) => ({ msg, n }));
}

function summarizeMetrics(ms) {
  const pick = (name) => ms.filter((m) => m.name === name).map((m) => ({ ...m.labels, value: m.value }));
  return {
    listener: pick('ballast_listener_connections_total'),
    tlsRefusals: pick('ballast_tls_handshake_failures_total'),
    affinityMoves: pick('ballast_affinity_moves_total'),
    affinityBehind: metricSum(ms, 'ballast_affinity_behind_moves_total'),
    configReloads: pick('ballast_config_reloads_total'),
    tlsReloads: pick('ballast_tls_reloads_total'),
    upstreamFailures: pick('ballast_upstream_failures_total').filter((x) => x.value > 0),
    discoverySyncs: pick('ballast_discovery_syncs_total'),
  };
}

/** The serial of the certificate ballast presents now (a fresh handshake). */
async function servedSerial(port, pki) {
  const tls = await import('node:tls');
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: pki.ca.cert, cert: pki.certs['client-0'].cert, key: pki.certs['client-0'].key, ALPNProtocols: ['h2'] });
    const t = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, 3000);
    s.once('secureConnect', () => {
      clearTimeout(t);
      const serial = s.getPeerX509Certificate()?.serialNumber;
      s.destroy();
      resolve(serial);
    });
    s.once('error', (e) => {
      clearTimeout(t);
      resolve(`error: ${e.message}`);
    });
  });
}

/** Read every acknowledged key back from the members, paging through each client's prefix. */
async function checkAcked(etcd, pki, clients) {
  const checker = new Etcd3({
    hosts: etcd.clientUrls(),
    credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs['etcd-server'].cert), privateKey: Buffer.from(pki.certs['etcd-server'].key) },
    defaultCallOptions: () => ({ deadline: Date.now() + 10_000 }),
    grpcOptions: { 'grpc.ssl_target_name_override': 'localhost', 'grpc.default_authority': 'localhost' },
  });
  const lost = [];
  const mismatched = [];
  let acked = 0;
  try {
    for (const c of clients) {
      const present = new Map();
      const end = c.prefix.slice(0, -1) + String.fromCharCode(c.prefix.charCodeAt(c.prefix.length - 1) + 1);
      let start = c.prefix;
      for (let page = 0; page < 10_000; page++) {
        const res = await checker.getAll().inRange({ start, end }).sort('Key', 'Ascend').limit(5000).exec();
        for (const kv of res.kvs) present.set(kv.key.toString(), Number(kv.mod_revision));
        if (!res.more || res.kvs.length === 0) break;
        start = `${res.kvs[res.kvs.length - 1].key.toString()}\0`;
      }
      for (const [key, rev] of c.acked) {
        acked++;
        const got = present.get(key);
        if (got === undefined) lost.push(key);
        else if (got !== rev) mismatched.push(`${key}: acked at ${rev}, stored at ${got}`);
      }
    }
  } finally {
    checker.close();
  }
  return { acked, lost, mismatched };
}

async function versions(nodeBin) {
  const etcdV = await runBounded(process.env.BALLAST_ETCD_BIN ?? 'etcd', ['--version'], { timeoutMs: 5000 });
  const ballastV = await runBounded(nodeBin, [CLI, '--version'], { timeoutMs: 10_000 });
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules/etcd3/package.json'), 'utf8'));
  let commit = '';
  const g = await runBounded('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { timeoutMs: 5000 });
  if (g.code === 0) commit = g.stdout.trim();
  const dirty = await runBounded('git', ['-C', REPO, 'status', '--porcelain', 'src'], { timeoutMs: 5000 });
  return {
    soakNode: process.version,
    ballast: ballastV.stdout.trim(),
    etcd: etcdV.stdout.split('\n')[0]?.trim() ?? '?',
    etcd3Client: pkg.version,
    commit: commit + (dirty.code === 0 && dirty.stdout.trim() ? ' (src modified)' : ''),
    kernel: os.release(),
  };
}

async function waitFor(fn, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`not true after ${timeoutMs}ms: ${what}${last ? ` (last error: ${last.message})` : ''}`);
    await sleep(100);
  }
}

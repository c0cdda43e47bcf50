#!/usr/bin/env node
// Backups, measured: how long a restore from a ~100 MB snapshot takes (RTO of
// one member), and what taking a snapshot costs the traffic ballast proxies.
//
//   npm run build && node bench/backup-rto.mjs            # ~100 MB, 3 members (about 1-2 minutes)
//   node bench/backup-rto.mjs --mb 50 --members 1 --load-seconds 4
//
// 1. start an etcd cluster on loopback (free ports, temp dir), fill it with
//    ~N MB of 100 KB values
// 2. start ballast in this process (dist/ballast.js: listener -> the cluster,
//    etcd health checks), as `ballast run` would
// 3. one snapshot with nothing else running (dist/backup/snapshotter.js,
//    from: follower): its duration and size
// 4. a small-put loop (a child process, etcd3, C puts in flight, 100-byte
//    values) through ballast: once alone, once with a snapshot started in the
//    ballast process 1 s into the loop; ops/s and latency inside the
//    snapshot's window vs the baseline, and ballast's event-loop delay
// 5. the restore drill on the snapshot (dist/backup/restore-drill.js):
//    restore_seconds (snapshot restore -> restored etcd serving reads) and the
//    whole drill (hash, etcdctl status, our key scan, restore, start, read)
//
// Everything is on loopback; every child is tracked by PID and killed on
// exit, Ctrl-C, or the 170 s watchdog.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, rmSync, closeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { freePort, killAllSync, spawnTracked, stopChild } from './lib/proc.mjs';

const ROOT = path.dirname(path.dirname(new URL(import.meta.url).pathname));
const DIST = path.join(ROOT, 'dist');

const { values: args } = parseArgs({
  options: {
    mb: { type: 'string', default: '100' },
    members: { type: 'string', default: '3' },
    'load-seconds': { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '16' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  process.stdout.write('usage: node bench/backup-rto.mjs [--mb 100] [--members 3] [--load-seconds 5] [--concurrency 16]\n');
  process.exit(0);
}
const MB = Number(args.mb);
const MEMBERS = Number(args.members);
const LOAD_S = Number(args['load-seconds']);
const CONC = Number(args.concurrency);

if (!existsSync(path.join(DIST, 'backup', 'snapshotter.js'))) {
  process.stderr.write('dist/ is missing or stale: run `npm run build` first\n');
  process.exit(2);
}
const { Etcd3 } = await import('etcd3');
const { Ballast } = await import(path.join(DIST, 'ballast.js'));
const { parseConfig } = await import(path.join(DIST, 'config', 'load.js'));
const { createLogger } = await import(path.join(DIST, 'log.js'));
const { Snapshotter } = await import(path.join(DIST, 'backup', 'snapshotter.js'));
const { restoreDrill } = await import(path.join(DIST, 'backup', 'restore-drill.js'));

const work = mkdtempSync(path.join(os.tmpdir(), 'ballast-bench-backup-'));
let ballast;
const cleanup = () => {
  killAllSync();
  try {
    rmSync(work, { recursive: true, force: true });
  } catch {}
};
process.on('exit', cleanup);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(130));
const watchdog = setTimeout(() => {
  process.stderr.write('backup-rto: watchdog: over 170 s, giving up\n');
  process.exit(1);
}, 170_000);
watchdog.unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (m) => process.stderr.write(`# ${m}\n`);

// --- 1. etcd ------------------------------------------------------------------

async function startEtcd(n) {
  const members = [];
  for (let i = 0; i < n; i++) members.push({ name: `m${i}`, client: await freePort(), peer: await freePort() });
  const initial = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
  for (const m of members) {
    const logFile = path.join(work, `${m.name}.log`);
    m.child = spawnTracked('etcd', [
      `--name=${m.name}`,
      `--data-dir=${path.join(work, m.name)}`,
      `--listen-client-urls=http://127.0.0.1:${m.client}`,
      `--advertise-client-urls=http://127.0.0.1:${m.client}`,
      `--listen-peer-urls=http://127.0.0.1:${m.peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${m.peer}`,
      `--initial-cluster=${initial}`,
      '--initial-cluster-state=new',
      '--logger=zap',
      `--log-outputs=${logFile}`,
    ], { name: m.name });
  }
  const deadline = Date.now() + 30_000;
  for (const m of members) {
    for (;;) {
      if (m.child.exitInfo) throw new Error(`${m.name} exited: ${m.child.errTail}`);
      const ok = await fetch(`http://127.0.0.1:${m.client}/health`).then((r) => r.text()).catch(() => '');
      if (ok.includes('"true"')) break;
      if (Date.now() > deadline) throw new Error(`${m.name} not healthy after 30 s`);
      await sleep(100);
    }
  }
  return members;
}

async function fill(urls, mb) {
  const client = new Etcd3({ hosts: urls });
  const value = Buffer.alloc(100_000, 'v');
  const n = Math.round(mb * 10);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await client.put(`/bench/big/${String(i).padStart(6, '0')}`).value(value);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  client.close();
  return n;
}

// --- 4. the put loop, in its own process ----------------------------------------

const LOADER = `
const { Etcd3 } = await import('etcd3');
const [port, seconds, conc] = process.argv.slice(-3).map(Number);
const c = new Etcd3({ hosts: 'http://127.0.0.1:' + port });
const value = 'x'.repeat(100);
await c.put('/bench/load/warm').value(value);
const ops = [];
const end = Date.now() + seconds * 1000;
let i = 0;
await Promise.all(Array.from({ length: conc }, async () => {
  while (Date.now() < end) {
    const t = performance.now();
    await c.put('/bench/load/' + (i++ % 1000)).value(value);
    ops.push([Date.now(), +(performance.now() - t).toFixed(3)]);
  }
}));
c.close();
// A pipe write is asynchronous: exit only once it is flushed, or the parent
// reads a truncated array.
process.stdout.write(JSON.stringify(ops) + '\\n', () => process.exit(0));
`;

function runLoader(port, seconds) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', LOADER, '--', String(port), String(seconds), String(CONC)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 20) * 1000);
    // 'close', not 'exit': 'exit' can come before the last of stdout is read.
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`loader exited ${code}: ${err.slice(-500)}`));
      resolve(JSON.parse(out));
    });
  });
}

function windowStats(ops, from, to) {
  const inside = ops.filter(([at]) => at >= from && at <= to);
  const lat = inside.map(([, l]) => l).sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN);
  return { ops: inside.length, seconds: (to - from) / 1000, opsPerSec: inside.length / ((to - from) / 1000), p50: q(0.5), p99: q(0.99), max: lat[lat.length - 1] ?? NaN };
}

// --- run ----------------------------------------------------------------------------

const t0 = Date.now();
log(`starting ${MEMBERS} etcd member(s) in ${work}`);
const members = await startEtcd(MEMBERS);
const urls = members.map((m) => `http://127.0.0.1:${m.client}`);
const tFill = Date.now();
const values = await fill(urls, MB);
const fillSeconds = (Date.now() - tFill) / 1000;
log(`filled ${values} x 100 KB in ${fillSeconds.toFixed(1)} s`);

const port = await freePort();
const config = parseConfig(`
admin: { enabled: false }
log: { level: warn }
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [${members.map((m) => `127.0.0.1:${m.client}`).join(', ')}]
    health: { check: etcd }
`);
const blog = createLogger('warn', 2);
ballast = new Ballast(config, blog);
await ballast.start();
const cluster = ballast.clusters.get('etcd');
for (const deadline = Date.now() + 15_000; !cluster.endpoints.every((e) => e.state === 'up'); await sleep(100)) {
  if (Date.now() > deadline) throw new Error('members not up in ballast');
}

const snapDir = path.join(work, 'backups');
const snapshotter = new Snapshotter({ cluster: 'etcd', dir: snapDir, keep: 10, from: MEMBERS > 1 ? 'follower' : 'any', timeoutMs: 120_000, members: () => cluster.endpoints, tls: () => undefined, log: blog });

// 3. an unloaded snapshot
const idle = await snapshotter.take();
log(`idle snapshot: ${idle.name} ${(idle.size / 1e6).toFixed(1)} MB in ${(idle.durationMs / 1000).toFixed(2)} s from ${idle.member} (${idle.role})`);

// 4a. baseline
const eld = monitorEventLoopDelay({ resolution: 5 });
const loadSeconds = Math.max(LOAD_S, Math.ceil(idle.durationMs / 1000) * 2 + 2);
eld.enable();
const base = await runLoader(port, loadSeconds);
eld.disable();
const baseEld = { p99: eld.percentile(99) / 1e6, max: eld.max / 1e6 };
eld.reset();
// Ignore the first and last 0.5 s (connect, ramp-down).
const baseFrom = base[0][0] + 500;
const baseTo = base[base.length - 1][0] - 500;
const baseline = windowStats(base, baseFrom, baseTo);

// 4b. with a snapshot starting 1 s into the loop
const loaded = runLoader(port, loadSeconds);
await sleep(1_000);
eld.enable();
const s0 = Date.now();
const during = await snapshotter.take();
const s1 = Date.now();
eld.disable();
const snapEld = { p99: eld.percentile(99) / 1e6, max: eld.max / 1e6 };
eld.reset();
const withSnap = await loaded;
const inSnap = windowStats(withSnap, s0, s1);
log(`loaded snapshot: ${(during.durationMs / 1000).toFixed(2)} s`);

// 4c. control: the same load while etcdctl (another process) snapshots the same member.
// If puts drop as much here, the cost is etcd's and the disk's, not ballast's event loop.
const ctlLoad = runLoader(port, loadSeconds);
await sleep(1_000);
eld.reset();
eld.enable();
const c0 = Date.now();
const ctl = spawnTracked('etcdctl', [`--endpoints=http://${during.member}`, 'snapshot', 'save', path.join(work, 'etcdctl.db')], { name: 'etcdctl', env: { ...process.env, ETCDCTL_API: '3' } });
const ctlExit = await ctl.exited;
const c1 = Date.now();
eld.disable();
const ctlEld = { p99: eld.percentile(99) / 1e6, max: eld.max / 1e6 };
if (ctlExit.code !== 0) throw new Error(`etcdctl snapshot save failed: ${ctl.errTail}`);
const withCtl = await ctlLoad;
const inCtl = windowStats(withCtl, c0, c1);

await ballast.stop();
ballast = undefined;

// 5. restore drill
const drill = await restoreDrill(during.file, { sample: 10 });
if (drill.verdict !== 'ok') throw new Error(`drill failed: ${drill.reason}: ${drill.detail}`);
let cliSeconds = '-';
{
  const t = Date.now();
  const cli = spawnTracked(process.execPath, [path.join(DIST, 'cli.js'), 'restore-drill', '--snapshot', during.file], { name: 'cli-drill' });
  const info = await cli.exited;
  if (info.code === 0) cliSeconds = ((Date.now() - t) / 1000).toFixed(2);
  else log(`CLI restore-drill not available or failed (exit ${info.code}): ${cli.errTail.trim().split('\n')[0] ?? ''}`);
}

for (const m of members) await stopChild(m.child);

const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const rows = [
  ['database', `${(during.status.totalSize / 1e6).toFixed(1)} MB, ${during.keys} keys, ${MEMBERS} member(s), filled in ${f(fillSeconds, 1)} s`],
  ['snapshot, idle', `${f(idle.durationMs / 1000)} s from a ${idle.role}: stream+fsync ${f(idle.phases.streamMs / 1000)} s, etcdctl status ${f(idle.phases.etcdctlMs / 1000)} s, key scan ${f(idle.phases.scanMs / 1000)} s`],
  ['snapshot, under load', `${f(during.durationMs / 1000)} s: stream+fsync ${f(during.phases.streamMs / 1000)} s, etcdctl status ${f(during.phases.etcdctlMs / 1000)} s, key scan ${f(during.phases.scanMs / 1000)} s`],
  ['etcdctl snapshot save, under load (control)', `${f((c1 - c0) / 1000)} s`],
  ['restore drill: restore_seconds', `${f(drill.restoreSeconds)} s (etcdctl snapshot restore -> restored etcd serves the count)`],
  ['restore drill: whole drill', `${f(drill.totalSeconds)} s in-process; ${cliSeconds} s as \`ballast restore-drill\` (node start included)`],
];
const load = [
  ['baseline', baseline, baseEld],
  ['during a ballast snapshot', inSnap, snapEld],
  ['during etcdctl snapshot save (control)', inCtl, ctlEld],
];

let out = `\nballast backup bench (node ${process.versions.node}, ${os.cpus().length} CPUs, ${os.cpus()[0]?.model ?? ''})\n\n`;
out += '| measure | value |\n|---|---|\n';
for (const [k, v] of rows) out += `| ${k} | ${v} |\n`;
out += `\nsmall puts through ballast (${CONC} in flight, 100-byte values, client in its own process):\n\n`;
out += '| window | seconds | puts/s | p50 ms | p99 ms | max ms | ballast event-loop delay p99 / max ms |\n|---|---|---|---|---|---|---|\n';
for (const [name, s, e] of load) out += `| ${name} | ${f(s.seconds, 1)} | ${f(s.opsPerSec, 0)} | ${f(s.p50)} | ${f(s.p99)} | ${f(s.max)} | ${f(e.p99, 1)} / ${f(e.max, 1)} |\n`;
out += `\nputs/s during the ballast snapshot: ${f((inSnap.opsPerSec / baseline.opsPerSec) * 100, 0)}% of baseline; during etcdctl's: ${f((inCtl.opsPerSec / baseline.opsPerSec) * 100, 0)}%. Total bench time ${f((Date.now() - t0) / 1000, 0)} s.\n`;
process.stdout.write(out);
clearTimeout(watchdog);
process.exit(0);

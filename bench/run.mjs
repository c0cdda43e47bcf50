#!/usr/bin/env node
// ballast side-by-side benchmark: the same load against the backend directly,
// through haproxy and through ballast, interleaved round by round.
//
//   npm run bench                       # build, then everything (~10 min)
//   node bench/run.mjs --quick          # 1 round of 2 s, failover 1 run (~3 min)
//   node bench/run.mjs --rounds 5 --duration 5 --only rr,connect
//
// Everything is on loopback, every load run is time-bounded, and every child
// process is tracked by PID and killed on exit or Ctrl-C. See bench/README.md.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { wrkAvailable, wrkVersion } from './lib/loadgen.mjs';
import { cpuMeter, killAllSync, runBounded } from './lib/proc.mjs';
import { addRelative, renderScenario, runMetrics, summarize, TARGETS } from './lib/report.mjs';
import { SCENARIOS } from './lib/scenarios.mjs';
import { ballastNode, makeTargets, nodeVersion } from './lib/targets.mjs';

const ROOT = dirname(dirname(new URL(import.meta.url).pathname));
const BENCH = join(ROOT, 'bench');
// Scenarios with harnesses of their own (their own process, report and
// result files); run.mjs runs them after the load scenarios and appends their
// summaries to the report.
const EXTRA = ['idle', 'failover'];

const HELP = `usage: node bench/run.mjs [options]
  --quick              1 round, 2 s per run (about 1 minute)
  --rounds N           rounds per scenario (default 3)
  --duration S         measured seconds per run (default 4)
  --warmup S           unmeasured warm-up seconds before each run (default 1)
  --only a,b           scenarios to run: ${SCENARIOS.map((s) => s.id).join(', ')}, ${EXTRA.join(', ')}
                       (idle: bench/idle/run.mjs; failover: bench/failover/run.mjs, run as children)
  --failover-runs N    runs per case and proxy in the failover scenario (default 3; --quick 1)
  --loadgen TOOL       wrk or autocannon (default: wrk if installed)
  --ballast-node PATH  node binary for ballast (default: Node 24 if present, else this node)
  --out DIR            where latest.md / latest.json go (default bench/results)
  --workers N          ballast workers and haproxy nbthread (default 1: equal cores)
  --worker-sockets M   ballast with workers: auto, reuseport (Node 22.12+) or shared
`;

class UsageError extends Error {}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        quick: { type: 'boolean', default: false },
        rounds: { type: 'string' },
        duration: { type: 'string' },
        warmup: { type: 'string' },
        only: { type: 'string' },
        loadgen: { type: 'string' },
        'ballast-node': { type: 'string' },
        out: { type: 'string', default: join(BENCH, 'results') },
        workers: { type: 'string', default: '1' },
        'worker-sockets': { type: 'string', default: 'auto' },
        'failover-runs': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    throw new UsageError(err.message);
  }
  if (values.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const num = (v, d, what) => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${what}: expected a number, got "${v}"`);
    return n;
  };
  const rounds = Math.max(1, Math.round(num(values.rounds, values.quick ? 1 : 3, 'rounds')));
  const duration = Math.max(1, Math.round(num(values.duration, values.quick ? 2 : 4, 'duration')));
  const warmup = Math.round(num(values.warmup, 1, 'warmup'));
  const all = values.only ? values.only.split(',').map((s) => s.trim()) : [...SCENARIOS.map((s) => s.id), ...EXTRA];
  const unknown = all.filter((id) => !SCENARIOS.some((s) => s.id === id) && !EXTRA.includes(id));
  if (unknown.length) throw new UsageError(`--only: unknown scenario ${unknown.join(', ')} (have ${[...SCENARIOS.map((s) => s.id), ...EXTRA].join(', ')})`);
  const ids = all.filter((id) => !EXTRA.includes(id));
  const extra = all.filter((id) => EXTRA.includes(id));
  const failoverRuns = Math.max(1, Math.round(num(values['failover-runs'], values.quick ? 1 : 3, 'failover-runs')));
  const loadgen = values.loadgen ?? (wrkAvailable() ? 'wrk' : 'autocannon');
  if (!['wrk', 'autocannon'].includes(loadgen)) throw new UsageError(`--loadgen: expected wrk or autocannon, got "${loadgen}"`);
  const workers = Math.max(1, Math.round(num(values.workers, 1, 'workers')));
  const workerSockets = values['worker-sockets'];
  if (!['auto', 'reuseport', 'shared'].includes(workerSockets)) throw new UsageError(`--worker-sockets: expected auto, reuseport or shared, got "${workerSockets}"`);
  return { rounds, duration, warmup, ids, extra, failoverRuns, loadgen, ballastNodeBin: ballastNode(values['ballast-node']), out: values.out, workers, workerSockets };
}

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return 'unknown';
  }
}

function machine(o) {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown';
  return {
    date: new Date().toISOString(),
    nproc: Number(sh('nproc', [])) || availableParallelism(),
    cpu: model,
    kernel: release(),
    ballastNode: `${nodeVersion(o.ballastNodeBin)} (${o.ballastNodeBin})`,
    harnessNode: process.version,
    haproxy: sh('haproxy', ['-v']).split('\n')[0],
    loadgen: o.loadgen === 'wrk' ? `${wrkVersion()} (keep-alive and Connection: close)` : 'autocannon 9 (keep-alive) + bench/connect-client.mjs (Connection: close); wrk not installed',
  };
}

/** Seconds the whole run should take, for the watchdog and the banner. */
function estimate(o) {
  const perRun = o.duration + o.warmup + 0.6;
  // idle: ~20 s; failover: ~70 s per run (4 cases x 3 proxies).
  return o.ids.length * (3 * o.rounds * perRun + 2) + (o.extra.includes('idle') ? 25 : 0) + (o.extra.includes('failover') ? 70 * o.failoverRuns : 0);
}

async function runScenario(s, o, ctx, workdir) {
  process.stdout.write(`\n== ${s.id}: ${s.title}\n`);
  const back = await s.setup(ctx);
  const targets = (s.targets ?? makeTargets)(back.backend, { scenario: s.id, workdir, root: ROOT, node: o.ballastNodeBin, workers: o.workers, workerSockets: o.workerSockets });
  const rounds = [];
  const notes = [];
  try {
    for (const t of targets) await t.start();
    for (let i = 0; i < o.rounds; i++) {
      const round = {};
      for (const t of targets) {
        const meter = cpuMeter({ proxy: t.pid, backend: back.pid });
        const tag = `  round ${i + 1}/${o.rounds} ${t.name.padEnd(7)}`;
        try {
          const res = await s.measure(ctx, t, back.backend, { warmup: o.warmup, duration: o.duration, meter });
          round[t.name] = { raw: res.r, cpu: res.cpu, m: runMetrics(s.kind, res) };
          const m = round[t.name].m;
          const main = s.kind !== 'bulk' ? `${m.rps.toFixed(0)} ${s.kind === 'etcd' ? 'ops' : 'req'}/s  p50 ${m.p50us} µs  p99 ${m.p99us} µs` : `${m.mbps.toFixed(0)} MB/s`;
          const cpu = m.proxyCores === undefined ? '' : `  proxy ${m.proxyCores.toFixed(2)} cores`;
          process.stdout.write(`${tag} ${main}${cpu}${m.errors ? `  errors ${m.errors} ${JSON.stringify(res.r.errorDetail)}` : ''}\n`);
        } catch (err) {
          round[t.name] = { error: err.message };
          process.stdout.write(`${tag} ERROR ${err.message}\n`);
        }
      }
      addRelative(s.kind, round);
      rounds.push(round);
    }
  } finally {
    for (const t of targets) {
      const out = t.output?.().trim();
      if (out) notes.push(`${t.name} printed: ${out.slice(-600)}`);
      await t.stop();
    }
    await back.stop();
  }
  const summary = summarize(s.kind, rounds);
  return { id: s.id, kind: s.kind, title: s.title, load: s.load(ctx), rounds, summary, notes };
}

function header(m, o) {
  return [
    `date:      ${m.date}`,
    `machine:   ${m.nproc} CPUs, ${m.cpu}, Linux ${m.kernel}`,
    `ballast:   node ${m.ballastNode}, one process (dist/cli.js run)`,
    `haproxy:   ${m.haproxy}, mode tcp, nbthread 1`,
    `load:      ${m.loadgen}; helpers on node ${m.harnessNode}`,
    `runs:      ${o.rounds} round(s) x ${o.duration} s measured (+${o.warmup} s warm-up), targets interleaved direct, haproxy, ballast`,
    `cells:     median (min…max) over rounds; ratios: median of per-round ratios`,
  ].join('\n');
}

function renderAll(m, o, results) {
  const parts = [header(m, o)];
  for (const r of results) {
    parts.push(`\n### ${r.id}: ${r.title}\nload: ${r.load}\n\n${renderScenario(r, r.summary, o.rounds)}`);
    for (const n of r.notes) parts.push(`note: ${n}`);
  }
  return parts.join('\n');
}

/** bench/idle: one JSON object on stdout. */
async function runIdle(o) {
  process.stdout.write('\n== idle: 10k idle connections through one ballast process\n');
  const res = await runBounded(process.execPath, [join(BENCH, 'idle/run.mjs'), '--node', o.ballastNodeBin], { name: 'idle', limitMs: 180_000 });
  const out = res.stdout.trim();
  let j;
  try {
    j = JSON.parse(out.slice(out.indexOf('{')));
  } catch {
    return { id: 'idle', error: `bench/idle/run.mjs failed (exit ${res.code ?? res.signal}): ${res.stderr.slice(-400)}` };
  }
  const text = [
    `connections held:            ${j.connections} (active in ballast: ${j.active}), opened in ${j.openSeconds} s`,
    `ballast RSS:                 ${j.rssBeforeMiB} MiB before, ${j.rssHeldMiB} MiB holding them (private: ${j.anonBeforeMiB} -> ${j.anonHeldMiB} MiB)`,
    `per connection:              ${j.kibPerConnection} KiB (both sockets)`,
    `event-loop delay, holding:   p99 ${j.eventLoopLagP99ms} ms, max ${j.eventLoopLagMaxMs} ms (sampler resolution 10 ms)`,
    `event-loop delay, opening:   max ${j.eventLoopLagMaxWhileOpeningMs} ms`,
    `target (issue 8):            RSS <= 150 MB at 10k: ${j.rssHeldMiB * 1.048576 <= 150 ? 'met' : 'not met'} (${(j.rssHeldMiB * 1.048576).toFixed(0)} MB)`,
  ].join('\n');
  process.stdout.write(`${text}\n`);
  return { id: 'idle', title: '10k idle connections: memory and event-loop delay', text, raw: j };
}

/** bench/failover: its own report; the per-case tables are appended to ours. */
async function runFailover(o, workdir) {
  process.stdout.write(`\n== failover: kill -9 / SIGSTOP of the client's etcd member, ${o.failoverRuns} run(s) per case and proxy\n`);
  const out = join(workdir, 'failover');
  const res = await runBounded(process.execPath, [join(BENCH, 'failover/run.mjs'), '--runs', String(o.failoverRuns), '--out', out, '--ballast-node', o.ballastNodeBin], {
    name: 'failover',
    limitMs: (120 + 150 * o.failoverRuns) * 1000,
    onLine: (line) => process.stdout.write(`  ${line}\n`),
  });
  const md = existsSync(join(out, 'latest.md')) ? readFileSync(join(out, 'latest.md'), 'utf8') : '';
  if (!md) return { id: 'failover', error: `bench/failover/run.mjs wrote no report (exit ${res.code ?? res.signal}): ${res.stderr.slice(-400)}` };
  const text = md.slice(md.indexOf('## ')).trim();
  return { id: 'failover', title: 'failover time through the proxy (bench/failover; full report in its results/)', text, exit: res.code };
}

async function main() {
  const o = options();
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npm run build` first (or `npm run bench`)');
  const m = machine(o);
  const ctx = { loadgen: o.loadgen, root: ROOT };
  const est = estimate(o);
  // Watchdog: whatever happens, the run ends (children killed by the exit handler).
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: still running after ${Math.round(est * 1.5 + 60)} s; giving up\n`);
    process.exit(1);
  }, (est * 1.5 + 60) * 1000);
  watchdog.unref();
  process.stdout.write(`bench: ${[...o.ids, ...o.extra].join(', ')}; ${o.rounds} round(s) x ${o.duration} s, ${o.loadgen}, ballast on node ${m.ballastNode}; about ${Math.round(est)} s\n`);

  const workdir = mkdtempSync(join(tmpdir(), 'ballast-bench-'));
  workdirToRemove = workdir;
  const results = [];
  const extras = [];
  try {
    for (const id of o.ids) results.push(await runScenario(SCENARIOS.find((s) => s.id === id), o, ctx, workdir));
    if (o.extra.includes('idle')) extras.push(await runIdle(o));
    if (o.extra.includes('failover')) extras.push(await runFailover(o, workdir));
  } finally {
    rmSync(workdir, { recursive: true, force: true });
  }

  let text = renderAll(m, o, results);
  for (const x of extras) text += `\n\n### ${x.id}: ${x.title ?? ''}\n\n${x.error ?? x.text}`;
  process.stdout.write(`\n${text}\n`);
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'latest.md'), `# ballast benchmark: latest run\n\nWritten by \`node bench/run.mjs\`; see bench/README.md for how to read it.\n\n\`\`\`\n${text}\n\`\`\`\n`);
  const json = {
    machine: m,
    options: { rounds: o.rounds, duration: o.duration, warmup: o.warmup, loadgen: o.loadgen, scenarios: o.ids },
    targets: TARGETS,
    scenarios: results.map((r) => ({
      id: r.id,
      kind: r.kind,
      title: r.title,
      load: r.load,
      notes: r.notes,
      rounds: r.rounds,
      summary: r.summary.map(({ key, label, cells, ratios }) => ({ key, label, cells, ratios })),
    })),
    extras,
  };
  writeFileSync(join(o.out, 'latest.json'), `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`\nwrote ${join(o.out, 'latest.md')} and latest.json\n`);
  const failed = results.some((r) => r.rounds.some((rd) => Object.values(rd).some((x) => x.error))) || extras.some((x) => x.error);
  return failed ? 1 : 0;
}

let workdirToRemove;
process.on('exit', () => {
  killAllSync();
  if (workdirToRemove) rmSync(workdirToRemove, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    process.stderr.write(`\nbench: ${sig}; stopping children\n`);
    killAllSync();
    process.exit(130);
  });
}

main().then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof UsageError) {
      process.stderr.write(`bench: ${err.message}\n\n${HELP}`);
      process.exit(2);
    }
    process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);

// Many idle connections through ballast (etcd watches look like this: open for
// hours, quiet): ballast's RSS per connection and its event-loop delay while
// it holds them. Loopback only, bounded.
//
// usage: node bench/idle/run.mjs [--connections N] [--node-flag=--max-semi-space-size=16 ...] [--v8-defaults]
// ballast runs with the shipped V8 flags (SHIPPED_NODE_OPTIONS) unless
// --node-flag replaces them or --v8-defaults drops them.
//   default N: as many as the fd limit allows, at most 10000

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { SHIPPED_NODE_OPTIONS } from '../lib/targets.mjs';
import { node24 } from '../lib/node24.mjs';

const ROOT = dirname(dirname(dirname(new URL(import.meta.url).pathname)));
const { values } = parseArgs({ options: { connections: { type: 'string' }, node: { type: 'string' }, 'node-flag': { type: 'string', multiple: true }, 'v8-defaults': { type: 'boolean' } } });
const nodeFlags = values['v8-defaults'] ? [] : (values['node-flag'] ?? SHIPPED_NODE_OPTIONS.split(' '));
const node = values.node ?? node24();
const nofile = Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 1024);
// ballast holds two descriptors per connection and keeps ~80 for itself.
const N = Number(values.connections ?? Math.min(10_000, Math.floor((nofile - 200) / 2)));
const dir = mkdtempSync(join(tmpdir(), 'ballast-idle-'));
const children = [];
const cleanup = () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}
async function waitPort(port) {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), r(true)));
      s.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}
const statusKiB = (pid, field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const rssMiB = (pid) => statusKiB(pid, 'VmRSS') / 1024;
// RSS counts the node binary's mapped pages too (shared, file-backed, ~50 MiB
// once TLS and the libraries are loaded); RssAnon is what this process alone costs.
const anonMiB = (pid) => statusKiB(pid, 'RssAnon') / 1024;

const [backendPort, port, admin] = [await freePort(), await freePort(), await freePort()];
const backend = spawn(process.execPath, ['-e', `require('net').createServer((c)=>{c.on('error',()=>{});c.pipe(c)}).listen(${backendPort},'127.0.0.1')`], { stdio: 'ignore' });
children.push(backend);
writeFileSync(
  join(dir, 'ballast.yaml'),
  `admin: { listen: 127.0.0.1:${admin} }
log: { level: warn }
listeners:
  - { name: idle, listen: 127.0.0.1:${port}, cluster: echo, maxConnections: 20000 }
clusters:
  - { name: echo, endpoints: [127.0.0.1:${backendPort}], health: { check: tcp, interval: 1s } }
`,
);
const ballast = spawn(node, [...nodeFlags, join(ROOT, 'dist/cli.js'), 'run', '--config', join(dir, 'ballast.yaml')], { stdio: ['ignore', 'ignore', 'inherit'] });
children.push(ballast);
await waitPort(backendPort);
await waitPort(port);
await new Promise((r) => setTimeout(r, 1500));
const rss0 = rssMiB(ballast.pid);
const anon0 = anonMiB(ballast.pid);

const sockets = [];
const t0 = Date.now();
for (let i = 0; i < N; i += 250) {
  await Promise.all(
    Array.from({ length: Math.min(250, N - i) }, () =>
      new Promise((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => s.write('x'));
        s.once('data', () => resolve());
        s.once('error', reject);
        sockets.push(s);
      }),
    ),
  );
}
const openedMs = Date.now() - t0;
// prom-client's event-loop histogram restarts at each scrape: scrape once now
// so the figures below cover only the idle hold, not the burst of opening.
const burst = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
const burstMax = Number(/^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(burst)?.[1]);
// Idle for a while: nothing moves; the proxy just holds them.
await new Promise((r) => setTimeout(r, 5000));
const metrics = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
const m = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(metrics)?.[1]);
const rss1 = rssMiB(ballast.pid);
const anon1 = anonMiB(ballast.pid);
const result = {
  date: new Date().toISOString(),
  node: execFileSync(node, ['-v'], { encoding: 'utf8' }).trim(),
  nodeFlags,
  connections: N,
  active: m('ballast_listener_active_connections'),
  rssBeforeMiB: Math.round(rss0),
  rssHeldMiB: Math.round(rss1),
  anonBeforeMiB: Math.round(anon0),
  anonHeldMiB: Math.round(anon1),
  heapNewSpaceMiB: Math.round(m('nodejs_heap_space_size_total_bytes{space="new"}') / 1048576),
  kibPerConnection: Math.round(((rss1 - rss0) * 1024) / N * 10) / 10,
  eventLoopLagP99ms: Math.round(m('nodejs_eventloop_lag_p99_seconds') * 1000 * 10) / 10,
  eventLoopLagMaxMs: Math.round(m('nodejs_eventloop_lag_max_seconds') * 1000 * 10) / 10,
  openSeconds: Math.round(openedMs / 100) / 10,
  eventLoopLagMaxWhileOpeningMs: Math.round(burstMax * 1000 * 10) / 10,
};
console.log(JSON.stringify(result, null, 2));
for (const s of sockets) s.destroy();
ballast.kill('SIGTERM');
await new Promise((r) => ballast.once('exit', r));
process.exit(0);

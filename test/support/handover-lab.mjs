// A ballast restart under load, run inside a network namespace the test made
// (so its net.ipv4.tcp_migrate_req is the test's own): an echo backend,
// ballast A, a client opening connections continuously and one holding a
// stream, then ballast B started on the same config and A sent SIGTERM.
//
//   node handover-lab.mjs --cli dist/cli.js --dir DIR --mode overlap|restart
//
// overlap: B starts, becomes ready, then A is stopped (the handover).
// restart: A is stopped first, then B starts (a plain restart: the control).
// Prints one JSON line: { opened, failed, errors, held, heldEchoes, ... }.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { cli: { type: 'string' }, dir: { type: 'string' }, mode: { type: 'string' }, port: { type: 'string', default: '7445' } } });
const port = Number(values.port);
const adminPort = port + 1;
const deadline = Date.now() + 60_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const echo = net.createServer((s) => {
  s.on('error', () => {});
  s.pipe(s);
});
await new Promise((r) => echo.listen(0, '127.0.0.1', r));
const config = path.join(values.dir, 'handover.yaml');
writeFileSync(
  config,
  `admin: { listen: 127.0.0.1:${adminPort} }
log: { level: warn }
drainTimeout: 3s
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.address().port}], health: { check: tcp, interval: 200ms, timeout: 150ms, rise: 1 } }
`,
);

function startBallast() {
  const child = spawn(process.execPath, [values.cli, 'run', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-4000)));
  const exited = new Promise((r) => child.once('exit', (code, sig) => r(code ?? sig)));
  return { child, exited, err: () => err };
}

/** GET over a fresh connection (with SO_REUSEPORT each one may reach either process). */
function get(route) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: adminPort, path: route, agent: false, timeout: 1000 }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** Until this ballast itself (by pid) says every endpoint is up. */
async function ready(b) {
  while (Date.now() < deadline) {
    if (b.child.exitCode !== null) throw new Error(`ballast exited: ${b.err()}`);
    const r = await get('/status');
    if (r?.status === 200) {
      const doc = JSON.parse(r.body);
      if (doc.pid === b.child.pid && doc.clusters.every((c) => c.endpoints.every((e) => e.state === 'up'))) return;
    }
    await sleep(10);
  }
  throw new Error(`ballast ${b.child.pid} not ready: ${b.err()}`);
}

const stats = { opened: 0, failed: 0, errors: {}, held: 'open', heldEchoes: 0, mode: values.mode };
let running = true;

/** One connection: connect, send a line, read it back, close. */
function once() {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const fail = (code) => {
      stats.failed++;
      stats.errors[code] = (stats.errors[code] ?? 0) + 1;
      s.destroy();
      resolve();
    };
    const timer = setTimeout(() => fail('timeout'), 3000);
    s.on('error', (e) => {
      clearTimeout(timer);
      fail(e.code ?? 'error');
    });
    s.on('connect', () => s.write('ping\n'));
    s.on('data', (d) => {
      got += d;
      if (got === 'ping\n') {
        clearTimeout(timer);
        stats.opened++;
        s.end();
        resolve();
      }
    });
    s.on('end', () => {
      if (got !== 'ping\n') {
        clearTimeout(timer);
        fail('closed_without_echo');
      }
    });
  });
}

async function loop() {
  while (running && Date.now() < deadline) await once();
}

const a = startBallast();
await ready(a);
const held = net.connect(port, '127.0.0.1');
held.on('error', () => (stats.held = 'error'));
held.on('close', () => (stats.held = stats.held === 'open' ? 'closed' : stats.held));
let heldBuf = '';
held.on('data', (d) => {
  heldBuf += d;
  while (heldBuf.includes('\n')) {
    heldBuf = heldBuf.slice(heldBuf.indexOf('\n') + 1);
    stats.heldEchoes++;
  }
});
const heldTimer = setInterval(() => held.writable && held.write('held\n'), 100);
const loops = Array.from({ length: 16 }, loop);
await sleep(700);
const t0 = Date.now();
let b;
if (values.mode === 'overlap') {
  b = startBallast();
  // Both now share the port (SO_REUSEPORT); A stops only once B serves.
  await ready(b);
  a.child.kill('SIGTERM');
} else {
  a.child.kill('SIGTERM');
  await a.exited;
  b = startBallast();
  await ready(b);
}
const heldBefore = stats.heldEchoes;
await sleep(1500);
stats.heldEchoesDuringDrain = stats.heldEchoes - heldBefore;
running = false;
await Promise.all(loops);
stats.seconds = (Date.now() - t0) / 1000;
clearInterval(heldTimer);
held.destroy();
b.child.kill('SIGKILL');
a.child.kill('SIGKILL');
await Promise.all([a.exited, b.exited]);
echo.close();
process.stdout.write(`${JSON.stringify(stats)}\n`);
process.exit(0);

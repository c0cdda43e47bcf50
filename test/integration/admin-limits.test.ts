// The admin and metrics servers are reachable by more than the operator:
// metricsListen is bound to 0.0.0.0 in every shipped config, and a browser on
// the machine reaches the loopback status page through DNS rebinding. Neither
// may take descriptors from the data path, hold connections forever, or answer
// a page that thinks it is talking to evil.example (issue #15).
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, REPO, runCliToEnd, startInProcess, writeConfig, type InProcess } from '../support/ballast.js';
import { freePorts } from '../support/ports.js';
import { closed, connect, eventually, readUntil, startEchoServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => {
  await removeDir(dir);
});

/** GET with an explicit Host header (fetch does not let a caller set it). */
function getWithHost(port: number, route: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: route, headers: { host }, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function echoes(s: net.Socket, text: string): Promise<boolean> {
  s.write(text);
  const got = await readUntil(s, (b) => b.toString().includes(text), 3000);
  return got.toString().includes(text);
}

describe('admin server: Host check against DNS rebinding, idle timeout', () => {
  let echo: TestServer;
  let p: InProcess;
  let admin: number;
  let port: number;

  beforeAll(async () => {
    echo = await startEchoServer();
    [admin, port] = (await freePorts(2)) as [number, number];
    p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin}, allowedHosts: [ballast.internal], idleTimeout: 500ms }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 100ms } }
`,
      { admin: true },
    );
  });
  afterAll(async () => {
    await p?.stop();
    await echo?.close();
  });

  it('refuses a request whose Host is a name it was not given (421), on every path', async () => {
    for (const route of ['/', '/status', '/metrics', '/healthz']) {
      const r = await getWithHost(admin, route, `evil.example:${admin}`);
      expect(r.status, route).toBe(421);
      expect(r.body).toMatch(/admin\.allowedHosts/);
    }
    expect((await getWithHost(admin, '/status', 'evil.example')).status).toBe(421);
    expect((await getWithHost(admin, '/status', 'localhost.evil.example')).status).toBe(421);
  });

  it('answers IP literals, localhost and the configured names', async () => {
    for (const host of [`127.0.0.1:${admin}`, '127.0.0.1', `localhost:${admin}`, 'LOCALHOST', `[::1]:${admin}`, `ballast.internal:${admin}`, 'Ballast.Internal']) {
      expect((await getWithHost(admin, '/status', host)).status, host).toBe(200);
    }
  });

  it('closes a connection that sends nothing (idleTimeout)', async () => {
    const s = await connect(admin);
    expect(await closed(s, 10_000)).not.toBe('error');
  });
});

/** A ballast child under a descriptor limit (prlimit execs node: the PID is node's). */
async function startLimited(configFile: string, nofile: number, adminPort: number): Promise<{ child: ChildProcess; out: () => string; stop(): Promise<void> }> {
  const child = spawn('prlimit', [`--nofile=${nofile}:${nofile}`, process.execPath, CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise((r) => child.once('exit', r));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  try {
    await eventually(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200, 'limited ballast ready', 15_000, 50);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\n${out}`);
  }
  return { child, out: () => out, stop };
}

describe('a flood of idle connections to metricsListen (ballast under ulimit -n 512)', () => {
  // CAP is the most the limit allows an admin server (a sixteenth). Without
  // the admin servers' share held back, a full data path leaves them none.
  const NOFILE = 512;
  const FLOOD = 300;
  const CAP = 32;
  let echo: TestServer;
  let b: Awaited<ReturnType<typeof startLimited>>;
  let admin: number;
  let metricsPort: number;
  let port: number;
  const seen = { floodOpen: 0, served: 0, failed: 0, adminReady: 0, adminReadyWhileFull: 0, fdsWhileFull: 0 };

  beforeAll(async () => {
    echo = await startEchoServer();
    [port, admin, metricsPort] = (await freePorts(3)) as [number, number, number];
    const file = writeConfig(
      dir,
      `
admin: { listen: 127.0.0.1:${admin}, metricsListen: 127.0.0.1:${metricsPort}, maxConnections: ${CAP}, idleTimeout: 60s }
log: { level: warn }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 3 } }
`,
      'admin-flood.yaml',
    );
    b = await startLimited(file, NOFILE, admin);
    const flood: net.Socket[] = [];
    const clients: net.Socket[] = [];
    try {
      for (let i = 0; i < FLOOD; i++) {
        const s = net.connect(metricsPort, '127.0.0.1');
        s.on('error', () => undefined);
        flood.push(s);
      }
      await Promise.all(flood.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r).once('close', r) : r(undefined)))));
      // Give the server time to accept (and drop) the whole flood.
      await new Promise((r) => setTimeout(r, 1500));
      seen.floodOpen = flood.filter((s) => !s.destroyed && s.readyState === 'open').length;
      // While the flood is held: data-path clients, then the admin port.
      for (let i = 0; i < 10; i++) {
        try {
          const s = await connect(port);
          s.on('error', () => undefined);
          clients.push(s);
          if (await echoes(s, `client ${i}`)) seen.served++;
          else seen.failed++;
        } catch {
          seen.failed++;
        }
      }
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`http://127.0.0.1:${admin}/readyz`).catch(() => undefined);
        if (r?.status === 200) seen.adminReady++;
      }
      // Now the data path too, far past what the descriptor limit allows: it
      // is refused at its own budget, which leaves the admin servers' share.
      for (let i = 0; i < 2 * NOFILE; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        clients.push(s);
      }
      await Promise.all(clients.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r).once('close', r) : r(undefined)))));
      await new Promise((r) => setTimeout(r, 1000));
      seen.fdsWhileFull = readdirSync(`/proc/${b.child.pid}/fd`).length;
      // Ten admin requests at once: each needs a descriptor of its own.
      const answers = await Promise.all(
        Array.from({ length: 10 }, () => getWithHost(admin, '/readyz', '127.0.0.1').catch(() => undefined)),
      );
      seen.adminReadyWhileFull = answers.filter((r) => r?.status === 200).length;
    } finally {
      for (const s of [...flood, ...clients]) s.destroy();
    }
  }, 60_000);
  afterAll(async () => {
    await b?.stop();
    await echo?.close();
  });

  it('holds at most maxConnections of the flood and refuses the rest', () => {
    expect(seen.floodOpen).toBeGreaterThan(0);
    expect(seen.floodOpen).toBeLessThanOrEqual(CAP);
  });

  it('keeps serving data-path clients and the admin port while the flood is held', () => {
    expect(seen).toMatchObject({ served: 10, failed: 0, adminReady: 3 });
  });

  it('keeps the admin port answering when the data path is full too (its descriptors are held back from the data path)', () => {
    expect(seen.adminReadyWhileFull).toBe(10);
    expect(seen.fdsWhileFull).toBeLessThanOrEqual(NOFILE - CAP);
  });
});

describe('unix sockets: what ballast replaces and who can connect', () => {
  it('refuses an admin.listen path that is a regular file, and leaves the file alone', async () => {
    const file = path.join(dir, 'precious.txt');
    writeFileSync(file, 'not a socket');
    const [port] = (await freePorts(1)) as [number];
    const cfg = writeConfig(dir, `
admin: { listen: "unix:${file}" }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:1], health: { check: tcp, interval: 1h } }
`, 'admin-file.yaml');
    const r = await runCliToEnd(['run', '--config', cfg], { timeoutMs: 20_000 });
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/admin\.listen: .*precious\.txt exists and is not a socket; refusing to replace it/);
    expect(readFileSync(file, 'utf8')).toBe('not a socket');
  });

  it('runs with umask 077 whatever it was started with, so a socket is never open to others before its chmod', async () => {
    const [port, admin] = (await freePorts(2)) as [number, number];
    const sock = path.join(dir, 'front.sock');
    const cfg = writeConfig(dir, `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: front, listen: "unix:${sock}", cluster: back, socketMode: "0660" }
  - { name: tcp, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:1], health: { check: tcp, interval: 1h } }
`, 'umask.yaml');
    const child = spawn('sh', ['-c', `umask 000; exec "${process.execPath}" "${CLI}" run --config "${cfg}"`], { stdio: 'ignore', cwd: REPO });
    try {
      await eventually(async () => (await fetch(`http://127.0.0.1:${admin}/healthz`).catch(() => undefined))?.status === 200, 'ballast up', 15_000, 50);
      const umask = readFileSync(`/proc/${child.pid}/status`, 'utf8').match(/^Umask:\s*(\d+)/m)?.[1];
      expect(umask).toBe('0077');
      expect(statSync(sock).mode & 0o777).toBe(0o660);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
});

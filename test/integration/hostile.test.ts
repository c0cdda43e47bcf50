import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, REPO, runCli, runCliToEnd, startInProcess, writeConfig, type ChildBallast, type InProcess } from '../support/ballast.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePort, freePorts } from '../support/ports.js';
import { closed, connect, eventually, readUntil, startChildEchoServer, startEchoServer, type ChildServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

// Hostile input: bytes that are not TLS, floods, tens of thousands of
// connections, half-open and never-reading peers, running out of file
// descriptors, and malformed config files at start and at reload under load.
// Every refusal must be visible in /metrics with its reason.

let dir: string;
let pki: Pki;

beforeAll(async () => {
  dir = await makeTempDir();
  pki = await makePki(dir);
});
afterAll(async () => {
  await removeDir(dir);
});

// --- helpers -------------------------------------------------------------------

interface Series {
  name: string;
  labels: Record<string, string>;
  value: number;
}

async function scrape(adminPort: number): Promise<Series[]> {
  const text = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(3000) }).then((r) => r.text());
  const out: Series[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function sum(series: Series[], name: string, match: Record<string, string> = {}): number {
  let n = 0;
  for (const s of series) if (s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)) n += s.value;
  return n;
}

/** mTLS client of ballast as `identity`; resolves once the handshake is done. */
function tlsClient(port: number, identity = 'apiserver', extra: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: pki.ca.cert, servername: 'localhost', cert: pki.certs[identity]!.cert, key: pki.certs[identity]!.key, ...extra });
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Write `msg` and wait for it to come back (an echo backend behind ballast). */
async function echoes(s: net.Socket, msg: string, ms = 3000): Promise<void> {
  const got = readUntil(s, (b) => b.toString().includes(msg), ms);
  s.write(msg);
  await got;
}

/** Milliseconds until the peer closes `s` (it is read meanwhile), or Infinity after `ms`. */
function closedWithin(s: net.Socket, ms: number): Promise<number> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    if (s.destroyed) return resolve(0);
    const timer = setTimeout(() => resolve(Infinity), ms);
    const done = () => {
      clearTimeout(timer);
      resolve(Date.now() - t0);
    };
    // connect() sockets allow half-open: the peer's FIN shows as 'end', not 'close'.
    s.once('end', done);
    s.once('close', done);
    s.on('error', () => undefined);
    s.resume();
  });
}

/** A ballast child process started through prlimit (Node cannot set its own rlimits). */
interface LimitedBallast {
  child: ChildProcess;
  pid: number;
  out: () => string;
  exited: Promise<unknown>;
  stop(): Promise<void>;
}

async function startLimited(configFile: string, nofile: number, adminPort: number): Promise<LimitedBallast> {
  // prlimit sets the limit and execs: the PID is node's.
  const child = spawn('prlimit', [`--nofile=${nofile}:${nofile}`, process.execPath, CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise((r) => child.once('exit', r));
  const b: LimitedBallast = {
    child,
    pid: child.pid!,
    out: () => out,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await eventually(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200, 'limited ballast ready', 15_000, 50);
  } catch (err) {
    await b.stop();
    throw new Error(`${(err as Error).message}\n${out}`);
  }
  return b;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function openFds(pid: number): number[] {
  return readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b);
}

/** The n lowest descriptor numbers not in use. */
function freeFdNumbers(open: number[], n: number): number[] {
  const used = new Set(open);
  const out: number[] = [];
  for (let fd = 0; out.length < n; fd++) if (!used.has(fd)) out.push(fd);
  return out;
}

/** Writes text on a plain socket and waits for its echo. */
async function echoesPlain(s: net.Socket, text: string): Promise<void> {
  s.write(text);
  const got = await readUntil(s, (b) => b.toString() === text, 3000);
  expect(got.toString()).toBe(text);
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}

function guardProfile(extra = ''): string {
  const f = pki.files;
  return `guard: { cert: ${f['ballast-server.crt']}, key: ${f['ballast-server.key']}, clientCA: ${f['ca.crt']}${extra} }`;
}

// --- bytes ---------------------------------------------------------------------

describe('hostile bytes on a TLS listener', () => {
  let echo: TestServer;
  let p: InProcess;
  let port: number;
  let admin: number;

  beforeAll(async () => {
    echo = await startEchoServer();
    [port, admin] = (await freePorts(2)) as [number, number];
    p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin} }
tls:
  ${guardProfile(', handshakeTimeout: 60s')}
listeners:
  - { name: guard, listen: 127.0.0.1:${port}, cluster: back, tls: guard }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: none } }
`,
      { admin: true },
    );
  });
  afterAll(async () => {
    await p?.stop();
    await echo?.close();
  });

  const hello = Buffer.from(`16030100a5010000a10303${'00'.repeat(32)}000002c02f0100`, 'hex');
  it.each<[string, string, Buffer | 'rst']>([
    ['4 KiB of random noise', 'not_tls', Buffer.concat([Buffer.from([0]), crypto.randomBytes(4095)])],
    ['a line of plain text', 'not_tls', Buffer.from('hello ballast, are you etcd?\n')],
    ['a cleartext HTTP/2 preface (a gRPC client without TLS)', 'not_tls', Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')],
    ['a TLS record header announcing 64 KiB', 'not_tls', Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff]), Buffer.alloc(100)])],
    ['a ServerHello where a ClientHello belongs', 'handshake_error', Buffer.from([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])],
    ['an alert before any hello', 'handshake_error', Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])],
    ['a ClientHello with a garbled body', 'handshake_error', Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc]), crypto.randomBytes(252)])],
    ['application data before the handshake', 'handshake_error', Buffer.from([0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])],
    ['a ChangeCipherSpec before any hello', 'handshake_error', Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01])],
    ['a connection reset before any byte', 'client_reset', 'rst'],
  ])('%s: closed at once, counted as %s in /metrics, nothing reaches the backend', async (_what, reason, bytes) => {
    const before = await scrape(admin);
    const accepted = echo.accepted;
    const s = await connect(port);
    let ms: number;
    if (bytes === 'rst') {
      s.resetAndDestroy();
      ms = 0;
    } else {
      s.write(bytes);
      // "At once" against a 60 s handshake timeout: 5 s is a wide margin even on a loaded machine.
      ms = await closedWithin(s, 5000);
    }
    expect(ms).toBeLessThan(5000);
    await eventually(async () => sum(await scrape(admin), 'ballast_tls_handshake_failures_total', { listener: 'guard', reason }) === sum(before, 'ballast_tls_handshake_failures_total', { listener: 'guard', reason }) + 1, `refusal counted as ${reason}`, 3000);
    const after = await scrape(admin);
    // Exactly one refusal, under exactly one reason, and one tls_refused result.
    expect(sum(after, 'ballast_tls_handshake_failures_total') - sum(before, 'ballast_tls_handshake_failures_total')).toBe(1);
    expect(sum(after, 'ballast_listener_connections_total', { result: 'tls_refused' }) - sum(before, 'ballast_listener_connections_total', { result: 'tls_refused' })).toBe(1);
    expect(echo.accepted).toBe(accepted);
    s.destroy();
  });

  it.each<[string, Buffer]>([
    ['FIN before any byte', Buffer.alloc(0)],
    ['FIN after half a ClientHello', hello.subarray(0, 60)],
  ])('a client that gives up mid-handshake (%s) is let go at once and counted as client_reset, not held until handshakeTimeout', async (_what, bytes) => {
    const before = await scrape(admin);
    const s = await connect(port);
    s.end(bytes);
    // handshakeTimeout is 2 s: a peer that has sent FIN cannot finish a handshake,
    // so its descriptor should not be held that long.
    const ms = await closedWithin(s, 2500);
    await eventually(async () => sum(await scrape(admin), 'ballast_tls_handshake_failures_total') > sum(before, 'ballast_tls_handshake_failures_total'), 'refusal counted', 5000);
    const after = await scrape(admin);
    const grew = after.filter((x) => x.name === 'ballast_tls_handshake_failures_total' && x.value > sum(before, x.name, x.labels)).map((x) => x.labels.reason);
    expect({ ms: ms < 1000 ? 'under 1 s' : `${ms} ms`, reasons: grew }).toEqual({ ms: 'under 1 s', reasons: ['client_reset'] });
  });
});

// --- flood -----------------------------------------------------------------------

describe('a connection flood past maxConnections on a TLS listener', () => {
  it('refuses and counts every connection over the limit as over_limit while connected clients keep working', async () => {
    const echo = await startEchoServer();
    const [port, admin] = (await freePorts(2)) as [number, number];
    const limit = 24;
    const p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin} }
tls:
  ${guardProfile(', handshakeTimeout: 60s')}
listeners:
  - { name: guard, listen: 127.0.0.1:${port}, cluster: back, tls: guard, maxConnections: ${limit} }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: none } }
`,
      { admin: true },
    );
    const good: tls.TLSSocket[] = [];
    const flood: net.Socket[] = [];
    try {
      for (let i = 0; i < 8; i++) good.push(await tlsClient(port));
      let exchanged = 0;
      let failures = 0;
      let running = true;
      const talk = Promise.all(
        good.map(async (s, i) => {
          for (let n = 0; running; n++) {
            try {
              await echoes(s, `good-${i}-${n};`, 2000);
              exchanged++;
            } catch {
              failures++;
              return;
            }
          }
        }),
      );
      // 400 raw connections at once; none of them ever sends a byte.
      const fates = await Promise.all(
        Array.from({ length: 400 }, async () => {
          const s = net.connect(port, '127.0.0.1');
          flood.push(s);
          s.on('error', () => undefined);
          await new Promise<void>((r) => {
            s.once('connect', () => r());
            s.once('error', () => r());
          });
          // Refused ones close at once; held ones would stay until the 60 s
          // handshake timeout. 5 s tells them apart even on a loaded machine.
          return (await closedWithin(s, 5000)) < 5000 ? 'refused' : 'held';
        }),
      );
      const refused = fates.filter((f) => f === 'refused').length;
      const held = fates.filter((f) => f === 'held').length;
      const duringFlood = exchanged;
      await eventually(() => exchanged > duringFlood + 40, 'good clients still exchanging after the flood');
      running = false;
      await talk;
      const m = await scrape(admin);
      expect(failures).toBe(0);
      expect(held).toBeLessThanOrEqual(limit - good.length);
      expect(refused).toBeGreaterThanOrEqual(400 - (limit - good.length));
      expect(sum(m, 'ballast_listener_connections_total', { listener: 'guard', result: 'over_limit' })).toBe(refused);
      expect(sum(m, 'ballast_listener_active_connections', { listener: 'guard' })).toBeLessThanOrEqual(limit);
      // Once the flood is gone, a new client is served.
      for (const s of flood) s.resetAndDestroy();
      const server = p.ballast.listeners.get('guard')!.server!;
      await eventually(() => new Promise<boolean>((r) => server.getConnections((_e, n) => r(n === good.length))), 'flood released');
      const late = await tlsClient(port);
      await echoes(late, 'after the flood');
      late.destroy();
    } finally {
      for (const s of [...good, ...flood]) s.destroy();
      await p.stop();
      await echo.close();
    }
  });
});

describe('connections still in their TLS handshake', () => {
  it('are visible in /metrics while they take maxConnections slots (an over_limit refusal is explainable from /metrics)', async () => {
    const echo = await startEchoServer();
    const [port, admin] = (await freePorts(2)) as [number, number];
    const p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin} }
tls:
  ${guardProfile(', handshakeTimeout: 60s')}
listeners:
  - { name: guard, listen: 127.0.0.1:${port}, cluster: back, tls: guard, maxConnections: 4 }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: none } }
`,
      { admin: true },
    );
    const idle: net.Socket[] = [];
    try {
      for (let i = 0; i < 4; i++) idle.push(await connect(port));
      const extra = await connect(port);
      expect(await closedWithin(extra, 5000)).toBeLessThan(5000);
      const m = await scrape(admin);
      expect(sum(m, 'ballast_listener_connections_total', { listener: 'guard', result: 'over_limit' })).toBe(1);
      // Every series about the listener's open connections, whatever it is called:
      // something must account for the 4 slots in use.
      const open = m.filter((x) => x.labels.listener === 'guard' && /active|open|handshak|pending/.test(x.name)).reduce((n, x) => n + x.value, 0);
      expect(open).toBeGreaterThanOrEqual(4);
    } finally {
      for (const s of idle) s.resetAndDestroy();
      await p.stop();
      await echo.close();
    }
  });
});

// --- 10k connections ------------------------------------------------------------

describe('ten thousand concurrent connections', () => {
  // Descriptors: this process holds the client sockets, the echo backend runs
  // in a child process, and ballast, which needs two per connection (client
  // and upstream), runs in a child whose soft limit prlimit raises to the hard
  // limit. Raising the hard limit needs CAP_SYS_RESOURCE, which this
  // environment lacks (prlimit: Operation not permitted) and whose hard limit
  // is 20000: there ballast can hold (20000 - 200) / 2 = 9900 connections, so
  // the test scales to that and says so; with a hard limit >= 20200 it runs
  // the full 10,000.
  const hard = (() => {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const v = line?.trim().split(/\s+/)[4];
    return v === 'unlimited' ? 1_048_576 : Number(v);
  })();
  const N = Math.min(10_000, Math.floor((hard - 200) / 2));
  it(`holds ${N.toLocaleString('en')} connections open to an echo backend (10,000 unless the fd hard limit forbids: ${hard}), counts them, and still serves a new client`, async () => {
    const backend: ChildServer = await startChildEchoServer();
    const [port, admin] = (await freePorts(2)) as [number, number];
    const file = writeConfig(
      dir,
      `
admin: { listen: 127.0.0.1:${admin} }
log: { level: warn }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back, maxConnections: 12000, backlog: 4096 }
clusters:
  - { name: back, endpoints: [127.0.0.1:${backend.port}], connectTimeout: 10s, health: { check: tcp, interval: 1s, timeout: 500ms } }
`,
      'ten-k.yaml',
    );
    const b = await startLimited(file, Math.min(hard, 1_048_576), admin);
    const sockets: net.Socket[] = [];
    try {
      const rssBefore = rssKiB(b.pid);
      // Batches of 250: the echo backend's accept queue is the default 511.
      for (let i = 0; i < N; i += 250) {
        const batch = await Promise.all(Array.from({ length: Math.min(250, N - i) }, () => connect(port)));
        for (const s of batch) s.on('error', () => undefined);
        sockets.push(...batch);
      }
      let last = '';
      const m = await eventually(async () => {
        const x = await scrape(admin);
        last = `upstream active ${sum(x, 'ballast_upstream_active_connections')}, listener active ${sum(x, 'ballast_listener_active_connections')}, connect_failed ${sum(x, 'ballast_listener_connections_total', { result: 'connect_failed' })}`;
        if (sum(x, 'ballast_listener_connections_total', { result: 'connect_failed' }) > 0) throw new Error(last);
        return sum(x, 'ballast_upstream_active_connections') === N ? x : undefined;
      }, `all proxied connections open upstream (${last})`, 30_000, 200).catch((err: Error) => {
        throw new Error(`${err.message}; ${last}`);
      });
      expect(sum(m, 'ballast_listener_active_connections', { listener: 'front' })).toBe(N);
      expect(sum(m, 'ballast_listener_connections_total', { result: 'over_limit' })).toBe(0);
      expect(sum(m, 'ballast_listener_connections_total', { result: 'connect_failed' })).toBe(0);
      expect(fdCount(b.pid)).toBeGreaterThanOrEqual(2 * N);
      // A sample of them carries bytes both ways.
      for (let i = 0; i < N; i += 97) await echoes(sockets[i]!, `#${i}#`);
      const fresh = await connect(port);
      await echoes(fresh, 'a new client among 10k');
      fresh.destroy();
      const rssPeak = rssKiB(b.pid);
      // Bounded per connection: well under 20 KiB of RSS each (two sockets, one connection object).
      expect((rssPeak - rssBefore) / N).toBeLessThan(20);
      for (const s of sockets) s.destroy();
      await eventually(async () => sum(await scrape(admin), 'ballast_listener_active_connections', { listener: 'front' }) === 0, 'all 10k released', 30_000, 200);
      const end = await scrape(admin);
      expect(sum(end, 'ballast_listener_connections_total', { listener: 'front', result: 'proxied' })).toBe(N + 1);
      expect(sum(end, 'ballast_upstream_active_connections')).toBe(0);
    } finally {
      for (const s of sockets) s.destroy();
      await b.stop();
      await backend.close();
    }
  }, 90_000);
});

// --- half-open ---------------------------------------------------------------------

describe('half-open peers', () => {
  let replyAfterFin: net.Server;
  let silentAfterFin: net.Server;
  const backendSockets = new Set<net.Socket>();
  let p: InProcess;
  let tlsPort: number;
  let plainPort: number;
  let silentPort: number;

  beforeAll(async () => {
    // Reads until the client's FIN, then answers with what it read and closes.
    replyAfterFin = net.createServer({ allowHalfOpen: true }, (c) => {
      backendSockets.add(c);
      c.on('close', () => backendSockets.delete(c));
      c.on('error', () => undefined);
      let n = 0;
      c.on('data', (d) => (n += d.length));
      c.on('end', () => setTimeout(() => c.end(`read ${n} bytes after your FIN`), 20));
    });
    // Never answers and never closes, even after the client's FIN.
    silentAfterFin = net.createServer({ allowHalfOpen: true }, (c) => {
      backendSockets.add(c);
      c.on('close', () => backendSockets.delete(c));
      c.on('error', () => undefined);
      c.resume();
    });
    for (const s of [replyAfterFin, silentAfterFin]) await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    [tlsPort, plainPort, silentPort] = (await freePorts(3)) as [number, number, number];
    p = await startInProcess(`
tls:
  ${guardProfile()}
listeners:
  - { name: tls, listen: 127.0.0.1:${tlsPort}, cluster: reply, tls: guard }
  - { name: plain, listen: 127.0.0.1:${plainPort}, cluster: reply }
  - { name: silent, listen: 127.0.0.1:${silentPort}, cluster: silent, idleTimeout: 600ms }
clusters:
  - { name: reply, endpoints: [127.0.0.1:${(replyAfterFin.address() as net.AddressInfo).port}], health: { check: none } }
  - { name: silent, endpoints: [127.0.0.1:${(silentAfterFin.address() as net.AddressInfo).port}], health: { check: none } }
`);
  });
  afterAll(async () => {
    await p?.stop();
    for (const s of backendSockets) s.destroy();
    for (const s of [replyAfterFin, silentAfterFin]) await new Promise((r) => s.close(r));
  });

  it('TLS termination: a client that ends its side still receives the whole reply, and both sides are released', async () => {
    const s = await tlsClient(tlsPort);
    const answer = readUntil(s, (b) => b.toString().includes('FIN'), 5000);
    s.end('x'.repeat(100_000));
    expect((await answer).toString()).toBe('read 100000 bytes after your FIN');
    const l = p.ballast.listeners.get('tls')!;
    await eventually(() => l.active === 0, 'TLS connection released after both FINs');
    expect(p.ballast.clusters.get('reply')!.endpoints[0]!.active).toBe(0);
  });

  it('200 connections half-closing in both orders are each carried to the end, released and counted once', async () => {
    const l = p.ballast.listeners.get('plain')!;
    const proxiedBefore = l.results.get('proxied') ?? 0;
    const results = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const s = await connect(plainPort);
        const body = `client ${i} `.repeat(50);
        const answer = readUntil(s, (b) => b.toString().includes('FIN'), 8000);
        // Half of them trickle their bytes and FIN later.
        if (i % 2 === 0) s.end(body);
        else {
          s.write(body.slice(0, 10));
          await new Promise((r) => setTimeout(r, 20));
          s.end(body.slice(10));
        }
        const got = (await answer).toString();
        await closed(s);
        return got === `read ${body.length} bytes after your FIN`;
      }),
    );
    expect(results.filter((x) => !x)).toEqual([]);
    await eventually(() => l.active === 0, 'all released');
    expect((l.results.get('proxied') ?? 0) - proxiedBefore).toBe(200);
    const e = p.ballast.clusters.get('reply')!.endpoints[0]!;
    expect(e.active).toBe(0);
    expect(e.connections.size).toBe(0);
  });

  it('a half-open connection whose backend goes silent is closed by idleTimeout, on both sides', async () => {
    const s = await connect(silentPort);
    s.end('bye, but I will keep reading');
    // idleTimeout is 600ms; without it the client would wait forever.
    const ms = await closedWithin(s, 15_000);
    expect(ms).toBeLessThan(15_000);
    const l = p.ballast.listeners.get('silent')!;
    await eventually(() => l.active === 0, 'released');
    await eventually(() => backendSockets.size === 0 || [...backendSockets].every((x) => x.destroyed || x.readableEnded), 'backend side closed too');
  });
});

// --- never-reading clients ---------------------------------------------------------

describe('clients that never read while the backend streams', () => {
  let firehose: net.Server;
  const written = new Map<net.Socket, number>();
  let p: InProcess;
  let tlsPort: number;
  let plainPort: number;

  beforeAll(async () => {
    // Writes 64 KiB chunks as fast as each socket accepts them, counting what it wrote.
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    firehose = net.createServer((c) => {
      written.set(c, 0);
      c.on('error', () => undefined);
      c.on('close', () => written.delete(c));
      const pump = () => {
        while (!c.destroyed) {
          written.set(c, (written.get(c) ?? 0) + chunk.length);
          if (!c.write(chunk)) {
            c.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    await new Promise<void>((r) => firehose.listen(0, '127.0.0.1', r));
    [tlsPort, plainPort] = (await freePorts(2)) as [number, number];
    p = await startInProcess(`
tls:
  ${guardProfile()}
listeners:
  - { name: tls, listen: 127.0.0.1:${tlsPort}, cluster: hose, tls: guard }
  - { name: plain, listen: 127.0.0.1:${plainPort}, cluster: hose }
clusters:
  - { name: hose, endpoints: [127.0.0.1:${(firehose.address() as net.AddressInfo).port}], health: { check: none } }
`);
  });
  afterAll(async () => {
    await p?.stop();
    for (const c of written.keys()) c.destroy();
    await new Promise((r) => firehose.close(r));
  });

  it.each(['plain', 'tls'] as const)('%s: each connection holds a bounded buffer in ballast and the backend is throttled', async (kind) => {
    const clients: net.Socket[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const s = kind === 'tls' ? await tlsClient(tlsPort) : await connect(plainPort);
        s.pause(); // never reads
        clients.push(s);
      }
      const l = p.ballast.listeners.get(kind)!;
      await eventually(() => l.connections.size === 20, 'all 20 proxied');
      const total = () => [...written.values()].reduce((a, b) => a + b, 0);
      // Every buffer on the way (the kernel's included, several MB per socket
      // on loopback) fills, then the backend must stall: its writes stop
      // growing. How long the filling takes depends on the machine's load.
      await eventually(
        async () => {
          const t1 = total();
          await new Promise((r) => setTimeout(r, 500));
          return total() - t1 < 20 * 128 * 1024;
        },
        'the backend stalls once every buffer is full',
        20_000,
        0,
      );
      for (const c of l.connections) {
        // What ballast itself holds for this connection: the client socket's
        // pending writes and the upstream's unread input.
        const held = c.client.writableLength + (c.upstream?.readableLength ?? 0);
        expect(held).toBeLessThan(1024 * 1024);
      }
      // The whole pile in ballast stays well below what the backend tried to push.
      const heldAll = [...l.connections].reduce((n, c) => n + c.client.writableLength + (c.upstream?.readableLength ?? 0), 0);
      expect(heldAll).toBeLessThan(20 * 1024 * 1024);
    } finally {
      for (const s of clients) s.destroy();
    }
    await eventually(() => p.ballast.listeners.get(kind)!.active === 0, 'released');
  });
});

// --- file descriptors -----------------------------------------------------------------

describe('out of file descriptors (ballast started with ulimit -n 128)', () => {
  // ballast sizes its listeners to the descriptor limit it runs under: over
  // what the limit allows, clients are refused by the server itself and
  // counted as fd_limit, before libuv would have to accept and silently close
  // them (and before health checks and upstream connects starve).
  const NOFILE = 128;
  let echo: TestServer;
  let b: LimitedBallast;
  let admin: number;
  let port: number;
  const seen = { refused: 0, accepted: 0, maxFds: 0, goodExchangesWhileFull: 0, goodFailuresWhileFull: 0, servedAfterRelease: false };
  let metrics: Series[] = [];

  beforeAll(async () => {
    echo = await startEchoServer();
    [port, admin] = (await freePorts(2)) as [number, number];
    const file = writeConfig(
      dir,
      `
admin: { listen: 127.0.0.1:${admin} }
log: { level: warn }
tls:
  ${guardProfile(', handshakeTimeout: 60s')}
listeners:
  - { name: guard, listen: 127.0.0.1:${port}, cluster: back, tls: guard }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 2 } }
`,
      'nofile.yaml',
    );
    b = await startLimited(file, NOFILE, admin);
    const good: tls.TLSSocket[] = [];
    const idle: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = await tlsClient(port);
        await echoes(s, `hello ${i}`);
        good.push(s);
      }
      // A flood of connections that never start their handshake: far more
      // than the descriptor limit would hold.
      for (let i = 0; i < 2 * NOFILE; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        if ((await closedWithin(s, 200)) < 200) seen.refused++;
        else {
          seen.accepted++;
          idle.push(s);
        }
        seen.maxFds = Math.max(seen.maxFds, fdCount(b.pid));
      }
      // Hold the flood for several health-check rounds while the good clients talk.
      const until = Date.now() + 1500;
      while (Date.now() < until) {
        for (const [i, s] of good.entries()) {
          try {
            await echoes(s, `full ${i} ${Date.now()}`, 1000);
            seen.goodExchangesWhileFull++;
          } catch {
            seen.goodFailuresWhileFull++;
          }
        }
        seen.maxFds = Math.max(seen.maxFds, fdCount(b.pid));
      }
      // Let the flood go: new clients are served again.
      for (const s of idle.splice(0)) s.resetAndDestroy();
      await eventually(
        async () => {
          const s = await tlsClient(port);
          try {
            await echoes(s, 'recovered', 1000);
            return true;
          } finally {
            s.destroy();
          }
        },
        'a new client served after the flood',
        5000,
      );
      seen.servedAfterRelease = true;
      metrics = await scrape(admin);
    } finally {
      for (const s of [...good, ...idle]) s.destroy();
    }
  }, 60_000);
  afterAll(async () => {
    await b?.stop();
    await echo?.close();
  });

  it('never runs out: refuses the flood below the limit, keeps serving the connections it has, and serves new clients after', () => {
    expect(seen.accepted).toBeGreaterThan(10);
    expect(seen.refused).toBeGreaterThan(NOFILE / 2);
    expect(seen.maxFds).toBeLessThan(NOFILE);
    expect(seen.goodFailuresWhileFull).toBe(0);
    expect(seen.goodExchangesWhileFull).toBeGreaterThan(3);
    expect(seen.servedAfterRelease).toBe(true);
  });

  it('counts every refused client as fd_limit, not as an upstream failure', () => {
    expect(sum(metrics, 'ballast_listener_connections_total', { result: 'fd_limit' })).toBe(seen.refused);
    expect(sum(metrics, 'ballast_listener_connections_total', { result: 'connect_failed' })).toBe(0);
  });

  it('does not blame the endpoint (no down, no ejection, no failure)', () => {
    const blame = {
      down: sum(metrics, 'ballast_upstream_state_changes_total', { state: 'down' }),
      ejected: sum(metrics, 'ballast_upstream_ejections_total'),
      failures: metrics.filter((s) => s.name === 'ballast_upstream_failures_total' && s.labels.outcome !== 'local_error').reduce((n, s) => n + s.value, 0),
      failedChecks: metrics.filter((s) => s.name === 'ballast_upstream_health_checks_total' && !['ok', 'inconclusive', 'local_error'].includes(s.labels.result!)).reduce((n, s) => n + s.value, 0),
    };
    expect(blame).toEqual({ down: 0, ejected: 0, failures: 0, failedChecks: 0 });
  });
});

describe('out of file descriptors when connecting upstream (EMFILE on connect)', () => {
  it('closes that client at once, counts local_error, blames no endpoint, and serves the next client once descriptors are back', async () => {
    // The listener's own budget cannot see this coming: the limit is lowered
    // under a running ballast (prlimit on its PID) so that accepting the client
    // takes the last descriptor and the upstream socket finds none.
    const echo = await startEchoServer();
    const [port, admin] = (await freePorts(2)) as [number, number];
    const file = writeConfig(
      dir,
      `
admin: { listen: 127.0.0.1:${admin} }
log: { level: warn }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: none } }
`,
      'emfile-connect.yaml',
    );
    const HARD = 1024;
    const b = await startLimited(file, HARD, admin);
    try {
      // One exchange first, so everything ballast opens lazily is open.
      const warm = await connect(port);
      await echoesPlain(warm, 'warm');
      warm.destroy();
      await eventually(async () => sum(await scrape(admin), 'ballast_listener_active_connections') === 0, 'warm-up connection released');
      // New descriptors take the lowest free numbers: the client's gets the
      // first, the upstream socket would get the second. A soft limit equal
      // to that second number lets the accept through and fails the connect.
      // A descriptor ballast closes meanwhile (an idle admin keep-alive) makes
      // room for both, and the client is proxied: then try again.
      let refused = false;
      for (let attempt = 0; attempt < 5 && !refused; attempt++) {
        const [, second] = freeFdNumbers(openFds(b.pid), 2);
        execFileSync('prlimit', ['--pid', String(b.pid), `--nofile=${second}:${HARD}`]);
        try {
          const s = await connect(port);
          s.on('error', () => undefined);
          s.write('probe');
          // Echoed (proxied: the connect found a descriptor), closed by ballast
          // (a FIN or a reset), or neither: hanging is the failure.
          const outcome = await new Promise<'proxied' | 'closed' | 'hung'>((resolve) => {
            let got = '';
            const timer = setTimeout(() => resolve('hung'), 3000);
            const done = (o: 'proxied' | 'closed') => {
              clearTimeout(timer);
              resolve(o);
            };
            s.on('data', (d: Buffer) => {
              got += d.toString();
              if (got === 'probe') done('proxied');
            });
            for (const ev of ['end', 'close', 'error']) s.once(ev, () => done('closed'));
          });
          expect(outcome).not.toBe('hung');
          refused = outcome === 'closed';
          s.destroy();
        } finally {
          execFileSync('prlimit', ['--pid', String(b.pid), `--nofile=${HARD}:${HARD}`]);
        }
      }
      expect(refused).toBe(true);
      const m = await scrape(admin);
      expect(sum(m, 'ballast_listener_connections_total', { result: 'local_error' })).toBe(1);
      expect(sum(m, 'ballast_listener_connections_total', { result: 'connect_failed' })).toBe(0);
      expect(sum(m, 'ballast_upstream_failures_total')).toBe(0);
      expect(sum(m, 'ballast_upstream_ejections_total')).toBe(0);
      expect(b.out()).toContain('out of file descriptors connecting upstream');
      // Descriptors are back: the next client is served.
      const next = await connect(port);
      await echoesPlain(next, 'after');
      next.destroy();
    } finally {
      await b.stop();
      await echo.close();
    }
  });
});

// --- config files ------------------------------------------------------------------------

describe('malformed config files', () => {
  let echo: TestServer;
  let blocker: net.Server;
  let busy: number;
  let missingDir: string;

  beforeAll(async () => {
    echo = await startEchoServer();
    blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    busy = (blocker.address() as net.AddressInfo).port;
    missingDir = path.join(dir, 'cert-dir');
    mkdirSync(missingDir, { recursive: true });
    writeFileSync(path.join(dir, 'not-a-cert.pem'), 'this is not a certificate\n');
  });
  afterAll(async () => {
    await echo?.close();
    await new Promise((r) => blocker?.close(r));
  });

  /** The config every case starts from: a TLS listener in front of the echo server. */
  function good(port: number, admin: number, o: { guard?: string; tlsSection?: string; listener?: string; cluster?: string; extraClusters?: string; top?: string } = {}): string {
    const f = pki.files;
    return `${o.top ?? ''}
admin: { listen: 127.0.0.1:${admin} }
log: { level: info }
tls:
${o.tlsSection ?? `  guard: { cert: ${f['ballast-server.crt']}, key: ${f['ballast-server.key']}, clientCA: ${f['ca.crt']}${o.guard ?? ''} }`}
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back, tls: guard${o.listener ?? ''} }
clusters:
  - name: back
    endpoints: [127.0.0.1:${echo.port}]
    health: { check: tcp, interval: 200ms, timeout: 100ms }
${o.cluster ?? ''}${o.extraClusters ?? ''}`;
  }

  interface Case {
    name: string;
    /** File contents, or an action on the path. */
    content: (port: number, admin: number) => string | Buffer | { missing: true } | { directory: true };
    /** Exit code at start. */
    exit: number;
    /** Text the one-line error must contain (key path and what is wrong). */
    message: string | RegExp;
    /** Also tried as a reload of a running ballast. */
    reload: boolean;
    /** Also started with `run` (false: pure schema cases that test/unit/config.test.ts covers at parse level; they still go through the reload path here). */
    start?: boolean;
  }

  const f = () => pki.files;
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]', ...'bcdefgh'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(', ')}]`), 'listeners: [*h]', 'clusters: []'].join('\n');
  const CASES: Case[] = [
    { name: 'bad YAML (an unclosed flow map)', content: (port) => `listeners:\n  - { name: front, listen: 127.0.0.1:${port}\nclusters: []\n`, exit: 2, message: /line \d+, column \d+: invalid YAML/, reload: true },
    { name: 'a YAML alias bomb (billion laughs)', content: () => bomb, exit: 2, message: /alias/i, reload: true },
    { name: 'binary garbage', content: () => Buffer.from([0x00, 0xff, 0xfe, 0x7b, 0x0a, 0x5b, 0x00, 0x22, 0x0a, 0x09, 0x3a, 0x80, 0x81]), exit: 2, message: /invalid YAML|expected a map/, reload: true },
    { name: 'an empty file', content: () => '', exit: 2, message: 'expected a map with listeners and clusters at the top level', reload: true },
    { name: 'a wrong type (maxConnections: "lots")', content: (p, a) => good(p, a, { listener: ', maxConnections: lots' }), exit: 2, message: 'listeners[0].maxConnections: expected a whole number, got "lots"', reload: true },
    { name: 'a map where a list belongs (endpoints)', content: (p, a) => good(p, a).replace(`endpoints: [127.0.0.1:${echo.port}]`, `endpoints: { first: 127.0.0.1:${echo.port} }`), exit: 2, message: 'clusters[0].endpoints:', reload: true, start: false },
    { name: 'an unknown key (a typo in health)', content: (p, a) => good(p, a).replace('timeout: 100ms', 'timeout: 100ms, intervall: 1s'), exit: 2, message: 'clusters[0].health: unknown key "intervall" (did you mean "interval"?)', reload: true },
    { name: 'duplicate cluster names', content: (p, a) => good(p, a, { extraClusters: '  - { name: back, endpoints: [127.0.0.1:1], health: { check: none } }\n' }), exit: 2, message: 'clusters: the name "back" is used twice', reload: true, start: false },
    { name: 'a dangling reference (health.tls to a missing profile)', content: (p, a) => good(p, a).replace('health: { check: tcp, interval: 200ms, timeout: 100ms }', 'health: { check: https, interval: 200ms, timeout: 100ms, tls: nope }'), exit: 2, message: 'clusters[0].health.tls: no TLS profile named "nope" (have: guard)', reload: true, start: false },
    { name: 'a bad duration (idleTimeout: 10 minutes)', content: (p, a) => good(p, a, { listener: ', idleTimeout: 10 minutes' }), exit: 2, message: 'listeners[0].idleTimeout: expected a duration like "500ms" or "2s", got "10 minutes"', reload: true, start: false },
    { name: 'a certificate file that does not exist', content: (p, a) => good(p, a).replace(f()['ballast-server.crt']!, path.join(dir, 'missing.crt')), exit: 2, message: /tls\.guard\.cert: cannot read \S*\/missing\.crt: no such file/, reload: true },
    { name: 'a certificate path that is a directory', content: (p, a) => good(p, a).replace(f()['ballast-server.crt']!, missingDir), exit: 2, message: /tls\.guard\.cert: cannot read \S*\/cert-dir: EISDIR/, reload: true },
    { name: 'a key that does not match its certificate', content: (p, a) => good(p, a).replace(f()['ballast-server.key']!, f()['ballast-client.key']!), exit: 2, message: 'tls.guard.key:', reload: true },
    { name: 'a certificate file that is not PEM', content: (p, a) => good(p, a).replace(f()['ballast-server.crt']!, path.join(dir, 'not-a-cert.pem')), exit: 2, message: 'tls.guard.cert: ', reload: true },
    { name: 'an expired server certificate', content: (p, a) => good(p, a).replace(f()['ballast-server.crt']!, f()['expired.crt']!).replace(f()['ballast-server.key']!, f()['expired.key']!), exit: 2, message: /tls\.guard\.cert: .* expired on/, reload: true },
    { name: 'a private key where the client CA belongs', content: (p, a) => good(p, a).replace(`clientCA: ${f()['ca.crt']}`, `clientCA: ${f()['apiserver.key']}`), exit: 2, message: 'tls.guard.clientCA: ', reload: true },
    { name: 'a CRL file that is not a CRL', content: (p, a) => good(p, a, { guard: `, crl: ${f()['ca.crt']}` }), exit: 2, message: 'tls.guard.crl: ', reload: true },
    { name: 'a TLS profile used for termination without cert', content: (p, a) => good(p, a, { tlsSection: `  guard: { clientCA: ${f()['ca.crt']} }` }), exit: 2, message: 'listeners[0].tls: profile "guard" needs cert and key to terminate TLS', reload: true, start: false },
    { name: 'an unknown TLS profile name', content: (p, a) => good(p, a, { cluster: '    tls: to-etcd\n' }), exit: 2, message: 'clusters[0].tls: no TLS profile named "to-etcd" (have: guard)', reload: true },
    { name: 'a listener port in use', content: (_p, a) => good(busy, a), exit: 1, message: /listeners\.front: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/, reload: true },
    { name: 'an admin port in use', content: (p) => good(p, busy), exit: 1, message: /admin\.listen: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/, reload: false },
    { name: 'a config file that does not exist', content: () => ({ missing: true }), exit: 2, message: 'cannot read the config file: ENOENT', reload: true },
    { name: 'a config path that is a directory', content: () => ({ directory: true }), exit: 2, message: 'cannot read the config file: EISDIR', reload: true },
  ];

  function place(file: string, content: ReturnType<Case['content']>): void {
    rmSync(file, { recursive: true, force: true });
    if (typeof content === 'string' || Buffer.isBuffer(content)) writeFileSync(file, content);
    else if ('directory' in content) mkdirSync(file);
    // missing: nothing there
  }

  describe('at start: a non-zero exit and one line naming the key path', () => {
    it.concurrent.each(CASES.filter((c) => c.start !== false).map((c, i) => [c.name, c, i] as const))('%s', async (_name, c, i) => {
      const [port, admin] = (await freePorts(2)) as [number, number];
      const file = path.join(dir, `start-${i}.yaml`);
      place(file, c.content(port, admin));
      const r = await runCliToEnd(['run', '--config', file], { timeoutMs: 15_000 });
      const lines = r.stderr.split('\n').filter(Boolean);
      expect({ code: r.code, lines: lines.length }).toEqual({ code: c.exit, lines: 1 });
      expect(lines[0]).toMatch(/^ballast: /);
      if (typeof c.message === 'string') expect(lines[0]).toContain(c.message);
      else expect(lines[0]).toMatch(c.message);
      // Nothing was left listening.
      await expect(connect(port)).rejects.toThrow(/ECONNREFUSED/);
    });
  });

  describe('at reload, under load: each refused and counted, the old config keeps serving without a dropped connection', () => {
    let b: ChildBallast;
    let file: string;
    let port: number;
    let admin: number;
    const load = { ok: 0, failures: [] as string[], heldOk: 0, running: true, done: Promise.resolve() as Promise<unknown> };
    let held: tls.TLSSocket[] = [];
    let failedSoFar = 0;

    const status = async () => (await fetch(`http://127.0.0.1:${admin}/status`).then((r) => r.json())) as { reloads: { ok: number; failed: number; lastError: string | null } };

    beforeAll(async () => {
      [port, admin] = (await freePorts(2)) as [number, number];
      file = writeConfig(dir, good(port, admin), 'reload-under-load.yaml');
      b = runCli(['run', '--config', file]);
      await b.waitForLog(/ballast .* started/);
      held = await Promise.all(Array.from({ length: 4 }, () => tlsClient(port)));
      const heldLoop = Promise.all(
        held.map(async (s, i) => {
          for (let n = 0; load.running; n++) {
            try {
              await echoes(s, `held-${i}-${n};`, 3000);
              load.heldOk++;
            } catch (err) {
              load.failures.push(`held ${i}: ${(err as Error).message}`);
              return;
            }
            await new Promise((r) => setTimeout(r, 20));
          }
        }),
      );
      const churn = (async () => {
        while (load.running) {
          try {
            const s = await tlsClient(port);
            await echoes(s, 'churn', 3000);
            s.destroy();
            load.ok++;
          } catch (err) {
            load.failures.push(`new connection: ${(err as Error).message}`);
          }
        }
      })();
      load.done = Promise.all([heldLoop, churn]);
      await eventually(() => load.ok > 10 && load.heldOk > 10, 'load running');
    });
    afterAll(async () => {
      load.running = false;
      await load.done;
      for (const s of held) s.destroy();
      b?.kill('SIGTERM');
      await b?.exited;
    });

    for (const c of CASES.filter((x) => x.reload)) {
      it(`refuses ${c.name}`, async () => {
        const before = await status();
        place(file, c.content(port, admin));
        b.kill('SIGHUP');
        const st = await eventually(async () => {
          const s = await status();
          return s.reloads.failed > before.reloads.failed && s.reloads.lastError !== null && (typeof c.message === 'string' ? s.reloads.lastError.includes(c.message) : c.message.test(s.reloads.lastError)) ? s : undefined;
        }, `reload refused with "${String(c.message)}"`, 5000, 20);
        expect(st.reloads.ok).toBe(0);
        // The file watcher reloads the same change once more: let it land before the next case.
        await new Promise((r) => setTimeout(r, 350));
        failedSoFar = (await status()).reloads.failed;
        expect(load.failures).toEqual([]);
      });
    }

    it('saw zero failures on held and new connections, counts every refusal in /metrics, and still reloads a good file', async () => {
      const okBefore = load.ok;
      await eventually(() => load.ok > okBefore + 10, 'still serving new connections');
      const m = await scrape(admin);
      const reloadCases = CASES.filter((x) => x.reload).length;
      expect(failedSoFar).toBeGreaterThanOrEqual(reloadCases);
      expect(sum(m, 'ballast_config_reloads_total', { result: 'failed' })).toBe(failedSoFar);
      expect(sum(m, 'ballast_config_reloads_total', { result: 'ok' })).toBe(0);
      place(file, good(port, admin));
      b.kill('SIGHUP');
      await eventually(async () => (await status()).reloads.ok >= 1, 'a good file reloads');
      expect(load.failures).toEqual([]);
      expect(held.every((s) => !s.destroyed)).toBe(true);
    });

    it('gives each refused reload a reason label in /metrics (not only a count)', async () => {
      const m = await scrape(admin);
      const failed = m.filter((s) => s.name === 'ballast_config_reloads_total' && s.labels.result === 'failed' && s.value > 0);
      expect(failed.length).toBeGreaterThan(0);
      expect(failed.map((s) => Object.keys(s.labels).filter((k) => k !== 'result'))).not.toContainEqual([]);
    });
  });

  describe('good reloads that touch what the listener is bound with', () => {
    it('a changed TLS profile keeps the listener serving, its counters and its open connections', async () => {
      const [port, admin] = (await freePorts(2)) as [number, number];
      const file = writeConfig(dir, good(port, admin, { guard: ', handshakeTimeout: 5s' }), 'tls-change.yaml');
      const b = runCli(['run', '--config', file]);
      const failures: string[] = [];
      let ok = 0;
      let running = true;
      let heldConn: tls.TLSSocket | undefined;
      try {
        await b.waitForLog(/ballast .* started/);
        heldConn = await tlsClient(port);
        await echoes(heldConn, 'held');
        const churn = (async () => {
          while (running) {
            try {
              const s = await tlsClient(port);
              await echoes(s, 'x', 3000);
              s.destroy();
              ok++;
            } catch (err) {
              failures.push((err as Error).message);
            }
          }
        })();
        await eventually(() => ok > 20, 'load running');
        const before = await scrape(admin);
        const okAtScrape = ok;
        // Only the handshake timeout changes: the certificates and the address stay.
        writeFileSync(file, good(port, admin, { guard: ', handshakeTimeout: 6s' }));
        b.kill('SIGHUP');
        await eventually(async () => sum(await scrape(admin), 'ballast_config_reloads_total', { result: 'ok' }) >= 1, 'reloaded');
        const atReload = ok;
        await eventually(() => ok > atReload + 20, 'serving after the reload');
        running = false;
        await churn;
        await new Promise((r) => setTimeout(r, 300));
        const after = await scrape(admin);
        await echoes(heldConn, 'still held');
        expect({
          failures,
          // A counter never goes backwards: what was counted before plus the connections made since.
          proxiedNotReset: sum(after, 'ballast_listener_connections_total', { listener: 'front', result: 'proxied' }) >= sum(before, 'ballast_listener_connections_total', { listener: 'front', result: 'proxied' }) + (ok - okAtScrape),
          heldStillCounted: sum(after, 'ballast_listener_active_connections', { listener: 'front' }) === 1,
        }).toEqual({ failures: [], proxiedNotReset: true, heldStillCounted: true });
      } finally {
        running = false;
        heldConn?.destroy();
        b.kill('SIGTERM');
        await b.exited;
      }
    });

    it('a changed admin.listen is applied or refused, never counted as a successful reload while ignored', async () => {
      const [port, admin, admin2] = (await freePorts(3)) as [number, number, number];
      const file = writeConfig(dir, good(port, admin), 'admin-change.yaml');
      const b = runCli(['run', '--config', file]);
      try {
        await b.waitForLog(/ballast .* started/);
        writeFileSync(file, good(port, admin2));
        b.kill('SIGHUP');
        await b.waitForLog(/config reloaded|config reload refused/);
        await new Promise((r) => setTimeout(r, 500));
        const atNew = await fetch(`http://127.0.0.1:${admin2}/healthz`).then((r) => r.status, () => 'unreachable');
        const atOld = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text(), () => '');
        const refused = /ballast_config_reloads_total\{result="failed"[^}]*\} [1-9]/.test(atOld);
        expect({ movedToNewPort: atNew === 200, orRefused: refused }).not.toEqual({ movedToNewPort: false, orRefused: false });
      } finally {
        b.kill('SIGTERM');
        await b.exited;
      }
    });
  });
});

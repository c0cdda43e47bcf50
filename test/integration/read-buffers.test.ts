import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { limitPrivateReadBuffers, PRIVATE_MAX, readBufferStats, userBufferSupported } from '../../src/listener/read-buffers.js';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { freePort } from '../support/ports.js';
import { connect, eventually, startSinkServer } from '../support/servers.js';

// Plain sockets read into ballast's own buffers (src/listener/read-buffers.ts):
// one shared buffer copied out of, and private buffers written from directly,
// which must never be overwritten while a write still holds them. These tests
// push random bytes both ways through real sockets with readers that stall,
// so partial writes happen, and compare digests end to end.

let running: InProcess[] = [];
const closers: (() => Promise<void>)[] = [];

afterEach(async () => {
  limitPrivateReadBuffers(PRIVATE_MAX);
  for (const r of running) await r.stop();
  for (const c of closers.splice(0)) await c();
  running = [];
});

async function proxyTo(upstreamPort: number): Promise<{ port: number; p: InProcess }> {
  const port = await freePort();
  const p = await startInProcess(`
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [127.0.0.1:${upstreamPort}]
    health: { check: none }
`);
  running.push(p);
  return { port, p };
}

/** Deterministic sizes and pauses (mulberry32), so a failure can be rerun as it was. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const stallEvery = (rnd: () => number) => 1024 * 1024 + Math.floor(rnd() * 1024 * 1024);
const stallMs = (rnd: () => number) => 20 + Math.floor(rnd() * 40);

/**
 * Echoes every byte back, but stops reading for 20-60 ms after every 1-2 MiB:
 * long enough for the kernel's buffers between ballast and it to fill, so
 * ballast's writes towards it go partial.
 */
async function startStallingEcho(seed: number): Promise<number> {
  const rnd = prng(seed);
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let until = stallEvery(rnd);
    s.on('data', (d: Buffer) => {
      const full = !s.write(d);
      until -= d.length;
      if (until <= 0) {
        until = stallEvery(rnd);
        s.pause();
        setTimeout(() => (s.writableNeedDrain ? s.once('drain', () => s.resume()) : s.resume()), stallMs(rnd));
      } else if (full) {
        s.pause();
        s.once('drain', () => s.resume());
      }
    });
    s.on('end', () => s.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }));
  return (server.address() as net.AddressInfo).port;
}

/** Sends `total` random bytes in chunks of random size and reads the echo with stalls; resolves with both digests. */
async function roundTrip(port: number, total: number, seed: number): Promise<{ sent: string; got: string; gotBytes: number }> {
  const rnd = prng(seed);
  const s = await connect(port);
  const sentHash = createHash('sha256');
  const gotHash = createHash('sha256');
  let gotBytes = 0;
  let until = stallEvery(rnd);
  const done = new Promise<void>((resolve, reject) => {
    s.on('data', (d: Buffer) => {
      gotHash.update(d);
      gotBytes += d.length;
      until -= d.length;
      if (until <= 0) {
        // Stall as the echo does, so ballast's writes to us go partial too.
        until = stallEvery(rnd);
        s.pause();
        setTimeout(() => s.resume(), stallMs(rnd));
      }
    });
    s.on('end', () => resolve());
    s.on('error', reject);
  });
  let sent = 0;
  while (sent < total) {
    // Mostly small writes (the shared buffer), now and then large bursts (private buffers).
    const size = Math.min(total - sent, rnd() < 0.7 ? 1 + Math.floor(rnd() * 3000) : 64 * 1024 + Math.floor(rnd() * 400 * 1024));
    const chunk = randomBytes(size);
    sentHash.update(chunk);
    sent += size;
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
    if (rnd() < 0.05) await sleep(Math.floor(rnd() * 5));
  }
  s.end();
  await done;
  return { sent: sentHash.digest('hex'), got: gotHash.digest('hex'), gotBytes };
}

describe('read buffers', () => {
  it('accepted plain sockets read into ballast buffers on this Node, and large reads lease a private one', async () => {
    // If a Node release renames the fields behind `onread`, ballast still
    // works (on 'data' events) but loses its fast path: this test says so.
    expect(userBufferSupported).toBe(true);
    const sink = await startSinkServer({ paused: false });
    closers.push(() => sink.close());
    const { port } = await proxyTo(sink.port);
    const s = await connect(port);
    // Upload only: the upstream sends nothing, so a leased buffer can only
    // be the client socket's, which is an accepted (adopted) socket.
    const chunk = Buffer.alloc(256 * 1024, 3);
    let maxLeased = 0;
    const deadline = Date.now() + 10_000;
    while (maxLeased === 0 && Date.now() < deadline) {
      if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
      maxLeased = Math.max(maxLeased, readBufferStats().leased);
    }
    expect(maxLeased).toBeGreaterThan(0);
    s.end();
    await eventually(() => readBufferStats().leased === 0, 'private buffers given back when the connection closed');
  });

  it('carries random bytes intact both ways through stalling readers, on shared and private buffers at once', async () => {
    // A pool of 3 for 8 connections: some directions read into private
    // buffers, the rest into the shared one, and they trade places as reads
    // grow and shrink.
    limitPrivateReadBuffers(3);
    const echoPort = await startStallingEcho(7);
    const { port, p } = await proxyTo(echoPort);
    let maxLeased = 0;
    const sampler = setInterval(() => (maxLeased = Math.max(maxLeased, readBufferStats().leased)), 5);
    const total = 16 * 1024 * 1024;
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => roundTrip(port, total, 100 + i)));
    clearInterval(sampler);
    for (const r of results) {
      expect(r.gotBytes).toBe(total);
      expect(r.got).toBe(r.sent);
    }
    expect(maxLeased).toBeGreaterThan(0);
    expect(maxLeased).toBeLessThanOrEqual(3);
    const l = p.ballast.listeners.get('front')!;
    await eventually(() => l.active === 0, 'connections closed');
    expect(readBufferStats().leased).toBe(0);
    expect(l.results.get('proxied')).toBe(8);
  });
});

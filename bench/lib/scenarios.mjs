// Scenarios: what load is sent, to which kind of backend, and which metrics
// come out. A scenario is
//
//   {
//     id, title, load(ctx),             // one-line descriptions for the report
//     kind: 'http' | 'bulk',            // picks the metric rows (report.mjs)
//     setup(ctx) -> { backend: {host, port, ...}, pid, stop() },
//     measure(ctx, target, backend, { warmup, duration, meter }) -> { r, cpu },
//   }
//
// run.mjs starts the backend, builds the targets (lib/targets.mjs) in front
// of it, and calls measure() for direct, haproxy, ballast, round after round.
// A new scenario (mTLS, etcd, failover) is one more object in SCENARIOS; if it
// needs differently configured proxies, give it a `targets(backend, opts)`.

import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { bulkLoad, etcdLoad, httpLoad, tlsLoad } from './loadgen.mjs';
import { etcdTargets, etcdVersion, startEtcdBackend } from './etcd.mjs';
import { freePort, spawnTracked, stopChild, waitListening } from './proc.mjs';
import { mtlsTargets } from './targets.mjs';

const BENCH = new URL('..', import.meta.url).pathname;

async function startHttpBackend() {
  const port = await freePort();
  const child = spawnTracked(process.execPath, [join(BENCH, 'http-backend.mjs'), '--port', String(port)], { name: 'http-backend' });
  await waitListening('127.0.0.1', port, { child });
  return { backend: { host: '127.0.0.1', port }, pid: child.pid, stop: () => stopChild(child) };
}

async function startSink() {
  const port = await freePort();
  const control = await freePort();
  const child = spawnTracked(process.execPath, [join(BENCH, 'sink.mjs'), '--port', String(port), '--control', String(control)], { name: 'sink' });
  await waitListening('127.0.0.1', control, { child });
  return { backend: { host: '127.0.0.1', port, control }, pid: child.pid, stop: () => stopChild(child) };
}

/** HTTP scenarios: a warm-up run (unmeasured), then the measured run. */
function httpMeasure({ connections, close }) {
  return async (ctx, target, _backend, { warmup, duration, meter }) => {
    const base = { tool: ctx.loadgen, target, connections, close, root: ctx.root };
    if (warmup > 0) await httpLoad({ ...base, duration: warmup });
    return httpLoad({ ...base, duration, meter });
  };
}

/** Bulk scenarios: the client warms up inside its own run (see bulk-client.mjs). */
function bulkMeasure({ streams }) {
  return (ctx, target, backend, { warmup, duration, meter }) => bulkLoad({ target, sink: backend, streams, warmup, duration, meter });
}

/** A PKI made by `ballast certs`: the mTLS scenarios' backend, proxies and client. */
function makePki(root) {
  const dir = mkdtempSync(join(tmpdir(), 'ballast-bench-pki-'));
  execFileSync(process.execPath, [join(root, 'dist/cli.js'), 'certs', '--out', dir, '--server', 'backend:127.0.0.1,localhost', '--server', 'proxy:127.0.0.1,localhost', '--client', 'proxy-client', '--client', 'bench-client'], { stdio: 'ignore' });
  const f = (n) => join(dir, n);
  // HAProxy wants certificate and key in one PEM.
  writeFileSync(f('proxy.pem'), readFileSync(f('proxy.crt'), 'utf8') + readFileSync(f('proxy.key'), 'utf8'));
  writeFileSync(f('proxy-client.pem'), readFileSync(f('proxy-client.crt'), 'utf8') + readFileSync(f('proxy-client.key'), 'utf8'));
  return { dir, ca: f('ca.crt'), backendCert: f('backend.crt'), backendKey: f('backend.key'), proxyCert: f('proxy.crt'), proxyKey: f('proxy.key'), proxyPem: f('proxy.pem'), proxyClientCert: f('proxy-client.crt'), proxyClientKey: f('proxy-client.key'), proxyClientPem: f('proxy-client.pem'), clientCert: f('bench-client.crt'), clientKey: f('bench-client.key') };
}

async function startTlsBackend(ctx) {
  const pki = makePki(ctx.root);
  const port = await freePort();
  const child = spawnTracked(process.execPath, [join(BENCH, 'http-backend.mjs'), '--port', String(port), '--cert', pki.backendCert, '--key', pki.backendKey, '--ca', pki.ca], { name: 'tls-backend' });
  await waitListening('127.0.0.1', port, { child });
  const stop = async () => {
    await stopChild(child);
    rmSync(pki.dir, { recursive: true, force: true });
  };
  return { backend: { host: '127.0.0.1', port, pki }, pid: child.pid, stop };
}

function tlsMeasure({ connections, close, resume }) {
  return (ctx, target, backend, { warmup, duration, meter }) => tlsLoad({ target, pki: backend.pki, connections, warmup, duration, close, resume, meter });
}

const wrkLine = (ctx, c, extra = '') =>
  ctx.loadgen === 'wrk' ? `wrk -t1 -c${c} --latency${extra}` : extra ? `bench/connect-client.mjs, concurrency ${c}` : `autocannon -c ${c}`;

export const SCENARIOS = [
  {
    id: 'rr',
    kind: 'http',
    title: 'small request/response over 32 kept-alive connections',
    load: (ctx) => `${wrkLine(ctx, 32)}; GET → 200 with 100-byte body (raw net backend)`,
    setup: startHttpBackend,
    measure: httpMeasure({ connections: 32, close: false }),
  },
  {
    id: 'bulk1',
    kind: 'bulk',
    title: 'bulk upload, 1 stream',
    load: () => 'bench/bulk-client.mjs: 1 connection writing 64 KiB chunks; bytes counted at the sink',
    setup: startSink,
    measure: bulkMeasure({ streams: 1 }),
  },
  {
    id: 'bulk32',
    kind: 'bulk',
    title: 'bulk upload, 32 streams',
    load: () => 'bench/bulk-client.mjs: 32 connections writing 64 KiB chunks; bytes counted at the sink',
    setup: startSink,
    measure: bulkMeasure({ streams: 32 }),
  },
  {
    id: 'connect',
    kind: 'http',
    title: 'new connection per request (Connection: close), concurrency 16',
    load: (ctx) => `${wrkLine(ctx, 16, " -H 'Connection: close'")}; one request per TCP connection`,
    setup: startHttpBackend,
    measure: httpMeasure({ connections: 16, close: true }),
  },
  {
    id: 'mtls-rr',
    kind: 'http',
    title: 'mTLS termination + origination, small request/response over 32 kept-alive connections',
    load: () => 'bench/tls-client.mjs -c 32 with a client certificate; proxies verify it, then connect to an mTLS backend with their own',
    setup: startTlsBackend,
    targets: mtlsTargets,
    measure: tlsMeasure({ connections: 32, close: false, resume: false }),
  },
  {
    id: 'mtls-handshake',
    kind: 'http',
    title: 'mTLS handshakes: a new TLS connection per request (client resumes sessions), concurrency 16',
    load: () => 'bench/tls-client.mjs -c 16 --close --resume; each request a new client TLS connection and a new upstream one',
    setup: startTlsBackend,
    targets: mtlsTargets,
    measure: tlsMeasure({ connections: 16, close: true, resume: true }),
  },
  {
    id: 'etcd',
    kind: 'etcd',
    title: 'etcd through the proxy: 16 etcd3 clients, small puts and serializable ranges, real 3-member cluster',
    load: () => `bench/etcd-client.mjs --clients 16: each client its own gRPC connection, put 128 B then serializable get, in a loop; ${etcdVersion()}, plain-text client URLs, data on /dev/shm`,
    setup: startEtcdBackend,
    targets: etcdTargets,
    measure: (ctx, target, _backend, { warmup, duration, meter }) => etcdLoad({ target, clients: 16, warmup, duration, meter }),
  },
];

// Targets: the things a load generator is pointed at. Each target has the same
// shape so a scenario can run identical load against all of them:
//
//   { name, host, port, pid, start(), stop(), describe() }
//
// `pid` is the proxy process whose CPU time is measured (undefined for
// direct). To add a target kind (e.g. ballast with TLS, envoy), write a
// function returning that shape; to add a scenario that needs TLS or several
// endpoints, pass the extra options through `opts` (see makeTargets).

import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, spawnTracked, stopChild, waitListening } from './proc.mjs';

import { node24 } from './node24.mjs';

/** The backend itself: the physical limit of client + backend on this machine. */
export function directTarget(backend) {
  return {
    name: 'direct',
    host: backend.host,
    port: backend.port,
    pid: undefined,
    async start() {},
    async stop() {},
    describe: () => 'client → backend',
  };
}

export function haproxyConfig({ port, backend, threads = 1 }) {
  return `# written by bench/lib/targets.mjs
global
    nbthread ${threads}
    maxconn 8000
    # no 'log' line: haproxy does not log

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn 8000

frontend front
    bind 127.0.0.1:${port}
    default_backend back

backend back
    server s1 ${backend.host}:${backend.port}
`;
}

/** haproxy -db (foreground), mode tcp, one thread, one server. */
export function haproxyTarget(backend, { workdir, tag = 'haproxy', workers = 1 }) {
  let child;
  const t = {
    name: 'haproxy',
    host: '127.0.0.1',
    port: 0,
    pid: undefined,
    async start() {
      t.port = await freePort();
      const cfg = join(workdir, `${tag}.cfg`);
      writeFileSync(cfg, haproxyConfig({ port: t.port, backend, threads: workers }));
      child = spawnTracked('haproxy', ['-f', cfg, '-db'], { name: 'haproxy' });
      t.pid = child.pid;
      await waitListening(t.host, t.port, { child });
    },
    async stop() {
      await stopChild(child);
    },
    describe: () => `client → haproxy (mode tcp, nbthread ${workers}) → backend`,
    output: () => (child ? child.outTail + child.errTail : ''),
  };
  return t;
}

export function ballastConfig({ port, backend, workers = 1, workerSockets = 'auto' }) {
  return `# written by bench/lib/targets.mjs
admin: { enabled: false }
log: { level: warn }
drainTimeout: 1s
workers: ${workers}
workerSockets: ${workerSockets}
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [${backend.host}:${backend.port}]
    health: { check: none }
`;
}

/** The V8 flags ballast ships with (the Dockerfile's ENTRYPOINT, `npm start`). */
export const SHIPPED_NODE_OPTIONS = '--max-semi-space-size=8';

/**
 * ballast's environment: its NODE_OPTIONS are the shipped flags, or
 * BALLAST_NODE_OPTIONS when that is set (empty: V8's defaults), and only its:
 * the load generators and backends keep theirs.
 */
export function ballastEnv() {
  return { ...process.env, NODE_OPTIONS: process.env.BALLAST_NODE_OPTIONS ?? SHIPPED_NODE_OPTIONS };
}

/** The Node binary ballast runs on: Node 24 (the ship target) when present. */
export function ballastNode(override) {
  if (override) return override;
  return node24();
}

export function nodeVersion(bin) {
  try {
    return execFileSync(bin, ['-v'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

/** node dist/cli.js run --config cfg, one process. */
export function ballastTarget(backend, { workdir, root, node, tag = 'ballast', workers = 1, workerSockets = 'auto' }) {
  let child;
  const t = {
    name: 'ballast',
    host: '127.0.0.1',
    port: 0,
    pid: undefined,
    async start() {
      t.port = await freePort();
      const cfg = join(workdir, `${tag}.yaml`);
      writeFileSync(cfg, ballastConfig({ port: t.port, backend, workers, workerSockets }));
      child = spawnTracked(node, [join(root, 'dist/cli.js'), 'run', '--config', cfg, '--log-level', 'warn'], { name: 'ballast', env: ballastEnv() });
      t.pid = child.pid;
      await waitListening(t.host, t.port, { child });
    },
    async stop() {
      await stopChild(child);
    },
    describe: () => `client → ballast (${workers === 1 ? 'one process' : `${workers} workers, ${workerSockets} sockets`}) → backend`,
    /** Whatever ballast logged at warn and above during the run. */
    output: () => (child ? child.outTail + child.errTail : ''),
  };
  return t;
}

/** The three targets, in the order every round runs them. */
export function makeTargets(backend, { scenario, ...opts }) {
  return [
    directTarget(backend),
    haproxyTarget(backend, { ...opts, tag: `${scenario}-haproxy` }),
    ballastTarget(backend, { ...opts, tag: `${scenario}-ballast` }),
  ];
}

// --- mTLS: termination with client-certificate verification, origination with the proxy's own ---

function haproxyMtlsConfig({ port, backend, threads }) {
  const p = backend.pki;
  return `# written by bench/lib/targets.mjs (mTLS)
global
    nbthread ${threads}
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn 8000
frontend front
    bind 127.0.0.1:${port} ssl crt ${p.proxyPem} ca-file ${p.ca} verify required alpn http/1.1
    default_backend back
backend back
    server s1 ${backend.host}:${backend.port} ssl crt ${p.proxyClientPem} ca-file ${p.ca} verify required sni str(localhost) alpn http/1.1
`;
}

function ballastMtlsConfig({ port, backend, workers, workerSockets }) {
  const p = backend.pki;
  return `# written by bench/lib/targets.mjs (mTLS)
admin: { enabled: false }
log: { level: warn }
drainTimeout: 1s
workers: ${workers}
workerSockets: ${workerSockets}
tls:
  front: { cert: ${p.proxyCert}, key: ${p.proxyKey}, clientCA: ${p.ca}, alpn: [http/1.1] }
  back: { cert: ${p.proxyClientCert}, key: ${p.proxyClientKey}, ca: ${p.ca}, servername: localhost, alpn: [http/1.1] }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back, tls: front }
clusters:
  - name: back
    endpoints: [${backend.host}:${backend.port}]
    tls: back
    health: { check: none }
`;
}

/**
 * A proxy process run from a config file written at start: haproxy (-f cfg)
 * or ballast (run --config cfg). `config(port)` is the file's text,
 * `args(cfgPath)` the command line; `settleMs` waits after it listens (for
 * health checks to see the backends). ballast gets ballastEnv().
 */
export function processTarget({ name, cmd, args, config, ext, describe, scenario, workdir, settleMs = 0 }) {
  let child;
  const t = {
    name,
    host: '127.0.0.1',
    port: 0,
    pid: undefined,
    async start() {
      t.port = await freePort();
      const cfg = join(workdir, `${scenario}-${name}.${ext}`);
      writeFileSync(cfg, config(t.port));
      child = spawnTracked(cmd, args(cfg), { name, env: name === 'ballast' ? ballastEnv() : process.env });
      t.pid = child.pid;
      await waitListening(t.host, t.port, { child });
      if (settleMs > 0) await new Promise((r) => setTimeout(r, settleMs));
    },
    async stop() {
      await stopChild(child);
    },
    describe: () => describe,
    output: () => (child ? child.outTail + child.errTail : ''),
  };
  return t;
}

/** The mTLS scenarios' targets: direct is the client doing mTLS with the backend itself. */
export function mtlsTargets(backend, { scenario, workdir, root, node, workers = 1, workerSockets = 'auto' }) {
  const at = { scenario, workdir };
  return [
    { ...directTarget(backend), describe: () => 'client → mTLS backend' },
    processTarget({ ...at, name: 'haproxy', cmd: 'haproxy', args: (cfg) => ['-f', cfg, '-db'], config: (port) => haproxyMtlsConfig({ port, backend, threads: workers }), ext: 'cfg', describe: `client → haproxy (ssl verify required; server ssl crt, nbthread ${workers}) → mTLS backend` }),
    processTarget({ ...at, name: 'ballast', cmd: node, args: (cfg) => [join(root, 'dist/cli.js'), 'run', '--config', cfg, '--log-level', 'warn'], config: (port) => ballastMtlsConfig({ port, backend, workers, workerSockets }), ext: 'yaml', describe: 'client → ballast (tls terminate + originate) → mTLS backend' }),
  ];
}

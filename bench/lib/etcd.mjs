// The etcd scenario's backend and targets: a real 3-member etcd on loopback
// (Debian's etcd-server), plain-text client URLs so the proxies forward gRPC
// bytes as they would on a localhost leg, data dirs on /dev/shm when it exists
// so the disk of a shared machine (fsync per put) does not decide the result.
//
// Targets: direct (client i talks to member i % 3), haproxy (mode tcp,
// balance roundrobin, tcp check every second) and ballast (round-robin, the
// etcd health check at its defaults): all three spread the clients' 16
// connections over the three members the same way, so the difference is the proxy.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, spawnTracked, stopChild, waitListening } from './proc.mjs';
import { processTarget } from './targets.mjs';

const ETCD = process.env.BALLAST_ETCD_BIN ?? 'etcd';

async function waitHealthy(url, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      if (r.ok && (await r.json()).health === 'true') return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`etcd at ${url} not healthy after ${timeoutMs} ms`);
}

/** Three members; returns the scenario backend { backend: { host, port, members, pids }, pid, stop }. */
export async function startEtcdBackend() {
  const base = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ballast-bench-etcd-'));
  const members = [];
  for (let i = 0; i < 3; i++) members.push({ name: `m${i}`, client: await freePort(), peer: await freePort() });
  const initial = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
  const children = members.map((m) =>
    spawnTracked(ETCD, [
      '--name', m.name,
      '--data-dir', join(base, m.name),
      '--listen-client-urls', `http://127.0.0.1:${m.client}`,
      '--advertise-client-urls', `http://127.0.0.1:${m.client}`,
      '--listen-peer-urls', `http://127.0.0.1:${m.peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peer}`,
      '--initial-cluster', initial,
      '--initial-cluster-state', 'new',
      '--initial-cluster-token', `bench-${process.pid}`,
      '--heartbeat-interval', '100',
      '--election-timeout', '1000',
      '--log-level', 'warn',
    ], { name: `etcd-${m.name}` }),
  );
  const stop = async () => {
    await Promise.all(children.map((c) => stopChild(c)));
    rmSync(base, { recursive: true, force: true });
  };
  try {
    await Promise.all(members.map((m, i) => waitListening('127.0.0.1', m.client, { child: children[i], timeoutMs: 30_000 })));
    await Promise.all(members.map((m) => waitHealthy(`http://127.0.0.1:${m.client}`)));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    backend: { host: '127.0.0.1', port: members[0].client, members: members.map((m) => ({ host: '127.0.0.1', port: m.client })), pids: children.map((c) => c.pid) },
    // CPU of the whole etcd cluster is the backend's.
    pid: children.map((c) => c.pid),
    stop,
  };
}

export function etcdVersion() {
  try {
    return execFileSync(ETCD, ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  } catch {
    return 'etcd not installed';
  }
}

function haproxyEtcdConfig({ port, backend, threads }) {
  return `# written by bench/lib/etcd.mjs
global
    nbthread ${threads}
    maxconn 8000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    maxconn 8000
frontend front
    bind 127.0.0.1:${port}
    default_backend etcd
backend etcd
    balance roundrobin
${backend.members.map((m, i) => `    server m${i} ${m.host}:${m.port} check inter 1s`).join('\n')}
`;
}

function ballastEtcdConfig({ port, backend, workers, workerSockets }) {
  return `# written by bench/lib/etcd.mjs
admin: { enabled: false }
log: { level: warn }
drainTimeout: 1s
workers: ${workers}
workerSockets: ${workerSockets}
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd }
clusters:
  - name: etcd
    balance: round-robin
    endpoints: [${backend.members.map((m) => `${m.host}:${m.port}`).join(', ')}]
    health: { check: etcd }
`;
}

export function etcdTargets(backend, { scenario, workdir, root, node, workers = 1, workerSockets = 'auto' }) {
  // Let the proxy's health checks see every member up before load starts.
  const at = { scenario, workdir, settleMs: 1500 };
  return [
    {
      name: 'direct',
      host: backend.host,
      port: backend.port,
      hosts: backend.members.map((m) => `http://${m.host}:${m.port}`),
      pid: undefined,
      async start() {},
      async stop() {},
      describe: () => 'client i → etcd member i % 3',
    },
    processTarget({ ...at, name: 'haproxy', cmd: 'haproxy', args: (cfg) => ['-f', cfg, '-db'], config: (port) => haproxyEtcdConfig({ port, backend, threads: workers }), ext: 'cfg', describe: `clients → haproxy (balance roundrobin, nbthread ${workers}) → 3 members` }),
    processTarget({ ...at, name: 'ballast', cmd: node, args: (cfg) => [join(root, 'dist/cli.js'), 'run', '--config', cfg, '--log-level', 'warn'], config: (port) => ballastEtcdConfig({ port, backend, workers, workerSockets }), ext: 'yaml', describe: 'clients → ballast (round-robin, etcd health check) → 3 members' }),
  ];
}

import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reusePortSupported } from '../../src/workers/reuse-port.js';
import { runCli, writeConfig, type ChildBallast } from '../support/ballast.js';
import { freePorts } from '../support/ports.js';
import { connect, eventually, readUntil, startNamedServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

// workers > 1: a primary runs the control plane once (checks, admin) and
// worker processes share the listeners (SO_REUSEPORT on Node 22.12+, one
// socket shared through node:cluster before that). The data plane must
// behave as one ballast: same endpoint states, same placements, one set of
// numbers.

interface Status {
  listeners: { name: string; active: number; results: Record<string, number> }[];
  clusters: { name: string; endpoints: { id: string; state: string; total: number; active: number }[] }[];
  workers?: { pid: number; rss: number; active: number }[];
}

let dir: string;
let backends: TestServer[];
let b: ChildBallast;
let port: number;
let admin: number;
let file: string;
let configText: string;

async function status(): Promise<Status> {
  return (await fetch(`http://127.0.0.1:${admin}/status`).then((r) => r.json())) as Status;
}

async function nameVia(p: number): Promise<string> {
  const s = await connect(p);
  const name = (await readUntil(s, (x) => x.includes(10))).toString().trim();
  s.destroy();
  return name;
}

beforeAll(async () => {
  dir = await makeTempDir();
  backends = [await startNamedServer('a'), await startNamedServer('b'), await startNamedServer('c')];
  [port, admin] = (await freePorts(2)) as [number, number];
  configText = `
admin: { listen: 127.0.0.1:${admin} }
log: { level: info }
drainTimeout: 3s
workers: 2
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [${backends.map((x) => `127.0.0.1:${x.port}`).join(', ')}]
    balance: affinity
    affinity: { key: source-ip, stickiness: sticky, ttl: 10m }
    health: { check: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }
`;
  file = writeConfig(dir, configText);
  b = runCli(['run', '--config', file]);
  await b.waitForLog(/workers serving/, 30_000);
  await eventually(async () => (await status()).clusters[0]!.endpoints.every((e) => e.state === 'up'), 'all up');
});

afterAll(async () => {
  b?.kill('SIGKILL');
  for (const x of backends ?? []) await x.close();
  await removeDir(dir);
});

describe('multi-process ballast (workers: 2)', () => {
  it('serves from two worker processes, with their connections summed in /status and /metrics', async () => {
    const held: net.Socket[] = [];
    for (let i = 0; i < 24; i++) {
      const s = await connect(port);
      await readUntil(s, (x) => x.includes(10));
      held.push(s);
    }
    const st = await status();
    expect(st.workers?.length).toBe(2);
    const perWorker = st.workers!.map((w) => w.active);
    expect(perWorker.reduce((a, n) => a + n, 0)).toBe(24);
    expect(Math.min(...perWorker)).toBeGreaterThan(0); // both workers accepted (all on one: p = 2^-23)
    expect(st.listeners[0]!.active).toBe(24);
    for (const s of held) s.destroy();
    await eventually(async () => (await status()).listeners[0]!.active === 0, 'closed');
    const m = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
    const proxied = Number(/ballast_listener_connections_total\{listener="front",result="proxied"\} (\d+)/.exec(m)?.[1]);
    expect(proxied).toBeGreaterThanOrEqual(24);
    // Health state is the primary's, reported once, not once per worker.
    expect(m.match(/^ballast_upstream_healthy\{/gm)?.length).toBe(3);
    expect(m).toMatch(/ballast_upstream_healthy\{cluster="back",endpoint="127\.0\.0\.1:\d+"\} 1/);
  });

  it('places an affinity client on the same member whichever worker accepts it, and keeps it there (sticky) after a failover', async () => {
    const names = new Set<string>();
    for (let i = 0; i < 16; i++) names.add(await nameVia(port));
    expect(names.size).toBe(1);
    const home = [...names][0]!;
    const victim = backends[['a', 'b', 'c'].indexOf(home)]!;
    const victimPort = victim.port;
    await victim.close();
    await eventually(async () => (await status()).clusters[0]!.endpoints.find((e) => e.id === `127.0.0.1:${victimPort}`)?.state === 'down', 'workers learn the member is down');
    const moved = new Set<string>();
    for (let i = 0; i < 16; i++) moved.add(await nameVia(port));
    expect(moved.size).toBe(1);
    expect([...moved][0]).not.toBe(home);
    // The member comes back: sticky placements are the primary's, so no
    // worker sends the client back early.
    const revived = await startNamedServer(home, '127.0.0.1', victimPort);
    backends[['a', 'b', 'c'].indexOf(home)] = revived;
    await eventually(async () => (await status()).clusters[0]!.endpoints.every((e) => e.state === 'up'), 'member back up');
    const after = new Set<string>();
    for (let i = 0; i < 16; i++) after.add(await nameVia(port));
    expect([...after]).toEqual([...moved]);
  });

  it('runs health checks once, in the primary, not once per worker', async () => {
    // Count the check connections the backends accepted in a window with no client traffic.
    const a = backends.map((x) => x.accepted);
    await new Promise((r) => setTimeout(r, 2000));
    const perBackend = backends.map((x, i) => x.accepted - a[i]!);
    // interval 200ms ± jitter over 2 s: about 10 checks per backend from one
    // checker; twice that if each worker checked.
    for (const n of perBackend) {
      expect(n).toBeGreaterThanOrEqual(5);
      expect(n).toBeLessThanOrEqual(14);
    }
  });

  it('restarts a worker that dies, and keeps serving meanwhile', async () => {
    const st = await status();
    const victim = st.workers![0]!.pid;
    process.kill(victim, 'SIGKILL');
    // Connections that were already queued on the dead worker's socket are
    // lost with it (SO_REUSEPORT); once it is gone, the other worker serves
    // everything while the primary starts a new one.
    await eventually(() => {
      try {
        process.kill(victim, 0);
        return false;
      } catch {
        return true;
      }
    }, 'the killed worker is gone');
    for (let i = 0; i < 5; i++) expect(['a', 'b', 'c']).toContain(await nameVia(port));
    await eventually(async () => {
      const w = (await status()).workers ?? [];
      return w.length === 2 && !w.some((x) => x.pid === victim);
    }, 'a new worker replaced the dead one', 15_000);
    expect(b.stdout()).toMatch(/worker \d exited \(SIGKILL\); starting a new one/);
  });

  it('counts a reload the workers refuse once, as failed (worker_refused), in /status and /metrics alike', async () => {
    // The primary runs no listeners, so only the workers find the new port taken.
    const squatter = net.createServer();
    const [taken] = (await freePorts(1)) as [number];
    await new Promise<void>((r) => squatter.listen(taken, '127.0.0.1', r));
    try {
      writeConfig(dir, configText.replace('listeners:\n', `listeners:\n  - { name: extra, listen: 127.0.0.1:${taken}, cluster: back }\n`));
      const st = await eventually(async () => {
        const s = (await fetch(`http://127.0.0.1:${admin}/status`).then((r) => r.json())) as { reloads: { ok: number; failed: number; lastError: string | null } };
        return s.reloads.failed > 0 ? s.reloads : undefined;
      }, 'the reload refused');
      expect(st.ok).toBe(0);
      expect(st.lastError).toMatch(/a worker refused it: .*EADDRINUSE/);
      const metrics = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(/ballast_config_reloads_total\{result="ok",reason=""\} 0\n/);
      const failed = [...metrics.matchAll(/ballast_config_reloads_total\{result="failed",reason="([a-z_]+)"\} (\d+)/g)].filter((m) => m[2] !== '0');
      expect(failed.map((m) => m[1])).toEqual(['worker_refused']);
      const now = (await fetch(`http://127.0.0.1:${admin}/status`).then((r) => r.json())) as { reloads: { failed: number } };
      expect(Number(failed[0]![2])).toBe(now.reloads.failed);
      // Still serving on the old config.
      expect(['a', 'b', 'c']).toContain(await nameVia(port));
    } finally {
      writeConfig(dir, configText);
      await new Promise((r) => squatter.close(r));
    }
  });

  it('drains on SIGTERM through the workers and exits 0', async () => {
    const s = await connect(port);
    await readUntil(s, (x) => x.includes(10));
    b.kill('SIGTERM');
    // The open connection still works during the drain.
    s.write('during drain');
    expect((await readUntil(s, (x) => x.toString().endsWith('during drain'))).toString()).toBe('during drain');
    s.end();
    expect(await b.exited).toBe(0);
  });
});

describe('socket sharing choice', () => {
  it('knows which Node.js versions have SO_REUSEPORT listeners', () => {
    expect(reusePortSupported('20.20.2')).toBe(false);
    expect(reusePortSupported('22.11.0')).toBe(false);
    expect(reusePortSupported('22.12.0')).toBe(true);
    expect(reusePortSupported('23.1.0')).toBe(true);
    expect(reusePortSupported('24.21.0')).toBe(true);
  });
});

import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli, startInProcess, writeConfig, type InProcess } from '../support/ballast.js';
import { freePort, freePorts } from '../support/ports.js';
import { closed, connect, eventually, readUntil, startChildEchoServer, startEchoServer, startNamedServer, type ChildServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

// What operators see and change without a restart: /metrics with the right
// numbers, /readyz that follows health, /status, the status page in a real
// browser, the access log, and live reload (good and bad).

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => {
  await removeDir(dir);
});

async function get(port: number, p: string): Promise<{ status: number; body: string; type: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return { status: r.status, body: await r.text(), type: r.headers.get('content-type') ?? '' };
}

function metric(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const lab = line.slice(name.length, line.lastIndexOf(' '));
    if (want.every((w) => lab.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

describe('admin server', () => {
  let echo: TestServer;
  let hung: ChildServer;
  let p: InProcess;
  let admin: number;
  let port: number;

  beforeAll(async () => {
    echo = await startEchoServer();
    hung = await startChildEchoServer();
    [admin, port] = (await freePorts(2)) as [number, number];
    p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back, accessLog: true }
clusters:
  - name: back
    endpoints: [127.0.0.1:${echo.port}, 127.0.0.1:${hung.port}]
    health: { check: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 1 }
`,
      { admin: true },
    );
    await eventually(() => p.ballast.clusters.get('back')!.endpoints.every((e) => e.state === 'up'), 'both up');
  });
  afterAll(async () => {
    await p.stop();
    await echo.close();
    await hung.close();
  });

  it('/healthz answers 200 while the process serves', async () => {
    expect(await get(admin, '/healthz')).toMatchObject({ status: 200, body: 'ok\n' });
  });

  it('/metrics counts the connections and bytes a client really sent', async () => {
    const before = await get(admin, '/metrics');
    const conns0 = metric(before.body, 'ballast_listener_connections_total', { listener: 'front', result: 'proxied' }) ?? 0;
    const up0 = ['127.0.0.1:' + echo.port, '127.0.0.1:' + hung.port].reduce((n, ep) => n + (metric(before.body, 'ballast_upstream_bytes_total', { endpoint: ep, direction: 'up' }) ?? 0), 0);
    const sizes = [1000, 20_000, 300_000, 7];
    // An open connection's bytes are visible before it closes (swept at scrape time).
    const open: net.Socket[] = [];
    for (const n of sizes) {
      const s = await connect(port);
      s.write(Buffer.alloc(n, 1));
      await readUntil(s, (b) => b.length >= n);
      open.push(s);
    }
    const during = await get(admin, '/metrics');
    expect(metric(during.body, 'ballast_listener_active_connections', { listener: 'front' })).toBe(sizes.length);
    const upDuring = ['127.0.0.1:' + echo.port, '127.0.0.1:' + hung.port].reduce((n, ep) => n + (metric(during.body, 'ballast_upstream_bytes_total', { endpoint: ep, direction: 'up' }) ?? 0), 0);
    expect(upDuring - up0).toBe(sizes.reduce((a, b) => a + b, 0));
    for (const s of open) {
      s.end();
      await closed(s);
    }
    await eventually(() => p.ballast.listeners.get('front')!.active === 0, 'closed');
    const after = await get(admin, '/metrics');
    expect(after.type).toContain('text/plain');
    expect(metric(after.body, 'ballast_listener_connections_total', { listener: 'front', result: 'proxied' })! - conns0).toBe(sizes.length);
    const upAfter = ['127.0.0.1:' + echo.port, '127.0.0.1:' + hung.port].reduce((n, ep) => n + (metric(after.body, 'ballast_upstream_bytes_total', { endpoint: ep, direction: 'up' }) ?? 0), 0);
    const downAfter = ['127.0.0.1:' + echo.port, '127.0.0.1:' + hung.port].reduce((n, ep) => n + (metric(after.body, 'ballast_upstream_bytes_total', { endpoint: ep, direction: 'down' }) ?? 0), 0);
    expect(upAfter - up0).toBe(sizes.reduce((a, b) => a + b, 0));
    expect(downAfter).toBeGreaterThanOrEqual(upAfter - up0);
    expect(after.body).toContain('ballast_upstream_connect_duration_seconds_bucket{le="0.005",cluster="back"}');
    expect(after.body).toMatch(/process_resident_memory_bytes \d+/);
  });

  it('writes one JSON access-log line per closed connection', async () => {
    const s = await connect(port);
    s.write('hello');
    await readUntil(s, (b) => b.length === 5);
    s.end();
    await closed(s);
    await eventually(() => p.lines.some((l) => l.log === 'access' && l.bytesUp === 5), 'access log line');
    const line = p.lines.filter((l) => l.log === 'access' && l.bytesUp === 5).at(-1)!;
    expect(line).toMatchObject({ listener: 'front', cluster: 'back', bytesUp: 5, bytesDown: 5, reason: 'client_fin' });
    expect(String(line.client)).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof line.durationMs).toBe('number');
    expect(String(line.upstream)).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('/readyz turns 503 with a reason per listener when no endpoint is healthy, and 200 again after', async () => {
    expect((await get(admin, '/readyz')).status).toBe(200);
    await echo.close();
    hung.stop(); // hung: connects still succeed (kernel backlog) so use a refused + a hung one
    try {
      // The echo server is gone (refused); the stopped child still accepts TCP
      // connects into its backlog, so the tcp check passes for it: readiness
      // stays 200 while one endpoint is up.
      await eventually(() => p.ballast.clusters.get('back')!.endpoints[0]!.state === 'down', 'echo down');
      expect((await get(admin, '/readyz')).status).toBe(200);
      await hung.close();
      await eventually(async () => (await get(admin, '/readyz')).status === 503, 'readyz 503');
      const r = await get(admin, '/readyz');
      expect(r.body).toMatch(/^not ready\nfront: no healthy endpoint in cluster back \(/);
    } finally {
      echo = await startEchoServer('127.0.0.1', echo.port);
    }
    await eventually(async () => (await get(admin, '/readyz')).status === 200, 'readyz 200 again');
  });

  it('/status describes listeners, clusters and endpoints as JSON', async () => {
    const r = await get(admin, '/status');
    expect(r.type).toContain('application/json');
    const s = JSON.parse(r.body) as { state: string; listeners: { name: string }[]; clusters: { name: string; endpoints: { id: string; state: string; reason: string }[] }[] };
    expect(s.state).toBe('running');
    expect(s.listeners.map((l) => l.name)).toEqual(['front']);
    const eps = s.clusters[0]!.endpoints;
    expect(eps.find((e) => e.id === `127.0.0.1:${echo.port}`)?.state).toBe('up');
    expect(eps.find((e) => e.id === `127.0.0.1:${hung.port}`)?.state).toBe('down');
    expect(eps.find((e) => e.id === `127.0.0.1:${hung.port}`)?.reason).toBe('connection refused');
  });

  it('answers 404 with a hint and 405 for writes', async () => {
    expect((await get(admin, '/nope')).body).toContain('try /, /status, /metrics, /healthz, /readyz');
    const r = await fetch(`http://127.0.0.1:${admin}/status`, { method: 'POST' });
    expect(r.status).toBe(405);
  });
});

describe('metrics-only address (admin.metricsListen)', () => {
  it('serves /metrics, /healthz and /readyz, and nothing else, from the CLI', async () => {
    const echo = await startEchoServer();
    const [port, admin, metrics] = (await freePorts(3)) as [number, number, number];
    const file = writeConfig(dir, `
admin: { listen: 127.0.0.1:${admin}, metricsListen: 127.0.0.1:${metrics} }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: none } }
`, 'metrics-listen.yaml');
    const b = runCli(['run', '--config', file]);
    try {
      await b.waitForLog(/ballast .* started/);
      expect((await get(metrics, '/metrics')).body).toContain('ballast_listener_active_connections{listener="front"} 0');
      expect((await get(metrics, '/healthz')).status).toBe(200);
      expect((await get(metrics, '/readyz')).status).toBe(200);
      const status = await get(metrics, '/status');
      expect(status.status).toBe(404);
      expect(status.body).toContain('serves /metrics, /healthz, /readyz only');
      expect((await get(metrics, '/')).status).toBe(404);
      expect((await get(admin, '/status')).status).toBe(200);
    } finally {
      b.kill('SIGTERM');
      await b.exited;
      await echo.close();
    }
  });
});

describe('live reload', () => {
  it('adds an endpoint under load with no failed connection; a broken file is refused and the old config keeps serving', async () => {
    const a = await startNamedServer('a');
    const b = await startNamedServer('b');
    const [port, admin] = (await freePorts(2)) as [number, number];
    const cfg = (endpoints: string[], extra = '') => `
admin: { listen: 127.0.0.1:${admin} }
log: { level: info }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [${endpoints.join(', ')}]
    health: { check: tcp, interval: 100ms, timeout: 80ms }
${extra}`;
    const file = writeConfig(dir, cfg([`127.0.0.1:${a.port}`]), 'reload.yaml');
    const proc = runCli(['run', '--config', file]);
    try {
      await proc.waitForLog(/ballast .* started/);
      // Load: connections opened and closed without pause, each must reach a backend.
      let ok = 0;
      let failed = 0;
      const seen = new Set<string>();
      let running = true;
      const load = (async () => {
        while (running) {
          try {
            const s = await connect(port);
            const name = (await readUntil(s, (x) => x.includes(10), 3000)).toString().trim();
            seen.add(name);
            s.destroy();
            ok++;
          } catch {
            failed++;
          }
        }
      })();
      await eventually(() => ok > 50, 'load running');
      // A good change: add endpoint b (the file watch picks it up).
      writeFileSync(file, cfg([`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`]));
      await eventually(() => seen.has('b'), 'new endpoint receives connections', 15_000);
      // A broken change: refused, counted, old config keeps serving.
      writeFileSync(file, cfg([`127.0.0.1:${a.port}`], '    balance: fastest\n'));
      await proc.waitForLog(/config reload refused, the running config stays/);
      const before = ok;
      await eventually(() => ok > before + 50, 'still serving after the refused reload');
      // SIGHUP with a good file again.
      writeFileSync(file, cfg([`127.0.0.1:${b.port}`]));
      proc.kill('SIGHUP');
      await eventually(async () => {
        const m = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
        return (metric(m, 'ballast_config_reloads_total', { result: 'ok' }) ?? 0) >= 2 && (metric(m, 'ballast_config_reloads_total', { result: 'failed' }) ?? 0) >= 1;
      }, 'reloads counted');
      running = false;
      await load;
      expect(failed).toBe(0);
      expect(proc.stdout()).toContain('balance: expected one of round-robin');
    } finally {
      proc.kill('SIGTERM');
      await proc.exited;
      await a.close();
      await b.close();
    }
  });

  it('adds and removes listeners, keeps connections the new config still routes', async () => {
    const a = await startNamedServer('a');
    const [p1, p2] = (await freePorts(2)) as [number, number];
    const one = `
listeners:
  - { name: one, listen: 127.0.0.1:${p1}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${a.port}], health: { check: none } }
`;
    const q = await startInProcess(one);
    try {
      const held = await connect(p1);
      await readUntil(held, (x) => x.includes(10));
      const { parseConfig } = await import('../../src/config/load.js');
      await q.ballast.reload(parseConfig(one.replace('listeners:', `listeners:\n  - { name: two, listen: 127.0.0.1:${p2}, cluster: back }`)));
      const s2 = await connect(p2);
      expect((await readUntil(s2, (x) => x.includes(10))).toString()).toBe('a\n');
      s2.destroy();
      // Remove listener one: it stops accepting; the held connection lives on.
      await q.ballast.reload(parseConfig(one.replace(`name: one, listen: 127.0.0.1:${p1}`, `name: two, listen: 127.0.0.1:${p2}`)));
      await expect(connect(p1)).rejects.toThrow();
      held.write('still');
      expect((await readUntil(held, (x) => x.toString().endsWith('still'))).toString()).toBe('still');
      held.destroy();
      // A reload that cannot bind changes nothing.
      const blocker = net.createServer();
      const bp = await freePort();
      await new Promise<void>((r) => blocker.listen(bp, '127.0.0.1', r));
      await expect(q.ballast.reload(parseConfig(one.replace(`name: one, listen: 127.0.0.1:${p1}`, `name: three, listen: 127.0.0.1:${bp}`)))).rejects.toThrow(/EADDRINUSE/);
      expect([...q.ballast.listeners.keys()]).toEqual(['two']);
      blocker.close();
    } finally {
      await q.stop();
      await a.close();
    }
  });
});

describe('status page', () => {
  it('renders a row per endpoint with its state in headless Chromium (screenshot saved)', async () => {
    const { chromium } = await import('playwright-core');
    const echo = await startEchoServer();
    const [port, admin, dead] = (await freePorts(3)) as [number, number, number];
    const p = await startInProcess(
      `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [127.0.0.1:${echo.port}, 127.0.0.1:${dead}]
    health: { check: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 1 }
`,
      { admin: true },
    );
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      await eventually(() => p.ballast.clusters.get('back')!.endpoints.every((e) => e.state !== 'unknown'), 'checked');
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${admin}/`);
      await page.waitForSelector(`tr[data-endpoint="127.0.0.1:${dead}"]`);
      expect(await page.getAttribute(`tr[data-endpoint="127.0.0.1:${echo.port}"]`, 'data-state')).toBe('up');
      expect(await page.getAttribute(`tr[data-endpoint="127.0.0.1:${dead}"]`, 'data-state')).toBe('down');
      expect(await page.textContent(`tr[data-endpoint="127.0.0.1:${dead}"] td.reason`)).toBe('connection refused');
      expect(await page.textContent('#ready')).toBe('ready');
      // It refreshes itself: the dead endpoint comes up without a reload of the page.
      const revived = await startEchoServer('127.0.0.1', dead);
      await page.waitForSelector(`tr[data-endpoint="127.0.0.1:${dead}"][data-state="up"]`, { timeout: 10_000 });
      const out = path.join(REPO, '.test-results');
      mkdirSync(out, { recursive: true });
      await page.screenshot({ path: path.join(out, 'status-page.png'), fullPage: true });
      await revived.close();
    } finally {
      await browser.close();
      await p.stop();
      await echo.close();
    }
  });
});

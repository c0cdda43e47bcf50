import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { freePorts } from '../support/ports.js';
import { eventually, startEchoServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

// ballast's /metrics as Prometheus itself sees it: promtool's linter on the
// live output, and a real Prometheus server (Debian's `prometheus`) scraping
// ballast on loopback and answering a query about it.

let dir: string;
let echo: TestServer;
let p: InProcess;
let admin: number;
let dead: number;

beforeAll(async () => {
  dir = await makeTempDir();
  echo = await startEchoServer();
  let port: number;
  [port, admin, dead] = (await freePorts(3)) as [number, number, number];
  p = await startInProcess(
    `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - name: back
    endpoints: [127.0.0.1:${echo.port}, 127.0.0.1:${dead}]
    # Loose enough that a loaded machine (the whole suite in parallel) does
    # not mark the live echo down between scrapes: with 80 ms / fall 1 it once did.
    health: { check: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 3 }
`,
    { admin: true },
  );
  await eventually(() => p.ballast.clusters.get('back')!.endpoints.every((e) => e.state !== 'unknown'), 'checked');
});

afterAll(async () => {
  await p?.stop();
  await echo?.close();
  await removeDir(dir);
});

function run(cmd: string, args: string[], input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('exit', (code) => resolve({ code, stdout, stderr }));
    c.stdin.end(input ?? '');
  });
}

describe('Prometheus', () => {
  it('promtool check metrics finds nothing to complain about in ballast\'s own metrics', async () => {
    const text = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
    const ours = await run('promtool', ['check', 'metrics'], text.split('\n').filter((l) => /^(# (HELP|TYPE) )?ballast_/.test(l)).join('\n') + '\n');
    expect(ours.stdout + ours.stderr).toBe('');
    expect(ours.code).toBe(0);
    // The whole page parses; the only complaints are about three of
    // prom-client's default gauges named *_total (nodejs_active_handles_total,
    // …), which are prom-client's to rename, not ours.
    const all = await run('promtool', ['check', 'metrics'], text);
    const complaints = (all.stdout + all.stderr).split('\n').filter(Boolean);
    for (const c of complaints) expect(c).toMatch(/^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/);
  });

  it('a real Prometheus server scrapes ballast and answers ballast_upstream_healthy', async () => {
    const [web] = await freePorts(1);
    const cfg = path.join(dir, 'prometheus.yml');
    writeFileSync(cfg, `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: ballast\n    static_configs: [{ targets: ['127.0.0.1:${admin}'] }]\n`);
    const prom = spawn('prometheus', [`--config.file=${cfg}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${web}`, '--log.level=warn'], { stdio: 'ignore' });
    try {
      const query = async (q: string) => {
        const r = (await fetch(`http://127.0.0.1:${web}/api/v1/query?query=${encodeURIComponent(q)}`).then((x) => x.json())) as { data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
        return r.data.result;
      };
      const result = await eventually(async () => {
        const r = await query('ballast_upstream_healthy');
        return r.length === 2 ? r : undefined;
      }, 'Prometheus scraped ballast_upstream_healthy', 30_000, 250);
      const byEndpoint = Object.fromEntries(result.map((x) => [x.metric.endpoint, x.value[1]]));
      expect(byEndpoint).toEqual({ [`127.0.0.1:${echo.port}`]: '1', [`127.0.0.1:${dead}`]: '0' });
      expect(result[0]!.metric).toMatchObject({ job: 'ballast', cluster: 'back' });
      const up = await query('up{job="ballast"}');
      expect(up[0]!.value[1]).toBe('1');
    } finally {
      prom.kill('SIGTERM');
      await new Promise((r) => prom.once('exit', r));
    }
  });
});

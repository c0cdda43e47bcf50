import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { REPO, startInProcess, type InProcess } from '../support/ballast.js';
import { makePki } from '../support/pki.js';
import { metricNames } from '../support/promql.js';
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
    // The whole page, prom-client's default metrics included: its three
    // gauges named *_total are left out (ballast's Metrics removes them).
    const all = await run('promtool', ['check', 'metrics'], text);
    const complaints = (all.stdout + all.stderr).split('\n').filter(Boolean);
    expect(complaints).toEqual([]);
    expect(all.code).toBe(0);
  });

  it('a fresh ballast already exports every metric the shipped alerts and dashboard query, and its failure counters at 0', async () => {
    // Everything a shipped config can turn on: TLS termination, an etcd
    // cluster, backups with drills. Nothing has happened yet: no client, no
    // snapshot (the first one is an hour away), no refusal.
    const pki = await makePki(dir);
    const f = pki.files;
    const [lport, tport, adm, deadEtcd] = (await freePorts(4)) as [number, number, number, number];
    const fresh = await startInProcess(
      `
admin: { listen: 127.0.0.1:${adm} }
tls:
  guard: { cert: ${f['ballast-server.crt']}, key: ${f['ballast-server.key']}, clientCA: ${f['ca.crt']}, crl: ${f['crl.pem']} }
listeners:
  - { name: plain, listen: 127.0.0.1:${lport}, cluster: back }
  - { name: etcd, listen: 127.0.0.1:${tport}, cluster: etcd, tls: guard }
clusters:
  - name: back
    endpoints: [127.0.0.1:${echo.port}]
    health: { check: tcp, interval: 1h }
  - name: etcd
    endpoints: [127.0.0.1:${deadEtcd}]
    balance: affinity
    discovery: etcd-members
    health: { check: etcd, interval: 1h }
backup: { cluster: etcd, dir: ${path.join(dir, 'backups')}, interval: 1h, drillInterval: 24h }
`,
      { admin: true },
    );
    try {
      await fresh.ballast.applyBackup(fresh.ballast.config.backup);
      const text = await fetch(`http://127.0.0.1:${adm}/metrics`).then((r) => r.text());
      const present = new Set(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0]!));
      const alerts = YAML.parse(readFileSync(path.join(REPO, 'deploy/prometheus/alerts.yaml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
      const dashboard = JSON.parse(readFileSync(path.join(REPO, 'deploy/grafana/ballast-dashboard.json'), 'utf8')) as { panels: { title: string; type: string; targets?: { expr: string }[]; panels?: unknown[] }[] };
      const panels = dashboard.panels.flatMap((p) => [p, ...((p.panels ?? []) as typeof dashboard.panels)]).filter((p) => p.type !== 'row');
      const queries = [
        ...alerts.groups.flatMap((g) => g.rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr }))),
        ...panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}"`, expr: t.expr }))),
      ];
      // `up` is Prometheus' own series. A member's raft index is a gauge of
      // a value not seen yet (this member never answered): absent until its
      // first check rather than a 0 that would chart as a lag.
      const notYet = new Set(['up', 'ballast_upstream_etcd_raft_index']);
      const missing = queries.flatMap(({ where, expr }) => metricNames(expr).filter((n) => !notYet.has(n) && !present.has(n)).map((n) => `${where}: ${n}`));
      expect(missing).toEqual([]);
      expect(queries.length).toBeGreaterThan(20);
      // The counters rate() and increase() need from the start, at 0.
      for (const series of [
        'ballast_listener_connections_total{listener="plain",result="no_endpoint"} 0',
        'ballast_listener_connections_total{listener="etcd",result="tls_refused"} 0',
        `ballast_upstream_failures_total{cluster="etcd",endpoint="127.0.0.1:${deadEtcd}",outcome="connect_refused"} 0`,
        'ballast_tls_handshake_failures_total{listener="etcd",reason="crl_error"} 0',
        'ballast_tls_handshake_failures_total{listener="etcd",reason="identity_not_allowed"} 0',
        'ballast_backup_failures_total{reason="timeout"} 0',
        'ballast_backup_last_success_timestamp_seconds 0',
        'ballast_restore_drill_last_success_timestamp_seconds 0',
      ]) {
        expect(text.split('\n')).toContain(series);
      }
      // A plain listener has no TLS refusals to count.
      expect(text).not.toContain('ballast_tls_handshake_failures_total{listener="plain"');
    } finally {
      await fresh.stop();
    }
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

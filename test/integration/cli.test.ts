import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli, runCliToEnd, writeConfig } from '../support/ballast.js';
import { freePorts } from '../support/ports.js';
import { closed, connect, readUntil, startEchoServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

// The built CLI as production runs it: `node dist/cli.js …`.

let dir: string;
let echo: TestServer;
beforeAll(async () => {
  dir = await makeTempDir();
  echo = await startEchoServer();
});
afterAll(async () => {
  await echo.close();
  await removeDir(dir);
});

function config(port: number, adminPort: number, extra = ''): string {
  return `
admin: { listen: 127.0.0.1:${adminPort} }
drainTimeout: 10s
${extra}
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: back }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 100ms } }
`;
}

describe('ballast CLI', () => {
  it('prints its version from package.json', async () => {
    const pkg = JSON.parse(readFileSync(`${REPO}/package.json`, 'utf8')) as { version: string };
    const r = await runCliToEnd(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`ballast ${pkg.version} (node ${process.versions.node})\n`);
  });

  it('prints usage with --help and refuses unknown commands with exit 2', async () => {
    const help = await runCliToEnd(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('ballast run --config FILE');
    const bad = await runCliToEnd(['frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('unknown command "frobnicate"');
  });

  it('check-config: exit 0 with a summary for a good file', async () => {
    const [port, admin] = await freePorts(2);
    const file = writeConfig(dir, config(port!, admin!), 'good.yaml');
    const r = await runCliToEnd(['check-config', '--config', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`valid: 1 listener(s) [front 127.0.0.1:${port} -> back]`);
  });

  it('check-config: exit 2 naming the key path for a bad file', async () => {
    const file = writeConfig(dir, config(1, 2).replace('cluster: back }', 'cluster: bakc }'), 'bad.yaml');
    const r = await runCliToEnd(['check-config', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`ballast: ${file}: listeners[0].cluster: no cluster named "bakc" (have: back)\n`);
  });

  it('check-config: exit 2 for a missing file, and a usage error without --config', async () => {
    const r = await runCliToEnd(['check-config', '--config', `${dir}/nope.yaml`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('cannot read the config file: ENOENT');
    const u = await runCliToEnd(['check-config']);
    expect(u.code).toBe(2);
    expect(u.stderr).toContain('--config FILE is required');
  });

  it('run: refuses a bad config before listening, exit 2', async () => {
    const file = writeConfig(dir, config(1, 2).replace('interval: 200ms', 'interval: soon'), 'bad-run.yaml');
    const r = await runCliToEnd(['run', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('clusters[0].health.interval: expected a duration like "500ms" or "2s", got "soon"');
  });

  it('run: exits 1 with the reason when a port is taken', async () => {
    const [port, admin] = await freePorts(2);
    const file = writeConfig(dir, config(echo.port, admin!), 'taken.yaml');
    void port;
    const r = await runCliToEnd(['run', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`listeners.front: cannot listen on 127.0.0.1:${echo.port}: EADDRINUSE`);
  });

  it('run: proxies, then on SIGTERM stops accepting, lets an open connection finish, and exits 0', async () => {
    const [port, admin] = await freePorts(2);
    const file = writeConfig(dir, config(port!, admin!), 'drain.yaml');
    const b = runCli(['run', '--config', file]);
    try {
      await b.waitForLog(/ballast .* started/);
      const s = await connect(port!);
      s.write('before');
      expect((await readUntil(s, (x) => x.toString() === 'before')).toString()).toBe('before');
      b.kill('SIGTERM');
      await b.waitForLog(/draining: stopped accepting/);
      // /readyz says 503 while draining; new connections are refused.
      const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.status).catch(() => 'gone');
      expect([503, 'gone']).toContain(ready);
      const refused = await connect(port!).then(
        (x) => {
          x.destroy();
          return false;
        },
        () => true,
      );
      expect(refused).toBe(true);
      // The open connection still works until the client ends it.
      s.write('during');
      expect((await readUntil(s, (x) => x.toString() === 'during')).toString()).toBe('during');
      s.end();
      await closed(s);
      expect(await b.exited).toBe(0);
      expect(b.stdout()).toContain('"closedAtDeadline":0');
    } finally {
      b.kill('SIGKILL');
    }
  });

  it('run: closes connections still open at the drain deadline, then exits 0', async () => {
    const [port, admin] = await freePorts(2);
    const file = writeConfig(dir, config(port!, admin!).replace('drainTimeout: 10s', 'drainTimeout: 300ms'), 'drain-deadline.yaml');
    const b = runCli(['run', '--config', file]);
    try {
      await b.waitForLog(/ballast .* started/);
      const s = await connect(port!);
      s.write('x');
      await readUntil(s, (x) => x.length === 1);
      b.kill('SIGTERM');
      expect(['end', 'close', 'error']).toContain(await closed(s, 5000));
      expect(await b.exited).toBe(0);
      expect(b.stdout()).toContain('drain timeout: closing 1 connection(s)');
    } finally {
      b.kill('SIGKILL');
    }
  });

  it('run: --log-level overrides the config and logs are JSON lines', async () => {
    const [port, admin] = await freePorts(2);
    const file = writeConfig(dir, config(port!, admin!), 'log.yaml');
    const b = runCli(['run', '--config', file, '--log-level', 'warn']);
    try {
      // At warn, the info-level start line is not printed; prove it is running via /healthz.
      let ok = false;
      for (let i = 0; i < 100 && !ok; i++) {
        ok = await fetch(`http://127.0.0.1:${admin}/healthz`).then((r) => r.ok, () => false);
        if (!ok) await new Promise((r) => setTimeout(r, 50));
      }
      expect(ok).toBe(true);
      b.kill('SIGTERM');
      expect(await b.exited).toBe(0);
      for (const line of b.stdout().split('\n').filter(Boolean)) {
        const j = JSON.parse(line) as { level: string };
        expect(['warn', 'error', 'fatal']).toContain(j.level);
      }
    } finally {
      b.kill('SIGKILL');
    }
  });
});

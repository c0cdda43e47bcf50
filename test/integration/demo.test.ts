import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { runCli } from '../support/ballast.js';
import { eventually } from '../support/servers.js';

const execFileP = promisify(execFile);

// The README's first command ends in `ballast demo`: it must work as printed.

async function freeBase(): Promise<number> {
  // A base port whose whole block (N .. N+22) is free right now.
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 30000 + Math.floor(Math.random() * 20000);
    const ports = [base, base + 1, base + 10, base + 11, base + 12, base + 20, base + 21, base + 22];
    const free = await Promise.all(
      ports.map(
        (p) =>
          new Promise<boolean>((resolve) => {
            const s = net.createServer();
            s.once('error', () => resolve(false));
            s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
          }),
      ),
    );
    if (free.every(Boolean)) return base;
  }
  throw new Error('no free port block');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('ballast demo', () => {
  it('runs a TLS-only etcd behind ballast, prints commands that work, survives a kill, and cleans up on Ctrl-C', async () => {
    const base = await freeBase();
    const demo = runCli(['demo', '--base-port', String(base), '--no-traffic']);
    try {
      await demo.waitForLog(/Ctrl-C stops everything/, 45_000);
      const out = demo.stdout();
      const dir = /in (\/\S+ballast-demo-\S+)/.exec(out)![1]!;
      const put = out.split('\n').find((l) => l.trim().startsWith('ETCDCTL_API=3') && l.includes('put hello world'))!.trim();
      const get = out.split('\n').find((l) => l.trim().startsWith('ETCDCTL_API=3') && l.includes('kube-apiserver-etcd-client') && l.trim().endsWith('get hello'))!.trim();
      const intruder = out.split('\n').find((l) => l.includes('intruder.crt'))!.trim();
      const run = (line: string) => {
        const args = line.split(/\s+/).slice(2); // drop "ETCDCTL_API=3 etcdctl"
        return execFileP('etcdctl', [...args, '--command-timeout=5s'], { env: { ...process.env, ETCDCTL_API: '3' }, timeout: 15_000 });
      };
      await run(put);
      expect((await run(get)).stdout).toBe('hello\nworld\n');
      await expect(run(intruder)).rejects.toThrow();

      // Kill a member as the demo suggests; the status page's JSON shows it down.
      const pids = [...out.matchAll(/kill -9 (\d+)\s+# (etcd-\d)/g)].map((m) => Number(m[1]));
      expect(pids.length).toBe(3);
      process.kill(pids[0]!, 'SIGKILL');
      await eventually(async () => {
        const s = (await fetch(`http://127.0.0.1:${base + 1}/status`).then((r) => r.json())) as { clusters: { endpoints: { state: string }[] }[] };
        return s.clusters[0]!.endpoints.filter((e) => e.state === 'up').length === 2 && s.clusters[0]!.endpoints.some((e) => e.state === 'down' || e.state === 'ejected');
      }, 'killed member shown down', 20_000);
      expect((await run(get)).stdout).toBe('hello\nworld\n');

      demo.kill('SIGINT');
      expect(await demo.exited).toBe(0);
      expect(existsSync(dir)).toBe(false);
      for (const pid of pids) expect(alive(pid)).toBe(false);
    } finally {
      demo.kill('SIGKILL');
    }
  });

  it('refuses a bad --base-port with exit 2', async () => {
    const demo = runCli(['demo', '--base-port', '80']);
    expect(await demo.exited).toBe(2);
    expect(demo.stderr()).toContain('--base-port must be a whole number from 1024 to 65500, got "80"');
  });
});

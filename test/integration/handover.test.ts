// A restart that refuses no one (issue #20): the next ballast binds the same
// ports beside the running one (SO_REUSEPORT, `handover: true`), becomes
// ready, and only then is the old one stopped; the kernel moves connections
// still queued on the old socket to the new one (net.ipv4.tcp_migrate_req).
// Each case runs in a network namespace this test makes, so the sysctl is
// the namespace's own and the host is untouched. The control, a plain
// restart (stop, then start), shows the refusals the handover avoids, so
// the check can fail.
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reusePortSupported } from '../../src/workers/reuse-port.js';
import { CLI, REPO } from '../support/ballast.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

const PREFIX = `blho${process.pid}-`;
const made: string[] = [];

function netns(name: string, migrate: 0 | 1): string {
  const ns = `${PREFIX}${name}`;
  execFileSync('ip', ['netns', 'add', ns]);
  made.push(ns);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  // /proc/sys/net is the writing process's namespace's (no procps needed).
  execFileSync('ip', ['netns', 'exec', ns, 'sh', '-c', `echo ${migrate} > /proc/sys/net/ipv4/tcp_migrate_req`]);
  expect(execFileSync('ip', ['netns', 'exec', ns, 'cat', '/proc/sys/net/ipv4/tcp_migrate_req'], { encoding: 'utf8' }).trim()).toBe(String(migrate));
  return ns;
}

function cleanup(): void {
  for (const ns of made.splice(0)) spawnSync('ip', ['netns', 'del', ns]);
}

interface LabResult {
  opened: number;
  failed: number;
  errors: Record<string, number>;
  held: string;
  heldEchoesDuringDrain: number;
  seconds: number;
}

function lab(ns: string, dir: string, mode: 'overlap' | 'restart'): LabResult {
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, path.join(REPO, 'test/support/handover-lab.mjs'), '--cli', CLI, '--dir', dir, '--mode', mode], { encoding: 'utf8', timeout: 90_000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{')) throw new Error(`handover lab (${mode}) failed: status ${r.status}\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line) as LabResult;
}

const canRun = reusePortSupported() && spawnSync('ip', ['netns', 'list']).status === 0 && process.getuid?.() === 0;

// SO_REUSEPORT for TCP listeners needs Node 22.12+ (CI runs the suite on Node 20 too); network namespaces need root and iproute2.
describe.skipIf(!canRun)('restart with handover (SO_REUSEPORT + tcp_migrate_req), under load', () => {
  let dir: string;
  const onSignal = () => {
    cleanup();
    process.exit(130);
  };
  beforeAll(async () => {
    dir = await makeTempDir();
    // Leftovers of a run that was killed before its afterAll.
    const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    for (const m of list.matchAll(/^(blho\d+-\S+)/gm)) if (!m[1]!.startsWith(PREFIX)) spawnSync('ip', ['netns', 'del', m[1]!]);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  afterAll(async () => {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await removeDir(dir);
  });

  it('the new ballast takes over before the old one drains: no new connection refused or reset, the held stream keeps working through the drain', () => {
    const r = lab(netns('overlap', 1), dir, 'overlap');
    expect(r.opened).toBeGreaterThan(500);
    expect(r.errors).toEqual({});
    expect(r.failed).toBe(0);
    expect(r.heldEchoesDuringDrain).toBeGreaterThan(0);
  });

  it('control: a plain restart (stop, then start) refuses connections in the gap', () => {
    const r = lab(netns('restart', 1), dir, 'restart');
    expect(r.opened).toBeGreaterThan(100);
    expect(r.failed).toBeGreaterThan(0);
  });
});

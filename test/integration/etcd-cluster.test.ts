// Self-test of the shared etcd fixtures (test/support/etcd-cluster.ts,
// tcp-relay.ts, ports.ts): real etcd 3.4 processes on loopback.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueCert } from '../../src/tls/certs.js';
import { EtcdCluster, logTail, toHexMemberId } from '../support/etcd-cluster.js';
import { freePort, freePorts } from '../support/ports.js';
import { TcpRelay } from '../support/tcp-relay.js';
import { makeTempDir, removeDir, writeFiles } from '../support/tmp.js';

function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
}

/** Value printed by `etcdctl get --print-value-only`, '' if the key is absent. */
async function getValue(c: EtcdCluster, key: string, endpoint?: string, serializable = false): Promise<string> {
  const args = ['get', key, '--print-value-only'];
  if (serializable) args.push('--consistency=s');
  const { stdout } = await c.etcdctl(args, endpoint === undefined ? {} : { endpoint });
  return stdout.trim();
}

describe('ports', () => {
  it('freePorts returns distinct bindable loopback ports', async () => {
    const ports = await freePorts(8);
    expect(new Set(ports).size).toBe(8);
    for (const p of ports) expect(p).toBeGreaterThan(0);
    const p = await freePort();
    const srv = net.createServer();
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(p, '127.0.0.1', () => resolve());
    });
    await new Promise<void>((r) => srv.close(() => r()));
  });
});

describe('TcpRelay', () => {
  it('forwards, blocks and unblocks', async () => {
    const echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    const target = (echo.address() as net.AddressInfo).port;
    const relay = new TcpRelay(0, '127.0.0.1', target);
    await relay.start();
    const roundTrip = (timeoutMs: number): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = net.connect(relay.port, '127.0.0.1', () => s.write('ping'));
        const t = setTimeout(() => {
          s.destroy();
          reject(new Error('no echo'));
        }, timeoutMs);
        s.once('data', (d) => {
          clearTimeout(t);
          s.destroy();
          resolve(d.toString());
        });
        s.once('error', (e) => {
          clearTimeout(t);
          reject(e);
        });
      });
    try {
      expect(await roundTrip(2_000)).toBe('ping');
      relay.block('blackhole');
      await expect(roundTrip(300)).rejects.toThrow('no echo');
      relay.block('reset');
      relay.unblock();
      relay.block('reset');
      await expect(roundTrip(2_000)).rejects.toThrow();
      relay.unblock();
      expect(await roundTrip(2_000)).toBe('ping');
    } finally {
      await relay.close();
      await new Promise<void>((r) => echo.close(() => r()));
    }
  });
});

describe('EtcdCluster: start failures', () => {
  it('reports which member failed, with its log tail, and cleans up', async () => {
    const parent = await makeTempDir('ballast-etcd-fail-');
    try {
      const err = await EtcdCluster.start({ size: 1, dir: parent, extraArgs: ['--no-such-flag'] }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(Error);
      expect(err!.message).toMatch(/etcd-0 .*exited \(exit code \d+\)/);
      expect(err!.message).toContain('flag provided but not defined: -no-such-flag');
      expect(fs.readdirSync(parent)).toEqual([]);
    } finally {
      await removeDir(parent);
    }
  });
});

describe('EtcdCluster: plain 3-member cluster', () => {
  let c: EtcdCluster;
  const everyPid = new Set<number>();
  const notePids = (): void => {
    for (const m of c.members) if (m.pid !== undefined) everyPid.add(m.pid);
  };

  beforeAll(async () => {
    c = await EtcdCluster.start({ size: 3 });
    notePids();
  });
  afterAll(async () => {
    await c?.close();
  });

  it('starts three healthy members on distinct loopback ports', async () => {
    expect(c.members).toHaveLength(3);
    expect(c.clientUrls()).toHaveLength(3);
    const ports = c.members.flatMap((m) => [m.clientPort, m.peerPort]);
    expect(new Set(ports).size).toBe(6);
    for (const m of c.members) {
      expect(m.running).toBe(true);
      expect(m.clientUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(m.id).toMatch(/^[0-9a-f]+$/);
      expect(fs.existsSync(m.logFile)).toBe(true);
    }
    const ids = await c.memberIds();
    expect([...ids.values()].sort()).toEqual([0, 1, 2]);
    const { stdout, stderr } = await c.etcdctl(['endpoint', 'health']);
    expect(`${stdout}${stderr}`.match(/is healthy/g)).toHaveLength(3);
  });

  it('puts and gets through etcdctl', async () => {
    await c.etcdctl(['put', 'fixture/a', 'one']);
    expect(await getValue(c, 'fixture/a')).toBe('one');
    // Large values go through stdin.
    await c.etcdctl(['put', 'fixture/big'], { input: 'x'.repeat(200_000) });
    expect((await getValue(c, 'fixture/big')).length).toBe(200_000);
    await expect(c.etcdctl(['no-such-command'])).rejects.toThrow(/etcdctl no-such-command failed/);
  });

  it('finds the leader, agreed by every member, and maps response member ids', async () => {
    const leader = await c.leaderIndex();
    expect([0, 1, 2]).toContain(leader);
    for (let i = 0; i < 3; i++) {
      const s = await c.status(i);
      expect(s.leader).toBe(c.members[leader]!.id);
      expect(s.memberId).toBe(c.members[i]!.id);
    }
    // The id in a response header tells which member served it.
    const { stdout } = await c.etcdctl(['get', 'fixture/a', '-w', 'json'], { endpoint: c.members[2]!.clientUrl });
    const decimal = /"member_id":(\d+)/.exec(stdout)?.[1];
    expect(decimal).toBeDefined();
    // etcdctl's JSON prints the uint64 as a bare number: read it from the text, not JSON.parse.
    expect((await c.memberIds()).get(toHexMemberId(decimal!))).toBe(2);
  });

  it('kills a follower and restarts it on the same ports and data', async () => {
    const f = ((await c.leaderIndex()) + 1) % 3;
    const m = c.members[f]!;
    const pid = m.pid!;
    const ports = [m.clientPort, m.peerPort];
    await c.etcdctl(['put', 'fixture/before-kill', 'kept']);
    await c.kill(f);
    expect(isGone(pid)).toBe(true);
    expect(m.running).toBe(false);
    expect(m.pid).toBeUndefined();
    expect(c.clientUrls()).not.toContain(m.clientUrl);
    await expect(c.waitHealthy(f, 500)).rejects.toThrow(new RegExp(`${m.name}.*exited`));
    // Two of three still commit.
    await c.etcdctl(['put', 'fixture/while-down', 'caught-up']);
    await c.restart(f);
    notePids();
    expect(m.running).toBe(true);
    expect(m.pid).not.toBe(pid);
    expect([m.clientPort, m.peerPort]).toEqual(ports);
    expect(await getValue(c, 'fixture/before-kill', m.clientUrl, true)).toBe('kept');
    expect(await getValue(c, 'fixture/while-down', m.clientUrl, true)).toBe('caught-up');
  });

  it('SIGSTOPs and SIGCONTs the leader; the others elect a new one', async () => {
    const f = await c.leaderIndex();
    const m = c.members[f]!;
    c.stop(f);
    try {
      expect(m.stopped).toBe(true);
      expect(c.clientUrls()).toContain(m.clientUrl); // still "running": the socket accepts, then hangs
      const t0 = Date.now();
      await expect(c.waitHealthy(f, 1_000)).rejects.toThrow(new RegExp(`${m.name}.*SIGSTOPped`, 's'));
      expect(Date.now() - t0).toBeLessThan(5_000);
      await expect(c.status(f, 500)).rejects.toThrow(/timed out/);
      const next = await c.leaderIndex();
      expect(next).not.toBe(f);
      expect((await c.status(next)).leader).toBe(c.members[next]!.id);
      // etcdctl's default endpoints skip the stopped member.
      await c.etcdctl(['put', 'fixture/while-stopped', 'yes']);
    } finally {
      c.cont(f);
    }
    expect(m.stopped).toBe(false);
    await c.waitHealthy(f);
    expect(await getValue(c, 'fixture/while-stopped', m.clientUrl)).toBe('yes');
  });

  it('adds and removes a member at runtime', async () => {
    const added = await c.addMember();
    notePids();
    expect(c.members).toHaveLength(4);
    expect(added.name).toBe('etcd-3');
    expect(added.running).toBe(true);
    const list1 = (await c.etcdctl(['member', 'list'])).stdout;
    expect(list1).toContain(`${added.id}, started, etcd-3, ${added.peerUrl}, ${added.clientUrl}`);
    expect(await getValue(c, 'fixture/a', added.clientUrl)).toBe('one');
    expect(c.clientUrls()).toHaveLength(4);

    const pid = added.pid!;
    await c.removeMember(3);
    expect(added.removed).toBe(true);
    expect(added.running).toBe(false);
    expect(isGone(pid)).toBe(true);
    expect(c.members).toHaveLength(4);
    expect(c.clientUrls()).toHaveLength(3);
    const list2 = (await c.etcdctl(['member', 'list'])).stdout;
    expect(list2).not.toContain('etcd-3');
    expect(list2.trim().split('\n')).toHaveLength(3);
    await expect(c.restart(3)).rejects.toThrow(/removed/);
    await c.etcdctl(['put', 'fixture/after-remove', 'ok']);
  });

  it('close() kills every process it started and removes its temp dir', async () => {
    notePids();
    expect(everyPid.size).toBeGreaterThanOrEqual(5); // 3 + restarted + added
    for (const pid of c.members.map((m) => m.pid).filter((p): p is number => p !== undefined)) {
      expect(isGone(pid)).toBe(false);
    }
    expect(fs.existsSync(c.dir)).toBe(true);
    c.stop(0); // a stopped member must die too
    await c.close();
    await c.close(); // idempotent
    for (const pid of everyPid) expect(isGone(pid), `pid ${pid}`).toBe(true);
    expect(fs.existsSync(c.dir)).toBe(false);
    expect(c.members.every((m) => !m.running)).toBe(true);
  });
});

describe('EtcdCluster: partitions (partitionable: true)', () => {
  let c: EtcdCluster;
  beforeAll(async () => {
    c = await EtcdCluster.start({ size: 3, partitionable: true });
  });
  afterAll(async () => {
    await c?.close();
  });

  it('routes peer traffic through relays', async () => {
    for (const m of c.members) expect(m.peerPort).not.toBe(m.peerListenPort);
    const list = (await c.etcdctl(['member', 'list'])).stdout;
    for (const m of c.members) expect(list).toContain(m.peerUrl);
    // Each relay knows which member opened each connection through it (via
    // /proc). Identification runs in the background and etcd opens its peer
    // streams lazily: on a loaded machine give both a moment.
    for (const [i, m] of c.members.entries()) {
      const relay = c.peerRelay(i)!;
      const others = c.members.filter((_, j) => j !== i).map((o) => o.name);
      const named = () => [...relay.connectionsBySource().keys()].filter((k) => k !== undefined).sort();
      await waitFor(`${m.name}'s relay to name both peers`, async () => JSON.stringify(named()) === JSON.stringify(others), 10_000);
      expect(named(), m.name).toEqual(others);
      expect(relay.stats.identified).toBeGreaterThan(0);
      expect(relay.stats.unidentified, m.name).toBe(0);
    }
  });

  it('isolates a follower: it answers clients but loses its leader and falls behind; heal catches it up', async () => {
    const leader = await c.leaderIndex();
    const f = (leader + 1) % 3;
    const m = c.members[f]!;
    const before = await c.status(f);
    expect(before.leader).not.toBe('0');

    await c.isolate(f);
    expect(m.isolated).toBe(true);
    await waitFor('the isolated member to lose its leader', async () => (await c.status(f, 1_000)).leader === '0', 10_000);
    // The majority keeps committing without it.
    await c.etcdctl(['put', 'iso/key', 'during']);
    expect(await c.leaderIndex()).not.toBe(f);
    const isolated = await c.status(f);
    const others = await Promise.all([0, 1, 2].filter((j) => j !== f).map((j) => c.status(j)));
    expect(isolated.errors).toContain('etcdserver: no leader');
    // etcd 3.4 reports the term of the last applied entry as raftTerm, so the
    // candidate's growing term does not show; its log does.
    expect(await logTail(m.logFile, 2_000, 256_000)).toMatch(/became candidate at term/);
    expect(isolated.raftIndex).toBeLessThan(Math.min(...others.map((s) => s.raftIndex)));
    // Serializable reads are served locally (stale), linearizable ones fail.
    expect(await getValue(c, 'iso/key', m.clientUrl, true)).toBe('');
    await expect(c.etcdctl(['get', 'iso/key'], { endpoint: m.clientUrl, timeoutMs: 1_500 })).rejects.toThrow();

    await c.heal(f);
    expect(m.isolated).toBe(false);
    expect(await getValue(c, 'iso/key', m.clientUrl, true)).toBe('during');
    const after = await c.status(f);
    expect(after.leader).not.toBe('0');
  });

  it('isolating the leader (reset mode) makes the others elect a new one', async () => {
    const leader = await c.leaderIndex();
    await c.isolate(leader, { mode: 'reset' });
    const next = await c.leaderIndex(15_000);
    expect(next).not.toBe(leader);
    // The old leader steps down (CheckQuorum) and keeps answering status.
    await waitFor('the old leader to step down', async () => (await c.status(leader, 1_000)).leader !== c.members[leader]!.id, 10_000);
    await c.etcdctl(['put', 'iso/leader', 'moved']);
    await c.heal(leader);
    expect(await getValue(c, 'iso/leader', c.members[leader]!.clientUrl, true)).toBe('moved');
  });
});

describe('EtcdCluster: TLS (https client and peer URLs, client certs required)', () => {
  let c: EtcdCluster;
  let dir: string;
  let files: Record<'ca.pem' | 'server.pem' | 'server-key.pem' | 'client.pem' | 'client-key.pem' | 'rogue.pem' | 'rogue-key.pem', string>;
  let ca: string;

  beforeAll(async () => {
    dir = await makeTempDir('ballast-etcd-tls-');
    const authority = await createCA({ cn: 'ballast-test-etcd-ca' });
    const server = await issueCert(authority, {
      cn: 'etcd',
      dns: ['localhost'],
      ips: ['127.0.0.1'],
      usage: ['server', 'client'],
    });
    const client = await issueCert(authority, { cn: 'ballast-test-client', usage: ['client'] });
    const rogueCa = await createCA({ cn: 'rogue-ca' });
    const rogue = await issueCert(rogueCa, { cn: 'rogue', usage: ['client'] });
    ca = authority.cert;
    files = await writeFiles(dir, {
      'ca.pem': authority.cert,
      'server.pem': server.cert,
      'server-key.pem': server.key,
      'client.pem': client.cert,
      'client-key.pem': client.key,
      'rogue.pem': rogue.cert,
      'rogue-key.pem': rogue.key,
    });
    const serverFiles = { cert: files['server.pem'], key: files['server-key.pem'], ca: files['ca.pem'] };
    c = await EtcdCluster.start({
      size: 3,
      clientTls: { ...serverFiles, client: { cert: files['client.pem'], key: files['client-key.pem'] } },
      peerTls: serverFiles,
    });
  });
  afterAll(async () => {
    await c?.close();
    if (dir) await removeDir(dir);
  });

  it('serves https and etcdctl through the fixture works', async () => {
    for (const m of c.members) {
      expect(m.clientUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      expect(m.peerUrl).toMatch(/^https:\/\//);
    }
    await c.etcdctl(['put', 'tls/key', 'secret']);
    expect(await getValue(c, 'tls/key')).toBe('secret');
    expect([0, 1, 2]).toContain(await c.leaderIndex());
  });

  it('refuses clients without a cert or with a cert from another CA', async () => {
    const url = c.members[0]!.clientUrl;
    const post = (extra: https.RequestOptions): Promise<number> =>
      new Promise((resolve, reject) => {
        const req = https.request(
          `${url}/v3/kv/range`,
          { method: 'POST', agent: false, ca, timeout: 5_000, ...extra },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', reject);
        req.end(JSON.stringify({ key: Buffer.from('tls/key').toString('base64') }));
      });
    // The right client cert gets through...
    expect(
      await post({ cert: fs.readFileSync(files['client.pem']), key: fs.readFileSync(files['client-key.pem']) }),
    ).toBe(200);
    // ...no cert, or one from a foreign CA, is refused in the handshake.
    await expect(post({})).rejects.toThrow(/bad certificate|certificate required/);
    await expect(
      post({ cert: fs.readFileSync(files['rogue.pem']), key: fs.readFileSync(files['rogue-key.pem']) }),
    ).rejects.toThrow(/bad certificate|unknown ca/);

    // etcdctl with only the CA (no client cert) fails as well.
    const env: NodeJS.ProcessEnv = { ...process.env, ETCDCTL_API: '3' };
    const res = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(
        'etcdctl',
        [`--endpoints=${url}`, `--cacert=${files['ca.pem']}`, '--command-timeout=2s', 'get', 'tls/key'],
        { env, timeout: 10_000 },
        (err, _stdout, stderr) => resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) || 1 : 0, stderr }),
      );
    });
    expect(res.code).not.toBe(0);
    // etcd logs why it refused each of them.
    await waitFor(
      'etcd to log the refused handshakes',
      async () => {
        const log = await logTail(c.members[0]!.logFile, 2_000, 256_000);
        return log.includes("client didn't provide a certificate") && log.includes('signed by unknown authority');
      },
      5_000,
    );
    expect(res.stderr).not.toContain('secret');
  });
});

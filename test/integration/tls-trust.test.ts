// The trust boundary, attacked the way a local client would (issue #15):
// a TLS session made on one listener presented to another, a session that
// outlives its certificate or its CRL, SAN entries whose text imitates the
// types allow rules read, several CNs, client-initiated renegotiation, a CRL
// signed by the wrong key. Real certificates, real handshakes, the built CLI
// in one process and with two workers (the case where sessions cross
// processes).
import { renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, createCRL, issueCert, type CertAuthority } from '../../src/tls/certs.js';
import { parseConfig } from '../../src/config/load.js';
import { runCli, startInProcess, writeConfig, type ChildBallast, type InProcess } from '../support/ballast.js';
import { issueOddCert } from '../support/odd-cert.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePorts } from '../support/ports.js';
import { eventually, startEchoServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

const CN = 'kube-apiserver-etcd-client';
const SPIFFE = 'spiffe://cluster.local/ns/kube-system/sa/backup';

let dir: string;
let pki: Pki;
let other: CertAuthority;
let echo: TestServer;
/** Client credentials by name: cert + key PEM. */
const creds: Record<string, { cert: string; key: string }> = {};
/** When the short-lived cert stops being valid (ms since epoch). */
let shortNotAfter = 0;

beforeAll(async () => {
  dir = await makeTempDir();
  pki = await makePki(dir);
  other = await createCA({ cn: 'other-ca' });
  echo = await startEchoServer();
  writeFileSync(path.join(dir, 'other-ca.crt'), other.cert);
  for (const n of ['apiserver', 'intruder', 'revoked', 'spiffe']) creds[n] = pki.certs[n]!;
  // Allowed by name on guard, but issued by the CA only front trusts.
  creds.otherApiserver = await issueCert(other, { cn: CN, o: ['system:masters'], usage: ['client'] });
  // Allowed on guard, revoked only after it made a session.
  creds.lateRevoked = await pki.issue('late-revoked', { cn: CN, usage: ['client'] });
  // SANs and subjects that imitate what allow rules read.
  creds.emailSan = await issueOddCert(pki.ca, { subject: [{ CN: ['workload'] }], sans: [{ type: 'email', value: `a URI:${SPIFFE}` }] });
  creds.dirNameSan = await issueOddCert(pki.ca, { subject: [{ CN: ['workload'] }], sans: [{ type: 'dn', value: `CN=URI:${SPIFFE}` }] });
  creds.emailDns = await issueOddCert(pki.ca, { subject: [{ CN: ['workload'] }], sans: [{ type: 'email', value: 'x DNS:backup.kube-system.svc' }] });
  creds.twoCns = await issueOddCert(pki.ca, { subject: [{ CN: ['intruder'] }, { CN: [CN] }] });
  creds.twoCnsReversed = await issueOddCert(pki.ca, { subject: [{ CN: [CN] }, { CN: ['intruder'] }] });
}, 60_000);

afterAll(async () => {
  await echo?.close();
  await removeDir(dir);
});

interface Outcome {
  result: 'open' | 'refused';
  reused: boolean;
  session: Buffer | undefined;
}

/** Handshake, send a line, see whether it echoes; keep the last session ticket the server sent. */
function attempt(port: number, who: { cert: string; key: string } | undefined, opts: tls.ConnectionOptions = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    let session: Buffer | undefined;
    let reused = false;
    let done = false;
    const s = tls.connect({ host: '127.0.0.1', port, ca: pki.ca.cert, servername: 'localhost', ...(who ?? {}), ...opts });
    const finish = (result: Outcome['result']) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ result, reused, session: session ?? (result === 'open' ? s.getSession() : undefined) });
    };
    const timer = setTimeout(() => finish('refused'), 5000);
    s.on('session', (b: Buffer) => (session = b));
    s.on('error', () => finish('refused'));
    s.on('close', () => finish('refused'));
    s.once('secureConnect', () => {
      reused = s.isSessionReused();
      s.write('ping\n');
    });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      // Give TLS 1.3's NewSessionTicket (sent after the handshake) a moment to arrive.
      if (got.includes('ping\n')) setTimeout(() => finish('open'), 50);
    });
  });
}

async function metric(admin: number, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const labelText = line.slice(name.length + 1, line.indexOf('}'));
    if (want.every((w) => labelText.split(',').includes(w))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

const refused = (admin: number, listener: string, reason: string) => metric(admin, 'ballast_tls_handshake_failures_total', { listener, reason });

for (const workers of [1, 2]) {
  describe(`workers: ${workers}`, () => {
    let b: ChildBallast;
    let front: number;
    let guard: number;
    let spiffe: number;
    let admin: number;
    let crlFile: string;

    beforeAll(async () => {
      [front, guard, spiffe, admin] = (await freePorts(4)) as [number, number, number, number];
      crlFile = path.join(dir, `crl-${workers}.pem`);
      writeFileSync(crlFile, await createCRL(pki.ca, [pki.certs.revoked!.serial]));
      const f = pki.files;
      const file = writeConfig(
        dir,
        `
admin: { listen: 127.0.0.1:${admin} }
log: { level: info }
workers: ${workers}
tls:
  front:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
    clientCA: ${path.join(dir, 'other-ca.crt')}
  guard:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
    clientCA: ${f['ca.crt']}
    crl: ${crlFile}
    allow:
      - { cn: ${CN} }
  spiffe:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
    clientCA: ${f['ca.crt']}
    allow:
      - { uri: "spiffe://cluster.local/ns/kube-system/sa/*" }
      - { dns: "backup.kube-system.svc" }
listeners:
  - { name: front, listen: 127.0.0.1:${front}, cluster: back, tls: front }
  - { name: guard, listen: 127.0.0.1:${guard}, cluster: back, tls: guard }
  - { name: spiffe, listen: 127.0.0.1:${spiffe}, cluster: back, tls: spiffe }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 150ms, rise: 1 } }
`,
        `trust-${workers}.yaml`,
      );
      b = runCli(['run', '--config', file]);
      await eventually(async () => (await fetch(`http://127.0.0.1:${admin}/readyz`).catch(() => undefined))?.status === 200, 'ballast ready', 30_000, 50);
    }, 60_000);

    afterAll(async () => {
      b?.kill('SIGKILL');
      await b?.exited;
    });

    it('sanity: each listener admits its own clients and refuses the others', async () => {
      expect((await attempt(front, creds.otherApiserver)).result).toBe('open');
      expect((await attempt(guard, creds.apiserver)).result).toBe('open');
      expect((await attempt(guard, creds.otherApiserver)).result).toBe('refused');
      expect((await attempt(guard, creds.intruder)).result).toBe('refused');
      expect((await attempt(spiffe, creds.spiffe)).result).toBe('open');
    });

    for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
      it(`${version}: a session made on another listener does not let its holder into guard, with or without a certificate`, async () => {
        const before = await refused(admin, 'guard', 'unknown_ca');
        const made = await attempt(front, creds.otherApiserver, { maxVersion: version });
        expect(made.result).toBe('open');
        expect(made.session).toBeDefined();
        // Control: the same session resumes on the listener that issued it.
        const again = await attempt(front, creds.otherApiserver, { maxVersion: version, session: made.session! });
        expect(again).toMatchObject({ result: 'open', reused: true });
        for (let i = 0; i < 4; i++) {
          const bare = await attempt(guard, undefined, { maxVersion: version, session: made.session! });
          expect(bare.result, `attempt ${i} without a certificate`).toBe('refused');
          const withCert = await attempt(guard, creds.otherApiserver, { maxVersion: version, session: made.session! });
          expect(withCert.result, `attempt ${i} with the other CA's certificate`).toBe('refused');
          expect(withCert.reused).toBe(false);
        }
        expect(await refused(admin, 'guard', 'unknown_ca')).toBeGreaterThanOrEqual(before + 4);
      });
    }

    it('sessions resume on the listener that issued them (with workers, on any worker): resumption is kept where it is safe', async () => {
      for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
        let session = (await attempt(guard, creds.apiserver, { maxVersion: version })).session!;
        let reused = 0;
        for (let i = 0; i < 8; i++) {
          const r = await attempt(guard, creds.apiserver, { maxVersion: version, session });
          expect(r.result).toBe('open');
          if (r.reused) reused++;
          session = r.session ?? session;
        }
        expect(reused, version).toBe(8);
      }
    });

    it('a session does not outlive its certificate: resuming after notAfter is refused as cert_expired', async () => {
      const now = Date.now();
      shortNotAfter = now + 3000;
      const short = await issueCert(pki.ca, { cn: CN, usage: ['client'], notBefore: new Date(now - 60_000), notAfter: new Date(shortNotAfter) });
      const made = await attempt(guard, short);
      expect(made.result).toBe('open');
      const fresh = await attempt(guard, short, { session: made.session! });
      expect(fresh).toMatchObject({ result: 'open', reused: true });
      // Seconds are the resolution of notAfter; wait past it.
      await new Promise((r) => setTimeout(r, Math.max(0, shortNotAfter - Date.now()) + 1500));
      const before = await refused(admin, 'guard', 'cert_expired');
      expect((await attempt(guard, short, { session: fresh.session ?? made.session! })).result).toBe('refused');
      expect((await attempt(guard, undefined, { session: fresh.session ?? made.session! })).result).toBe('refused');
      expect(await refused(admin, 'guard', 'cert_expired')).toBeGreaterThan(before);
    });

    it('a session does not outlive a revocation: after the CRL lists the certificate, resuming is refused as cert_revoked', async () => {
      const made = await attempt(guard, creds.lateRevoked);
      expect(made.result).toBe('open');
      const before = await refused(admin, 'guard', 'cert_revoked');
      const next = path.join(dir, `crl-${workers}.next`);
      writeFileSync(next, await createCRL(pki.ca, [pki.certs.revoked!.serial, pki.certs['late-revoked']!.serial]));
      renameSync(next, crlFile);
      // The rotation is picked up by each process's watch: wait until a fresh handshake is refused.
      await eventually(async () => (await attempt(guard, creds.lateRevoked)).result === 'refused', 'the new CRL in force', 10_000, 100);
      for (let i = 0; i < 4; i++) {
        expect((await attempt(guard, creds.lateRevoked, { session: made.session! })).result, `resumption ${i}`).toBe('refused');
        expect((await attempt(guard, undefined, { session: made.session! })).result, `resumption ${i} without a certificate`).toBe('refused');
      }
      expect(await refused(admin, 'guard', 'cert_revoked')).toBeGreaterThan(before);
      // Others are still admitted.
      expect((await attempt(guard, creds.apiserver)).result).toBe('open');
    });

    it('SAN rules read entries by type: an e-mail or directory-name SAN that spells a URI or DNS name is not one', async () => {
      const before = await refused(admin, 'spiffe', 'identity_not_allowed');
      for (const name of ['emailSan', 'dirNameSan', 'emailDns']) {
        expect((await attempt(spiffe, creds[name]!)).result, name).toBe('refused');
      }
      expect(await refused(admin, 'spiffe', 'identity_not_allowed')).toBe(before + 3);
      expect((await attempt(spiffe, creds.spiffe)).result).toBe('open');
    });

    it('a certificate with more than one CN is refused, whichever comes first', async () => {
      const before = await refused(admin, 'guard', 'identity_ambiguous');
      expect((await attempt(guard, creds.twoCns)).result).toBe('refused');
      expect((await attempt(guard, creds.twoCnsReversed)).result).toBe('refused');
      expect(await refused(admin, 'guard', 'identity_ambiguous')).toBe(before + 2);
    });

    it('refuses client-initiated renegotiation (TLS 1.2)', async () => {
      const s = tls.connect({ host: '127.0.0.1', port: guard, ca: pki.ca.cert, servername: 'localhost', ...creds.apiserver, maxVersion: 'TLSv1.2' });
      s.on('error', () => undefined);
      await new Promise((r, j) => s.once('secureConnect', r).once('error', j));
      s.write('ping\n');
      await new Promise((r) => s.once('data', r));
      const outcome = await new Promise<string>((resolve) => {
        const timer = setTimeout(() => resolve('no answer'), 3000);
        const ok = s.renegotiate({ rejectUnauthorized: true }, (e) => {
          clearTimeout(timer);
          resolve(e ? `failed: ${e.message}` : 'completed');
        });
        if (!ok) resolve('refused locally');
      });
      s.destroy();
      expect(outcome).not.toBe('completed');
    });
  });
}

describe('reloads that change who gets in', () => {
  let p: InProcess | undefined;
  afterAll(async () => {
    await p?.stop();
  });

  it('turning client certificates on for a running listener asks for them (and the allow rules apply); removing the CRL warns', async () => {
    const f = pki.files;
    const [port] = (await freePorts(1)) as [number];
    const yaml = (tlsBody: string) => `
tls:
  guard:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
${tlsBody}
listeners:
  - { name: guard, listen: 127.0.0.1:${port}, cluster: back, tls: guard }
clusters:
  - { name: back, endpoints: [127.0.0.1:${echo.port}], health: { check: tcp, interval: 200ms, timeout: 150ms, rise: 1 } }
`;
    p = await startInProcess(yaml('    requireClientCert: false'));
    await eventually(() => p!.ballast.clusters.get('back')!.endpoints.every((e) => e.state === 'up'), 'backend up');
    expect((await attempt(port, undefined)).result).toBe('open');
    const guarded = `    clientCA: ${f['ca.crt']}\n    crl: ${f['crl.pem']}\n    allow: [{ cn: ${CN} }]`;
    await p.ballast.reload(parseConfig(yaml(guarded), '<reload>'));
    expect((await attempt(port, creds.apiserver)).result).toBe('open');
    expect((await attempt(port, undefined)).result).toBe('refused');
    expect((await attempt(port, creds.intruder)).result).toBe('refused');
    expect((await attempt(port, creds.revoked)).result).toBe('refused');
    expect(p.ballast.listeners.get('guard')!.tlsFailures.get('cert_revoked')).toBe(1);
    // A session cached under the old rule does not outlive a reload that narrows it.
    const cached = await attempt(port, creds.apiserver);
    expect((await attempt(port, creds.apiserver, { session: cached.session! })).reused).toBe(true);
    await p.ballast.reload(parseConfig(yaml(`    clientCA: ${f['ca.crt']}\n    crl: ${f['crl.pem']}\n    allow: [{ cn: someone-else }]`), '<reload>'));
    expect((await attempt(port, creds.apiserver, { session: cached.session! })).result).toBe('refused');
    expect((await attempt(port, undefined, { session: cached.session! })).result).toBe('refused');
    await p.ballast.reload(parseConfig(yaml(`    clientCA: ${f['ca.crt']}\n    allow: [{ cn: ${CN} }]`), '<reload>'));
    expect(p.lines.some((l) => l.level === 'warn' && /tls\.guard\.crl: removed by this reload; clients it revoked are admitted again/.test(l.msg))).toBe(true);
    expect((await attempt(port, creds.revoked)).result).toBe('open');
  });
});

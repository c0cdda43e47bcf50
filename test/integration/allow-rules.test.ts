import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCRL } from '../../src/tls/certs.js';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePort } from '../support/ports.js';
import { closed, eventually, startEchoServer, type TestServer } from '../support/servers.js';
import { makeTempDir, removeDir, writeFiles } from '../support/tmp.js';

// Allow rules that name more than a CN, and a CRL that must refuse a
// certificate the rules would admit. Real certificates from the code behind
// `ballast certs`, real handshakes, an echo server behind ballast: a client
// that gets in hears its own bytes back; one that is refused never reaches
// the backend. (issue #21: the `o` part of a rule ignored, and the CRL not
// applied, both went unnoticed because every refused test identity was also
// outside the allow-list.)

const CN = 'kube-apiserver-etcd-client';

let dir: string;
let pki: Pki;
let backend: TestServer;
let proxy: InProcess;
let port: number;

beforeAll(async () => {
  dir = await makeTempDir();
  pki = await makePki(dir);
  await pki.issue('masters', { cn: CN, o: ['system:masters'], usage: ['client'] });
  await pki.issue('wrong-o', { cn: CN, o: ['developers'], usage: ['client'] });
  await pki.issue('no-o', { cn: CN, usage: ['client'] });
  await pki.issue('o-prefix', { cn: CN, o: ['system:masters-not'], usage: ['client'] });
  // The right CN and O, issued by the right CA, in date: only the CRL says no.
  await pki.issue('revoked-masters', { cn: CN, o: ['system:masters'], usage: ['client'] });
  const crl = await createCRL(pki.ca, [pki.certs['revoked-masters']!.serial]);
  const { 'allow-crl.pem': crlFile } = await writeFiles(dir, { 'allow-crl.pem': crl });
  backend = await startEchoServer();
  port = await freePort();
  const f = pki.files;
  proxy = await startInProcess(`
admin: { enabled: false }
tls:
  guard:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
    clientCA: ${f['ca.crt']}
    crl: ${crlFile}
    handshakeTimeout: 2s
    allow:
      - { cn: ${CN}, o: "system:masters" }
listeners:
  - { name: guarded, listen: 127.0.0.1:${port}, cluster: echo, tls: guard }
clusters:
  - name: echo
    endpoints: [127.0.0.1:${backend.port}]
    health: { check: none }
`);
});

afterAll(async () => {
  await proxy?.stop();
  await backend?.close();
  await removeDir(dir);
});

const refusals = () => proxy.ballast.listeners.get('guarded')!.tlsFailures;

/**
 * Handshake as `name`, send a line, and report what came of it: 'echoed' when
 * the bytes came back from the backend, 'refused' when the connection closed
 * (or the handshake failed) without them.
 */
async function attempt(name: string): Promise<'echoed' | 'refused'> {
  const c = pki.certs[name]!;
  const s = tls.connect({ host: '127.0.0.1', port, ca: pki.ca.cert, servername: 'localhost', cert: c.cert, key: c.key });
  s.on('error', () => undefined);
  let got = '';
  s.on('data', (d: Buffer) => (got += d.toString()));
  const ready = await new Promise<boolean>((resolve) => {
    s.once('secureConnect', () => resolve(true));
    s.once('close', () => resolve(false));
  });
  if (!ready) return 'refused';
  // TLS 1.3: a refused client learns of it only after the handshake.
  s.write('ping\n');
  const outcome = await Promise.race([
    eventually(() => got === 'ping\n', 'echo', 5_000).then(() => 'echoed' as const),
    closed(s, 5_000).then(() => (got === 'ping\n' ? ('echoed' as const) : ('refused' as const))),
  ]).catch(() => 'refused' as const);
  s.destroy();
  return outcome;
}

describe('allow rule { cn, o }: every field it names must match', () => {
  it('admits the CN with the named O (the control: the path works)', async () => {
    expect(await attempt('masters')).toBe('echoed');
  });

  it.each([
    ['the right CN with a different O', 'wrong-o'],
    ['the right CN with no O at all', 'no-o'],
    ['the right CN with an O that only starts with the named one', 'o-prefix'],
  ])('refuses %s as identity_not_allowed, before a byte reaches the backend', async (_what, name) => {
    const accepted = backend.accepted;
    const counted = refusals().get('identity_not_allowed') ?? 0;
    expect(await attempt(name)).toBe('refused');
    await eventually(() => (refusals().get('identity_not_allowed') ?? 0) === counted + 1, 'refusal counted as identity_not_allowed');
    expect(backend.accepted).toBe(accepted);
    const line = proxy.lines.findLast((l) => l.msg.includes('refused TLS client (identity_not_allowed)'));
    expect(line?.identity).toContain(`CN=${CN}`);
  });
});

describe('CRL: a revoked certificate is refused even when the allow rules would admit it', () => {
  it('refuses a revoked CN+O that the rule allows, as cert_revoked (the CRL refuses it, not the allow-list)', async () => {
    const accepted = backend.accepted;
    const revoked = refusals().get('cert_revoked') ?? 0;
    const notAllowed = refusals().get('identity_not_allowed') ?? 0;
    expect(await attempt('revoked-masters')).toBe('refused');
    await eventually(() => (refusals().get('cert_revoked') ?? 0) === revoked + 1, 'refusal counted as cert_revoked');
    expect(refusals().get('identity_not_allowed') ?? 0).toBe(notAllowed);
    expect(backend.accepted).toBe(accepted);
  });

  it('still admits the unrevoked certificate with the same identity', async () => {
    expect(await attempt('masters')).toBe('echoed');
  });
});

// Identities read from DER (issue #15): SAN entries by type, every CN
// counted, values escaped in logs; CRLs verified before they are used.
import { createHash, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, createCRL, issueCert, type CertAuthority } from '../../src/tls/certs.js';
import { Authorizer, glob } from '../../src/tls/authorizer.js';
import { readCrls } from '../../src/tls/crl.js';
import { describeIdentity, escapeDn, parseIdentity, serialHex, type Identity } from '../../src/tls/identity.js';
import { readMaterial } from '../../src/tls/material.js';
import { TlsProfileRuntime } from '../../src/tls/tls-profile.js';
import { memoryLogger } from '../support/ballast.js';
import { issueOddCert } from '../support/odd-cert.js';
import { makeTempDir, removeDir, writeFiles } from '../support/tmp.js';

const SPIFFE = 'spiffe://cluster.local/ns/kube-system/sa/backup';

function identity(pem: string) {
  const x = new X509Certificate(pem);
  return parseIdentity(x.raw, createHash('sha256').update(x.raw).digest('hex'));
}

let ca: CertAuthority;
let sameName: CertAuthority;
let other: CertAuthority;
let dir: string;

beforeAll(async () => {
  ca = await createCA({ cn: 'etcd-ca' });
  sameName = await createCA({ cn: 'etcd-ca' });
  other = await createCA({ cn: 'other-ca' });
  dir = await makeTempDir();
});
afterAll(async () => {
  await removeDir(dir);
});

describe('identity from DER', () => {
  it('reads CN, every O, DNS and URI SANs, serial, issuer and validity', async () => {
    const c = await issueCert(ca, { cn: 'kube-apiserver-etcd-client', o: ['system:masters', 'b'], dns: ['a.example'], uris: [SPIFFE], usage: ['client'] });
    const id = identity(c.cert);
    const x = new X509Certificate(c.cert);
    expect(id).toMatchObject({ cn: 'kube-apiserver-etcd-client', cnCount: 1, dns: ['a.example'], uri: [SPIFFE] });
    expect([...id.o].sort()).toEqual(['b', 'system:masters']);
    expect(id.serial).toBe(x.serialNumber.toUpperCase().replace(/^0+/, ''));
    expect(id.notAfter).toBe(new Date(x.validTo).getTime());
    expect(id.notBefore).toBe(new Date(x.validFrom).getTime());
    expect(id.revocationKey).toBe(`${id.issuer}/${id.serial}`);
  });

  it('does not read an e-mail or directory-name SAN as a URI or DNS name, whatever its text', async () => {
    for (const sans of [
      [{ type: 'email' as const, value: `a URI:${SPIFFE}` }],
      [{ type: 'email' as const, value: `x, URI:${SPIFFE}` }],
      [{ type: 'dn' as const, value: `CN=URI:${SPIFFE}` }],
      [{ type: 'email' as const, value: 'x DNS:backup.kube-system.svc' }],
    ]) {
      const id = identity((await issueOddCert(ca, { subject: [{ CN: ['workload'] }], sans })).cert);
      expect(id.uri, JSON.stringify(sans)).toEqual([]);
      expect(id.dns, JSON.stringify(sans)).toEqual([]);
    }
  });

  it('counts every CN (a certificate with two is refused by the authorizer, not resolved)', async () => {
    const id = identity((await issueOddCert(ca, { subject: [{ CN: ['a'] }, { CN: ['b'] }] })).cert);
    expect(id.cnCount).toBe(2);
    expect(identity((await issueOddCert(ca, { subject: [{ O: ['x'] }] })).cert)).toMatchObject({ cn: '', cnCount: 0 });
  });

  it('logs values escaped as RFC 4514 says, so a CN cannot pose as an O', async () => {
    const id = identity((await issueOddCert(ca, { subject: [{ CN: ['intruder,O=system:masters'] }] })).cert);
    expect(id.o).toEqual([]);
    expect(describeIdentity(id)).toBe('CN=intruder\\,O\\=system:masters');
    expect(id.text, 'made once, at parse').toBe(describeIdentity(id));
    expect(escapeDn(' #a+b;c<d>e"f\\g ')).toBe('\\ #a\\+b\\;c\\<d\\>e\\"f\\\\g\\ ');
    expect(escapeDn('#x')).toBe('\\#x');
    expect(escapeDn('a\nb')).toBe('a\\0Ab');
  });

  it('serialHex drops the sign byte and leading zeros', () => {
    expect(serialHex(Buffer.from('00ab01', 'hex'))).toBe('AB01');
    expect(serialHex(Buffer.from('00', 'hex'))).toBe('0');
  });
});

describe('CRLs are verified before they are used', () => {
  it('accepts the CA own CRL and reads its revoked serials and nextUpdate', async () => {
    const leaf = await issueCert(ca, { cn: 'x', usage: ['client'] });
    const [crl] = readCrls(await createCRL(ca, [leaf.serial], { nextUpdateDays: 2 }), [new X509Certificate(ca.cert)]);
    expect(crl!.revoked.has(identity(leaf.cert).serial)).toBe(true);
    expect(crl!.issuer).toBe(identity(leaf.cert).issuer);
    expect(Math.abs(crl!.nextUpdate!.getTime() - Date.now() - 2 * 86_400_000)).toBeLessThan(120_000);
  });

  it('refuses a CRL of the right name signed with another key', async () => {
    expect(() => readCrls(Buffer.from('') + '', [])).toThrow(/not a PEM X509 CRL/);
    const forged = await createCRL(sameName, []);
    expect(() => readCrls(forged, [new X509Certificate(ca.cert)])).toThrow(/signature does not verify against CN=etcd-ca/);
  });

  it('refuses a CRL of a CA that is not in clientCA', async () => {
    const foreign = await createCRL(other, []);
    expect(() => readCrls(foreign, [new X509Certificate(ca.cert)])).toThrow(/issued by CN=other-ca, which is not a certificate in clientCA/);
  });

  it('reads every CRL of a file (one per CA in clientCA)', async () => {
    const both = (await createCRL(ca, [])) + (await createCRL(other, []));
    const crls = readCrls(both, [new X509Certificate(ca.cert), new X509Certificate(other.cert)]);
    expect(crls.map((c) => c.issuerText)).toEqual(['CN=etcd-ca', 'CN=other-ca']);
  });

  it('readMaterial refuses a forged CRL with the key path, and keys its revocation list by issuer and serial', async () => {
    const server = await issueCert(ca, { cn: 'ballast', dns: ['localhost'], usage: ['server'] });
    const revoked = await issueCert(ca, { cn: 'r', usage: ['client'] });
    const f = await writeFiles(dir, {
      'ca.crt': ca.cert,
      's.crt': server.cert,
      's.key': server.key,
      'good.crl': await createCRL(ca, [revoked.serial]),
      'forged.crl': await createCRL(sameName, [revoked.serial]),
    });
    const profile = (crl: string) => ({ name: 'guard', cert: f['s.crt']!, key: f['s.key']!, clientCA: f['ca.crt']!, crl, allow: [], requireClientCert: true, minVersion: 'TLSv1.2' as const, handshakeTimeout: 5000, alpn: ['h2'] });
    const m = readMaterial(profile(f['good.crl']!), { server: true, client: false });
    expect(m.revoked.has(identity(revoked.cert).revocationKey)).toBe(true);
    expect(m.crlNextUpdate).toBeInstanceOf(Date);
    expect(() => readMaterial(profile(f['forged.crl']!), { server: true, client: false })).toThrow(/tls\.guard\.crl: .*forged\.crl: the CRL's signature does not verify/);
  });
});

describe('allow rules', () => {
  const id = (over: Partial<Identity>): Identity => ({ cn: '', cnCount: 1, o: [], dns: [], uri: [], fingerprint: 'f', serial: '1', issuer: 'i', revocationKey: 'i/1', notBefore: 0, notAfter: 1, text: '', ...over });

  it('a rule with cn and o needs both; with no O, or another O, the CN alone is not enough', () => {
    const a = new Authorizer([{ cn: 'kube-apiserver-etcd-client', o: 'system:masters' }]);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client', o: ['system:masters'] }))).toBe(true);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client', o: ['x', 'system:masters'] }))).toBe(true);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client' }))).toBe(false);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client', o: ['system:nodes'] }))).toBe(false);
    expect(a.allows(id({ cn: 'other', o: ['system:masters'] }))).toBe(false);
  });

  it('any rule admits; no rules admit every verified client', () => {
    const a = new Authorizer([{ cn: 'a' }, { uri: 'spiffe://td/x' }]);
    expect(a.allows(id({ cn: 'a' }))).toBe(true);
    expect(a.allows(id({ cn: 'b', uri: ['spiffe://td/y', 'spiffe://td/x'] }))).toBe(true);
    expect(a.allows(id({ cn: 'b', dns: ['spiffe://td/x'] }))).toBe(false);
    expect(new Authorizer([]).allows(id({}))).toBe(true);
  });

  it('in uri and dns, * and ? stay within a segment; ** crosses', () => {
    expect(glob('spiffe://td/ns/*/sa/x', '/').test('spiffe://td/ns/kube-system/sa/x')).toBe(true);
    expect(glob('spiffe://td/ns/*/sa/x', '/').test('spiffe://td/ns/a/sa/b/sa/x')).toBe(false);
    expect(glob('spiffe://td/ns/?/sa/x', '/').test('spiffe://td/ns///sa/x')).toBe(false);
    expect(glob('spiffe://td/**', '/').test('spiffe://td/ns/a/sa/b')).toBe(true);
    expect(glob('*.kube-system.svc', '.').test('etcd.kube-system.svc')).toBe(true);
    expect(glob('*.kube-system.svc', '.').test('evil.example.kube-system.svc')).toBe(false);
    expect(glob('**.kube-system.svc', '.').test('a.b.kube-system.svc')).toBe(true);
  });

  it('in cn and o, * is any run of characters; everything else is literal', () => {
    expect(glob('system:node:*').test('system:node:a/b.c')).toBe(true);
    expect(glob('a.b').test('axb')).toBe(false);
    expect(glob('a+b(c)').test('a+b(c)')).toBe(true);
    expect(glob('x').test('x\n')).toBe(false);
  });
});

describe('a CRL past its nextUpdate', () => {
  it('is loaded (OpenSSL will refuse every client), and said: a warning naming the file and the fix, crlStale() for /status and the metric', async () => {
    const server = await issueCert(ca, { cn: 'ballast', dns: ['localhost'], usage: ['server'] });
    const f = await writeFiles(dir, { 'ca2.crt': ca.cert, 's2.crt': server.cert, 's2.key': server.key, 'soon.crl': await createCRL(ca, [], { nextUpdateDays: 1 / 86_400 }) });
    await new Promise((r) => setTimeout(r, 1500));
    const { log, lines } = memoryLogger();
    const p = new TlsProfileRuntime({ name: 'guard', cert: f['s2.crt']!, key: f['s2.key']!, clientCA: f['ca2.crt']!, crl: f['soon.crl']!, allow: [], requireClientCert: true, minVersion: 'TLSv1.2', handshakeTimeout: 5000, alpn: ['h2'] }, { server: true, client: false }, log);
    expect(p.crlStale()).toBe(true);
    expect(p.crlStale(p.material.crlNextUpdate!.getTime() - 1)).toBe(false);
    expect(lines.filter((l) => l.level === 'warn' && /tls\.guard\.crl: .*soon\.crl is past its nextUpdate .*every client is refused as crl_error/.test(l.msg))).toHaveLength(1);
    p.close();
  });
});

import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';

import {
  createCA,
  createCRL,
  issueCert,
  loadCA,
  type CertAuthority,
  type IssuedCert,
} from '../../src/tls/certs.js';
import { runCertsCommand } from '../../src/tls/certs-command.js';

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SPIFFE = 'spiffe://cluster.local/ns/kube-system/sa/apiserver';
const DAY = 24 * 60 * 60 * 1000;

// Node 20 calls the extended key usages `keyUsage`; newer releases also
// offer the correctly named `extKeyUsage`.
function ekus(x: X509Certificate): string[] {
  return (x as X509Certificate & { extKeyUsage?: string[] }).extKeyUsage ?? x.keyUsage ?? [];
}

function commonName(subject: { CN?: string | string[] } | undefined): string | undefined {
  const cn = subject?.CN;
  return Array.isArray(cn) ? cn.join('+') : cn;
}

interface Side {
  authorized: boolean;
  error?: string;
  peerCN?: string;
}

interface HandshakeOptions {
  server: { cert: string; key: string };
  /** CAs the server trusts for client certs. */
  serverCa: string;
  client?: { cert: string; key: string };
  /** CAs the client trusts for the server cert. */
  clientCa: string;
  servername?: string;
  crl?: string;
  /** true: the server aborts on a bad client cert; false: it reports authorizationError. */
  serverRejects?: boolean;
}

/** A real TLS handshake on loopback; returns what each side concluded. */
async function handshake(o: HandshakeOptions): Promise<{ server: Side; client: Side }> {
  const server = tls.createServer({
    cert: o.server.cert,
    key: o.server.key,
    ca: o.serverCa,
    requestCert: true,
    rejectUnauthorized: o.serverRejects ?? false,
    ...(o.crl !== undefined ? { crl: o.crl } : {}),
  });
  const serverSide = new Promise<Side>((resolve) => {
    server.once('secureConnection', (s: tls.TLSSocket) => {
      const peer = s.getPeerCertificate();
      resolve({
        authorized: s.authorized,
        // At runtime this is the OpenSSL code string (e.g. 'CERT_REVOKED'),
        // although @types/node declares it as Error.
        error: s.authorized ? undefined : String(s.authorizationError),
        peerCN: commonName(peer.subject),
      });
      s.end();
    });
    server.once('tlsClientError', (err: NodeJS.ErrnoException) => resolve({ authorized: false, error: err.code ?? err.message }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  try {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: o.clientCa,
      ...(o.client ? { cert: o.client.cert, key: o.client.key } : {}),
      ...(o.servername !== undefined ? { servername: o.servername } : {}),
      rejectUnauthorized: true,
    });
    const clientSide = new Promise<Side>((resolve) => {
      socket.once('secureConnect', () =>
        resolve({ authorized: socket.authorized, peerCN: commonName(socket.getPeerCertificate().subject) }),
      );
      socket.once('error', (err: NodeJS.ErrnoException) => resolve({ authorized: false, error: err.code ?? err.message }));
    });
    // A client rejected by its own verification never reaches the server's
    // secureConnection, so don't wait for the server in that case.
    const client = await clientSide;
    const serverResult = client.authorized
      ? await serverSide
      : await Promise.race([serverSide, new Promise<Side>((r) => setTimeout(() => r({ authorized: false, error: 'NO_SERVER_RESULT' }), 500))]);
    socket.destroy();
    return { server: serverResult, client };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

// All RSA material is generated once here: RSA keygen dominates the runtime.
let ca: CertAuthority;
let server: IssuedCert;
let client: IssuedCert;
let rsaCa: CertAuthority;
let rsaServer: IssuedCert;
let rsaClient: IssuedCert;
let x509: typeof import('@peculiar/x509');

beforeAll(async () => {
  ca = await createCA({ cn: 'ballast-test-ca' });
  [server, client] = await Promise.all([
    issueCert(ca, { cn: 'etcd-0', dns: ['localhost'], ips: ['127.0.0.1', '::1'], usage: ['server', 'client'] }),
    issueCert(ca, { cn: 'kube-apiserver-etcd-client', o: ['system:masters', 'ballast'], uris: [SPIFFE], usage: ['client'] }),
  ]);
  rsaCa = await createCA({ cn: 'ballast-test-rsa-ca', algorithm: 'rsa-2048' });
  [rsaServer, rsaClient] = await Promise.all([
    issueCert(rsaCa, { cn: 'rsa-server', dns: ['localhost'], ips: ['127.0.0.1'], usage: ['server', 'client'], algorithm: 'rsa-2048' }),
    issueCert(rsaCa, { cn: 'rsa-client', usage: ['client'], algorithm: 'rsa-2048' }),
  ]);
  // Only after certs.ts has loaded it: @peculiar/x509 needs the Reflect
  // metadata shim that certs.ts installs before its first import.
  x509 = await import('@peculiar/x509');
});

describe('createCA / issueCert', () => {
  it('completes a mutual-TLS handshake with ECDSA certificates (SNI localhost)', async () => {
    const r = await handshake({ server, serverCa: ca.cert, client, clientCa: ca.cert, servername: 'localhost', serverRejects: true });
    expect(r.client).toMatchObject({ authorized: true, peerCN: 'etcd-0' });
    expect(r.server).toMatchObject({ authorized: true, peerCN: 'kube-apiserver-etcd-client' });
  });

  it('matches the server identity against the IP SAN when connecting to 127.0.0.1 without SNI', async () => {
    const r = await handshake({ server, serverCa: ca.cert, client, clientCa: ca.cert, serverRejects: true });
    expect(r.client.authorized).toBe(true);
    expect(r.server.authorized).toBe(true);
    // IPv6 and a non-listed address, checked the way Node's TLS client does.
    const legacy = new X509Certificate(server.cert).toLegacyObject();
    expect(tls.checkServerIdentity('::1', legacy)).toBeUndefined();
    expect(tls.checkServerIdentity('127.0.0.1', legacy)).toBeUndefined();
    expect(tls.checkServerIdentity('10.0.0.1', legacy)).toBeInstanceOf(Error);
    expect(tls.checkServerIdentity('example.com', legacy)).toBeInstanceOf(Error);
  });

  it('completes a mutual-TLS handshake with RSA-2048 certificates', async () => {
    const r = await handshake({
      server: rsaServer,
      serverCa: rsaCa.cert,
      client: rsaClient,
      clientCa: rsaCa.cert,
      servername: 'localhost',
      serverRejects: true,
    });
    expect(r.client).toMatchObject({ authorized: true, peerCN: 'rsa-server' });
    expect(r.server).toMatchObject({ authorized: true, peerCN: 'rsa-client' });
  });

  it('generates ECDSA P-256 keys by default and RSA-2048 on request, as PKCS#8', () => {
    const ec = createPrivateKey(server.key);
    expect(ec.asymmetricKeyType).toBe('ec');
    expect(ec.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const rsa = createPrivateKey(rsaClient.key);
    expect(rsa.asymmetricKeyType).toBe('rsa');
    expect(rsa.asymmetricKeyDetails?.modulusLength).toBe(2048);
    for (const pem of [server.key, client.key, rsaClient.key, ca.key, rsaCa.key]) {
      expect(pem.startsWith('-----BEGIN PRIVATE KEY-----\n')).toBe(true);
    }
    expect(new X509Certificate(server.cert).publicKey.asymmetricKeyType).toBe('ec');
    expect(new X509Certificate(rsaServer.cert).publicKey.asymmetricKeyType).toBe('rsa');
  });

  it('puts SANs, EKUs, CN and O where Node reads them', () => {
    const s = new X509Certificate(server.cert);
    expect(s.subject).toBe('CN=etcd-0');
    expect(s.subjectAltName?.split(', ')).toEqual(expect.arrayContaining(['DNS:localhost', 'IP Address:127.0.0.1']));
    expect(s.subjectAltName).toMatch(/IP Address:0:0:0:0:0:0:0:1|IP Address:::1/);
    expect(ekus(s).sort()).toEqual([SERVER_AUTH, CLIENT_AUTH]);
    expect(s.issuer).toBe('CN=ballast-test-ca');
    expect(s.ca).toBe(false);

    const c = new X509Certificate(client.cert);
    expect(c.subject.split('\n')).toEqual(['O=system:masters', 'O=ballast', 'CN=kube-apiserver-etcd-client']);
    expect(c.subjectAltName).toBe(`URI:${SPIFFE}`);
    expect(ekus(c)).toEqual([CLIENT_AUTH]);

    const r = new X509Certificate(rsaClient.cert);
    expect(r.subjectAltName).toBeUndefined(); // no empty SAN extension
  });

  it('sets CA and leaf extensions (criticality, key usage, key identifiers)', () => {
    const caCert = new x509.X509Certificate(ca.cert);
    const bc = caCert.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(true);
    expect(bc?.critical).toBe(true);
    const caKu = caCert.getExtension(x509.KeyUsagesExtension);
    expect(caKu?.critical).toBe(true);
    expect(caKu?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature);
    const caSki = caCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
    expect(caSki).toMatch(/^[0-9a-f]{40}$/);
    expect(new X509Certificate(ca.cert).ca).toBe(true);
    expect(ca.subject).toBe('CN=ballast-test-ca');

    const leaf = new x509.X509Certificate(server.cert);
    const leafBc = leaf.getExtension(x509.BasicConstraintsExtension);
    expect(leafBc?.ca).toBe(false);
    expect(leafBc?.critical).toBe(true);
    expect(leaf.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(caSki);
    const leafSki = leaf.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
    expect(leafSki).toMatch(/^[0-9a-f]{40}$/);
    expect(leafSki).not.toBe(caSki);
    expect(leaf.signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-256' } });

    const rsaLeaf = new x509.X509Certificate(rsaServer.cert);
    expect(rsaLeaf.getExtension(x509.KeyUsagesExtension)?.usages).toBe(
      x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
    );
    expect(rsaLeaf.signatureAlgorithm).toMatchObject({ name: 'RSASSA-PKCS1-v1_5', hash: { name: 'SHA-256' } });
  });

  it('returns keys that match their certificates and are usable by tls.createSecureContext', () => {
    for (const c of [server, client, rsaServer, rsaClient]) {
      expect(new X509Certificate(c.cert).checkPrivateKey(createPrivateKey(c.key))).toBe(true);
      expect(() => tls.createSecureContext({ cert: c.cert, key: c.key, ca: [ca.cert, rsaCa.cert] })).not.toThrow();
    }
    expect(new X509Certificate(server.cert).checkPrivateKey(createPrivateKey(client.key))).toBe(false);
    expect(new X509Certificate(ca.cert).checkPrivateKey(createPrivateKey(ca.key))).toBe(true);
  });

  it('reports the serial Node reports (lowercase), positive and at most 16 bytes', async () => {
    for (const c of [server, client, rsaServer, rsaClient]) {
      const nodeSerial = new X509Certificate(c.cert).serialNumber;
      expect(c.serial).toBe(nodeSerial.toLowerCase());
      expect(c.serial).toMatch(/^[0-9a-f]+$/);
      expect(c.serial.length).toBeLessThanOrEqual(32);
    }
    const fixed = await issueCert(ca, { cn: 'fixed', usage: ['client'], serial: 'FF' });
    expect(fixed.serial).toBe('ff');
    expect(new X509Certificate(fixed.cert).serialNumber).toBe('FF');
    const colons = await issueCert(ca, { cn: 'colons', usage: ['client'], serial: '00:0a:bc' });
    expect(colons.serial).toBe('0abc');
    expect(new X509Certificate(colons.cert).serialNumber.toLowerCase()).toBe('0abc');
  });

  it('rejects an expired client certificate with CERT_HAS_EXPIRED', async () => {
    const expired = await issueCert(ca, {
      cn: 'expired',
      usage: ['client'],
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const r = await handshake({ server, serverCa: ca.cert, client: expired, clientCa: ca.cert, servername: 'localhost' });
    expect(r.server).toMatchObject({ authorized: false, error: 'CERT_HAS_EXPIRED' });
  });

  it('rejects a not-yet-valid client certificate with CERT_NOT_YET_VALID', async () => {
    const future = await issueCert(ca, {
      cn: 'future',
      usage: ['client'],
      notBefore: new Date(Date.now() + DAY),
      validDays: 30,
    });
    expect(new Date(new X509Certificate(future.cert).validFrom).getTime()).toBeGreaterThan(Date.now());
    const r = await handshake({ server, serverCa: ca.cert, client: future, clientCa: ca.cert, servername: 'localhost' });
    expect(r.server).toMatchObject({ authorized: false, error: 'CERT_NOT_YET_VALID' });
  });

  it('makes the TLS client reject an expired server certificate with CERT_HAS_EXPIRED', async () => {
    const expiredServer = await issueCert(ca, {
      cn: 'old-server',
      dns: ['localhost'],
      usage: ['server'],
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const r = await handshake({ server: expiredServer, serverCa: ca.cert, client, clientCa: ca.cert, servername: 'localhost' });
    expect(r.client).toMatchObject({ authorized: false, error: 'CERT_HAS_EXPIRED' });
  });

  it('rejects a client certificate from a foreign CA, even one with the same CN', async () => {
    const foreignCa = await createCA({ cn: 'ballast-test-ca' });
    const foreign = await issueCert(foreignCa, { cn: 'kube-apiserver-etcd-client', o: ['system:masters'], usage: ['client'] });
    const r = await handshake({ server, serverCa: ca.cert, client: foreign, clientCa: ca.cert, servername: 'localhost' });
    expect(r.server.authorized).toBe(false);
    // OpenSSL 3 reports a leaf whose issuer is not in the trust store as
    // UNABLE_TO_VERIFY_LEAF_SIGNATURE; older releases said ..._LOCALLY.
    expect(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']).toContain(r.server.error);
  });

  it('honours the extended key usage: a serverAuth-only cert is refused as a client cert', async () => {
    const serverOnly = await issueCert(ca, { cn: 'server-only', dns: ['localhost'], usage: ['server'] });
    expect(ekus(new X509Certificate(serverOnly.cert))).toEqual([SERVER_AUTH]);
    const r = await handshake({ server, serverCa: ca.cert, client: serverOnly, clientCa: ca.cert, servername: 'localhost' });
    expect(r.server).toMatchObject({ authorized: false, error: 'INVALID_PURPOSE' });
  });

  it('validates its inputs with messages that name the field', async () => {
    await expect(issueCert(ca, { cn: 'x', usage: [] })).rejects.toThrow(/usage/);
    await expect(issueCert(ca, { cn: '', usage: ['client'] })).rejects.toThrow(/cn/);
    await expect(issueCert(ca, { cn: 'x', ips: ['300.1.1.1'], usage: ['server'] })).rejects.toThrow(/IP SAN: "300.1.1.1"/);
    await expect(issueCert(ca, { cn: 'x', dns: ['bad name'], usage: ['server'] })).rejects.toThrow(/DNS SAN/);
    await expect(issueCert(ca, { cn: 'x', uris: ['not a uri'], usage: ['client'] })).rejects.toThrow(/URI SAN/);
    await expect(issueCert(ca, { cn: 'x', usage: ['client'], serial: '00' })).rejects.toThrow(/positive/);
    await expect(issueCert(ca, { cn: 'x', usage: ['client'], serial: 'xyz' })).rejects.toThrow(/hex/);
    await expect(
      issueCert(ca, { cn: 'x', usage: ['client'], notBefore: new Date(Date.now()), notAfter: new Date(Date.now() - DAY) }),
    ).rejects.toThrow(/notAfter .* must be later than notBefore/);
  });

  it('encodes IPv4-mapped IPv6 addresses as 16-byte IP SANs', async () => {
    const c = await issueCert(ca, { cn: 'v6', ips: ['::ffff:10.0.0.1', 'fd00::1:2'], usage: ['server'] });
    const legacy = new X509Certificate(c.cert).toLegacyObject();
    expect(tls.checkServerIdentity('fd00::1:2', legacy)).toBeUndefined();
    expect(new X509Certificate(c.cert).subjectAltName).toMatch(/IP Address:0:0:0:0:0:FFFF:A00:1/i);
  });
});

describe('loadCA', () => {
  it('issues from a CA loaded from PEM, including kubeadm-style PKCS#1/SEC1 keys', async () => {
    const sec1 = createPrivateKey(ca.key).export({ type: 'sec1', format: 'pem' }).toString();
    const pkcs1 = createPrivateKey(rsaCa.key).export({ type: 'pkcs1', format: 'pem' }).toString();
    expect(sec1).toContain('BEGIN EC PRIVATE KEY');
    expect(pkcs1).toContain('BEGIN RSA PRIVATE KEY');
    for (const [loaded, original] of [
      [await loadCA(ca.cert, sec1), ca],
      [await loadCA(rsaCa.cert, pkcs1), rsaCa],
    ] as const) {
      expect(loaded.subject).toBe(original.subject);
      const leaf = await issueCert(loaded, { cn: 'from-loaded', usage: ['client'] });
      const x = new X509Certificate(leaf.cert);
      const caX = new X509Certificate(original.cert);
      expect(x.checkIssued(caX)).toBe(true);
      expect(x.verify(caX.publicKey)).toBe(true);
    }
  });

  it('works with a plain {cert, key} object, e.g. one restored from JSON', async () => {
    const restored = JSON.parse(JSON.stringify(ca)) as CertAuthority;
    const leaf = await issueCert(restored, { cn: 'restored', usage: ['client'] });
    expect(new X509Certificate(leaf.cert).verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
  });

  it('refuses a mismatched key, a leaf certificate and garbage', async () => {
    await expect(loadCA(ca.cert, rsaCa.key)).rejects.toThrow(/does not match/);
    await expect(loadCA(server.cert, server.key)).rejects.toThrow(/not a CA/);
    await expect(loadCA('nonsense', ca.key)).rejects.toThrow(/CA certificate/);
    await expect(loadCA(ca.cert, 'nonsense')).rejects.toThrow(/CA key/);
  });
});

describe('createCRL', () => {
  it('makes a server with `crl` reject the revoked client (CERT_REVOKED) and accept the others', async () => {
    const [revoked, good] = await Promise.all([
      issueCert(ca, { cn: 'revoked', usage: ['client'] }),
      issueCert(ca, { cn: 'good', usage: ['client'] }),
    ]);
    // Node's uppercase serial form is accepted too.
    const crl = await createCRL(ca, [new X509Certificate(revoked.cert).serialNumber, 'abcdef']);
    expect(crl.startsWith('-----BEGIN X509 CRL-----\n')).toBe(true);

    const bad = await handshake({ server, serverCa: ca.cert, client: revoked, clientCa: ca.cert, servername: 'localhost', crl });
    expect(bad.server).toMatchObject({ authorized: false, error: 'CERT_REVOKED' });
    const ok = await handshake({ server, serverCa: ca.cert, client: good, clientCa: ca.cert, servername: 'localhost', crl });
    expect(ok.server).toMatchObject({ authorized: true, peerCN: 'good' });
  });

  it('produces an acceptable empty CRL and an RSA-signed CRL', async () => {
    const empty = await createCRL(ca, []);
    const ok = await handshake({ server, serverCa: ca.cert, client, clientCa: ca.cert, servername: 'localhost', crl: empty });
    expect(ok.server).toMatchObject({ authorized: true });

    const rsaCrl = await createCRL(rsaCa, [rsaClient.serial], { nextUpdateDays: 1 });
    const bad = await handshake({
      server: rsaServer,
      serverCa: rsaCa.cert,
      client: rsaClient,
      clientCa: rsaCa.cert,
      servername: 'localhost',
      crl: rsaCrl,
    });
    expect(bad.server).toMatchObject({ authorized: false, error: 'CERT_REVOKED' });
    const parsed = new x509.X509Crl(rsaCrl.replace(/X509 CRL/g, 'CRL'));
    expect(parsed.entries.map((e) => e.serialNumber)).toEqual([rsaClient.serial]);
    expect(parsed.nextUpdate!.getTime() - parsed.thisUpdate.getTime()).toBeLessThan(2 * DAY);
    expect(await parsed.verify({ publicKey: new x509.X509Certificate(rsaCa.cert).publicKey })).toBe(true);
  });
});

describe('runCertsCommand', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'ballast-certs-cmd-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  function capture(): { log(line: string): void; error(line: string): void; lines: string[]; errors: string[] } {
    const lines: string[] = [];
    const errors: string[] = [];
    return { log: (l) => lines.push(l), error: (l) => errors.push(l), lines, errors };
  }
  const mode = (p: string): number => statSync(p).mode & 0o777;

  it('writes a CA, a server and a client with safe modes by default, usable for mutual TLS', async () => {
    const dir = join(root, 'default', 'pki');
    const out = capture();
    expect(await runCertsCommand(['--out', dir], out)).toBe(0);
    expect(out.errors).toEqual([]);
    expect(mode(dir)).toBe(0o700);
    for (const f of ['ca.key', 'server.key', 'client.key']) expect(mode(join(dir, f))).toBe(0o600);
    for (const f of ['ca.crt', 'server.crt', 'client.crt']) {
      expect(mode(join(dir, f)) & 0o600).toBe(0o600);
      expect(mode(join(dir, f)) & 0o022).toBe(0);
    }
    expect(out.lines.filter((l) => l.startsWith('wrote '))).toHaveLength(6);

    const s = new X509Certificate(readFileSync(join(dir, 'server.crt')));
    expect(s.subjectAltName?.split(', ').slice(0, 2)).toEqual(['DNS:localhost', 'IP Address:127.0.0.1']);
    expect(tls.checkServerIdentity('::1', s.toLegacyObject())).toBeUndefined();
    expect(ekus(s).sort()).toEqual([SERVER_AUTH, CLIENT_AUTH]);
    expect(ekus(new X509Certificate(readFileSync(join(dir, 'client.crt'))))).toEqual([CLIENT_AUTH]);

    const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
    const r = await handshake({
      server: { cert: read('server.crt'), key: read('server.key') },
      serverCa: read('ca.crt'),
      client: { cert: read('client.crt'), key: read('client.key') },
      clientCa: read('ca.crt'),
      servername: 'localhost',
      serverRejects: true,
    });
    expect(r.client.authorized).toBe(true);
    expect(r.server).toMatchObject({ authorized: true, peerCN: 'client' });
  });

  it('reuses the CA, refuses to overwrite without --force, and replaces files with mode 0600 under --force', async () => {
    const dir = join(root, 'reuse');
    expect(await runCertsCommand(['--out', dir], capture())).toBe(0);
    const caBefore = readFileSync(join(dir, 'ca.crt'));
    const caKeyBefore = readFileSync(join(dir, 'ca.key'));

    const out = capture();
    const code = await runCertsCommand(
      ['--out', dir, '--server', 'etcd-0:localhost,127.0.0.1,::1', '--client', `kube-apiserver-etcd-client:O=system:masters,uri:${SPIFFE}`, '--peer', 'etcd-0-peer:10.0.0.5,dns:etcd-0.etcd'],
      out,
    );
    expect(code).toBe(0);
    expect(readFileSync(join(dir, 'ca.crt')).equals(caBefore)).toBe(true);
    expect(readFileSync(join(dir, 'ca.key')).equals(caKeyBefore)).toBe(true);
    expect(out.lines[0]).toMatch(/^reusing CA .*ca\.crt \(CN=ballast-ca\)$/);
    const caX = new X509Certificate(caBefore);
    const apiClient = new X509Certificate(readFileSync(join(dir, 'kube-apiserver-etcd-client.crt')));
    expect(apiClient.checkIssued(caX)).toBe(true);
    expect(apiClient.subject.split('\n')).toEqual(['O=system:masters', 'CN=kube-apiserver-etcd-client']);
    expect(apiClient.subjectAltName).toBe(`URI:${SPIFFE}`);
    const peer = new X509Certificate(readFileSync(join(dir, 'etcd-0-peer.crt')));
    expect(peer.subjectAltName).toBe('DNS:etcd-0.etcd, IP Address:10.0.0.5');
    expect(ekus(peer).sort()).toEqual([SERVER_AUTH, CLIENT_AUTH]);

    const serverBefore = readFileSync(join(dir, 'server.crt'));
    const refused = capture();
    expect(await runCertsCommand(['--out', dir], refused)).toBe(1);
    expect(refused.errors.join('\n')).toMatch(/server\.crt.*already exist.*--force/);
    expect(readFileSync(join(dir, 'server.crt')).equals(serverBefore)).toBe(true);

    // A key left world-readable by someone else must come back as 0600.
    chmodSync(join(dir, 'server.key'), 0o644);
    expect(await runCertsCommand(['--out', dir, '--force'], capture())).toBe(0);
    expect(readFileSync(join(dir, 'server.crt')).equals(serverBefore)).toBe(false);
    expect(mode(join(dir, 'server.key'))).toBe(0o600);
    expect(readFileSync(join(dir, 'ca.crt')).equals(caBefore)).toBe(true);
    const serverAfter = new X509Certificate(readFileSync(join(dir, 'server.crt')));
    expect(serverAfter.checkPrivateKey(createPrivateKey(readFileSync(join(dir, 'server.key'))))).toBe(true);
  });

  it('returns 2 with a precise message on usage errors and writes nothing', async () => {
    const dir = join(root, 'usage');
    const cases: [string[], string | RegExp][] = [
      [['--out', dir, '--algorithm', 'dsa'], 'ballast certs: --algorithm: expected ecdsa-p256 or rsa-2048, got "dsa"'],
      [['--out', dir, '--days', '0'], /--days: expected a whole number of days/],
      [['--out', dir, '--frobnicate'], /frobnicate/],
      [['--out', dir, 'positional'], /positional/],
      [['--algorithm', 'rsa-2048'], /--out: missing/],
      [['--out', dir, '--client', 'api:system:masters'], /write O=GROUP, uri:URI, dns:NAME or ip:ADDR/],
      [['--out', dir, '--server', '../evil'], /NAME must start with a letter or digit/],
      [['--out', dir, '--server', 'a', '--client', 'a'], /already used by --server/],
      [['--out', dir, '--server', 'a:ip:1.2.3'], /is not an IP address/],
    ];
    for (const [argv, message] of cases) {
      const out = capture();
      expect(await runCertsCommand(argv, out), argv.join(' ')).toBe(2);
      expect(out.errors[0]).toMatch(typeof message === 'string' ? new RegExp(`^${message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) : message);
    }
    expect(existsSync(dir)).toBe(false);
  });

  it('refuses a --ca-cn that contradicts the existing CA, and a half-present CA', async () => {
    const dir = join(root, 'cacn');
    expect(await runCertsCommand(['--out', dir, '--ca-cn', 'cluster-a'], capture())).toBe(0);
    expect(new X509Certificate(readFileSync(join(dir, 'ca.crt'))).subject).toBe('CN=cluster-a');
    const out = capture();
    expect(await runCertsCommand(['--out', dir, '--ca-cn', 'cluster-b', '--client', 'x'], out)).toBe(2);
    expect(out.errors[0]).toMatch(/--ca-cn cluster-b: .* CN=cluster-a/);

    const half = join(root, 'half');
    expect(await runCertsCommand(['--out', half, '--client', 'x'], capture())).toBe(0);
    await rm(join(half, 'ca.key'));
    const out2 = capture();
    expect(await runCertsCommand(['--out', half, '--client', 'y'], out2)).toBe(1);
    expect(out2.errors[0]).toMatch(/ca\.crt exists but .*ca\.key does not/);
  });

  it('prints usage for --help and returns 0', async () => {
    const out = capture();
    expect(await runCertsCommand(['--help'], out)).toBe(0);
    expect(out.lines.join('\n')).toMatch(/--server NAME\[:SAN,\.\.\.\]/);
    expect(out.errors).toEqual([]);
  });
});

describe('etcd 3.4 (Go crypto/x509) accepts the certificates', () => {
  const ETCD = process.env['ETCD_BIN'] ?? 'etcd';
  const ETCDCTL = process.env['ETCDCTL_BIN'] ?? 'etcdctl';

  async function freePort(): Promise<number> {
    const srv = net.createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const { port } = srv.address() as net.AddressInfo;
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    return port;
  }

  function etcdctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(
        ETCDCTL,
        ['--dial-timeout=2s', '--command-timeout=3s', ...args],
        { env: { ...process.env, ETCDCTL_API: '3' }, timeout: 8000 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
          resolve({ code, stdout, stderr });
        },
      );
    });
  }

  it('serves TLS with our server cert, authenticates our ECDSA and RSA client certs, and honours our CRL', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ballast-certs-etcd-'));
    let etcd: ChildProcess | undefined;
    let stderr = '';
    try {
      const [revoked, peerish] = await Promise.all([
        issueCert(ca, { cn: 'revoked-client', usage: ['client'] }),
        // Exercise Go's SAN parser with every SAN type we emit.
        issueCert(ca, {
          cn: 'etcd-1',
          dns: ['localhost', 'etcd-1.etcd.kube-system.svc'],
          ips: ['127.0.0.1', '::1', '::ffff:10.0.0.1'],
          uris: [SPIFFE],
          o: ['system:masters'],
          usage: ['server', 'client'],
        }),
      ]);
      const f = (name: string, content: string): string => {
        const p = join(dir, name);
        writeFileSync(p, content, { mode: 0o600 });
        return p;
      };
      const trusted = f('trusted.crt', ca.cert + rsaCa.cert);
      const serverCrt = f('server.crt', peerish.cert);
      const serverKey = f('server.key', peerish.key);
      const crl = f('client.crl', await createCRL(ca, [revoked.serial]));
      const clientArgs = (c: IssuedCert, name: string): string[] => [
        `--cacert=${f('ca.crt', ca.cert)}`,
        `--cert=${f(`${name}.crt`, c.cert)}`,
        `--key=${f(`${name}.key`, c.key)}`,
      ];

      const [clientPort, peerPort] = [await freePort(), await freePort()];
      const clientUrl = `https://127.0.0.1:${clientPort}`;
      const peerUrl = `http://127.0.0.1:${peerPort}`;
      etcd = spawn(
        ETCD,
        [
          '--name=t',
          `--data-dir=${join(dir, 'data')}`,
          `--listen-client-urls=${clientUrl}`,
          `--advertise-client-urls=${clientUrl}`,
          `--listen-peer-urls=${peerUrl}`,
          `--initial-advertise-peer-urls=${peerUrl}`,
          `--initial-cluster=t=${peerUrl}`,
          `--cert-file=${serverCrt}`,
          `--key-file=${serverKey}`,
          `--trusted-ca-file=${trusted}`,
          '--client-cert-auth',
          `--client-crl-file=${crl}`,
          '--logger=zap',
          `--log-outputs=${join(dir, 'etcd.log')}`,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      etcd.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<string>((resolve) => etcd?.once('exit', (code, sig) => resolve(`etcd exited (${code ?? sig})`)));

      const endpoint = `--endpoints=${clientUrl}`;
      const ecClient = clientArgs(client, 'client');
      // Wait until etcd answers over mutual TLS (it is usually ready in ~1 s).
      const deadline = Date.now() + 8000;
      let put = await etcdctl([endpoint, ...ecClient, 'put', 'ballast/k', 'v1']);
      while (put.code !== 0 && Date.now() < deadline) {
        const early = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 200))]);
        if (early !== undefined) throw new Error(`${early}: ${stderr}${readFileSync(join(dir, 'etcd.log'), 'utf8')}`);
        put = await etcdctl([endpoint, ...ecClient, 'put', 'ballast/k', 'v1']);
      }
      expect(put, put.stderr).toMatchObject({ code: 0 });
      expect(put.stdout.trim()).toBe('OK');

      const get = await etcdctl([endpoint, ...clientArgs(rsaClient, 'rsa-client'), 'get', 'ballast/k', '--print-value-only']);
      expect(get, get.stderr).toMatchObject({ code: 0 });
      expect(get.stdout.trim()).toBe('v1');

      const denied = await etcdctl([endpoint, ...clientArgs(revoked, 'revoked'), 'get', 'ballast/k']);
      expect(denied.code).not.toBe(0);
      expect(readFileSync(join(dir, 'etcd.log'), 'utf8')).toMatch(/revoked/i);
    } finally {
      if (etcd && etcd.exitCode === null && etcd.signalCode === null) {
        const proc = etcd;
        const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
        await gone;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    }
  });
});

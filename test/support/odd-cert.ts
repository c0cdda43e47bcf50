// Certificates that `ballast certs` would never issue, made the way an
// attacker with a CA-signed CSR might get them: SANs of types the allow rules
// do not read (e-mail, directory names) whose text looks like ones they do,
// several CNs, CNs that look like a DN. Signed by a real test CA, so OpenSSL
// verifies them; only ballast's reading of the identity stands in the way.
import { webcrypto } from 'node:crypto';
import type * as X509 from '@peculiar/x509';
import type { CertAuthority } from '../../src/tls/certs.js';

export interface OddCertOptions {
  /** Subject as JSON name parts, in order, e.g. [{ CN: ['a'] }, { CN: ['b'] }]. */
  subject: X509.JsonName;
  /** SANs with @peculiar/x509 types: 'dns' | 'email' | 'dn' | 'url' | 'ip'. */
  sans?: { type: 'dns' | 'email' | 'dn' | 'url' | 'ip'; value: string }[];
  notBefore?: Date;
  notAfter?: Date;
}

let lib: Promise<typeof X509> | undefined;
function x509(): Promise<typeof X509> {
  lib ??= (async () => {
    await import('reflect-metadata');
    const m = await import('@peculiar/x509');
    m.cryptoProvider.set(webcrypto as unknown as ReturnType<typeof m.cryptoProvider.get>);
    return m;
  })();
  return lib;
}

/** Issue a client certificate (ECDSA P-256, clientAuth) with exactly the subject and SANs given. */
export async function issueOddCert(ca: CertAuthority, opts: OddCertOptions): Promise<{ cert: string; key: string }> {
  const m = await x509();
  const caCert = new m.X509Certificate(ca.cert);
  const der = Buffer.from(ca.key.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const alg = { name: 'ECDSA', namedCurve: 'P-256' } as const;
  const caKey = await webcrypto.subtle.importKey('pkcs8', der, alg, false, ['sign']);
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const extensions: X509.Extension[] = [
    new m.BasicConstraintsExtension(false, undefined, true),
    new m.KeyUsagesExtension(m.KeyUsageFlags.digitalSignature, true),
    new m.ExtendedKeyUsageExtension([m.ExtendedKeyUsage.clientAuth], false),
  ];
  const ski = caCert.getExtension(m.SubjectKeyIdentifierExtension);
  if (ski) extensions.push(new m.AuthorityKeyIdentifierExtension(ski.keyId, false));
  if (opts.sans && opts.sans.length > 0) extensions.push(new m.SubjectAlternativeNameExtension(opts.sans, false));
  const now = Date.now();
  const cert = await m.X509CertificateGenerator.create({
    serialNumber: webcrypto.getRandomValues(Buffer.alloc(16)).toString('hex').replace(/^./, '1'),
    subject: opts.subject,
    issuer: caCert.subjectName,
    notBefore: opts.notBefore ?? new Date(now - 60_000),
    notAfter: opts.notAfter ?? new Date(now + 86_400_000),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions,
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
  return { cert: cert.toString('pem') + '\n', key: keyPem };
}

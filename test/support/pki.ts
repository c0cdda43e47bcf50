// A test PKI made by the same code as `ballast certs`: one etcd CA, server
// certs for etcd and ballast, client identities (allowed, not allowed,
// expired, not yet valid, revoked), a foreign CA, and a CRL.
import path from 'node:path';
import { createCA, createCRL, issueCert, type CertAuthority, type IssuedCert } from '../../src/tls/certs.js';
import { writeFiles } from './tmp.js';

export interface Pki {
  dir: string;
  ca: CertAuthority;
  files: Record<string, string>;
  certs: Record<string, IssuedCert>;
  /** Issue one more cert and write NAME.crt/NAME.key. */
  issue(name: string, opts: Parameters<typeof issueCert>[1]): Promise<{ cert: string; key: string }>;
}

const DAY = 86_400_000;

export async function makePki(dir: string): Promise<Pki> {
  const ca = await createCA({ cn: 'etcd-ca' });
  const foreign = await createCA({ cn: 'etcd-ca' }); // same name, different key
  const now = Date.now();
  const certs: Record<string, IssuedCert> = {
    // etcd members: serverAuth AND clientAuth (etcd's gateway dials itself with it).
    'etcd-server': await issueCert(ca, { cn: 'etcd', ips: ['127.0.0.1', '::1'], dns: ['localhost'], usage: ['server', 'client'] }),
    // ballast's listener certificate.
    'ballast-server': await issueCert(ca, { cn: 'ballast', ips: ['127.0.0.1', '::1'], dns: ['localhost'], usage: ['server'] }),
    // ballast's client identity towards etcd.
    'ballast-client': await issueCert(ca, { cn: 'ballast-etcd-client', usage: ['client'] }),
    // Clients of ballast.
    apiserver: await issueCert(ca, { cn: 'kube-apiserver-etcd-client', o: ['system:masters'], usage: ['client'] }),
    spiffe: await issueCert(ca, { cn: 'workload', uris: ['spiffe://cluster.local/ns/kube-system/sa/backup'], usage: ['client'] }),
    intruder: await issueCert(ca, { cn: 'intruder', usage: ['client'] }),
    expired: await issueCert(ca, { cn: 'kube-apiserver-etcd-client', usage: ['client'], notBefore: new Date(now - 10 * DAY), notAfter: new Date(now - DAY) }),
    'not-yet-valid': await issueCert(ca, { cn: 'kube-apiserver-etcd-client', usage: ['client'], notBefore: new Date(now + DAY), notAfter: new Date(now + 10 * DAY) }),
    revoked: await issueCert(ca, { cn: 'kube-apiserver-etcd-client', usage: ['client'] }),
    foreign: await issueCert(foreign, { cn: 'kube-apiserver-etcd-client', usage: ['client'] }),
  };
  const crl = await createCRL(ca, [certs.revoked!.serial]);
  const contents: Record<string, string> = { 'ca.crt': ca.cert, 'crl.pem': crl };
  for (const [name, c] of Object.entries(certs)) {
    contents[`${name}.crt`] = c.cert;
    contents[`${name}.key`] = c.key;
  }
  const files = await writeFiles(dir, contents);
  return {
    dir,
    ca,
    files,
    certs,
    async issue(name, opts) {
      const c = await issueCert(ca, opts);
      certs[name] = c;
      Object.assign(files, await writeFiles(dir, { [`${name}.crt`]: c.cert, [`${name}.key`]: c.key }));
      return c;
    },
  };
}

export function pemPath(pki: Pki, name: string): string {
  return path.join(pki.dir, name);
}

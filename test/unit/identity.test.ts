import type { TLSSocket } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { describeIdentity, identityOf, parseSubjectAltName } from '../../src/tls/identity.js';

// A verified client's identity in the terms allow rules and affinity keys use.
// (Raised from surviving mutants of `npm run mutation`; the real-certificate
// path is covered by test/integration/allow-rules.test.ts and mtls.test.ts.)

/** A socket whose peer certificate is what Node would report. */
function socketWith(cert: Record<string, unknown>): TLSSocket {
  return { getPeerCertificate: () => cert } as unknown as TLSSocket;
}

const base = { raw: Buffer.from([1]), fingerprint256: 'AB:CD', serialNumber: '0a1b' };

describe('identityOf', () => {
  it('reads CN, every O, DNS and URI SANs, the fingerprint, and the serial in upper case', () => {
    const got = identityOf(
      socketWith({ ...base, subject: { CN: 'kube-apiserver-etcd-client', O: ['system:masters', 'ops'] }, subjectaltname: 'DNS:a.local, URI:spiffe://x/y, IP Address:10.0.0.1' }),
    );
    expect(got).toEqual({ cn: 'kube-apiserver-etcd-client', o: ['system:masters', 'ops'], dns: ['a.local'], uri: ['spiffe://x/y'], fingerprint: 'AB:CD', serial: '0A1B' });
  });

  it('a single O is a list of one; no O is an empty list; no CN is ""', () => {
    expect(identityOf(socketWith({ ...base, subject: { O: 'system:masters' } }))).toMatchObject({ cn: '', o: ['system:masters'], dns: [], uri: [] });
    expect(identityOf(socketWith({ ...base, subject: { CN: 'x' } }))).toMatchObject({ cn: 'x', o: [] });
  });

  it('of several CNs, the first counts', () => {
    expect(identityOf(socketWith({ ...base, subject: { CN: ['first', 'second'] } }))?.cn).toBe('first');
  });

  it('no certificate (empty object, or one without raw bytes) is no identity', () => {
    expect(identityOf(socketWith({}))).toBeUndefined();
    expect(identityOf(socketWith({ subject: { CN: 'x' }, raw: undefined }))).toBeUndefined();
  });
});

describe('parseSubjectAltName', () => {
  it('splits DNS, URI and IP entries', () => {
    expect(parseSubjectAltName('DNS:localhost, DNS:a.local, IP Address:127.0.0.1, IP Address:::1, URI:spiffe://cluster.local/ns/a/sa/b')).toEqual({
      dns: ['localhost', 'a.local'],
      uri: ['spiffe://cluster.local/ns/a/sa/b'],
      ip: ['127.0.0.1', '::1'],
    });
  });

  it('unquotes values that Node quoted because they hold a comma', () => {
    expect(parseSubjectAltName('URI:"spiffe://x/a,b", DNS:c')).toEqual({ dns: ['c'], uri: ['spiffe://x/a,b'], ip: [] });
  });

  it('ignores entry kinds it does not use, and an empty string', () => {
    expect(parseSubjectAltName('email:a@b.c, DNS:d')).toEqual({ dns: ['d'], uri: [], ip: [] });
    expect(parseSubjectAltName('')).toEqual({ dns: [], uri: [], ip: [] });
  });
});

describe('describeIdentity', () => {
  it('names CN, each O and each URI, for logs', () => {
    expect(describeIdentity({ cn: 'c', o: ['o1', 'o2'], dns: ['d'], uri: ['spiffe://u'], fingerprint: '', serial: '' })).toBe('CN=c,O=o1,O=o2,URI=spiffe://u');
    expect(describeIdentity({ cn: 'intruder', o: [], dns: [], uri: [], fingerprint: '', serial: '' })).toBe('CN=intruder');
  });
});

import { verify, type X509Certificate } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate, CertificateList } from '@peculiar/asn1-x509';
import { derElement } from './der.js';
import { serialHex } from './identity.js';

// Certificate revocation lists, read and checked before they replace the old
// ones: a CRL whose signature does not verify against a CA in clientCA
// (another CA's, or the right name with the wrong key) would otherwise make
// OpenSSL refuse every client. What a CRL lists is kept as issuer + serial,
// so a resumed session is checked against the CRL in force now, not the one
// of its first handshake.

export interface Crl {
  /** The issuer's Name, DER hex (compared with a certificate's issuer). */
  issuer: string;
  /** The issuer as text, for messages. */
  issuerText: string;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  /** Revoked serials, uppercase hex without leading zeros. */
  revoked: Set<string>;
  pem: string;
}

const SIGNATURE_HASH: Record<string, string | null> = {
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.3.101.112': null, // Ed25519
  '1.3.101.113': null, // Ed448
};

export class CrlError extends Error {}

/**
 * Parse every CRL in a PEM file and verify each against the CA certificates
 * that verify clients. Throws CrlError with what is wrong and what to do.
 */
export function readCrls(pem: string, cas: readonly X509Certificate[]): Crl[] {
  const blocks = pem.match(/-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g);
  if (!blocks || blocks.length === 0) throw new CrlError('is not a PEM X509 CRL');
  const caNames = cas.map((ca) => ({ ca, subject: Buffer.from(AsnConvert.serialize(AsnConvert.parse(ca.raw, Certificate).tbsCertificate.subject)).toString('hex') }));
  return blocks.map((block, i) => {
    const what = blocks.length > 1 ? `CRL ${i + 1}` : 'the CRL';
    const der = Buffer.from(block.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    let list: CertificateList;
    let tbs: Buffer;
    try {
      list = AsnConvert.parse(der, CertificateList);
      const outer = derElement(der, 0);
      const inner = derElement(der, outer.contents);
      tbs = der.subarray(outer.contents, inner.end);
    } catch (err) {
      throw new CrlError(`${what} does not parse: ${(err as Error).message}`);
    }
    const t = list.tbsCertList;
    const issuer = Buffer.from(AsnConvert.serialize(t.issuer)).toString('hex');
    const issuerText = nameText(t.issuer);
    const hash = SIGNATURE_HASH[list.signatureAlgorithm.algorithm];
    if (hash === undefined) throw new CrlError(`${what} (issuer ${issuerText}) is signed with ${list.signatureAlgorithm.algorithm}, which ballast cannot verify; sign it with ECDSA, RSA PKCS#1 v1.5 or Ed25519`);
    const named = caNames.filter((c) => c.subject === issuer);
    if (named.length === 0) {
      throw new CrlError(`${what} is issued by ${issuerText}, which is not a certificate in clientCA: use the CRL of the CA that issues the client certificates`);
    }
    const sig = Buffer.from(list.signature);
    if (!named.some((c) => verify(hash, tbs, c.ca.publicKey, sig))) {
      throw new CrlError(`${what}'s signature does not verify against ${issuerText} in clientCA (same name, different key?): it was not signed by this CA`);
    }
    const revoked = new Set<string>();
    for (const r of t.revokedCertificates ?? []) revoked.add(serialHex(r.userCertificate));
    return { issuer, issuerText, thisUpdate: t.thisUpdate.getTime(), nextUpdate: t.nextUpdate?.getTime(), revoked, pem: block + '\n' };
  });
}

function nameText(name: CertificateList['tbsCertList']['issuer']): string {
  const short: Record<string, string> = { '2.5.4.3': 'CN', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST' };
  const parts: string[] = [];
  for (const rdn of name) for (const atv of rdn) parts.push(`${short[atv.type] ?? atv.type}=${atv.value.toString()}`);
  return parts.join(',') || '(empty name)';
}

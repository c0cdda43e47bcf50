import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate, id_ce_subjectAltName, SubjectAlternativeName, type Name } from '@peculiar/asn1-x509';
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';

// The identity of a client certificate, in the terms allow rules and affinity
// keys use: CN, organizations (Kubernetes groups), DNS and URI SANs (SPIFFE
// IDs), the SHA-256 fingerprint, and what a resumed session must re-check
// (validity, issuer and serial for the CRL).
//
// Read from the certificate's DER, entry by entry and by type, never from
// OpenSSL's printed text: in text an e-mail SAN `a URI:spiffe://x` or a
// directory name whose CN is `URI:…` reads like a URI SAN, and a CN holding
// `,O=system:masters` like a second attribute.

export interface Identity {
  /** The subject's CN; '' when there is none. With several CNs, the first (and `cnCount` > 1). */
  cn: string;
  /** Certificates with more than one CN are refused: ballast and Go (etcd, kube-apiserver) would read different ones. */
  cnCount: number;
  o: string[];
  dns: string[];
  uri: string[];
  fingerprint: string;
  /** Serial as uppercase hex without leading zeros. */
  serial: string;
  /** The issuer's Name, DER hex: with the serial, what a CRL entry names. */
  issuer: string;
  /** `issuer/serial`: how MaterialSet.revoked names this certificate. */
  revocationKey: string;
  notBefore: number;
  notAfter: number;
  /** describeIdentity() of this identity, made once per certificate (it is logged and carried per connection). */
  text: string;
}

const OID_CN = '2.5.4.3';
const OID_O = '2.5.4.10';

/** Parsed identities by fingerprint: clients reconnect with the same certificate, so each is parsed once. */
const cache = new Map<string, Identity>();
const CACHE_MAX = 4096;

export function identityOf(socket: TLSSocket): Identity | undefined {
  const cert = socket.getPeerCertificate(false) as PeerCertificate | DetailedPeerCertificate | Record<string, never>;
  if (!cert || !('raw' in cert) || cert.raw === undefined) return undefined;
  const fp = cert.fingerprint256;
  let id = cache.get(fp);
  if (id === undefined) {
    id = parseIdentity(cert.raw, fp);
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(fp, id);
  }
  return id;
}

/** The identity in a DER certificate. Throws if the DER does not parse (OpenSSL verified it, so that means a bug). */
export function parseIdentity(der: Uint8Array, fingerprint: string): Identity {
  const c = AsnConvert.parse(der, Certificate).tbsCertificate;
  const cns = attributes(c.subject, OID_CN);
  const id: Identity = {
    cn: cns[0] ?? '',
    cnCount: cns.length,
    o: attributes(c.subject, OID_O),
    dns: [],
    uri: [],
    fingerprint,
    serial: serialHex(c.serialNumber),
    issuer: Buffer.from(AsnConvert.serialize(c.issuer)).toString('hex'),
    revocationKey: '',
    text: '',
    notBefore: c.validity.notBefore.getTime().getTime(),
    notAfter: c.validity.notAfter.getTime().getTime(),
  };
  id.revocationKey = `${id.issuer}/${id.serial}`;
  for (const ext of c.extensions ?? []) {
    if (ext.extnID !== id_ce_subjectAltName) continue;
    for (const name of AsnConvert.parse(ext.extnValue, SubjectAlternativeName)) {
      if (name.dNSName !== undefined) id.dns.push(name.dNSName);
      else if (name.uniformResourceIdentifier !== undefined) id.uri.push(name.uniformResourceIdentifier);
      // e-mail, directory names, IPs, otherName: not read by any allow rule.
    }
  }
  id.text = describeIdentity(id);
  return id;
}

function attributes(name: Name, oid: string): string[] {
  const out: string[] = [];
  for (const rdn of name) for (const atv of rdn) if (atv.type === oid) out.push(atv.value.toString());
  return out;
}

/** Uppercase hex without leading zeros (how Node prints serialNumber, minus its sign-byte quirks). */
export function serialHex(bytes: ArrayBuffer | Uint8Array): string {
  const hex = Buffer.from(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)).toString('hex').toUpperCase().replace(/^0+/, '');
  return hex === '' ? '0' : hex;
}

/** `CN=kube-apiserver-etcd-client,O=system:masters,URI=spiffe://…` for logs, each value escaped as RFC 4514 says. */
export function describeIdentity(id: Omit<Identity, 'text'>): string {
  const parts = [`CN=${escapeDn(id.cn)}`];
  for (const o of id.o) parts.push(`O=${escapeDn(o)}`);
  for (const u of id.uri) parts.push(`URI=${escapeDn(u)}`);
  for (const d of id.dns) parts.push(`DNS=${escapeDn(d)}`);
  return parts.join(',');
}

/** RFC 4514 section 2.4: `"+,;<>\` and `=` anywhere, `#` or space first, space last; control characters as \XX. */
export function escapeDn(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    const code = ch.charCodeAt(0);
    if (code < 0x20 || code === 0x7f) out += `\\${code.toString(16).padStart(2, '0').toUpperCase()}`;
    else if ('"+,;<>\\='.includes(ch) || (i === 0 && (ch === '#' || ch === ' ')) || (i === value.length - 1 && ch === ' ')) out += `\\${ch}`;
    else out += ch;
  }
  return out;
}

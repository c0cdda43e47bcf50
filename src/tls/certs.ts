// Certificate factory for ballast's own PKI: a CA, server/client/peer leaf
// certificates and CRLs, built on @peculiar/x509 over Node's WebCrypto.
//
// The output has to be accepted by two verifiers that disagree on details:
// OpenSSL (Node's `tls`) and Go's crypto/x509 (etcd, kube-apiserver). The
// choices below (explicit IP SANs, positive serials, AKI copied from the CA's
// SKI, issuer bytes copied from the CA's subject, "X509 CRL" PEM label, ...)
// are the ones both accept; the comments say which verifier needs what.

import {
  createPrivateKey,
  randomBytes,
  sign,
  webcrypto,
  X509Certificate as NodeX509Certificate,
  type KeyObject,
} from 'node:crypto';
import type * as X509 from '@peculiar/x509';
import {
  CLOCK_SKEW_MS,
  checkAlgorithm,
  checkDnsName,
  checkName,
  checkUri,
  checkUsage,
  DAY_MS,
  evenHex,
  ipForSan,
  normalizeSerial,
  validity,
} from './cert-input.js';
import { der, derInteger, derTime } from './der.js';

const subtle = webcrypto.subtle;

let x509Loading: Promise<typeof X509> | undefined;

/**
 * @peculiar/x509 2.x is loaded lazily, for two reasons:
 * - its DI container (tsyringe) throws at load time unless the Reflect
 *   metadata polyfill is loaded first, and a static import would be
 *   evaluated before that;
 * - the proxy itself never needs it, so `ballast run` does not pay for it.
 */
function lib(): Promise<typeof X509> {
  x509Loading ??= (async () => {
    await import('reflect-metadata');
    const x509 = await import('@peculiar/x509');
    // The cast bridges @types/node's webcrypto.Crypto and the DOM-style Crypto
    // type @peculiar/x509 declares; they describe the same runtime object.
    x509.cryptoProvider.set(webcrypto as unknown as ReturnType<typeof x509.cryptoProvider.get>);
    return x509;
  })();
  return x509Loading;
}

export type KeyAlgorithm = 'ecdsa-p256' | 'rsa-2048';
export type CertUsage = 'server' | 'client';

/**
 * A certificate authority that can issue certificates and CRLs.
 *
 * Only `cert` and `key` are needed to rebuild it: any object with those two
 * PEM strings works with issueCert/createCRL (the signing key is imported on
 * first use and cached), so a CertAuthority may be serialised and restored.
 */
export interface CertAuthority {
  /** CA certificate, PEM. */
  cert: string;
  /** CA private key, PEM (PKCS#8 when created here; whatever was loaded otherwise). */
  key: string;
  /** Subject distinguished name in RFC 4514 form, e.g. `CN=ballast-ca`. */
  readonly subject: string;
}

export interface IssuedCert {
  /** Leaf certificate, PEM. */
  cert: string;
  /** Private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). */
  key: string;
  /**
   * Serial number as lowercase hex, no colons, no sign byte (e.g. `3f9a...`).
   * Node's `X509Certificate.serialNumber` prints the same digits in UPPERCASE,
   * so compare case-insensitively. createCRL accepts either form.
   */
  serial: string;
}

export interface CaOptions {
  cn: string;
  algorithm?: KeyAlgorithm;
  /** Default 3650 (ten years, like kubeadm's CA). */
  validDays?: number;
  notBefore?: Date;
  notAfter?: Date;
}

export interface IssueOptions {
  cn: string;
  /** Organization(s); Kubernetes reads them as the client's groups. */
  o?: string[];
  /** DNS SANs. */
  dns?: string[];
  /** IP SANs, IPv4 or IPv6 ('127.0.0.1', '::1'). */
  ips?: string[];
  /** URI SANs, e.g. 'spiffe://cluster.local/ns/kube-system/sa/apiserver'. */
  uris?: string[];
  /** extendedKeyUsage; etcd server certs need both 'server' and 'client'. */
  usage: CertUsage[];
  /** Default 'ecdsa-p256'. */
  algorithm?: KeyAlgorithm;
  /** Default 365. */
  validDays?: number;
  notBefore?: Date;
  notAfter?: Date;
  /** Hex (colons allowed); default: 16 random bytes with the top bit cleared. */
  serial?: string;
}

const DEFAULT_CA_DAYS = 3650;
const DEFAULT_LEAF_DAYS = 365;
const DEFAULT_CRL_DAYS = 30;

const OID_CRL_NUMBER = '2.5.29.20';

interface SigningMaterial {
  certPem: string;
  keyPem: string;
  cert: X509.X509Certificate;
  signingKey: webcrypto.CryptoKey;
  signingAlgorithm: { name: string; hash?: string };
  /** Same key for node:crypto, which signs CRLs with DER-encoded ECDSA signatures. */
  nodeKey: KeyObject;
  hash: 'sha256' | 'sha384' | 'sha512';
  /** DER AlgorithmIdentifier of the CA's signature algorithm. */
  algorithmIdentifier: Buffer;
  /** The CA's subjectKeyIdentifier, copied into leaves' authorityKeyIdentifier. */
  keyId: string | undefined;
}

// Signing material lives outside the public object so CertAuthority stays a
// plain {cert, key, subject} record that other modules can build or persist.
const material = new WeakMap<CertAuthority, SigningMaterial>();

// ---------------------------------------------------------------------------
// Public API

export async function createCA(opts: CaOptions): Promise<CertAuthority> {
  const x509 = await lib();
  const cn = checkName(opts.cn, 'createCA: cn');
  const algorithm = checkAlgorithm(opts.algorithm, 'createCA: algorithm');
  const { notBefore, notAfter } = validity(opts, DEFAULT_CA_DAYS, 'createCA');
  const keys = await generateKeys(algorithm);

  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [cn] }],
    issuer: [{ CN: [cn] }],
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    signingAlgorithm: signingAlgorithmFor(algorithm),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        // cRLSign is what makes OpenSSL accept CRLs signed by this CA.
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });

  const certPem = toCertPem(cert);
  const keyPem = await toKeyPem(keys.privateKey);
  const ca: CertAuthority = { cert: certPem, key: keyPem, subject: cert.subject };
  material.set(ca, await importMaterial(certPem, keyPem));
  return ca;
}

/**
 * Loads an existing CA, e.g. from `ca.crt`/`ca.key` on disk or kubeadm's
 * /etc/kubernetes/pki/etcd/ca.{crt,key}. The key may be PKCS#8, PKCS#1
 * (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); it must not be encrypted.
 */
export async function loadCA(certPem: string, keyPem: string): Promise<CertAuthority> {
  const m = await importMaterial(certPem, keyPem);
  const ca: CertAuthority = { cert: certPem, key: keyPem, subject: m.cert.subject };
  material.set(ca, m);
  return ca;
}

export async function issueCert(ca: CertAuthority, opts: IssueOptions): Promise<IssuedCert> {
  const cn = checkName(opts.cn, 'issueCert: cn');
  const orgs = (opts.o ?? []).map((o, i) => checkName(o, `issueCert: o[${i}]`));
  const algorithm = checkAlgorithm(opts.algorithm, 'issueCert: algorithm');
  const usage = checkUsage(opts.usage);
  const sans = [
    ...(opts.dns ?? []).map((d) => ({ type: 'dns' as const, value: checkDnsName(d) })),
    ...(opts.ips ?? []).map((ip) => ({ type: 'ip' as const, value: ipForSan(ip) })),
    ...(opts.uris ?? []).map((u) => ({ type: 'url' as const, value: checkUri(u) })),
  ];
  const { notBefore, notAfter } = validity(opts, DEFAULT_LEAF_DAYS, 'issueCert');
  const serialNumber = opts.serial === undefined ? randomSerial() : normalizeSerial(opts.serial, 'issueCert: serial');

  const x509 = await lib();
  const m = await materialFor(ca);
  const keys = await generateKeys(algorithm);

  let keyUsage = x509.KeyUsageFlags.digitalSignature;
  // RSA key exchange (TLS 1.2 RSA kx) encrypts the premaster secret to the
  // leaf key; Go and OpenSSL expect keyEncipherment on RSA leaves for that.
  if (algorithm === 'rsa-2048') keyUsage |= x509.KeyUsageFlags.keyEncipherment;

  const extensions: X509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(keyUsage, true),
    new x509.ExtendedKeyUsageExtension(
      usage.map((u) => (u === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth)),
      false,
    ),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  // An empty SAN extension is invalid DER (GeneralNames is SIZE 1..MAX), so a
  // plain client cert identified only by CN/O gets none, as kubeadm does.
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));
  // AKI must equal the CA's SKI byte for byte: OpenSSL skips an issuer whose
  // SKI differs from the leaf's AKI. A CA without SKI gets no AKI.
  if (m.keyId !== undefined) extensions.push(new x509.AuthorityKeyIdentifierExtension(m.keyId, false));

  const subject: X509.JsonName = [...orgs.map((o) => ({ O: [o] })), { CN: [cn] }];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber,
    subject,
    // Go's chain builder matches RawIssuer against the parent's RawSubject
    // byte for byte, so reuse the CA's encoded subject instead of re-encoding.
    issuer: m.cert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: m.signingKey,
    signingAlgorithm: m.signingAlgorithm,
    extensions,
  });

  return { cert: toCertPem(cert), key: await toKeyPem(keys.privateKey), serial: cert.serialNumber.toLowerCase() };
}

/**
 * A CRL signed by `ca`, PEM (`-----BEGIN X509 CRL-----`), usable as Node's
 * `tls` `crl` option. Past nextUpdate OpenSSL rejects every peer with
 * CRL_HAS_EXPIRED, so regenerate it well before `nextUpdateDays` (default 30).
 */
export async function createCRL(
  ca: CertAuthority,
  revokedSerials: string[],
  opts: { nextUpdateDays?: number } = {},
): Promise<string> {
  const days = opts.nextUpdateDays ?? DEFAULT_CRL_DAYS;
  if (!Number.isFinite(days) || days <= 0) {
    throw new RangeError(`createCRL: nextUpdateDays must be a positive number of days, got ${String(days)}`);
  }
  const seen = new Set<string>();
  const serials: string[] = [];
  revokedSerials.forEach((s, i) => {
    const n = normalizeSerial(s, `createCRL: revokedSerials[${i}]`);
    // The generator throws on duplicates; revoking twice is harmless, so dedupe.
    if (!seen.has(n)) {
      seen.add(n);
      serials.push(n);
    }
  });

  const x509 = await lib();
  const m = await materialFor(ca);
  const ku = m.cert.getExtension(x509.KeyUsagesExtension);
  if (ku && (ku.usages & x509.KeyUsageFlags.cRLSign) === 0) {
    throw new Error(
      `createCRL: CA "${m.cert.subject}" has keyUsage without cRLSign, so OpenSSL would reject its CRLs; ` +
        're-create the CA (createCA sets cRLSign)',
    );
  }

  const now = Date.now();
  const thisUpdate = new Date(now - CLOCK_SKEW_MS);
  const extensions: X509.Extension[] = [
    // RFC 5280 requires cRLNumber and it must increase; milliseconds since
    // the epoch increase across regenerations without keeping state.
    new x509.Extension(OID_CRL_NUMBER, false, derInteger(Buffer.from(evenHex(now.toString(16)), 'hex'))),
  ];
  if (m.keyId !== undefined) extensions.push(new x509.AuthorityKeyIdentifierExtension(m.keyId, false));

  // The TBSCertList is encoded here rather than by X509CrlGenerator, which
  // writes an empty crlEntryExtensions SEQUENCE into every entry (invalid:
  // Extensions is SIZE (1..MAX)) and labels its PEM "CRL".
  const revoked = serials.map((hex) => der(0x30, derInteger(Buffer.from(hex, 'hex')), derTime(thisUpdate)));
  const tbs = der(
    0x30,
    derInteger(Buffer.from([1])), // v2: required once extensions are present
    m.algorithmIdentifier,
    Buffer.from(m.cert.subjectName.toArrayBuffer()),
    derTime(thisUpdate),
    derTime(new Date(now + days * DAY_MS)),
    ...(revoked.length > 0 ? [der(0x30, ...revoked)] : []), // absent, not empty, when nothing is revoked
    der(0xa0, der(0x30, ...extensions.map((e) => Buffer.from(e.rawData)))),
  );
  const signature = sign(m.hash, tbs, { key: m.nodeKey, dsaEncoding: 'der' });
  const crl = der(0x30, tbs, m.algorithmIdentifier, der(0x03, Buffer.from([0]), signature));
  // "X509 CRL" is the label both OpenSSL's PEM reader (Node's `crl` option)
  // and Go's x509.ParseCRL (etcd --client-crl-file) look for.
  return pem(crl, 'X509 CRL');
}

// ---------------------------------------------------------------------------
// Internals

async function materialFor(ca: CertAuthority): Promise<SigningMaterial> {
  const cached = material.get(ca);
  // Re-import when the PEMs were swapped on the object after creation.
  if (cached && cached.certPem === ca.cert && cached.keyPem === ca.key) return cached;
  const m = await importMaterial(ca.cert, ca.key);
  material.set(ca, m);
  return m;
}

async function importMaterial(certPem: string, keyPem: string): Promise<SigningMaterial> {
  const x509 = await lib();
  let nodeCert: NodeX509Certificate;
  let cert: X509.X509Certificate;
  try {
    nodeCert = new NodeX509Certificate(certPem);
    // A bundle's first certificate is the one the key belongs to.
    const first = x509.PemConverter.decodeFirst(certPem);
    cert = new x509.X509Certificate(first);
  } catch (err) {
    throw new Error(`CA certificate: cannot parse it as a PEM X.509 certificate (${errMessage(err)}); pass the CA's ca.crt`);
  }
  if (!nodeCert.ca) {
    throw new Error(
      `CA certificate "${cert.subject}" is not a CA (basicConstraints CA:false); pass the CA's certificate, not a leaf`,
    );
  }
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (ku && (ku.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    throw new Error(`CA certificate "${cert.subject}" lacks keyUsage keyCertSign, so verifiers reject what it signs; use a proper CA`);
  }

  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(keyPem);
  } catch (err) {
    throw new Error(
      `CA key: cannot read it (${errMessage(err)}); pass an unencrypted PEM key ` +
        '(decrypt with `openssl pkey -in ca.key -out ca-plain.key`)',
    );
  }
  if (!nodeCert.checkPrivateKey(keyObject)) {
    throw new Error(`CA key does not match CA certificate "${cert.subject}"; pass the key that belongs to this ca.crt`);
  }

  const pkcs8 = keyObject.export({ type: 'pkcs8', format: 'der' });
  let importAlg: { name: string; namedCurve?: string; hash?: string };
  let signingAlgorithm: { name: string; hash?: string };
  let hash: SigningMaterial['hash'];
  let algorithmIdentifier: Buffer;
  if (keyObject.asymmetricKeyType === 'ec') {
    const curve = keyObject.asymmetricKeyDetails?.namedCurve;
    // Hash sized to the curve, as Go's x509.CreateCertificate picks it.
    const byCurve: Record<string, { namedCurve: string; hash: SigningMaterial['hash']; oid: string }> = {
      prime256v1: { namedCurve: 'P-256', hash: 'sha256', oid: '2a8648ce3d040302' }, // ecdsa-with-SHA256
      secp384r1: { namedCurve: 'P-384', hash: 'sha384', oid: '2a8648ce3d040303' }, // ecdsa-with-SHA384
      secp521r1: { namedCurve: 'P-521', hash: 'sha512', oid: '2a8648ce3d040304' }, // ecdsa-with-SHA512
    };
    const c = curve === undefined ? undefined : byCurve[curve];
    if (!c) {
      throw new Error(`CA key: unsupported EC curve ${String(curve)}; use a P-256, P-384 or P-521 CA`);
    }
    importAlg = { name: 'ECDSA', namedCurve: c.namedCurve };
    hash = c.hash;
    signingAlgorithm = { name: 'ECDSA', hash: `SHA-${hash.slice(3)}` };
    // ECDSA AlgorithmIdentifiers carry no parameters (RFC 5758).
    algorithmIdentifier = der(0x30, der(0x06, Buffer.from(c.oid, 'hex')));
  } else if (keyObject.asymmetricKeyType === 'rsa') {
    importAlg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    hash = 'sha256';
    signingAlgorithm = { name: 'RSASSA-PKCS1-v1_5' };
    // sha256WithRSAEncryption with the NULL parameters RFC 4055 mandates.
    algorithmIdentifier = der(0x30, der(0x06, Buffer.from('2a864886f70d01010b', 'hex')), Buffer.from([0x05, 0x00]));
  } else {
    throw new Error(`CA key: unsupported key type ${String(keyObject.asymmetricKeyType)}; use an ECDSA or RSA CA`);
  }
  const signingKey = await subtle.importKey('pkcs8', pkcs8, importAlg, false, ['sign']);

  return {
    certPem,
    keyPem,
    cert,
    signingKey,
    signingAlgorithm,
    nodeKey: keyObject,
    hash,
    algorithmIdentifier,
    keyId: cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
  };
}

async function generateKeys(algorithm: KeyAlgorithm): Promise<webcrypto.CryptoKeyPair> {
  if (algorithm === 'ecdsa-p256') {
    return subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  }
  return subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['sign', 'verify'],
  );
}

function signingAlgorithmFor(algorithm: KeyAlgorithm): { name: string; hash?: string } {
  return algorithm === 'ecdsa-p256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'RSASSA-PKCS1-v1_5' };
}

function toCertPem(cert: X509.X509Certificate): string {
  return pem(cert.rawData, 'CERTIFICATE');
}

async function toKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  return pem(await subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

function pem(bytes: ArrayBuffer | Uint8Array, label: string): string {
  const b64 = Buffer.from(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

function randomSerial(): string {
  const bytes = randomBytes(16);
  // Top bit cleared so the DER INTEGER is positive without a sign byte:
  // Go (since 1.23) rejects negative serials, and 16 bytes stays under
  // RFC 5280's 20-octet limit.
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  // An all-zero result would make the generator silently pick its own.
  if (bytes.every((b) => b === 0)) bytes[15] = 1;
  return bytes.toString('hex');
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

import { constants, createHash, createPrivateKey, hkdfSync, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext, type TlsOptions } from 'node:tls';
import type { TlsProfile } from '../config/load.js';
import { CrlError, readCrls, type Crl } from './crl.js';

// The certificates and keys of one TLS profile, read from disk, checked, and
// turned into the options and contexts Node needs. Rotation replaces the whole
// set at once or not at all: a new file that does not parse, a key that does
// not match its certificate or a certificate that has expired is refused and
// the old material keeps serving.
//
// Sessions: each profile resumes only its own sessions. Its ticket keys and
// session-id context are derived from what decides who gets in (the profile's
// name, clientCA, CRL, allow rules, requireClientCert), so a session made on
// another listener, or under the CA, CRL or rules before a change, does not
// resume: the client makes a full handshake and is checked afresh. Workers
// share one secret (from the primary) and so resume each other's sessions.
// What a session cannot carry over, expiry and revocation since, is checked
// again at every resumption (TlsProfileRuntime.authorize).

/** Seconds a TLS session may be resumed (OpenSSL's default is 7200; HAProxy's tune.ssl.lifetime is 300). */
export const SESSION_LIFETIME_S = 300;

/** The secret session ticket keys are derived from: random per process, or the primary's (workers). */
let ticketSecret: Buffer | undefined;

/** Workers: derive ticket keys from the primary's secret, so sessions resume on any worker. */
export function useTicketSecret(secret: Buffer): void {
  ticketSecret = secret;
}

/** Mozilla "intermediate" TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults. */
export const DEFAULT_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export interface LoadedCert {
  role: 'cert' | 'ca' | 'clientCA';
  file: string;
  subject: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface MaterialSet {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
  clientCA?: Buffer;
  crl?: Buffer;
  /** The CRLs of `crl`, verified against clientCA. */
  crls: Crl[];
  /** `issuer/serial` of every revoked certificate (issuer as DER hex, see Identity.issuer). */
  revoked: Set<string>;
  /** The earliest nextUpdate of the CRLs: past it OpenSSL refuses every client (crl_error). */
  crlNextUpdate?: Date;
  certs: LoadedCert[];
  /** Options for tls.createServer / setSecureContext (termination). */
  server?: TlsOptions;
  /** Context for tls.connect (origination) and checks. */
  client?: SecureContext;
}

export class MaterialError extends Error {
  readonly code = 'BALLAST_TLS_MATERIAL';
}

/** Read and check a profile's files; throws MaterialError naming the key and file. */
export function readMaterial(p: TlsProfile, roles: { server: boolean; client: boolean }, now = new Date()): MaterialSet {
  const at = (key: string) => `tls.${p.name}.${key}`;
  const read = (key: 'cert' | 'key' | 'ca' | 'clientCA' | 'crl'): Buffer | undefined => {
    const file = p[key];
    if (file === undefined) return undefined;
    try {
      return readFileSync(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new MaterialError(`${at(key)}: cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (code ?? (err as Error).message)}`);
    }
  };
  const set: MaterialSet = { certs: [], crls: [], revoked: new Set() };
  const cert = read('cert');
  const key = read('key');
  const ca = read('ca');
  const clientCA = read('clientCA');
  const crl = read('crl');

  if (cert !== undefined) {
    const chain = parseCerts(cert, at('cert'), p.cert!);
    const leaf = chain[0]!;
    if (leaf.notAfter < now) throw new MaterialError(`${at('cert')}: ${p.cert} expired on ${leaf.notAfter.toISOString()}`);
    if (leaf.notBefore > now) throw new MaterialError(`${at('cert')}: ${p.cert} is not valid before ${leaf.notBefore.toISOString()}`);
    set.certs.push(describe('cert', p.cert!, leaf));
    set.cert = cert;
    if (key === undefined) throw new MaterialError(`${at('key')}: required with cert`);
    let pkey;
    try {
      pkey = createPrivateKey(key);
    } catch {
      throw new MaterialError(`${at('key')}: ${p.key} is not a PEM private key`);
    }
    if (!leaf.x509.checkPrivateKey(pkey)) throw new MaterialError(`${at('key')}: ${p.key} does not match the certificate in ${p.cert}`);
    set.key = key;
  } else if (key !== undefined) {
    throw new MaterialError(`${at('cert')}: required with key`);
  }
  if (ca !== undefined) {
    for (const c of parseCerts(ca, at('ca'), p.ca!)) set.certs.push(describe('ca', p.ca!, c));
    set.ca = ca;
  }
  let clientCAs: ParsedCert[] = [];
  if (clientCA !== undefined) {
    clientCAs = parseCerts(clientCA, at('clientCA'), p.clientCA!);
    for (const c of clientCAs) set.certs.push(describe('clientCA', p.clientCA!, c));
    set.clientCA = clientCA;
  }
  if (crl !== undefined) {
    if (clientCA === undefined) throw new MaterialError(`${at('crl')}: needs clientCA (a CRL revokes client certificates of that CA)`);
    try {
      set.crls = readCrls(crl.toString('latin1'), clientCAs.map((c) => c.x509));
    } catch (err) {
      if (!(err instanceof CrlError)) throw err;
      throw new MaterialError(`${at('crl')}: ${p.crl}: ${err.message}`);
    }
    for (const c of set.crls) {
      for (const serial of c.revoked) set.revoked.add(`${c.issuer}/${serial}`);
      if (c.nextUpdate !== undefined && (set.crlNextUpdate === undefined || c.nextUpdate < set.crlNextUpdate)) set.crlNextUpdate = c.nextUpdate;
    }
    set.crl = crl;
  }

  const ciphers = p.ciphers ?? DEFAULT_CIPHERS;
  if (roles.server) {
    if (set.cert === undefined) throw new MaterialError(`${at('cert')}: required to terminate TLS`);
    const server: TlsOptions = {
      cert: set.cert,
      key: set.key!,
      minVersion: p.minVersion,
      ciphers,
      honorCipherOrder: true,
      ALPNProtocols: p.alpn,
      handshakeTimeout: p.handshakeTimeout,
      // Verification happens in OpenSSL, but the verdict is read after the
      // handshake so each refusal gets its own reason and log line.
      requestCert: set.clientCA !== undefined,
      rejectUnauthorized: false,
      // Client-initiated renegotiation (TLS 1.2) only costs the server CPU
      // and re-opens identity questions mid-connection: refused.
      secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
      sessionTimeout: SESSION_LIFETIME_S,
      ...sessionScope(p, set),
    };
    if (set.clientCA) server.ca = set.clientCA;
    // One CRL per entry: OpenSSL reads only the first CRL of each buffer.
    if (set.crl) server.crl = set.crls.map((c) => c.pem);
    try {
      createSecureContext(server);
    } catch (err) {
      throw new MaterialError(`tls.${p.name}: OpenSSL refused the server material: ${(err as Error).message}`);
    }
    set.server = server;
  }
  if (roles.client) {
    try {
      set.client = createSecureContext({
        ...(set.cert ? { cert: set.cert, key: set.key! } : {}),
        ...(set.ca ? { ca: set.ca } : {}),
        minVersion: p.minVersion,
        ciphers,
      });
    } catch (err) {
      throw new MaterialError(`tls.${p.name}: OpenSSL refused the client material: ${(err as Error).message}`);
    }
  }
  return set;
}

/**
 * Ticket keys and session-id context for a profile: derived from a secret and
 * everything that decides who gets in, so they change when any of it does.
 */
export function sessionScope(p: TlsProfile, set: Pick<MaterialSet, 'clientCA' | 'crl'>): { ticketKeys: Buffer; sessionIdContext: string } {
  const trust = createHash('sha256')
    .update(`ballast tls profile\0${p.name}\0${JSON.stringify(p.allow)}\0${String(p.requireClientCert)}\0`)
    .update(set.clientCA ?? Buffer.alloc(0))
    .update('\0')
    .update(set.crl ?? Buffer.alloc(0))
    .digest();
  const secret = (ticketSecret ??= randomBytes(48));
  return {
    ticketKeys: Buffer.from(hkdfSync('sha256', secret, trust, 'ballast session tickets v1', 48)),
    // At most 32 bytes (SSL_MAX_SID_CTX_LENGTH).
    sessionIdContext: trust.toString('hex').slice(0, 32),
  };
}

interface ParsedCert {
  x509: X509Certificate;
  notBefore: Date;
  notAfter: Date;
}

function parseCerts(pem: Buffer, where: string, file: string): ParsedCert[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks || blocks.length === 0) throw new MaterialError(`${where}: ${file} holds no PEM certificate`);
  return blocks.map((b, i) => {
    try {
      const x509 = new X509Certificate(b);
      return { x509, notBefore: new Date(x509.validFrom), notAfter: new Date(x509.validTo) };
    } catch {
      throw new MaterialError(`${where}: certificate ${i + 1} in ${file} does not parse`);
    }
  });
}

function describe(role: LoadedCert['role'], file: string, c: ParsedCert): LoadedCert {
  return { role, file, subject: c.x509.subject.replace(/\n/g, ','), serial: c.x509.serialNumber, notBefore: c.notBefore, notAfter: c.notAfter };
}

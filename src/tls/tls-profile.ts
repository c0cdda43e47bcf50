import { watch, type FSWatcher } from 'node:fs';
import { dirname, basename } from 'node:path';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { TlsProfile as TlsProfileConfig } from '../config/load.js';
import type { TlsTerminator } from '../listener/listener.js';
import type { OriginTls } from '../listener/proxy-connection.js';
import type { Endpoint } from '../upstream/endpoint.js';
import { Authorizer } from './authorizer.js';
import { identityOf } from './identity.js';
import { readMaterial, type MaterialSet } from './material.js';

// A named TLS profile at run time: its current material, who uses it
// (listeners to terminate, clusters to originate, health checks), and the
// watch that rotates it. Consumers read the current material per connection
// or subscribe to rotations; open connections keep the material they were
// made with.

export type AffinityKeyKind = 'client-identity' | 'cn' | 'san' | 'source-ip';

export class TlsProfileRuntime implements TlsTerminator {
  readonly profile: string;
  material: MaterialSet;
  version = 1;
  reloadsOk = 0;
  reloadsFailed = 0;
  lastError: string | undefined;
  private readonly authorizer: Authorizer;
  private readonly listeners = new Set<(opts: TlsOptions) => void>();
  private watchers: FSWatcher[] = [];
  private debounce: NodeJS.Timeout | undefined;
  private originCache: { version: number; origin: OriginTls } | undefined;

  constructor(
    public config: TlsProfileConfig,
    readonly roles: { server: boolean; client: boolean },
    private readonly log: Logger,
    /** Affinity key to derive from client identities on listeners using this profile. */
    private readonly keyKind: () => AffinityKeyKind = () => 'client-identity',
  ) {
    this.profile = config.name;
    this.material = readMaterial(config, roles);
    this.authorizer = new Authorizer(config.allow);
    this.warnIfCrlStale();
  }

  /** Whether the CRL's nextUpdate has passed: OpenSSL then refuses every client (crl_error) until a fresh CRL is in place. */
  crlStale(now = Date.now()): boolean {
    return this.material.crlNextUpdate !== undefined && this.material.crlNextUpdate.getTime() < now;
  }

  private warnIfCrlStale(): void {
    if (!this.crlStale()) return;
    this.log.warn(
      { profile: this.profile, crl: this.config.crl, nextUpdate: this.material.crlNextUpdate!.toISOString() },
      `tls.${this.profile}.crl: ${this.config.crl} is past its nextUpdate (${this.material.crlNextUpdate!.toISOString()}): every client is refused as crl_error until a fresh CRL replaces it (ballast certs crl, or your CA's)`,
    );
  }

  // --- termination ----------------------------------------------------------

  serverOptions(): TlsOptions {
    return this.material.server!;
  }

  onRotate(fn: (opts: TlsOptions) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  authorize(socket: TLSSocket): { ok: true; identity: string; key: string } | { ok: false; reason: string; identity: string } {
    const id = identityOf(socket);
    if (id === undefined) {
      if (!this.config.requireClientCert) return { ok: true, identity: 'anonymous', key: socket.remoteAddress ?? '' };
      return { ok: false, reason: 'no_client_cert', identity: 'none' };
    }
    const who = id.text;
    if (!socket.authorized) {
      let reason = verifyReason(String(socket.authorizationError ?? ''));
      // OpenSSL says UNSPECIFIED when a configured CRL cannot be used (e.g.
      // its CA lacks the cRLSign key usage, as kubeadm's etcd CA does): name it.
      if (reason === 'cert_invalid' && this.material.crl !== undefined) reason = 'crl_error';
      return { ok: false, reason, identity: who };
    }
    // Two CNs: Go (etcd, kube-apiserver) reads the last, OpenSSL-based tools the first. Neither is safe to authorize.
    if (id.cnCount > 1) return { ok: false, reason: 'identity_ambiguous', identity: who };
    // A resumed session carries the verdict of its first handshake. Sessions
    // made under another CA, CRL or rule set do not resume (their keys differ,
    // material.ts); what can change with the same material is the clock and
    // this CRL, so both are checked again (for a fresh handshake OpenSSL just did).
    const now = Date.now();
    if (now > id.notAfter) return { ok: false, reason: 'cert_expired', identity: who };
    if (now < id.notBefore) return { ok: false, reason: 'cert_not_yet_valid', identity: who };
    if (this.material.revoked.size > 0 && this.material.revoked.has(id.revocationKey)) return { ok: false, reason: 'cert_revoked', identity: who };
    if (!this.authorizer.allows(id)) return { ok: false, reason: 'identity_not_allowed', identity: who };
    const kind = this.keyKind();
    const key = kind === 'cn' ? id.cn : kind === 'san' ? (id.uri[0] ?? id.dns[0] ?? id.cn) : id.fingerprint;
    return { ok: true, identity: who, key };
  }

  handshakeFailureReason(err: NodeJS.ErrnoException): string {
    return handshakeReason(err);
  }

  // --- origination ----------------------------------------------------------

  /** Origination settings; the object is rebuilt only when the material rotates. */
  origin(): OriginTls {
    if (this.originCache?.version !== this.version) {
      const cfg = this.config;
      this.originCache = {
        version: this.version,
        origin: {
          context: this.material.client!,
          alpn: cfg.alpn,
          servername: (e: Endpoint) => serverName(e, cfg.servername),
        },
      };
    }
    return this.originCache.origin;
  }

  // --- rotation -------------------------------------------------------------

  /** Re-read the files; on any problem keep the old material. */
  reload(reason: string): boolean {
    let next: MaterialSet;
    try {
      next = readMaterial(this.config, this.roles);
    } catch (err) {
      this.reloadsFailed++;
      this.lastError = (err as Error).message;
      this.log.error({ profile: this.profile, err: this.lastError, trigger: reason }, `tls.${this.profile}: refused new material, still serving the old: ${this.lastError}`);
      return false;
    }
    if (sameMaterial(next, this.material)) return true;
    this.material = next;
    this.version++;
    this.reloadsOk++;
    this.lastError = undefined;
    const leaf = next.certs.find((c) => c.role === 'cert');
    this.log.info({ profile: this.profile, trigger: reason, notAfter: leaf?.notAfter, serial: leaf?.serial }, `tls.${this.profile}: rotated; new handshakes use the new material`);
    this.warnIfCrlStale();
    if (next.server) for (const fn of this.listeners) fn(next.server);
    return true;
  }

  /** Watch the directories of the profile's files (Kubernetes swaps secret files by renaming a symlink). */
  watch(): void {
    const files = [this.config.cert, this.config.key, this.config.ca, this.config.clientCA, this.config.crl].filter((f): f is string => f !== undefined);
    const byDir = new Map<string, Set<string>>();
    for (const f of files) {
      const d = dirname(f);
      if (!byDir.has(d)) byDir.set(d, new Set());
      byDir.get(d)!.add(basename(f));
    }
    for (const [dir, names] of byDir) {
      try {
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (name === null || names.has(name.toString()) || name.toString().startsWith('..')) this.scheduleReload();
        });
        w.on('error', () => undefined);
        this.watchers.push(w);
      } catch (err) {
        this.log.warn({ profile: this.profile, dir, err: (err as Error).message }, `tls.${this.profile}: cannot watch ${dir}; rotation needs SIGHUP`);
      }
    }
  }

  private scheduleReload(): void {
    // Writers replace cert and key in two steps; wait for both.
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.reload('file change');
    }, 250);
    this.debounce.unref();
  }

  /** Seconds until the earliest loaded certificate expires (negative if expired). */
  expirySeconds(now = Date.now()): number {
    let min = Infinity;
    for (const c of this.material.certs) min = Math.min(min, c.notAfter.getTime());
    return min === Infinity ? Infinity : (min - now) / 1000;
  }

  close(): void {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    if (this.debounce) clearTimeout(this.debounce);
    this.listeners.clear();
  }
}

/** SNI and the name checked in the upstream's certificate: endpoint, then profile, then the endpoint's host name. */
export function serverName(e: Endpoint, profileName: string | undefined): string | undefined {
  if (e.servername !== undefined) return e.servername;
  if (profileName !== undefined) return profileName;
  if (e.address.kind === 'inet' && e.address.family === 0) return e.address.host;
  // An IP has no SNI; Node then checks the certificate's IP SANs against it.
  return undefined;
}

function sameMaterial(a: MaterialSet, b: MaterialSet): boolean {
  const eq = (x?: Buffer, y?: Buffer) => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  return eq(a.cert, b.cert) && eq(a.key, b.key) && eq(a.ca, b.ca) && eq(a.clientCA, b.clientCA) && eq(a.crl, b.crl);
}

/**
 * Every reason a TLS client is refused (verification, handshake,
 * authorization): /metrics shows each at 0 from the start.
 */
export const TLS_REFUSAL_REASONS = [
  'cert_expired', 'cert_not_yet_valid', 'cert_revoked', 'unknown_ca', 'crl_error', 'cert_wrong_usage', 'cert_invalid',
  'handshake_timeout', 'client_reset', 'protocol_version', 'not_tls', 'no_shared_cipher', 'alpn_mismatch', 'bad_certificate', 'handshake_error',
  'no_client_cert', 'identity_not_allowed', 'identity_ambiguous',
] as const;

/** OpenSSL's verification error for a presented client certificate, as a metric label. */
export function verifyReason(code: string): string {
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return 'cert_expired';
    case 'CERT_NOT_YET_VALID':
      return 'cert_not_yet_valid';
    case 'CERT_REVOKED':
      return 'cert_revoked';
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return 'unknown_ca';
    case 'UNABLE_TO_GET_CRL':
    case 'CRL_HAS_EXPIRED':
    case 'CRL_NOT_YET_VALID':
    case 'CRL_SIGNATURE_FAILURE':
      return 'crl_error';
    case 'INVALID_PURPOSE':
      return 'cert_wrong_usage';
    default:
      return 'cert_invalid';
  }
}

/** A failed handshake ('tlsClientError') as a metric label. */
export function handshakeReason(err: NodeJS.ErrnoException): string {
  const code = err.code ?? '';
  const msg = err.message.toLowerCase();
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'handshake_timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE' || msg.includes('socket disconnected')) return 'client_reset';
  if (msg.includes('unsupported protocol') || msg.includes('protocol version') || code.includes('UNSUPPORTED_PROTOCOL')) return 'protocol_version';
  // OpenSSL's words differ between versions (Node 20: "packet length too
  // long"; Node 24: "data length too long"): match codes and messages.
  if (
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_HTTP_REQUEST', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_DATA_LENGTH_TOO_LONG', 'ERR_SSL_UNKNOWN_PROTOCOL', 'ERR_SSL_RECORD_LAYER_FAILURE'].includes(code) ||
    /wrong version number|http request|unknown protocol|packet length too long|data length too long|record layer failure/.test(msg)
  ) {
    return 'not_tls';
  }
  if (msg.includes('no shared cipher')) return 'no_shared_cipher';
  if (msg.includes('application protocol')) return 'alpn_mismatch';
  if (msg.includes('certificate') || msg.includes('peer did not return')) return 'bad_certificate';
  return 'handshake_error';
}

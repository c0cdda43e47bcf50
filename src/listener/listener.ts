import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer as createNetServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket, type TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/load.js';
import { RateLimitedLog } from '../log.js';
import type { Cluster } from '../upstream/cluster.js';
import { connectionsAllowedByFds, fds, fdsAvailable } from './fd-budget.js';
import { PIPE_HIGH_WATER_MARK, ProxyConnection, type ListenerPort, type OriginTls } from './proxy-connection.js';
import { userBufferSupported } from './read-buffers.js';

// A listener accepts clients on one address, optionally terminates and
// authorizes TLS, and hands each connection to its cluster. Limits
// (maxConnections) are enforced by the kernel-facing server itself, so a
// flood is refused before any JavaScript object is made for it.

/** What a TLS-terminating listener needs from the TLS layer. */
export interface TlsTerminator {
  readonly profile: string;
  serverOptions(): TlsOptions;
  /** Register for rotated material; returns an unsubscribe function. */
  onRotate(fn: (opts: TlsOptions) => void): () => void;
  /** Decide whether a completed handshake may proceed. Runs before any upstream is touched. */
  authorize(socket: TLSSocket): { ok: true; identity: string; key: string } | { ok: false; reason: string; identity: string };
  /** Reason code for a failed handshake ('tlsClientError'). */
  handshakeFailureReason(err: NodeJS.ErrnoException): string;
}

export interface ListenerHooks {
  /** TLS origination for the listener's cluster, read per connection (rotation swaps it). */
  originTls(): OriginTls | undefined;
  observeConnect(listener: Listener, seconds: number): void;
  accessLog(line: Record<string, unknown>): void;
}

/** Result labels of ballast_listener_connections_total. */
export const CONNECTION_RESULTS = ['proxied', 'no_endpoint', 'connect_failed', 'over_limit', 'fd_limit', 'local_error', 'tls_refused', 'client_closed', 'draining', 'accept_error'] as const;
export type ConnectionResult = (typeof CONNECTION_RESULTS)[number];

const kListener = Symbol('ballast.listener');

/** A TLS listener's raw socket closed: one fewer socket (handshaking or proxied) held. */
function onRawClose(this: Socket & { [kListener]?: Listener }): void {
  const l = this[kListener];
  if (l) {
    l.sockets--;
    fds.tlsSockets--;
  }
}

export class Listener implements ListenerPort {
  readonly name: string;
  server: Server | undefined;
  active = 0;
  draining = false;
  readonly results = new Map<ConnectionResult, number>();
  /** Handshake and authorization refusals by reason. */
  readonly tlsFailures = new Map<string, number>();
  readonly connections = new Set<ProxyConnection>();
  /** TLS listeners: sockets accepted and not closed, handshakes included. */
  sockets = 0;
  private readonly rlog: RateLimitedLog;
  private unsubscribeTls: (() => void) | undefined;

  constructor(
    public config: ListenerConfig,
    public cluster: Cluster,
    private tls: TlsTerminator | undefined,
    private readonly hooks: ListenerHooks,
    private readonly log: Logger,
    /** exclusive: this process only; reuseport: one socket per worker (SO_REUSEPORT); shared: node:cluster shares one socket. */
    private readonly sharing: 'exclusive' | 'handover' | 'reuseport' | 'shared' = 'exclusive',
  ) {
    this.name = config.name;
    this.rlog = new RateLimitedLog(log);
  }

  get idleTimeout(): number {
    return this.config.idleTimeout;
  }

  get address(): string {
    const a = this.config.listen;
    return a.kind === 'unix' ? `unix:${a.path}` : a.text;
  }

  /** TLS clients still in their handshake (they hold a socket and a maxConnections slot). */
  get handshaking(): number {
    return this.tls ? Math.max(0, this.sockets - this.active) : 0;
  }

  count(result: ConnectionResult): void {
    this.results.set(result, (this.results.get(result) ?? 0) + 1);
  }

  async start(): Promise<void> {
    const cfg = this.config;
    // Socket options are set once, by the server at accept (one setsockopt
    // each), not per connection from JavaScript. Keepalive follows the
    // listener's cluster as configured at start; a reload that changes it
    // applies to listeners started after the change.
    const idle = this.cluster.config.keepalive.idle;
    const socketOptions = { allowHalfOpen: true, noDelay: true, keepAlive: idle > 0, keepAliveInitialDelay: idle, highWaterMark: PIPE_HIGH_WATER_MARK };
    // The kernel-facing limit is also what the descriptor limit allows: over
    // it, clients are refused by the server itself (counted fd_limit) instead
    // of being silently accepted and closed by libuv when descriptors run out.
    const allowed = connectionsAllowedByFds();
    const limit = Math.min(cfg.maxConnections, allowed);
    if (cfg.maxConnections > allowed) {
      // A clamp of a few percent (the default 10000 under a 20000 limit) is
      // routine; warn when the limit really takes a bite.
      this.log[allowed < cfg.maxConnections * 0.9 ? 'warn' : 'info']({ listener: this.name, maxConnections: cfg.maxConnections, fdLimit: fds.limit, allowed }, `${this.name}: maxConnections ${cfg.maxConnections} is more than the descriptor limit (${fds.limit}) allows; using ${allowed}, beyond which clients are refused as fd_limit. Raise the limit (LimitNOFILE, ulimit -n) or lower maxConnections.`);
    }
    let server: Server;
    if (this.tls) {
      // allowHalfOpen is off while handshaking, so a client that sends a FIN
      // mid-handshake is let go at once (not held until handshakeTimeout);
      // it is turned on for established connections in onSecureConnection.
      server = createTlsServer({ ...this.tls.serverOptions(), ...socketOptions, allowHalfOpen: false, pauseOnConnect: false });
      server.on('connection', (raw: Socket & { [kListener]?: Listener }) => {
        raw[kListener] = this;
        this.sockets++;
        fds.tlsSockets++;
        raw.once('close', onRawClose);
      });
      server.on('secureConnection', (s: TLSSocket) => this.onSecureConnection(s));
      server.on('tlsClientError', (err: NodeJS.ErrnoException, s: TLSSocket) => this.onTlsError(err, s));
      this.subscribeTls(this.tls);
    } else {
      // Accepted paused, so a client can be switched to ballast's read
      // buffers before its first byte is read (read-buffers.ts); its bytes
      // wait in the kernel until the upstream is connected.
      server = createNetServer({ ...socketOptions, pauseOnConnect: userBufferSupported });
      server.on('connection', (s: Socket) => this.onConnection(s));
    }
    server.maxConnections = limit;
    const byFds = limit < cfg.maxConnections;
    server.on('drop', (d?: { remoteAddress?: string }) => {
      this.count(byFds ? 'fd_limit' : 'over_limit');
      this.rlog.warn(
        `drop:${this.name}`,
        { listener: this.name, limit, remote: d?.remoteAddress },
        byFds ? `${this.name}: at the ${limit} connections the descriptor limit allows; refusing new connections` : `${this.name}: over maxConnections (${limit}); refusing new connections`,
      );
    });
    server.on('error', (err: NodeJS.ErrnoException) => this.onServerError(err));
    this.server = server;
    await this.listen(server);
  }

  private listen(server: Server): Promise<void> {
    const a = this.config.listen;
    if (a.kind === 'unix') return this.listenUnix(server, a.path);
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => reject(listenError(this.name, this.address, err));
      server.once('error', onError);
      const opts = { host: a.host === '' ? undefined : a.host, port: a.port, backlog: this.config.backlog, exclusive: this.sharing !== 'shared', reusePort: this.sharing === 'reuseport' || this.sharing === 'handover' };
      server.listen(opts as Parameters<Server['listen']>[0], () => {
        server.removeListener('error', onError);
        resolve();
      });
    });
  }

  private async listenUnix(server: Server, path: string): Promise<void> {
    // Workers share one unix socket through node:cluster; the primary removed any stale file before forking.
    // (A unix listener is not handed over: a socket another process still serves is an error.)
    if (this.sharing === 'exclusive' || this.sharing === 'handover') await removeStaleSocket(path, `listeners.${this.name}`);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => reject(listenError(this.name, `unix:${path}`, err));
      server.once('error', onError);
      server.listen({ path, backlog: this.config.backlog, exclusive: this.sharing === 'exclusive' || this.sharing === 'handover' }, () => {
        server.removeListener('error', onError);
        resolve();
      });
    });
    chmodSync(path, this.config.socketMode);
  }

  private onServerError(err: NodeJS.ErrnoException): void {
    if (err.code === 'EMFILE' || err.code === 'ENFILE') {
      // libuv accepts and closes the pending connection with its reserve
      // descriptor: the client is refused at once and we go on serving.
      this.count('accept_error');
      this.rlog.warn(`emfile:${this.name}`, { listener: this.name, code: err.code }, `${this.name}: out of file descriptors (${err.code}); refusing new connections until some close`);
      return;
    }
    this.rlog.warn(`server-error:${this.name}`, { listener: this.name, err: err.message, code: err.code }, `${this.name}: listener error`);
  }

  private onConnection(s: Socket): void {
    if (this.draining) {
      this.count('draining');
      s.destroy();
      return;
    }
    const key = this.cluster.config.balance === 'affinity' ? (s.remoteAddress ?? '') : '';
    this.begin(s, key, undefined, false, userBufferSupported);
  }

  /** Follow a TLS profile's rotations (and, on reload, a replaced profile) without a new socket. */
  private subscribeTls(t: TlsTerminator): void {
    this.unsubscribeTls?.();
    this.unsubscribeTls = t.onRotate((opts) => this.applyTlsOptions(opts));
  }

  /** Reload: a changed TLS profile applies to new handshakes; the socket and open connections stay. */
  replaceTls(t: TlsTerminator): void {
    this.tls = t;
    this.subscribeTls(t);
    this.applyTlsOptions(t.serverOptions());
  }

  /**
   * setSecureContext replaces certificates, CAs, CRLs and session keys, but
   * not what tls.Server copies per connection from its own fields: whether to
   * ask for a client certificate (a clientCA added by a reload would
   * otherwise ask nobody and refuse everyone) and the ALPN list.
   */
  private applyTlsOptions(opts: TlsOptions): void {
    const server = this.server as ReturnType<typeof createTlsServer> & { requestCert: boolean; ALPNProtocols?: Buffer };
    server.setSecureContext(opts);
    server.requestCert = opts.requestCert === true;
    // tls.Server keeps ALPN in wire format: each protocol prefixed by its length.
    if (Array.isArray(opts.ALPNProtocols)) server.ALPNProtocols = Buffer.concat((opts.ALPNProtocols as string[]).map((p) => Buffer.concat([Buffer.from([Buffer.byteLength(p)]), Buffer.from(p)])));
  }

  private onSecureConnection(s: TLSSocket): void {
    s.allowHalfOpen = true;
    if (this.draining) {
      this.count('draining');
      s.destroy();
      return;
    }
    const verdict = this.tls!.authorize(s);
    if (!verdict.ok) {
      this.refuseTls(verdict.reason, s, verdict.identity);
      return;
    }
    const key = this.cluster.config.balance !== 'affinity' ? '' : this.cluster.config.affinity.key === 'source-ip' ? (s.remoteAddress ?? '') : verdict.key;
    this.begin(s, key, verdict.identity, s.alpnProtocol ?? false);
  }

  private begin(s: Socket, key: string, identity: string | undefined, alpn: string | false, adoptReads = false): void {
    if (!fdsAvailable()) {
      this.count('fd_limit');
      this.rlog.warn(`fd:${this.name}`, { listener: this.name, fdLimit: fds.limit, active: fds.active }, `${this.name}: near the file descriptor limit (${fds.limit}); refusing new connections until some close`);
      s.destroy();
      return;
    }
    this.active++;
    fds.active++;
    if (this.tls) fds.tlsActive++;
    const c = new ProxyConnection(s, this, key, identity, this.hooks.originTls(), alpn, adoptReads);
    if (this.config.accessLog) c.remote = `${s.remoteAddress}:${s.remotePort}`;
    this.connections.add(c);
    c.connect();
  }

  private onTlsError(err: NodeJS.ErrnoException, s: TLSSocket): void {
    const reason = this.tls!.handshakeFailureReason(err);
    this.refuseTls(reason, s, undefined, err.message);
  }

  private refuseTls(reason: string, s: TLSSocket, identity: string | undefined, detail?: string): void {
    this.count('tls_refused');
    this.tlsFailures.set(reason, (this.tlsFailures.get(reason) ?? 0) + 1);
    // A client that hangs up mid-handshake (a TCP probe, a load generator
    // stopping) is counted, not logged: it is routine, not an attack.
    if (reason === 'client_reset') {
      s.destroy();
      return;
    }
    this.rlog.warn(
      `tls:${this.name}:${reason}`,
      { listener: this.name, reason, identity, remote: s.remoteAddress, detail },
      `${this.name}: refused TLS client (${reason})${identity ? `: ${identity}` : ''}`,
    );
    s.destroy();
  }

  // --- ListenerPort ----------------------------------------------------------

  connectionClosed(c: ProxyConnection): void {
    this.active--;
    fds.active--;
    if (this.tls) fds.tlsActive--;
    this.connections.delete(c);
    // Exactly one result per connection: failures were counted when they happened.
    if (!c.failed) this.count(c.everConnected ? 'proxied' : 'client_closed');
    if (this.config.accessLog) {
      this.hooks.accessLog({
        listener: this.name,
        client: c.remote,
        identity: c.identity,
        cluster: this.cluster.name,
        upstream: c.endpoint?.id,
        attempts: c.attempts,
        bytesUp: c.bytesUp(),
        bytesDown: c.bytesDown(),
        durationMs: Math.round(performance.now() - c.startedAt),
        reason: c.closeReason,
      });
    }
  }

  connectionFailed(c: ProxyConnection, reason: string): void {
    if (reason === 'local_error') {
      this.count('local_error');
      this.rlog.warn(`local:${this.name}`, { listener: this.name, cluster: this.cluster.name }, `${this.name}: out of file descriptors connecting upstream; closed the client (no endpoint is blamed)`);
      return;
    }
    this.count(reason === 'no_endpoint' ? 'no_endpoint' : 'connect_failed');
    this.rlog.warn(
      `fail:${this.name}:${reason}`,
      { listener: this.name, cluster: this.cluster.name, reason, attempts: c.attempts, tried: c.tried?.map((e) => e.id) },
      reason === 'no_endpoint'
        ? `${this.name}: no endpoint of cluster ${this.cluster.name} to send a client to; closed it`
        : `${this.name}: could not reach any endpoint of ${this.cluster.name} after ${c.attempts} attempts; closed the client`,
    );
  }

  observeConnect(seconds: number): void {
    this.hooks.observeConnect(this, seconds);
  }

  // --- lifecycle ------------------------------------------------------------

  /** Stop accepting; open connections continue. Resolves when the socket is closed. */
  stopAccepting(): Promise<void> {
    this.draining = true;
    this.unsubscribeTls?.();
    const server = this.server;
    if (!server || !server.listening) return Promise.resolve();
    // close() stops listening at once; its callback would wait for every
    // open connection, which is the drain's job, not ours.
    server.close();
    if (this.config.listen.kind === 'unix') {
      try {
        unlinkSync(this.config.listen.path);
      } catch {
        // already gone
      }
    }
    return Promise.resolve();
  }

  closeAll(reason: string): void {
    for (const c of [...this.connections]) c.close(reason);
  }
}

function listenError(name: string, address: string, err: NodeJS.ErrnoException): Error {
  const hint =
    err.code === 'EADDRINUSE'
      ? 'another process is listening there; stop it or choose another port'
      : err.code === 'EACCES'
        ? 'permission denied; ports below 1024 need CAP_NET_BIND_SERVICE'
        : err.code === 'EADDRNOTAVAIL'
          ? 'no interface has that address'
          : err.message;
  const e = new Error(`listeners.${name}: cannot listen on ${address}: ${err.code ?? 'error'} (${hint})`);
  (e as NodeJS.ErrnoException).code = err.code;
  return e;
}

/** A socket file left by a dead ballast is removed; one that still answers is an error. */
export async function removeStaleSocket(path: string, where: string): Promise<void> {
  let isSocket = false;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return;
  }
  if (!isSocket) throw new Error(`${where}: ${path} exists and is not a socket; refusing to replace it (choose another path, or remove the file if it is not needed)`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = netConnect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`${where}: unix:${path} is in use by another process`);
  unlinkSync(path);
}

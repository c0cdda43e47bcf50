// highWaterMark reaches the Duplex under net.Socket at run time (Node 20 and
// 24 both honour it); @types/node does not list it for connect options.
import { connect as netConnect, type NetConnectOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type SecureContext, type TLSSocket } from 'node:tls';
import type { Cluster } from '../upstream/cluster.js';
import type { PickContext } from '../upstream/balancer/balancer.js';
import type { ConnectOutcome, Endpoint, PendingConnect, TrackedConnection } from '../upstream/endpoint.js';
import { adoptAcceptedSocket, BUSY_READ, CALM_READ, leaseReadBuffer, ReadLease, releaseReadBuffer, SHARED } from './read-buffers.js';

// The hot path: one client connection, its upstream, and the bytes between
// them. Handlers are module-level functions that find their connection
// through a symbol on the socket, so accepting a connection allocates the
// connection object and nothing per event; nothing here logs or builds
// strings per chunk. Bytes are read from the sockets' own counters when the
// connection closes or when metrics are scraped.
//
// Plain sockets (TCP, unix) read into ballast's own buffers (read-buffers.ts)
// and hand each read to forward() instead of emitting 'data'; TLS sockets use
// 'data' events. Either way a full destination stops the source from reading
// until the destination drains.

export const kConn = Symbol('ballast.connection');
type Tagged = (Socket | TLSSocket) & { [kConn]: ProxyConnection };

/** How the listener wants this connection handled; shared by all its connections. */
export interface ListenerPort {
  readonly name: string;
  readonly cluster: Cluster;
  readonly idleTimeout: number;
  /** Called once per connection when it is fully closed. */
  connectionClosed(c: ProxyConnection): void;
  /** The connection could not be routed; reason is a metric label. */
  connectionFailed(c: ProxyConnection, reason: string): void;
  /** Upstream connect latency, seconds. */
  observeConnect(seconds: number): void;
}

/** TLS origination settings of a cluster, swapped whole on rotation. */
export interface OriginTls {
  context: SecureContext;
  servername(e: Endpoint): string | undefined;
  alpn: string[];
}

/**
 * Bytes a socket buffers in user space before the pump pauses the other
 * side. Node's default (16 KiB on Node 20, 64 KiB on 22+) is at or below one
 * read (64 KiB), so a busy stream paused and resumed its source on every
 * chunk: two epoll_ctl calls and an extra loop turn per 64 KiB. Chosen by
 * measurement (bench/README.md); it bounds memory per direction, it does not
 * allocate it, so idle connections cost nothing for it.
 */
export const PIPE_HIGH_WATER_MARK = 256 * 1024;

const CONNECTING = 0;
const PIPING = 1;
const CLOSED = 2;

export class ProxyConnection implements TrackedConnection, PendingConnect {
  upstream: Socket | TLSSocket | null = null;
  endpoint: Endpoint | null = null;
  state = CONNECTING;
  attempts = 0;
  tried: Endpoint[] | null = null;
  closeReason = '';
  /** Client address, captured at accept only when the access log wants it (it is gone after close). */
  remote: string | undefined;
  /** Counted as no_endpoint/connect_failed already. */
  failed = false;
  everConnected = false;
  /** performance.now() at accept and at the current connect attempt. */
  readonly startedAt: number;
  connectStartedAt = 0;
  /** Sockets still open; the connection is finished when this reaches zero. */
  private open = 1;
  /** The client socket reads into read-buffers (adopted at accept), not through 'data'. */
  private readonly clientUserReads: boolean;
  /** Private read buffers of the client (bytes going up) and the upstream (going down); null while on SHARED. */
  private upLease: ReadLease | null = null;
  private downLease: ReadLease | null = null;

  constructor(
    readonly client: Socket | TLSSocket,
    readonly port: ListenerPort,
    /** Affinity key: identity fingerprint, CN, SAN or source IP. */
    readonly key: string,
    /** The client's authenticated identity, for the access log. */
    readonly identity: string | undefined,
    private readonly originTls: OriginTls | undefined,
    /** ALPN the client negotiated, carried to the upstream. */
    private readonly alpn: string | false,
    /** The client was accepted paused and may read into read-buffers. */
    adoptReads = false,
  ) {
    this.startedAt = performance.now();
    const c = client as Tagged;
    c[kConn] = this;
    this.clientUserReads = adoptReads && adoptAcceptedSocket(client, onClientRead, nextReadBuffer);
    client.on('error', onClientError);
    client.on('close', onClientClose);
    if (port.idleTimeout > 0) {
      // One timer per connection, on the client side only: Node refreshes it
      // on reads and on writes, so traffic in either direction counts.
      client.setTimeout(port.idleTimeout);
      client.on('timeout', onIdleTimeout);
    }
  }

  /** For logs and /status: where this connection stands. */
  describe(): Record<string, unknown> {
    const c = this.client;
    const u = this.upstream;
    return {
      state: this.state === CONNECTING ? 'connecting' : this.state === PIPING ? 'piping' : 'closed',
      endpoint: this.endpoint?.id,
      ageMs: Math.round(performance.now() - this.startedAt),
      reason: this.closeReason || undefined,
      client: { readEnded: c.readableEnded, writeEnded: c.writableEnded, writeFinished: c.writableFinished, destroyed: c.destroyed, buffered: c.writableLength },
      upstream: u === null ? null : { readEnded: u.readableEnded, writeEnded: u.writableEnded, writeFinished: u.writableFinished, destroyed: u.destroyed, buffered: u.writableLength },
    };
  }

  bytesUp(): number {
    return this.client.bytesRead;
  }

  bytesDown(): number {
    return this.client.bytesWritten;
  }

  connect(): void {
    const cluster = this.port.cluster;
    if (cluster.remotePick !== undefined) {
      // Worker processes ask the primary where an affinity client goes, so
      // placements (and their memory) are the same whichever worker accepted.
      cluster.remotePick(this.key, this.tried).then(
        (e) => this.connectTo(e),
        () => this.connectTo(cluster.pick({ key: this.key, tried: this.tried })),
      );
      return;
    }
    const ctx: PickContext = { key: this.key, tried: this.tried };
    const e = cluster.pick(ctx);
    if (ctx.barrier !== undefined && ctx.barrier > 0 && e !== undefined) {
      // An affinity client leaving its member: wait until the new member has
      // applied what the old one had (failover path only, never per chunk).
      void cluster.awaitRaft(e, ctx.barrier).then(() => this.connectTo(e));
      return;
    }
    this.connectTo(e);
  }

  /** The endpoint we are connecting to went down: try another, without blaming it. */
  redirect(): void {
    const e = this.endpoint;
    if (this.state !== CONNECTING || this.upstream === null || e === null) return;
    e.connecting.delete(this);
    this.abandonAttempt();
    (this.tried ??= []).push(e);
    this.attempts--;
    this.endpoint = null;
    this.connect();
  }

  private connectTo(e: Endpoint | undefined): void {
    if (this.state === CLOSED) return;
    const cluster = this.port.cluster;
    if (e === undefined) {
      this.fail(this.tried === null ? 'no_endpoint' : 'connect_failed');
      return;
    }
    this.endpoint = e;
    this.attempts++;
    e.connecting.add(this);
    this.connectStartedAt = performance.now();
    const keepAlive = cluster.config.keepalive.idle > 0;
    let s: Socket | TLSSocket;
    if (this.originTls === undefined) {
      s = e.address.kind === 'unix'
        ? netConnect({ path: e.address.path, allowHalfOpen: true, onread: upstreamOnread })
        : netConnect({ host: e.host, port: e.port, allowHalfOpen: true, noDelay: true, keepAlive, keepAliveInitialDelay: cluster.config.keepalive.idle, highWaterMark: PIPE_HIGH_WATER_MARK, onread: upstreamOnread } as NetConnectOpts);
      s.on('connect', onUpstreamConnect);
    } else {
      const t = this.originTls;
      const alpn = this.alpn !== false ? [this.alpn] : t.alpn;
      s = tlsConnect({
        ...(e.address.kind === 'unix' ? { path: e.address.path } : { host: e.host, port: e.port }),
        secureContext: t.context,
        servername: t.servername(e),
        ALPNProtocols: alpn,
        session: e.tlsSession,
        allowHalfOpen: true,
        noDelay: true,
        highWaterMark: PIPE_HIGH_WATER_MARK,
        keepAlive,
        keepAliveInitialDelay: cluster.config.keepalive.idle,
      } as unknown as Parameters<typeof tlsConnect>[0]);
      s.on('secureConnect', onUpstreamConnect);
      s.on('session', onUpstreamSession);
    }
    (s as Tagged)[kConn] = this;
    this.upstream = s;
    s.setTimeout(cluster.config.connectTimeout);
    s.on('timeout', onUpstreamConnectTimeout);
    s.on('error', onUpstreamError);
    s.on('close', onUpstreamClose);
  }

  /** Connected (and TLS-established) to the upstream: start pumping. */
  connected(): void {
    const s = this.upstream!;
    const e = this.endpoint!;
    e.connecting.delete(this);
    this.state = PIPING;
    this.everConnected = true;
    this.open = 2;
    s.setTimeout(0);
    s.removeListener('timeout', onUpstreamConnectTimeout);
    this.port.observeConnect((performance.now() - this.connectStartedAt) / 1000);
    this.port.cluster.opened(e, this);
    const c = this.client;
    if (!this.clientUserReads) c.on('data', onClientData);
    c.on('end', onClientEnd);
    c.on('drain', onClientDrain);
    if (this.originTls !== undefined) s.on('data', onUpstreamData);
    s.on('end', onUpstreamEnd);
    s.on('drain', onUpstreamDrain);
    // Flowing mode in both directions: a plain listener accepted the client
    // paused (its bytes waited in the kernel while we connected), and a
    // socket reading into our buffers emits 'end' only when flowing.
    c.resume();
    s.resume();
    // A client that half-closed before the upstream answered (no bytes, just
    // a FIN) has already emitted 'end': carry it over now or it is lost and
    // the connection hangs half-open until the idle timeout.
    if (c.readableEnded) onClientEnd.call(c);
  }

  /** A connect attempt failed: tell the cluster, then try the next endpoint or give up. */
  attemptFailed(outcome: ConnectOutcome): void {
    const e = this.endpoint!;
    const s = this.upstream!;
    e.connecting.delete(this);
    this.upstream = null;
    (s as Partial<Tagged>)[kConn] = undefined;
    s.removeListener('close', onUpstreamClose);
    s.destroy();
    if (outcome === 'local_error') {
      // Our own descriptor exhaustion says nothing about the endpoint, and
      // another endpoint would fail the same way: give up at once.
      if (this.state !== CLOSED) this.fail('local_error');
      return;
    }
    this.port.cluster.reportFailure(e, outcome);
    if (this.state === CLOSED) return;
    (this.tried ??= []).push(e);
    if (this.attempts >= this.port.cluster.config.connectAttempts) {
      this.fail('connect_failed');
      return;
    }
    this.endpoint = null;
    this.connect();
  }

  abandonAttempt(): void {
    this.endpoint?.connecting.delete(this);
    const s = this.upstream!;
    this.upstream = null;
    (s as Partial<Tagged>)[kConn] = undefined;
    s.destroy();
  }

  private fail(reason: string): void {
    this.closeReason = reason;
    this.failed = true;
    this.port.connectionFailed(this, reason);
    this.destroyAll();
  }

  /** Close both sides now (idle timeout, endpoint down, drain deadline, refusal). */
  close(reason: string): void {
    if (this.state === CLOSED) return;
    if (this.closeReason === '') this.closeReason = reason;
    this.destroyAll();
  }

  private destroyAll(): void {
    this.client.destroy();
    this.upstream?.destroy();
  }

  /**
   * Carry one read of a plain socket on. From SHARED the bytes are copied
   * out first (the next read of any socket overwrites SHARED). From a private
   * buffer they are written as they are; if the destination does not take
   * them at once, the source stops reading until that write is done, so the
   * buffer is not overwritten under it. Returns false to stop reading.
   */
  forward(up: boolean, n: number, buf: Buffer): boolean {
    const dst = up ? this.upstream! : this.client;
    if (buf === SHARED) {
      const copy = Buffer.allocUnsafe(n);
      SHARED.copy(copy, 0, 0, n);
      return dst.write(copy); // false: the destination's 'drain' resumes us
    }
    const lease = (up ? this.upLease : this.downLease)!;
    dst.write(buf.subarray(0, n), lease.written);
    if (dst.writableLength === 0) return true;
    lease.held = true;
    return false;
  }

  /** A write from a private buffer finished (or was dropped): if it held the buffer, read again. */
  private privateWriteDone(up: boolean): void {
    const lease = up ? this.upLease : this.downLease;
    const dst = up ? this.upstream : this.client;
    if (lease === null || !lease.held || dst === null || dst.writableLength !== 0) return;
    lease.held = false;
    (up ? this.client : this.upstream)?.resume();
  }

  /** Which buffer a plain socket reads into next, after a read of n bytes. */
  nextBuffer(up: boolean, n: number): Buffer {
    const lease = up ? this.upLease : this.downLease;
    if (lease === null) {
      if (n < BUSY_READ) return SHARED;
      const p = leaseReadBuffer();
      if (p === undefined) return SHARED;
      const l = new ReadLease(p, up ? () => this.privateWriteDone(true) : () => this.privateWriteDone(false));
      if (up) this.upLease = l;
      else this.downLease = l;
      return p;
    }
    if (n >= CALM_READ || lease.held) return lease.buf;
    // Reads turned small: give the buffer back (no write holds it: the last
    // one finished at once, or we would be held).
    releaseReadBuffer(lease.buf);
    if (up) this.upLease = null;
    else this.downLease = null;
    return SHARED;
  }

  /** One socket closed; the connection ends when both have. */
  sideClosed(): void {
    if (--this.open > 0) return;
    // Both sockets are closed: nothing reads into or writes from their buffers.
    if (this.upLease !== null) releaseReadBuffer(this.upLease.buf);
    if (this.downLease !== null) releaseReadBuffer(this.downLease.buf);
    this.upLease = this.downLease = null;
    if (this.state === CLOSED) return;
    const wasPiping = this.state === PIPING;
    this.state = CLOSED;
    if (wasPiping) this.port.cluster.closed(this.endpoint!, this);
    this.port.connectionClosed(this);
  }
}

function conn(s: Socket): ProxyConnection {
  return (s as Tagged)[kConn];
}

// The read callbacks of plain sockets (`this` is the socket) and the buffer
// generator Node calls right after each of them, without a receiver: the
// callback leaves behind whose read it was.
let readBy: ProxyConnection | null = null;
let readUp = false;
let readBytes = 0;

function onClientRead(this: Socket, n: number, buf: Buffer): boolean {
  const c = conn(this);
  const more = c.forward(true, n, buf);
  readBy = c;
  readUp = true;
  readBytes = n;
  return more;
}

function onUpstreamRead(this: Socket, n: number, buf: Buffer): boolean {
  const c = (this as Partial<Tagged>)[kConn];
  if (c === undefined || c.upstream !== this) return false;
  const more = c.forward(false, n, buf);
  readBy = c;
  readUp = false;
  readBytes = n;
  return more;
}

function nextReadBuffer(): Buffer {
  const c = readBy;
  if (c === null) return SHARED; // a new socket's first buffer
  readBy = null;
  return c.nextBuffer(readUp, readBytes);
}

const upstreamOnread = { buffer: nextReadBuffer, callback: onUpstreamRead };

function onClientData(this: Socket, chunk: Buffer): void {
  // Backpressure: stop reading the client while the upstream's buffer is full.
  if (!conn(this).upstream!.write(chunk)) this.pause();
}

function onUpstreamData(this: Socket, chunk: Buffer): void {
  if (!conn(this).client.write(chunk)) this.pause();
}

function onUpstreamDrain(this: Socket): void {
  conn(this).client.resume();
}

function onClientDrain(this: Socket): void {
  conn(this).upstream?.resume();
}

// Half-close: a FIN from one side becomes a FIN to the other, and the
// connection lives on in the other direction (allowHalfOpen on both sockets).
function onClientEnd(this: Socket): void {
  const c = conn(this);
  if (c.closeReason === '') c.closeReason = 'client_fin';
  c.upstream?.end();
}

function onUpstreamEnd(this: Socket): void {
  const c = conn(this);
  if (c.closeReason === '') c.closeReason = 'upstream_fin';
  c.client.end();
}

function onClientError(this: Socket, err: NodeJS.ErrnoException): void {
  const c = conn(this);
  if (c.closeReason === '') c.closeReason = `client_error:${err.code ?? 'unknown'}`;
  c.upstream?.destroy();
}

function onClientClose(this: Socket): void {
  const c = conn(this);
  const u = c.upstream;
  if (c.closeReason === '') c.closeReason = 'client_closed';
  if (c.state === CONNECTING && u !== null) {
    // The client left while we were still connecting: abandon the attempt
    // without blaming the endpoint.
    c.abandonAttempt();
  } else if (u !== null && !(this.readableEnded && this.writableFinished)) {
    // A clean close (both directions finished) lets the upstream finish its
    // own pending writes; anything else tears the upstream down at once.
    u.destroy();
  }
  c.sideClosed();
}

function onUpstreamConnect(this: Socket): void {
  const c = (this as Partial<Tagged>)[kConn];
  if (c !== undefined && c.upstream === this && c.state === CONNECTING) c.connected();
}

function onUpstreamSession(this: TLSSocket, session: Buffer): void {
  const c = (this as Partial<Tagged>)[kConn];
  if (c?.endpoint) c.endpoint.tlsSession = session;
}

function onUpstreamConnectTimeout(this: Socket): void {
  const c = (this as Partial<Tagged>)[kConn];
  if (c !== undefined && c.state === CONNECTING && c.upstream === this) c.attemptFailed('connect_timeout');
}

function onUpstreamError(this: Socket, err: NodeJS.ErrnoException): void {
  const c = (this as Partial<Tagged>)[kConn];
  if (c === undefined || c.upstream !== this) return;
  if (c.state === CONNECTING) {
    c.attemptFailed(outcomeOf(err, this));
    return;
  }
  if (c.closeReason === '') c.closeReason = `upstream_error:${err.code ?? 'unknown'}`;
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') c.port.cluster.reportFailure(c.endpoint!, 'reset');
  c.client.destroy();
}

function onUpstreamClose(this: Socket): void {
  const c = (this as Partial<Tagged>)[kConn];
  if (c === undefined || c.upstream !== this) return;
  if (c.state === CONNECTING) {
    // Closed before connecting without an error event: treat as refused.
    c.attemptFailed('connect_error');
    return;
  }
  if (!(this.readableEnded && this.writableFinished)) c.client.destroy();
  if (c.closeReason === '') c.closeReason = 'upstream_closed';
  c.sideClosed();
}

function onIdleTimeout(this: Socket): void {
  conn(this).close('idle_timeout');
}

function outcomeOf(err: NodeJS.ErrnoException, s: Socket): ConnectOutcome {
  if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') return 'connect_refused';
  if (err.code === 'EMFILE' || err.code === 'ENFILE' || err.code === 'EADDRNOTAVAIL' || err.code === 'ENOBUFS') return 'local_error';
  // An error after TCP connected but before TLS finished is the handshake's.
  if ((s as TLSSocket).encrypted && s.remoteAddress !== undefined && !s.connecting) return 'tls_error';
  if (err.code?.startsWith('ERR_TLS') || err.code?.startsWith('ERR_SSL') || /certificate|self.signed|CERT|altnames/i.test(err.message)) return 'tls_error';
  return 'connect_error';
}

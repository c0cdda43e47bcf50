import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Ballast } from '../ballast.js';
import type { Address } from '../config/address.js';
import { adminConnectionCap, fds } from '../listener/fd-budget.js';
import { removeStaleSocket } from '../listener/listener.js';
import { RateLimitedLog } from '../log.js';
import { statusDocument } from './status.js';
import { STATUS_PAGE } from './status-page.js';

// The admin port: probes (/healthz, /readyz), Prometheus (/metrics), the
// status document (/status) and the page that renders it (/). Read-only: it
// changes nothing, so it needs no authentication beyond binding to loopback
// (the default) or a 0600 unix socket.
//
// Reachable is not the same as trusted, so it also defends itself:
// - a connection cap per server (admin.maxConnections): metricsListen is often
//   bound to 0.0.0.0, and 600 idle connections to it once took the
//   descriptors new data-path clients needed. Its cap is held back from the
//   data path's descriptor budget (fd-budget.ts), so a flood here is refused
//   here and never reaches the proxy's clients.
// - one idle timeout (admin.idleTimeout) for headers, whole requests,
//   keep-alive and silent sockets.
// - a Host check against DNS rebinding: a web page on evil.example whose name
//   is re-pointed at 127.0.0.1 would otherwise read /status from the
//   operator's own browser. Only IP literals, localhost, this machine's
//   hostname and admin.allowedHosts are answered (unix sockets are not
//   reachable from a browser and are not checked).

export interface AdminLimits {
  maxConnections: number;
  idleTimeout: number;
  allowedHosts: string[];
}

export const ADMIN_LIMIT_DEFAULTS: AdminLimits = { maxConnections: 64, idleTimeout: 10_000, allowedHosts: [] };

export class AdminServer {
  private server: Server | undefined;
  private readonly allowedHosts: Set<string>;
  private readonly rlog: RateLimitedLog;

  constructor(
    private readonly ballast: Ballast,
    private readonly address: Address,
    private readonly log: Logger,
    /** 'metrics' serves only /metrics, /healthz and /readyz (admin.metricsListen). */
    private readonly scope: 'full' | 'metrics' = 'full',
    private readonly limits: AdminLimits = ADMIN_LIMIT_DEFAULTS,
    /** SO_REUSEPORT, so the next ballast can bind this port before this one stops (see `handover`). */
    private readonly reusePort = false,
  ) {
    this.allowedHosts = new Set(['localhost', hostname().toLowerCase(), ...limits.allowedHosts.map((h) => h.toLowerCase().replace(/\.$/, ''))]);
    this.rlog = new RateLimitedLog(log, 60_000);
  }

  private get key(): string {
    return this.scope === 'full' ? 'admin.listen' : 'admin.metricsListen';
  }

  async start(): Promise<void> {
    const idle = this.limits.idleTimeout;
    const server = createServer({ connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(idle / 2))) }, (req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log.error({ err: err.message, url: req.url }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    });
    server.headersTimeout = idle;
    server.requestTimeout = idle;
    server.keepAliveTimeout = Math.min(5000, idle);
    // Socket inactivity: with no 'timeout' listener the server destroys the socket.
    server.timeout = idle;
    const cap = adminConnectionCap(this.limits.maxConnections);
    if (cap < this.limits.maxConnections) {
      this.log.info({ address: this.address.text, maxConnections: this.limits.maxConnections, fdLimit: fds.limit, cap }, `${this.key}: admin.maxConnections ${this.limits.maxConnections} is more than a sixteenth of the descriptor limit (${fds.limit}); using ${cap}`);
    }
    server.maxConnections = cap;
    server.on('drop', (d?: { remoteAddress?: string }) => {
      this.rlog.warn(
        `drop:${this.key}`,
        { address: this.address.text, maxConnections: cap, remote: d?.remoteAddress },
        `${this.key} ${this.address.text}: at ${cap} open connections (admin.maxConnections); refusing new ones until some close (idle ones are closed after admin.idleTimeout)`,
      );
    });
    this.server = server;
    const a = this.address;
    // A stale socket of a dead ballast is replaced; a regular file or a live socket is not.
    if (a.kind === 'unix') await removeStaleSocket(a.path, this.key);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) =>
        reject(new Error(`admin.${this.scope === 'full' ? 'listen' : 'metricsListen'}: cannot listen on ${a.text}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (another process is there; set admin.listen to a free port)' : ''}`));
      server.once('error', onError);
      const done = () => {
        server.removeListener('error', onError);
        resolve();
      };
      if (a.kind === 'unix') server.listen(a.path, done);
      else server.listen({ host: a.host === '' ? undefined : a.host, port: a.port, ...(this.reusePort ? { reusePort: true } : {}) } as Parameters<Server['listen']>[0], done);
    });
    if (a.kind === 'unix') chmodSync(a.path, 0o600);
  }

  /** Whether the Host header names this server: an IP literal, localhost, this machine, or admin.allowedHosts. */
  private hostAllowed(req: IncomingMessage): boolean {
    if (this.address.kind === 'unix') return true;
    const raw = req.headers.host;
    // HTTP/1.0 without Host: not a browser, so not a rebinding (Node refuses HTTP/1.1 without Host itself).
    if (raw === undefined) return true;
    let host = raw.trim().toLowerCase();
    if (host.startsWith('[')) {
      const end = host.indexOf(']');
      host = end > 0 ? host.slice(1, end) : host;
    } else if (host.indexOf(':') === host.lastIndexOf(':')) {
      const colon = host.indexOf(':');
      if (colon >= 0) host = host.slice(0, colon);
    }
    if (host.endsWith('.')) host = host.slice(0, -1);
    return isIP(host) !== 0 || this.allowedHosts.has(host);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (!this.hostAllowed(req)) {
      this.rlog.warn(`host:${this.key}`, { address: this.address.text, host: req.headers.host?.slice(0, 200), remote: req.socket.remoteAddress }, `${this.key}: refused a request for Host ${JSON.stringify(req.headers.host?.slice(0, 200))} (DNS rebinding check)`);
      res.writeHead(421, { 'content-type': 'text/plain', connection: 'close' }).end(`misdirected request: this admin server answers to IP addresses, localhost, ${hostname()} and the names in admin.allowedHosts; add this host name there to reach it by name\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (this.scope === 'metrics' && path !== '/metrics' && path !== '/healthz' && path !== '/livez' && path !== '/readyz') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: this address serves /metrics, /healthz, /readyz only\n');
      return;
    }
    switch (path) {
      case '/healthz':
      case '/livez':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const reasons = this.ballast.notReadyReasons();
        if (reasons.length === 0) res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n');
        else res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready\n${reasons.join('\n')}\n`);
        return;
      }
      case '/metrics': {
        const m = await this.ballast.metrics.render();
        res.writeHead(200, { 'content-type': m.contentType }).end(m.body);
        return;
      }
      case '/status': {
        const workers = this.ballast.statsFromWorkers ? await this.ballast.statsFromWorkers() : undefined;
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(statusDocument(this.ballast, workers), null, 2));
        return;
      }
      case '/':
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'" }).end(STATUS_PAGE);
        return;
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /, /status, /metrics, /healthz, /readyz\n');
    }
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    const bound = s.listening;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    // Only a socket this server made is removed (never what was at the path when binding failed).
    if (this.address.kind === 'unix' && bound) {
      try {
        unlinkSync(this.address.path);
      } catch {
        // gone
      }
    }
  }
}

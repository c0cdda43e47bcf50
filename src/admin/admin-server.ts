import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Ballast } from '../ballast.js';
import type { Address } from '../config/address.js';
import { statusDocument } from './status.js';
import { STATUS_PAGE } from './status-page.js';

// The admin port: probes (/healthz, /readyz), Prometheus (/metrics), the
// status document (/status) and the page that renders it (/). Read-only: it
// changes nothing, so it needs no authentication beyond binding to loopback
// (the default) or a 0600 unix socket.

export class AdminServer {
  private server: Server | undefined;

  constructor(
    private readonly ballast: Ballast,
    private readonly address: Address,
    private readonly log: Logger,
    /** 'metrics' serves only /metrics, /healthz and /readyz (admin.metricsListen). */
    private readonly scope: 'full' | 'metrics' = 'full',
  ) {}

  async start(): Promise<void> {
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log.error({ err: err.message, url: req.url }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    });
    server.keepAliveTimeout = 5000;
    this.server = server;
    const a = this.address;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) =>
        reject(new Error(`admin.${this.scope === 'full' ? 'listen' : 'metricsListen'}: cannot listen on ${a.text}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (another process is there; set admin.listen to a free port)' : ''}`));
      server.once('error', onError);
      const done = () => {
        server.removeListener('error', onError);
        resolve();
      };
      if (a.kind === 'unix') {
        try {
          unlinkSync(a.path);
        } catch {
          // not there
        }
        server.listen(a.path, done);
      } else server.listen({ host: a.host === '' ? undefined : a.host, port: a.port }, done);
    });
    if (a.kind === 'unix') chmodSync(a.path, 0o600);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
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
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    if (this.address.kind === 'unix') {
      try {
        unlinkSync(this.address.path);
      } catch {
        // gone
      }
    }
  }
}

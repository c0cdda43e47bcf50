import type { Client } from 'undici';
import type { HealthConfig } from '../../config/load.js';
import type { Endpoint } from '../endpoint.js';
import { describeError, failed, ok, type HealthCheck } from './health-check.js';

/** PEM material for https checks, read at each check so rotation applies. */
export interface CheckTls {
  version: number;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  servername(e: Endpoint): string | undefined;
}

const MAX_BODY = 64 * 1024;

/**
 * GET a path (kube-apiserver's /readyz, etcd's /health) and judge the status
 * and optionally the body. Each check uses a fresh connection, as kubelet's
 * probes do: a reused connection would hide a server that stopped accepting.
 */
export class HttpCheck implements HealthCheck {
  readonly kind: string;
  private readonly clients = new Map<Endpoint, { version: number; client: Client }>();

  constructor(
    private readonly secure: boolean,
    private readonly health: () => HealthConfig,
    private readonly tls: () => CheckTls | undefined,
  ) {
    this.kind = secure ? 'https' : 'http';
  }

  async run(e: Endpoint, signal: AbortSignal): ReturnType<HealthCheck['run']> {
    const h = this.health();
    const client = await this.clientFor(e);
    try {
      const res = await client.request({
        path: h.path,
        method: 'GET',
        signal,
        reset: true,
        headers: { 'user-agent': 'ballast-health-check', ...(h.host ? { host: h.host } : {}) },
      });
      if (!statusMatches(res.statusCode, h.expectStatus)) {
        await res.body.dump({ limit: MAX_BODY }).catch(() => undefined);
        return failed('http_status', `HTTP ${res.statusCode}`);
      }
      if (h.expectBody !== undefined) {
        const body = await readLimited(res.body);
        if (!body.includes(h.expectBody)) return failed('http_body', `HTTP ${res.statusCode} without "${h.expectBody}" in the body`);
      } else {
        await res.body.dump({ limit: MAX_BODY }).catch(() => undefined);
      }
      return ok(`HTTP ${res.statusCode}`);
    } catch (err) {
      if (signal.aborted) throw err;
      const d = describeError(err);
      return failed(d.code, d.reason);
    }
  }

  /** One client per endpoint and material version: per-endpoint server names, rotation-safe. */
  private async clientFor(e: Endpoint): Promise<Client> {
    const t = this.tls();
    const version = t?.version ?? 0;
    const cached = this.clients.get(e);
    if (cached?.version === version) return cached.client;
    if (cached) void cached.client.close().catch(() => undefined);
    const host = e.address.kind === 'inet' ? (e.address.family === 6 ? `[${e.host}]` : e.host) : 'localhost';
    const origin = `${this.secure ? 'https' : 'http'}://${host}:${e.port || 80}`;
    const servername = t?.servername(e);
    // undici is loaded with the first http(s) check, not at start-up.
    const { Client } = await import('undici');
    const client = new Client(origin, {
      pipelining: 0,
      ...(e.address.kind === 'unix' ? { socketPath: e.address.path } : {}),
      connect: {
        rejectUnauthorized: true,
        ...(servername ? { servername } : {}),
        ...(t?.ca ? { ca: t.ca } : {}),
        ...(t?.cert ? { cert: t.cert, key: t.key } : {}),
      },
    });
    this.clients.set(e, { version, client });
    return client;
  }

  forget(e: Endpoint): void {
    const c = this.clients.get(e);
    if (c) void c.client.close().catch(() => undefined);
    this.clients.delete(e);
  }

  close(): void {
    for (const c of this.clients.values()) void c.client.destroy().catch(() => undefined);
    this.clients.clear();
  }
}

export function statusMatches(status: number, expect: readonly (number | string)[]): boolean {
  return expect.some((x) => (typeof x === 'number' ? x === status : Math.floor(status / 100) === Number(x[0])));
}

async function readLimited(body: AsyncIterable<Buffer>): Promise<string> {
  let out = '';
  for await (const chunk of body) {
    out += chunk.toString('utf8');
    if (out.length > MAX_BODY) break;
  }
  return out;
}

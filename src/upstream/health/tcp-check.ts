import { connect } from 'node:net';
import type { Endpoint } from '../endpoint.js';
import { describeError, failed, ok, type HealthCheck } from './health-check.js';

/** Up when a TCP connection opens; it is closed at once. */
export class TcpCheck implements HealthCheck {
  readonly kind = 'tcp';

  run(e: Endpoint, signal: AbortSignal): ReturnType<HealthCheck['run']> {
    return new Promise((resolve) => {
      const s = e.address.kind === 'unix' ? connect({ path: e.address.path }) : connect({ host: e.host, port: e.port });
      const done = (r: Awaited<ReturnType<HealthCheck['run']>>) => {
        s.destroy();
        resolve(r);
      };
      s.once('connect', () => done(ok('connected')));
      s.once('error', (err) => {
        const d = describeError(err);
        done(failed(d.code, d.reason));
      });
      signal.addEventListener('abort', () => s.destroy(), { once: true });
    });
  }

  forget(): void {}
  close(): void {}
}

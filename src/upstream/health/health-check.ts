import type { CheckResult } from '../cluster.js';
import type { Endpoint } from '../endpoint.js';

/** One kind of active check (tcp, http, etcd). Stateless per run; may cache clients per endpoint. */
export interface HealthCheck {
  readonly kind: string;
  /** Judge one endpoint within `timeoutMs`. Must settle promptly once `signal` aborts. */
  run(e: Endpoint, signal: AbortSignal, timeoutMs: number): Promise<Omit<CheckResult, 'durationMs'>>;
  /**
   * Optional: resolve once `e` has applied everything the cluster had
   * committed when the call was made (etcd: a linearizable read served by
   * `e`); reject on failure or after `timeoutMs`. Affinity moves wait on it.
   */
  readBarrier?(e: Endpoint, timeoutMs: number): Promise<void>;
  /** The endpoint left the cluster: release anything held for it. */
  forget(e: Endpoint): void;
  close(): void;
}

export function ok(reason = 'ok'): Omit<CheckResult, 'durationMs'> {
  return { ok: true, reason, code: 'ok' };
}

export function failed(code: string, reason: string): Omit<CheckResult, 'durationMs'> {
  return { ok: false, reason, code };
}

/** An error from a connect or request, as a reason code and a human reason. */
export function describeError(err: unknown): { code: string; reason: string } {
  const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  const code = e?.code ?? e?.cause?.code ?? '';
  if (code === 'EMFILE' || code === 'ENFILE') return { code: 'local_error', reason: `ballast is out of file descriptors (${code})` };
  if (code === 'ECONNREFUSED') return { code: 'refused', reason: 'connection refused' };
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return { code: 'reset', reason: 'connection reset' };
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return { code: 'unreachable', reason: `host unreachable (${code})` };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { code: 'dns', reason: `name does not resolve (${code})` };
  const message = (e?.cause?.message ?? e?.message ?? String(err)).split('\n')[0]!;
  if (/certificate|self.signed|altnames|CERT_|SSL|TLS/i.test(message + code)) return { code: 'tls', reason: `TLS: ${message}` };
  return { code: 'error', reason: message };
}

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import net from 'node:net';

// Child processes for backups and drills: etcdctl (short-lived, bounded) and
// a throwaway etcd (long-lived, stopped by PID). Only processes started here
// are ever signalled, always by PID.

/** etcdctl and etcd binaries: option, else BALLAST_ETCDCTL_BIN / BALLAST_ETCD_BIN, else $PATH. */
export function etcdctlBin(explicit?: string): string {
  return explicit ?? process.env.BALLAST_ETCDCTL_BIN ?? 'etcdctl';
}

export function etcdBin(explicit?: string): string {
  return explicit ?? process.env.BALLAST_ETCD_BIN ?? 'etcd';
}

/** The environment etcdctl runs with: v3 API, and no ETCDCTL_* from ours (an ETCDCTL_ENDPOINTS would redirect it). */
export function etcdctlEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCDCTL_')) env[k] = v;
  env.ETCDCTL_API = '3';
  return env;
}

export interface ToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  aborted: boolean;
}

/** The binary could not be started at all (ENOENT, EACCES). */
export class ToolMissingError extends Error {
  constructor(
    readonly bin: string,
    readonly code: string,
  ) {
    super(`cannot run ${bin}: ${code}`);
    this.name = 'ToolMissingError';
  }
}

/**
 * Run a tool to completion with a hard deadline: on timeout or abort it is
 * SIGKILLed (by PID) and the result says so. Output is capped so a chatty
 * tool cannot grow memory without bound.
 */
export function runTool(bin: string, args: string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; signal?: AbortSignal; maxOutput?: number }): Promise<ToolResult> {
  const max = opts.maxOutput ?? 1 << 20;
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    } catch (err) {
      reject(new ToolMissingError(bin, (err as NodeJS.ErrnoException).code ?? (err as Error).message));
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let timedOut = false;
    let aborted = false;
    const kill = () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, opts.timeoutMs);
    const onAbort = () => {
      aborted = true;
      kill();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();
    child.stdout!.on('data', (c: Buffer) => {
      if (outLen < max) out.push(c);
      outLen += c.length;
    });
    child.stderr!.on('data', (c: Buffer) => {
      if (errLen < max) err.push(c);
      errLen += c.length;
    });
    child.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      reject(new ToolMissingError(bin, e.code ?? e.message));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut, aborted });
    });
  });
}

/** A short description of a failed tool run for messages: its last stderr line, or how it ended. */
export function toolFailure(r: ToolResult): string {
  if (r.timedOut) return 'timed out (killed)';
  if (r.aborted) return 'aborted (killed)';
  const lines = (r.stderr.trim() || r.stdout.trim())
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !/^\{"level":"(info|debug)"/.test(l));
  const last = lines[lines.length - 1] ?? '';
  return `${r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`}${last ? `: ${last.slice(0, 400)}` : ''}`;
}

/** A long-running child we stop ourselves: SIGTERM, then SIGKILL after `graceMs`. */
export interface ManagedChild {
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly done: boolean;
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<number>();
let exitHook = false;

/** Spawn a child that is SIGKILLed if this process exits first (normal exit or a handled signal). */
export function spawnManaged(bin: string, args: string[], opts: { env?: NodeJS.ProcessEnv; stdio?: StdioOptions; cwd?: string } = {}): Promise<ManagedChild> {
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const pid of live) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    });
  }
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: opts.stdio ?? 'ignore', env: opts.env ?? process.env, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) });
    let done = false;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child.once('exit', (code, signal) => {
        done = true;
        if (child.pid !== undefined) live.delete(child.pid);
        r({ code, signal });
      }),
    );
    child.once('error', (e: NodeJS.ErrnoException) => reject(new ToolMissingError(bin, e.code ?? e.message)));
    child.once('spawn', () => {
      const pid = child.pid!;
      live.add(pid);
      const signal = (s: NodeJS.Signals) => {
        if (done) return;
        try {
          process.kill(pid, s);
        } catch {
          // gone
        }
      };
      resolve({
        pid,
        exited,
        get done() {
          return done;
        },
        async stop(graceMs = 5_000) {
          if (done) return;
          signal('SIGTERM');
          let t: NodeJS.Timeout | undefined;
          const graceful = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => (t = setTimeout(() => r(false), graceMs)))]);
          clearTimeout(t);
          if (!graceful) {
            signal('SIGKILL');
            await exited;
          }
        },
      });
    });
  });
}

/** `n` distinct loopback ports that were free a moment ago (listeners held until all are allocated). */
export async function freeLoopbackPorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      servers.push(
        await new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer();
          s.once('error', reject);
          s.listen({ port: 0, host, exclusive: true }, () => resolve(s));
        }),
      );
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

// A stalled disk under a running etcd member: strace attaches to the member
// and holds every fdatasync of one file (its WAL) for `delayMs`, as a failing
// or saturated disk does (etcd-io/etcd#13527, #14338). The member keeps
// answering Maintenance.Status and serializable reads; its raft loop, blocked
// in the WAL sync, applies nothing more. Stopping the stall detaches strace
// and the held syscalls complete.
//
// --seccomp-bpf would make the trace cheap but strace refuses it with -p, so
// the member pays a ptrace stop per syscall while the stall lasts.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export interface DiskStall {
  /** Wall-clock time (Date.now()) at which strace had attached to every thread. */
  readonly since: number;
  stop(): Promise<void>;
}

export function walFile(dataDir: string): string {
  return path.join(dataDir, 'member/wal/0000000000000000-0000000000000000.wal');
}

export async function stallFdatasync(pid: number, file: string, delayMs = 60_000): Promise<DiskStall> {
  const child: ChildProcess = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-e', 'trace=fdatasync', '-e', `inject=fdatasync:delay_enter=${delayMs * 1000}`, '-P', file, '-p', String(pid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.on('error', () => {});
  // strace prints nothing with -qq once attached; give it a moment to reach
  // every thread, and fail loudly if it could not attach at all.
  await Promise.race([new Promise((r) => setTimeout(r, 300)), exited]);
  if (child.exitCode !== null || child.signalCode !== null) throw new Error(`strace could not attach to ${pid} (is strace installed, are we allowed to ptrace?): ${err.trim()}`);
  const since = Date.now();
  return {
    since,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

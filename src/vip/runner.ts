import { execFile } from 'node:child_process';

// The VIP changes the host's network through `ip` and `arping`, run as child
// processes (no shell). The runner is injected so the election and address
// logic can be tested without root; production uses execFileRunner.

export interface CommandResult {
  ok: boolean;
  stdout: string;
  stderr: string;
  /** Exit code, or the errno code (ENOENT: the tool is missing) when it did not run. */
  code: number | string;
}

export type CommandRunner = (file: string, args: readonly string[], timeoutMs: number) => Promise<CommandResult>;

export const execFileRunner: CommandRunner = (file, args, timeoutMs) =>
  new Promise((resolve) => {
    execFile(file, [...args], { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve({ ok: true, stdout, stderr, code: 0 });
      const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean };
      resolve({ ok: false, stdout: stdout ?? '', stderr: stderr ?? '', code: e.killed ? 'ETIMEDOUT' : (e.code ?? 1) });
    });
  });

// Start ballast for a test: in-process (fast, inspectable) or as the real CLI
// in a child process (signals, exit codes, logs).
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Ballast } from '../../src/ballast.js';
import { AdminServer } from '../../src/admin/admin-server.js';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(REPO, 'dist/cli.js');

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** A logger whose JSON lines land in an array the test can search. */
export function memoryLogger(level = 'info'): { log: ReturnType<typeof createLogger>; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine);
      cb();
    },
  });
  return { log: createLogger(level, sink), lines };
}

export interface InProcess {
  ballast: Ballast;
  lines: LogLine[];
  admin?: AdminServer;
  stop(): Promise<void>;
}

/** Parse YAML and start ballast in this process, with the admin server if `admin` is set in the YAML. */
export async function startInProcess(yaml: string, opts: { source?: string; admin?: boolean } = {}): Promise<InProcess> {
  const config = parseConfig(yaml, opts.source ?? '<test>');
  const { log, lines } = memoryLogger('debug');
  const ballast = new Ballast(config, log);
  await ballast.start();
  let admin: AdminServer | undefined;
  if (opts.admin) {
    admin = new AdminServer(ballast, config.admin.listen, log, 'full', config.admin);
    await admin.start();
  }
  return {
    ballast,
    lines,
    ...(admin ? { admin } : {}),
    stop: async () => {
      await ballast.stop();
      await admin?.close();
    },
  };
}

export interface ChildBallast {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  waitForLog(re: RegExp, ms?: number): Promise<string>;
  kill(signal: NodeJS.Signals): void;
}

/** Run `node dist/cli.js args…` (the built CLI, as production runs it). */
export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ChildBallast {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env }, cwd: opts.cwd ?? REPO });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    kill: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    waitForLog: (re, ms = 15_000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no log line matching ${re} after ${ms}ms; stdout:\n${out.slice(-2000)}\nstderr:\n${err.slice(-2000)}`)), ms);
        const check = () => {
          const line = out.split('\n').find((l) => re.test(l));
          if (line) {
            clearTimeout(timer);
            child.stdout!.off('data', check);
            resolve(line);
          }
        };
        child.stdout!.on('data', check);
        check();
      }),
  };
}

/** Run the CLI to completion. */
export async function runCliToEnd(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | string; stdout: string; stderr: string }> {
  const c = runCli(args, opts);
  const timer = setTimeout(() => c.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  const code = await c.exited;
  clearTimeout(timer);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

export function writeConfig(dir: string, yaml: string, name = 'ballast.yaml'): string {
  const file = path.join(dir, name);
  writeFileSync(file, yaml);
  return file;
}

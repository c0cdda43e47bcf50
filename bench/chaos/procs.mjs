// Child processes of the soak (etcd members, ballast, etcdctl): tracked by
// PID, killed by PID only. An exit hook kills what is still running when the
// soak ends, and a tiny reaper process does the same if the soak itself is
// SIGKILLed (its stdin closes): it signals only PIDs it was told about, and
// only if /proc says they are still etcd or node.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

const live = new Map(); // pid -> ChildProcess
let reaper;
let hookInstalled = false;

const REAPER = `
const fs = require('fs');
const pids = new Set();
let buf = '';
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => {});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    const pid = Number(line.slice(1));
    if (!Number.isInteger(pid) || pid <= 1) continue;
    if (line[0] === '+') pids.add(pid); else pids.delete(pid);
  }
});
const ours = (pid) => { try { return ['etcd', 'node'].includes(fs.readFileSync('/proc/' + pid + '/comm', 'utf8').trim()); } catch { return false; } };
process.stdin.on('end', () => {
  for (const pid of pids) if (ours(pid)) { try { process.kill(pid, 'SIGCONT'); process.kill(pid, 'SIGKILL'); } catch {} }
  process.exit(0);
});
`;

function tell(line) {
  if (process.platform !== 'linux') return;
  if (!reaper || reaper.exitCode !== null) {
    reaper = spawn(process.execPath, ['-e', REAPER], { stdio: ['pipe', 'ignore', 'ignore'], env: { PATH: process.env.PATH ?? '' } });
    reaper.on('error', () => {});
    reaper.stdin.on('error', () => {});
    reaper.unref();
    reaper.stdin.unref?.();
    for (const pid of live.keys()) reaper.stdin.write(`+${pid}\n`);
  }
  reaper.stdin.write(`${line}\n`);
}

function installHook() {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const pid of live.keys()) hardKill(pid);
  });
}

export function hardKill(pid) {
  try {
    process.kill(pid, 'SIGCONT');
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

/**
 * Spawn and track. `logFile` receives stdout and stderr. Returns the child
 * with `exited` (a promise of { code, signal }).
 */
export function spawnTracked(cmd, args, { logFile, env } = {}) {
  installHook();
  let fd;
  if (logFile) fd = fs.openSync(logFile, 'a');
  let child;
  try {
    child = spawn(cmd, args, { stdio: ['ignore', fd ?? 'ignore', fd ?? 'ignore'], env: env ?? process.env });
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
  if (child.pid === undefined) {
    child.on('error', () => {});
    throw new Error(`could not spawn ${cmd}`);
  }
  const pid = child.pid;
  live.set(pid, child);
  tell(`+${pid}`);
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(pid);
      tell(`-${pid}`);
      child.exitInfo = { code, signal };
      resolve(child.exitInfo);
    });
  });
  child.on('error', () => {});
  return child;
}

/** Run to completion with a time limit; resolves { code, stdout, stderr }. */
export function runBounded(cmd, args, { timeoutMs = 10_000, env, input } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: env ?? process.env });
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) hardKill(child.pid);
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout: '', stderr: e.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: timedOut ? 'timeout' : (code ?? signal), stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** Kill everything still tracked and wait (bounded) for the exits. */
export async function killAll(timeoutMs = 5000) {
  const children = [...live.values()];
  for (const c of children) hardKill(c.pid);
  await Promise.race([Promise.all(children.map((c) => c.exited)), new Promise((r) => setTimeout(r, timeoutMs))]);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** /proc/PID/status VmRSS in KiB and the open fd count, or undefined if gone. */
export function sampleProc(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
    const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
    return { rssKiB: rss, fds };
  } catch {
    return undefined;
  }
}

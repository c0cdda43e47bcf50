// Child processes of the harness: spawn, track, wait for listening, read CPU
// time, and kill — always by PID, never by name. Every process the harness
// starts goes through spawnTracked() so killAll() can clean up on exit/SIGINT.

import { spawn, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';

const tracked = new Map(); // pid -> ChildProcess

/** Clock ticks per second for /proc/PID/stat (usually 100). */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * Spawn a child and track it. Keeps the last few KiB of stdout/stderr for
 * error messages; `onLine` (optional) sees every stdout line as it arrives.
 */
export function spawnTracked(cmd, args, { name = cmd, onLine, env } = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  child.benchName = name;
  child.outTail = '';
  child.errTail = '';
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      tracked.delete(child.pid);
      child.exitInfo = { code, signal };
      resolve(child.exitInfo);
    });
    child.once('error', (err) => {
      tracked.delete(child.pid);
      child.exitInfo = { code: null, signal: null, error: err.message };
      resolve(child.exitInfo);
    });
  });
  if (child.pid !== undefined) tracked.set(child.pid, child);
  let partial = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (s) => {
    child.outTail = (child.outTail + s).slice(-8192);
    if (!onLine) return;
    partial += s;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      onLine(line);
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s) => {
    child.errTail = (child.errTail + s).slice(-8192);
  });
  return child;
}

/** Run a child to completion with a hard time limit; resolves with its stdout tail and exit info. */
export async function runBounded(cmd, args, { limitMs, name, onLine } = {}) {
  const child = spawnTracked(cmd, args, { name, onLine });
  const timer = setTimeout(() => killPid(child.pid, 'SIGKILL'), limitMs);
  const info = await child.exited;
  clearTimeout(timer);
  return { ...info, stdout: child.outTail, stderr: child.errTail, pid: child.pid };
}

export function killPid(pid, signal = 'SIGTERM') {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** SIGTERM, then SIGKILL after graceMs if it is still there. */
export async function stopChild(child, graceMs = 3000) {
  if (!child || child.exitInfo) return;
  killPid(child.pid, 'SIGTERM');
  const timer = setTimeout(() => killPid(child.pid, 'SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Synchronous last-resort cleanup (exit handler, SIGINT). */
export function killAllSync() {
  for (const pid of tracked.keys()) killPid(pid, 'SIGKILL');
  tracked.clear();
}

/** A port the OS just handed out on 127.0.0.1 (listen on 0, then close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function tryConnect(host, port) {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.setTimeout(500, () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** Poll-connect until host:port accepts, the child exits, or timeoutMs passes. */
export async function waitListening(host, port, { child, timeoutMs = 10_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child?.exitInfo) {
      throw new Error(`${child.benchName} exited before listening on ${host}:${port} (${JSON.stringify(child.exitInfo)}): ${(child.errTail || child.outTail).trim().slice(-1500)}`);
    }
    if (await tryConnect(host, port)) return;
    await sleep(50);
  }
  throw new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms${child ? ` (${child.benchName}: ${(child.errTail || child.outTail).trim().slice(-1500)})` : ''}`);
}

/** { user, sys } CPU seconds of a process (all its threads), or undefined if it is gone. */
export function cpuTimes(pid) {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at field 3.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const own = { user: Number(rest[11]) / CLK_TCK, sys: Number(rest[12]) / CLK_TCK }; // fields 14, 15
    // A multi-process ballast (workers) does its work in child processes:
    // count the live children too, so CPU compares with haproxy's threads.
    for (const child of childPids(pid)) {
      const c = cpuTimes(child);
      if (c) {
        own.user += c.user;
        own.sys += c.sys;
      }
    }
    return own;
  } catch {
    return undefined;
  }
}

function childPids(pid) {
  const out = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (kids) out.push(...kids.split(/\s+/).map(Number));
    }
  } catch {
    // gone
  }
  return out;
}

/** utime+stime of a process in seconds, or undefined if it is gone. */
export function cpuSeconds(pid) {
  const t = cpuTimes(pid);
  return t === undefined ? undefined : t.user + t.sys;
}

/** CPU seconds the whole machine spent busy (all CPUs, not idle or iowait), from /proc/stat. */
export function machineBusySeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0);
    return busy / CLK_TCK;
  } catch {
    return undefined;
  }
}

/**
 * Measures CPU seconds of some PIDs over a window: start() … stop(). stop()
 * returns { wallSec, machine, <name>: total, <name>User, <name>Sys } per PID;
 * `machine` is busy CPU-seconds of the whole machine (load generator, proxy,
 * backend and whatever else runs there).
 */
/** cpuTimes of one PID, or the sum over several (a backend of three etcd members). */
function cpuTimesOf(pid) {
  if (!Array.isArray(pid)) return cpuTimes(pid);
  const all = pid.map((p) => cpuTimes(p));
  if (all.some((t) => t === undefined)) return undefined;
  return all.reduce((a, t) => ({ user: a.user + t.user, sys: a.sys + t.sys }), { user: 0, sys: 0 });
}

export function cpuMeter(pids) {
  let before = null;
  let machineBefore;
  let startedAt = 0;
  return {
    start() {
      startedAt = performance.now();
      machineBefore = machineBusySeconds();
      before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuTimesOf(pid)]));
    },
    stop() {
      const wall = (performance.now() - startedAt) / 1000;
      const m = machineBusySeconds();
      const out = { wallSec: wall, machine: m === undefined || machineBefore === undefined ? undefined : m - machineBefore };
      for (const [k, pid] of Object.entries(pids)) {
        const a = before?.[k];
        const b = cpuTimesOf(pid);
        const ok = a !== undefined && b !== undefined;
        out[k] = ok ? b.user + b.sys - a.user - a.sys : undefined;
        out[`${k}User`] = ok ? b.user - a.user : undefined;
        out[`${k}Sys`] = ok ? b.sys - a.sys : undefined;
      }
      return out;
    },
  };
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

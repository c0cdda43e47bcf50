// Load generators, each run as its own process with a hard time limit, each
// returning the same normalized result:
//   { requests, seconds, rps, p50us, p99us, errors, errorDetail }      (HTTP)
//   { bytes, seconds, mbps, errors }                                   (bulk)
// A `meter` (proc.cpuMeter) is started/stopped around the measured window so
// the proxy's CPU time covers exactly the load, not set-up or warm-up.

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { runBounded } from './proc.mjs';

const BENCH = new URL('..', import.meta.url).pathname;

export function wrkAvailable() {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (err) {
    // wrk --version exits 1 after printing its banner; ENOENT means missing.
    return err.code !== 'ENOENT';
  }
}

export function wrkVersion() {
  try {
    execFileSync('wrk', ['--version'], { encoding: 'utf8' });
  } catch (err) {
    const out = String(err.stdout ?? '');
    const m = /wrk (\S+)/.exec(out);
    if (m) return `wrk ${m[1]}`;
  }
  return 'wrk';
}

/** Run a load process between meter.start() and meter.stop(). */
async function measured(meter, fn) {
  meter?.start();
  const r = await fn();
  const cpu = meter?.stop();
  return { r, cpu };
}

function fail(what, res) {
  return new Error(`${what} failed (${JSON.stringify({ code: res.code, signal: res.signal })}): ${(res.stderr || res.stdout).trim().slice(-800)}`);
}

// --- wrk ---------------------------------------------------------------------

async function wrk({ url, connections, duration, close }) {
  const args = ['-t1', `-c${connections}`, `-d${duration}s`, '--timeout', '5s', '-s', join(BENCH, 'wrk-report.lua')];
  if (close) args.push('-H', 'Connection: close');
  args.push(url);
  const res = await runBounded('wrk', args, { name: 'wrk', limitMs: (duration + 15) * 1000 });
  const line = res.stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (!line) throw fail('wrk', res);
  const j = JSON.parse(line.slice('WRKJSON '.length));
  const seconds = j.duration_us / 1e6;
  const e = j.errors;
  const errors = e.connect + e.read + e.write + e.status + e.timeout;
  return {
    requests: j.requests,
    seconds,
    rps: j.requests / seconds,
    p50us: j.latency_us.p50,
    p99us: j.latency_us.p99,
    errors,
    errorDetail: errors ? e : undefined,
  };
}

// --- autocannon (fallback for keep-alive) -----------------------------------

async function autocannon({ url, connections, duration, root }) {
  const bin = join(root, 'node_modules/autocannon/autocannon.js');
  const res = await runBounded(process.execPath, [bin, '-j', '-c', String(connections), '-d', String(duration), url], {
    name: 'autocannon',
    limitMs: (duration + 20) * 1000,
  });
  let j;
  try {
    j = JSON.parse(res.stdout.trim().split('\n').pop());
  } catch {
    throw fail('autocannon', res);
  }
  const seconds = j.duration;
  const errors = (j.errors ?? 0) + (j.timeouts ?? 0) + (j.non2xx ?? 0);
  return {
    requests: j.requests.total,
    seconds,
    rps: j.requests.total / seconds,
    p50us: Math.round(j.latency.p50 * 1000),
    p99us: Math.round(j.latency.p99 * 1000),
    errors,
    errorDetail: errors ? { errors: j.errors, timeouts: j.timeouts, non2xx: j.non2xx } : undefined,
  };
}

// --- connect-client (fallback for Connection: close) ------------------------

async function connectClient({ host, port, connections, duration }) {
  const res = await runBounded(process.execPath, [join(BENCH, 'connect-client.mjs'), '--target', `${host}:${port}`, '--concurrency', String(connections), '--duration', String(duration)], {
    name: 'connect-client',
    limitMs: (duration + 20) * 1000,
  });
  let j;
  try {
    j = JSON.parse(res.stdout.trim().split('\n').pop());
  } catch {
    throw fail('connect-client', res);
  }
  return {
    requests: j.requests,
    seconds: j.seconds,
    rps: j.requests / j.seconds,
    p50us: j.latency_us.p50,
    p99us: j.latency_us.p99,
    errors: j.errors,
    errorDetail: j.errors ? { errors: j.errors } : undefined,
  };
}

/**
 * HTTP load against a target: `close` sends Connection: close (one request
 * per connection). `tool` is 'wrk' or 'autocannon'. Returns { r, cpu }.
 */
export function httpLoad({ tool, target, connections, duration, close = false, meter, root }) {
  const url = `http://${target.host}:${target.port}/`;
  const opts = { url, host: target.host, port: target.port, connections, duration, close, root };
  const run = tool === 'wrk' ? () => wrk(opts) : close ? () => connectClient(opts) : () => autocannon(opts);
  return measured(meter, run);
}

/**
 * Run a Node load client that prints MARK start / MARK end around its window
 * and one JSON result line last; the meter follows the marks. Returns { j, cpu }.
 */
async function markedClient(name, args, { meter, limitMs }) {
  let cpu;
  const onLine = (line) => {
    if (line === 'MARK start') meter?.start();
    else if (line === 'MARK end') cpu = meter?.stop();
  };
  const res = await runBounded(process.execPath, args, { name, onLine, limitMs });
  try {
    return { j: JSON.parse(res.stdout.trim().split('\n').pop()), cpu };
  } catch {
    throw fail(name, res);
  }
}

// --- bulk --------------------------------------------------------------------

/**
 * N streams pushing 64 KiB chunks through the target to the sink. The client
 * warms up itself and prints MARK start / MARK end around the window; the
 * meter follows those marks. Returns { r, cpu }.
 */
export async function bulkLoad({ target, sink, streams, warmup, duration, meter }) {
  const args = [
    join(BENCH, 'bulk-client.mjs'),
    '--target', `${target.host}:${target.port}`,
    '--control', `${sink.host}:${sink.control}`,
    '--streams', String(streams),
    '--warmup', String(warmup),
    '--duration', String(duration),
  ];
  const { j, cpu } = await markedClient('bulk-client', args, { meter, limitMs: (warmup + duration + 15) * 1000 });
  const r = { bytes: j.bytes, seconds: j.seconds, mbps: j.bytes / 1e6 / j.seconds, errors: j.errors + j.closed, errorDetail: j.errors + j.closed ? { errors: j.errors, closed: j.closed } : undefined };
  return { r, cpu };
}

// --- mTLS ----------------------------------------------------------------------

/**
 * mTLS HTTP load (bench/tls-client.mjs: wrk cannot present a client
 * certificate). The meter follows the client's MARK lines. Returns { r, cpu }.
 */
export async function tlsLoad({ target, pki, connections, warmup, duration, close, resume, meter }) {
  const args = [
    join(BENCH, 'tls-client.mjs'),
    '--target', `${target.host}:${target.port}`,
    '--ca', pki.ca, '--cert', pki.clientCert, '--key', pki.clientKey,
    '--connections', String(connections), '--warmup', String(warmup), '--duration', String(duration),
    ...(close ? ['--close'] : []), ...(resume ? ['--resume'] : []),
  ];
  const { j, cpu } = await markedClient('tls-client', args, { meter, limitMs: (warmup + duration + 20) * 1000 });
  return {
    r: { requests: j.requests, seconds: j.seconds, rps: j.requests / j.seconds, p50us: j.latency_us.p50, p99us: j.latency_us.p99, errors: j.errors, errorDetail: j.errors ? { errors: j.errors, resumed: j.resumed } : { resumed: j.resumed }, ...(close && resume && j.requests > 0 ? { resumedShare: j.resumed / j.requests } : {}) },
    cpu,
  };
}

// --- etcd ----------------------------------------------------------------------

/**
 * etcd3 clients doing put + serializable range (bench/etcd-client.mjs). The
 * direct target carries every member's URL (client i → member i % 3); a proxy
 * target is one URL for all. Returns { r, cpu } with r shaped like HTTP load
 * (requests = operations).
 */
export async function etcdLoad({ target, clients, warmup, duration, meter }) {
  const hosts = target.hosts ?? [`http://${target.host}:${target.port}`];
  const args = [join(BENCH, 'etcd-client.mjs'), '--hosts', hosts.join(','), '--clients', String(clients), '--warmup', String(warmup), '--duration', String(duration)];
  const { j, cpu } = await markedClient('etcd-client', args, { meter, limitMs: (warmup + duration + 20) * 1000 });
  return {
    r: { requests: j.requests, seconds: j.seconds, rps: j.requests / j.seconds, p50us: j.latency_us.p50, p99us: j.latency_us.p99, errors: j.errors, errorDetail: { errors: j.errors, puts: j.puts, ranges: j.ranges, misses: j.misses } },
    cpu,
  };
}

// New-connection client (used when wrk is not installed): C workers, each in a
// loop opens a TCP connection, sends one HTTP GET with "Connection: close",
// reads until the server closes, and records the time from connect() to the
// end of the response. Prints one JSON line at the end:
//   {"requests":…, "seconds":…, "errors":…, "latency_us":{"p50":…,"p99":…}}
//
// usage: node bench/connect-client.mjs --target 127.0.0.1:P --concurrency C --duration S

import { connect } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { target: { type: 'string' }, concurrency: { type: 'string', default: '16' }, duration: { type: 'string', default: '5' } },
});
const i = values.target.lastIndexOf(':');
const host = values.target.slice(0, i);
const port = Number(values.target.slice(i + 1));
const REQ = Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}:${port}\r\nConnection: close\r\n\r\n`);
const latencies = [];
let errors = 0;
let requests = 0;
const deadline = performance.now() + Number(values.duration) * 1000;

function once() {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let got = 0;
    let failed = false;
    const s = connect({ host, port, noDelay: true });
    s.on('connect', () => s.write(REQ));
    s.on('data', (d) => (got += d.length));
    s.on('error', () => (failed = true));
    s.on('close', () => {
      if (failed || got === 0) errors++;
      else {
        requests++;
        latencies.push(performance.now() - t0);
      }
      resolve();
    });
  });
}

async function worker() {
  while (performance.now() < deadline) await once();
}

const start = performance.now();
await Promise.all(Array.from({ length: Number(values.concurrency) }, worker));
const seconds = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] * 1000) : null);
process.stdout.write(`${JSON.stringify({ requests, seconds, errors, latency_us: { p50: pct(50), p99: pct(99) } })}\n`);

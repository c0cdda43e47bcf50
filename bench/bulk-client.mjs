// Bulk-throughput client: opens N connections to --target and writes 64 KiB
// chunks on each as fast as backpressure allows. After --warmup seconds it asks
// the sink's control port for its byte count, prints "MARK start", waits
// --duration seconds, asks again, prints "MARK end", and finally one JSON line:
//   {"bytes":…, "seconds":…, "streams":…, "errors":…, "closed":…}
// `bytes` is what the sink received inside the window, so data still sitting
// in socket buffers (client, proxy, sink) never counts.
//
// usage: node bench/bulk-client.mjs --target 127.0.0.1:P --control 127.0.0.1:Q
//          --streams N --warmup S --duration S [--chunk BYTES]

import { connect } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    target: { type: 'string' },
    control: { type: 'string' },
    streams: { type: 'string', default: '1' },
    warmup: { type: 'string', default: '1' },
    duration: { type: 'string', default: '5' },
    chunk: { type: 'string', default: String(64 * 1024) },
  },
});

const hostPort = (s) => {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
};
const target = hostPort(values.target);
const control = hostPort(values.control);
const chunk = Buffer.alloc(Number(values.chunk), 0x61);
let errors = 0;
let closed = 0;
let stopping = false;
const sockets = [];

function pump(sock) {
  // write() returns false once the 64 KiB is queued past the high-water mark;
  // 'drain' brings us back. One chunk in flight per socket per drain.
  while (!stopping && sock.write(chunk));
}

function openStream() {
  return new Promise((resolve) => {
    const sock = connect({ ...target, noDelay: true });
    sock.on('connect', () => {
      pump(sock);
      resolve();
    });
    sock.on('drain', () => pump(sock));
    sock.on('error', () => {
      errors++;
      resolve();
    });
    sock.on('close', () => {
      if (!stopping) closed++;
    });
    sockets.push(sock);
  });
}

function sinkBytes() {
  return new Promise((resolve, reject) => {
    const s = connect(control);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (d) => (buf += d));
    s.on('end', () => resolve(JSON.parse(buf).bytes));
    s.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const streams = Number(values.streams);
await Promise.all(Array.from({ length: streams }, openStream));
await sleep(Number(values.warmup) * 1000);
const b0 = await sinkBytes();
const t0 = performance.now();
process.stdout.write('MARK start\n');
await sleep(Number(values.duration) * 1000);
const b1 = await sinkBytes();
const t1 = performance.now();
process.stdout.write('MARK end\n');
stopping = true;
for (const s of sockets) s.destroy();
process.stdout.write(`${JSON.stringify({ bytes: b1 - b0, seconds: (t1 - t0) / 1000, streams, errors, closed })}\n`);
process.exit(0);

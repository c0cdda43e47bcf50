// mTLS load client (wrk has no client-certificate option): N connections
// sending a small HTTP/1.1 GET and reading the fixed response, either kept
// alive (requests/s over established TLS) or one request per connection
// (handshakes/s; with --resume the client offers its last TLS session, as
// real clients do). After --warmup seconds it prints MARK start, runs
// --duration seconds, prints MARK end and one JSON line:
//   {"requests":…, "seconds":…, "latency_us":{"p50":…,"p99":…}, "errors":…, "resumed":…}
//
// usage: node bench/tls-client.mjs --target H:P --ca F --cert F --key F
//          --connections N --warmup S --duration S [--close] [--resume]

import { readFileSync } from 'node:fs';
import { connect } from 'node:tls';
import { parseArgs } from 'node:util';
import { latencyQuantiles, measuredWindow } from './lib/window.mjs';

const { values } = parseArgs({
  options: {
    target: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
    connections: { type: 'string', default: '32' }, warmup: { type: 'string', default: '1' }, duration: { type: 'string', default: '4' },
    close: { type: 'boolean', default: false }, resume: { type: 'boolean', default: false },
  },
});
const i = values.target.lastIndexOf(':');
const host = values.target.slice(0, i);
const port = Number(values.target.slice(i + 1));
const tlsOpts = { host, port, ca: readFileSync(values.ca), cert: readFileSync(values.cert), key: readFileSync(values.key), servername: 'localhost', ALPNProtocols: ['http/1.1'] };
const REQ = Buffer.from(`GET / HTTP/1.1\r\nHost: bench\r\n${values.close ? 'Connection: close\r\n' : ''}\r\n`);
const END = '\r\n\r\n';

let measuring = false;
let stopping = false;
let requests = 0;
let errors = 0;
let resumed = 0;
const lat = [];
let session;

function oneRequest(sock) {
  return new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    let buf = '';
    const onData = (d) => {
      buf += d.toString('latin1');
      // Fixed 100-byte body after the headers.
      const h = buf.indexOf(END);
      if (h >= 0 && buf.length >= h + 4 + 100) {
        sock.off('data', onData);
        sock.off('error', reject);
        if (measuring) {
          requests++;
          if (lat.length < 200_000) lat.push(Number(process.hrtime.bigint() - t) / 1000);
        }
        resolve();
      }
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(REQ);
  });
}

function open() {
  return new Promise((resolve, reject) => {
    const s = connect({ ...tlsOpts, ...(values.resume && session ? { session } : {}) }, () => {
      if (measuring && s.isSessionReused()) resumed++;
      resolve(s);
    });
    s.once('session', (sess) => (session = sess));
    s.once('error', reject);
  });
}

async function keptAlive() {
  let s = await open();
  while (!stopping) {
    try {
      await oneRequest(s);
    } catch {
      if (measuring) errors++;
      s.destroy();
      s = await open().catch(() => null);
      if (!s) return;
    }
  }
  s.destroy();
}

async function perConnection() {
  while (!stopping) {
    try {
      const t = process.hrtime.bigint();
      const s = await open();
      await oneRequest(s);
      s.destroy();
      if (measuring) lat[lat.length - 1] = Number(process.hrtime.bigint() - t) / 1000; // the whole connection
    } catch {
      if (measuring) errors++;
    }
  }
}

const n = Number(values.connections);
const workers = Array.from({ length: n }, () => (values.close ? perConnection() : keptAlive()));
const seconds = await measuredWindow({ warmup: values.warmup, duration: values.duration, loops: workers, measuring: (on) => (measuring = on), stop: () => (stopping = true) });
console.log(JSON.stringify({ requests, seconds, latency_us: latencyQuantiles(lat), errors, resumed }));
process.exit(0);

// Tiny HTTP/1.1 backend for the benchmark: a raw `net` server that answers
// every request (a GET without a body, ended by CRLFCRLF) with a fixed 200
// response carrying a 100-byte body. No HTTP parser, no allocation per
// request beyond the socket's own: the backend should cost as little CPU as
// possible so the proxy is what gets measured.
//
// A request containing "Connection: close" gets a response with the same
// header, after which the server ends the connection (the new-connections
// scenario). Pipelined requests in one chunk get their responses in one write.
//
// usage: node bench/http-backend.mjs --port P [--host 127.0.0.1]

import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { parseArgs } from 'node:util';

// With --cert/--key/--ca it is an mTLS server (the proxy's origination must
// present a client certificate from --ca): the backend of the mTLS scenarios.
const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' }, cert: { type: 'string' }, key: { type: 'string' }, ca: { type: 'string' } } });
const BODY = 'ballast-bench:'.padEnd(99, '.') + '\n'; // 100 bytes
const head = (extra) => `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n${extra}\r\n`;
const KEEP = Buffer.from(head('') + BODY, 'latin1');
const CLOSE = Buffer.from(head('Connection: close\r\n') + BODY, 'latin1');
const CLOSE_RE = /connection:\s*close/i;

function onConnection(sock) {
  let carry = ''; // up to 3 trailing bytes of the previous chunk, for a split CRLFCRLF
  sock.setNoDelay(true);
  sock.on('error', () => {});
  sock.on('data', (chunk) => {
    const text = carry + chunk.toString('latin1');
    let n = 0;
    let i = 0;
    while ((i = text.indexOf('\r\n\r\n', i)) >= 0) {
      n++;
      i += 4;
    }
    carry = text.slice(-3);
    if (n === 0) return;
    if (CLOSE_RE.test(text)) {
      sock.end(CLOSE);
      return;
    }
    sock.write(n === 1 ? KEEP : Buffer.concat(Array(n).fill(KEEP)));
  });
}

const server = values.cert
  ? createTlsServer({ noDelay: true, cert: readFileSync(values.cert), key: readFileSync(values.key), ca: readFileSync(values.ca), requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'] }, onConnection)
  : createServer({ noDelay: true }, onConnection);
server.listen({ host: values.host, port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`listening ${values.host}:${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));

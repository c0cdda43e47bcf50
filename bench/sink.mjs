// Bulk-throughput sink: reads and discards everything sent to the data port,
// counting bytes. A connection to the control port gets the running total as
// one JSON line ({"bytes":N}) and is closed, so a client can measure the bytes
// that actually reached the sink over a window (not bytes sitting in socket
// buffers along the way).
//
// usage: node bench/sink.mjs --port P --control Q [--host 127.0.0.1]

import { createServer } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, control: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } },
});

let total = 0;

const data = createServer({ noDelay: true }, (sock) => {
  sock.on('error', () => {});
  sock.on('data', (chunk) => {
    total += chunk.length;
  });
  // Nothing is ever sent back; a FIN from the client is answered with ours.
  sock.on('end', () => sock.end());
});

const control = createServer((sock) => {
  sock.on('error', () => {});
  sock.end(`${JSON.stringify({ bytes: total })}\n`);
});

data.listen({ host: values.host, port: Number(values.port), backlog: 1024 }, () => {
  control.listen({ host: values.host, port: Number(values.control) }, () => {
    process.stdout.write(`listening ${values.host}:${values.port} control ${values.control}\n`);
  });
});
process.on('SIGTERM', () => process.exit(0));

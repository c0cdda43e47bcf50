// The backend of one node in the VIP lab: a TCP server that answers every
// connection with the node's name and closes. `node backend.mjs NAME HOST PORT`.
import net from 'node:net';

const [name, host, port] = process.argv.slice(2);
net
  .createServer((s) => {
    s.on('error', () => {});
    s.end(`${name}\n`);
  })
  .listen(Number(port), host, () => process.stdout.write('listening\n'));

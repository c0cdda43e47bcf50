// The client of the VIP lab, run inside the client namespace: every `every`
// ms it opens a new TCP connection to host:port and reads what comes back
// (the node's name, from the backend behind that node's ballast), with a
// deadline per attempt. One JSON line per attempt on stdout:
//   {"s": startedAt, "e": endedAt, "who": "n2"}  or  {"s":…, "e":…, "err": "timeout"}
// Times are CLOCK_MONOTONIC milliseconds (process.hrtime), the clock of the
// harness too (namespaces share it).
import net from 'node:net';

const [host, port, every = '100', deadline = '500'] = process.argv.slice(2);
const now = () => Number(process.hrtime.bigint()) / 1e6;

function attempt() {
  const s = now();
  let data = '';
  let done = false;
  const sock = net.connect({ host, port: Number(port) });
  const finish = (rec) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    sock.destroy();
    process.stdout.write(JSON.stringify({ s, e: now(), ...rec }) + '\n');
  };
  const timer = setTimeout(() => finish({ err: 'timeout' }), Number(deadline));
  sock.setEncoding('utf8');
  sock.on('data', (d) => (data += d));
  sock.on('end', () => finish(data.trim() ? { who: data.trim() } : { err: 'empty' }));
  sock.on('error', (e) => finish({ err: e.code ?? e.message }));
}

setInterval(attempt, Number(every));
attempt();

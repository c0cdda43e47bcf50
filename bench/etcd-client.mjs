// etcd load client: N etcd3 clients, each its own gRPC connection (as N
// kube-apiservers or controllers would hold), each looping a small put (a
// 128-byte value under its own prefix) followed by a serializable range of
// the key it just wrote. After --warmup seconds it prints MARK start, runs
// --duration seconds, prints MARK end and one JSON line:
//   {"requests":…, "seconds":…, "latency_us":{"p50":…,"p99":…}, "errors":…, "puts":…, "ranges":…, "misses":…}
// where requests counts operations (puts + ranges) and latency is per operation.
//
// usage: node bench/etcd-client.mjs --hosts URL[,URL…] --clients N --warmup S --duration S
//   client i talks to hosts[i % hosts.length] only (no client-side balancing).

import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { latencyQuantiles, measuredWindow } from './lib/window.mjs';

const { values } = parseArgs({
  options: {
    hosts: { type: 'string' },
    clients: { type: 'string', default: '16' },
    warmup: { type: 'string', default: '1' },
    duration: { type: 'string', default: '4' },
  },
});
const hosts = values.hosts.split(',');
const n = Number(values.clients);
const VALUE = 'v'.repeat(128);

let measuring = false;
let stopping = false;
let puts = 0;
let ranges = 0;
let errors = 0;
let misses = 0;
const lat = [];
const record = (t) => {
  if (measuring && lat.length < 500_000) lat.push(Number(process.hrtime.bigint() - t) / 1000);
};

async function loop(i) {
  // One host per client, dial timeout and per-call deadline so a stuck call is an error, not a hang.
  // grpc-js shares one connection among channels to the same address unless
  // told otherwise: each client gets its own, as separate processes would.
  const client = new Etcd3({
    hosts: hosts[i % hosts.length],
    dialTimeout: 2000,
    defaultCallOptions: () => ({ deadline: new Date(Date.now() + 5000) }),
    grpcOptions: { 'grpc.use_local_subchannel_pool': 1 },
  });
  let k = 0;
  while (!stopping) {
    const key = `bench/${process.pid}/${i}/${k++ % 1000}`;
    try {
      let t = process.hrtime.bigint();
      await client.put(key).value(VALUE);
      if (measuring) puts++;
      record(t);
      t = process.hrtime.bigint();
      const got = await client.get(key).options({ serializable: true }).string();
      // A serializable read on a follower may not have applied the put yet: counted, not an error.
      if (measuring) {
        ranges++;
        if (got !== VALUE) misses++;
      }
      record(t);
    } catch {
      if (measuring) errors++;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  client.close();
}

const loops = Array.from({ length: n }, (_, i) => loop(i));
const seconds = await measuredWindow({ warmup: values.warmup, duration: values.duration, loops, measuring: (on) => (measuring = on), stop: () => (stopping = true) });
const { p50, p99 } = latencyQuantiles(lat);
console.log(JSON.stringify({ requests: puts + ranges, seconds, latency_us: { p50: Math.round(p50), p99: Math.round(p99) }, errors, puts, ranges, misses }));
process.exit(0);

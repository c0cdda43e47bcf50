// The measured window the Node load clients share (tls-client, etcd-client):
// their loops run through an unmeasured warm-up, then MARK start / MARK end
// on stdout bracket the window (the harness's CPU meter follows them), then
// the loops are told to stop and given 3 s to finish.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs the window; `measuring(on)` flips the clients' counters, `stop()` ends their loops. Returns the window in seconds. */
export async function measuredWindow({ warmup, duration, loops, measuring, stop }) {
  await sleep(Number(warmup) * 1000);
  console.log('MARK start');
  measuring(true);
  const start = process.hrtime.bigint();
  await sleep(Number(duration) * 1000);
  measuring(false);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log('MARK end');
  stop();
  await Promise.race([Promise.allSettled(loops), sleep(3000)]);
  return seconds;
}

/** p50 and p99 of latency samples (µs); sorts them in place. */
export function latencyQuantiles(lat) {
  lat.sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0);
  return { p50: q(0.5), p99: q(0.99) };
}

// The measured client, one process per proxy (forked by run.mjs, talks over
// IPC): one GrpcChannel to the proxy, a Put every `paceMs` while writing is
// on, each with its own deadline. Keeps every outcome in a ring so the
// harness can ask "first write started at or after t0 that succeeded".
// Times are CLOCK_MONOTONIC milliseconds (process.hrtime), the same clock as
// the harness's.
import fs from 'node:fs';
import { GrpcChannel, nowMs } from './grpc.mjs';

const opts = JSON.parse(process.argv[2]);
const tls = { ca: fs.readFileSync(opts.ca), cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) };
const events = [];
const ch = new GrpcChannel({ url: `https://127.0.0.1:${opts.port}`, tls, backoffMs: opts.backoffMs, onEvent: (e) => pushRing(events, e, 500) });

const results = []; // { startedAt, endedAt, ok, code }
let writing = false;
let seq = 0;
let inFlight = 0;
let watchers = [];

function pushRing(arr, v, max) {
  arr.push(v);
  if (arr.length > max) arr.splice(0, arr.length - max);
}

async function oneWrite() {
  inFlight++;
  const r = await ch.put(`failover/${opts.name}/${seq++ % 1000}`, `v${seq}`, opts.deadlineMs);
  inFlight--;
  const rec = { startedAt: r.startedAt, endedAt: r.endedAt, ok: r.ok, code: r.code };
  pushRing(results, rec, 20_000);
  if (rec.ok) for (const w of watchers) if (rec.startedAt >= w.t0 && (w.first === undefined || rec.endedAt < w.first.endedAt)) w.first = rec;
  settleWatchers();
}

function settleWatchers() {
  const now = nowMs();
  watchers = watchers.filter((w) => {
    // Outcomes arrive in completion order, so the first success seen is the earliest.
    if (w.first !== undefined) {
      w.resolve(summary(w, w.first));
      return false;
    }
    if (now >= w.t0 + w.boundMs) {
      w.resolve(summary(w, undefined));
      return false;
    }
    return true;
  });
}

function summary(w, first) {
  const after = results.filter((r) => r.startedAt >= w.t0 && (first === undefined || r.startedAt <= first.startedAt));
  const failures = {};
  for (const r of after) if (!r.ok) failures[r.code] = (failures[r.code] ?? 0) + 1;
  return {
    t0: w.t0,
    firstOkAt: first?.endedAt,
    firstOkStartedAt: first?.startedAt,
    failoverMs: first === undefined ? undefined : first.endedAt - w.t0,
    failuresBeforeFirstOk: failures,
    // Every write started from t0 to the first success: [started, ended] ms after t0, and the outcome.
    writes: after.slice(0, 200).map((r) => [Math.round((r.startedAt - w.t0) * 10) / 10, Math.round((r.endedAt - w.t0) * 10) / 10, r.code]),
    events: events.filter((e) => e.at >= w.t0 - 50).map((e) => ({ ...e, at: Math.round((e.at - w.t0) * 10) / 10 })),
  };
}

// Writes are started on a fixed pace; a slow call never delays the next one.
let nextAt = nowMs();
function tick() {
  if (writing) {
    void oneWrite();
    nextAt += opts.paceMs;
    const now = nowMs();
    if (nextAt < now - opts.paceMs) nextAt = now; // do not burst after a stall
  } else nextAt = nowMs() + opts.paceMs;
  setTimeout(tick, Math.max(0, nextAt - nowMs()));
}
tick();
setInterval(settleWatchers, 5).unref();

const handlers = {
  async reconnect() {
    const ok = await ch.reconnect();
    return { ok, state: ch.state };
  },
  async status() {
    const r = await ch.status(opts.deadlineMs);
    return r.ok ? { ok: true, ...r.status } : { ok: false, code: r.code };
  },
  start() {
    writing = true;
    return {};
  },
  stop() {
    writing = false;
    return {};
  },
  /** Successes and failures among writes that ended in the last `ms`. */
  recent({ ms }) {
    const since = nowMs() - ms;
    let ok = 0;
    let failed = 0;
    const lat = [];
    for (let i = results.length - 1; i >= 0 && results[i].endedAt >= since; i--) {
      if (results[i].ok) {
        ok++;
        lat.push(results[i].endedAt - results[i].startedAt);
      } else failed++;
    }
    lat.sort((a, b) => a - b);
    return { ok, failed, inFlight, state: ch.state, latencyMs: lat.length ? lat[Math.floor(lat.length / 2)] : undefined, maxLatencyMs: lat.length ? lat[lat.length - 1] : undefined };
  },
  watch({ t0, boundMs }) {
    return new Promise((resolve) => {
      const w = { t0, boundMs, resolve, first: undefined };
      for (const r of results) if (r.ok && r.startedAt >= t0 && (w.first === undefined || r.endedAt < w.first.endedAt)) w.first = r;
      watchers.push(w);
      settleWatchers();
    });
  },
  /**
   * After the first success: writes started from `from` that failed before
   * `until` (a relapse: the proxy moved the client again, or closed it), and
   * the first success after the last such failure.
   */
  relapse({ from, until }) {
    let lastFail;
    const failures = {};
    for (const r of results) {
      if (r.startedAt < from || r.endedAt > until || r.ok) continue;
      failures[r.code] = (failures[r.code] ?? 0) + 1;
      if (lastFail === undefined || r.endedAt > lastFail.endedAt) lastFail = r;
    }
    if (lastFail === undefined) return { failures };
    let okAfter;
    for (const r of results) if (r.ok && r.startedAt >= lastFail.startedAt && (okAfter === undefined || r.endedAt < okAfter.endedAt)) okAfter = r;
    return { failures, lastFailEndedAt: lastFail.endedAt, okAfterAt: okAfter?.endedAt };
  },
  /** The channel as it is now: for a run that timed out or never got steady. */
  diag() {
    const ss = ch.session;
    let session = null;
    if (ss) {
      const st = ss.state ?? {};
      session = {
        closed: ss.closed,
        destroyed: ss.destroyed,
        localWindowSize: st.localWindowSize,
        effectiveLocalWindowSize: st.effectiveLocalWindowSize,
        remoteWindowSize: st.remoteWindowSize,
        outboundQueueSize: st.outboundQueueSize,
        streams: st.nextStreamID,
        socket: ss.socket ? { bytesRead: ss.socket.bytesRead, bytesWritten: ss.socket.bytesWritten, localPort: ss.socket.localPort } : null,
      };
    }
    return { state: ch.state, inFlight, connects: ch.connects, disconnects: ch.disconnects, session, lastEvents: events.slice(-8).map((e) => ({ ...e, agoMs: Math.round(nowMs() - e.at) })) };
  },
  exit() {
    ch.close();
    setTimeout(() => process.exit(0), 10);
    return {};
  },
};

process.on('message', async (m) => {
  let reply;
  try {
    reply = await handlers[m.cmd](m);
  } catch (e) {
    reply = { error: e.message };
  }
  process.send?.({ id: m.id, ...reply });
});
process.on('disconnect', () => process.exit(0));
ch.connect();

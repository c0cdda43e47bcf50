// A minimal gRPC client over ONE HTTP/2 connection, shaped like grpc-go's
// (kube-apiserver's etcd client) where it matters for failover:
//
//  - a call has a deadline; when it passes, the stream is cancelled
//    (RST_STREAM CANCEL) and the connection stays: a hung member is escaped
//    only when something closes the connection (the proxy, or TCP);
//  - the transport is READY when the server's SETTINGS frame arrived (grpc-go
//    waits for the server preface), not when TCP/TLS connected: through a TCP
//    proxy, TLS always succeeds, the backend may not;
//  - calls made while CONNECTING wait for READY (bounded by their deadline);
//    calls made in TRANSIENT_FAILURE (a connect attempt failed, backoff
//    running) fail at once (grpc-go's fail-fast default);
//  - a READY connection that closes is re-dialled at once (grpc-go resets its
//    backoff after a successful connection); a failed attempt waits
//    `backoffMs` (fixed; grpc-go starts at 1 s with jitter, this bench uses
//    100 ms so the number measures the proxy, not the client's backoff).
//
// Messages are encoded by hand: only etcd's KV/Put and Maintenance/Status
// are needed.
import http2 from 'node:http2';

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6; // CLOCK_MONOTONIC: comparable across processes

// --- protobuf ---------------------------------------------------------------------

function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
}

function lenField(tag, bytes) {
  return Buffer.concat([Buffer.from([tag]), varint(bytes.length), bytes]);
}

/** etcdserverpb.PutRequest { key = 1; value = 2 } */
export function putRequest(key, value) {
  return Buffer.concat([lenField(0x0a, Buffer.from(key)), lenField(0x12, Buffer.from(value))]);
}

/** gRPC length-prefixed message: 0 (uncompressed) + uint32 BE length + message. */
export function frame(msg) {
  const h = Buffer.alloc(5);
  h.writeUInt32BE(msg.length, 1);
  return Buffer.concat([h, msg]);
}

/** Decode one protobuf message into { field: [values] } (varints as BigInt, bytes as Buffer). */
export function decode(buf) {
  const out = {};
  let i = 0;
  const readVarint = () => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = readVarint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    let val;
    if (wire === 0) val = readVarint();
    else if (wire === 2) {
      const len = Number(readVarint());
      val = buf.subarray(i, i + len);
      i += len;
    } else if (wire === 1) {
      val = buf.readBigUInt64LE(i);
      i += 8;
    } else if (wire === 5) {
      val = BigInt(buf.readUInt32LE(i));
      i += 4;
    } else throw new Error(`wire type ${wire}`);
    (out[field] ??= []).push(val);
  }
  return out;
}

/** etcdserverpb.StatusResponse: header(1){member_id(2), revision(3)}, leader(4), raftIndex(5), raftTerm(6), raftAppliedIndex(7). Ids as hex strings. */
export function decodeStatus(msg) {
  const f = decode(msg);
  const h = f[1] ? decode(f[1][0]) : {};
  const hex = (v) => (v ?? 0n).toString(16);
  return {
    memberId: hex(h[2]?.[0]),
    revision: Number(h[3]?.[0] ?? 0n),
    leader: hex(f[4]?.[0]),
    raftIndex: Number(f[5]?.[0] ?? 0n),
    raftTerm: Number(f[6]?.[0] ?? 0n),
  };
}

// --- the channel ------------------------------------------------------------------

const { NGHTTP2_CANCEL } = http2.constants;

export class GrpcChannel {
  /** url: https://127.0.0.1:PORT; tls: { ca, cert, key } PEM buffers. */
  constructor({ url, tls, backoffMs = 100, connectTimeoutMs = 20_000, onEvent = () => {} }) {
    Object.assign(this, { url, tls, backoffMs, connectTimeoutMs, onEvent });
    this.session = undefined; // READY session
    this.connecting = undefined; // Promise<boolean> of the attempt in progress
    this.state = 'idle'; // idle | connecting | ready | transient_failure | closed
    this.retryTimer = undefined;
    this.closed = false;
    this.connects = 0;
    this.disconnects = 0;
  }

  /** Dial now (if not already READY or CONNECTING). */
  connect() {
    if (this.closed || this.state === 'ready' || this.state === 'connecting') return this.connecting ?? Promise.resolve(this.state === 'ready');
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.state = 'connecting';
    this.connecting = new Promise((resolve) => {
      let done = false;
      let ready = false;
      const s = http2.connect(this.url, { ca: this.tls.ca, cert: this.tls.cert, key: this.tls.key, ALPNProtocols: ['h2'], servername: 'localhost' });
      const timer = setTimeout(() => s.destroy(new Error('connect timeout')), this.connectTimeoutMs);
      const settle = (ok) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.connecting = undefined;
        resolve(ok);
      };
      s.on('error', () => {});
      s.once('remoteSettings', () => {
        if (this.closed || s.destroyed || s.closed) return;
        ready = true;
        this.session = s;
        this.state = 'ready';
        this.connects++;
        this.onEvent({ at: nowMs(), event: 'ready' });
        settle(true);
      });
      const lost = (why) => {
        if (this.session === s) {
          // A READY transport went away: re-dial at once (backoff was reset by the success).
          this.session = undefined;
          this.disconnects++;
          this.state = 'idle';
          this.onEvent({ at: nowMs(), event: 'lost', why });
          s.destroy();
          if (!this.closed) this.connect();
        } else if (!ready && !done) {
          this.state = 'transient_failure';
          this.onEvent({ at: nowMs(), event: 'connect_failed', why });
          s.destroy();
          settle(false);
          if (!this.closed) this.retryTimer = setTimeout(() => this.connect(), this.backoffMs);
        }
      };
      s.once('goaway', () => lost('goaway'));
      s.once('close', () => lost('close'));
    });
    return this.connecting;
  }

  /** Drop the connection and dial a fresh one (the next call lands where the proxy now routes). */
  async reconnect() {
    const s = this.session;
    this.session = undefined;
    this.state = 'idle';
    s?.destroy();
    return this.connect();
  }

  /**
   * One unary call. Resolves { ok, code, startedAt, endedAt, message? };
   * code is 'ok', 'deadline', 'unavailable' (no transport / transport lost),
   * 'grpc-N' (a gRPC status), 'http-N'.
   */
  async unary(path, body, deadlineMs) {
    const startedAt = nowMs();
    const deadline = startedAt + deadlineMs;
    const fail = (code) => ({ ok: false, code, startedAt, endedAt: nowMs() });
    if (this.closed) return fail('closed');
    if (this.state !== 'ready') {
      if (this.state === 'transient_failure') return fail('unavailable'); // fail fast
      const attempt = this.connect();
      let t;
      const ok = await Promise.race([attempt, new Promise((r) => (t = setTimeout(() => r('deadline'), Math.max(0, deadline - nowMs()))))]);
      clearTimeout(t);
      if (ok === 'deadline') return fail('deadline');
      if (!ok || this.state !== 'ready') return fail('unavailable');
    }
    const s = this.session;
    const left = Math.max(1, Math.round(deadline - nowMs()));
    return new Promise((resolve) => {
      let req;
      try {
        // grpc-go sends the deadline along (grpc-timeout), so the server gives up too.
        req = s.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': `${left}m` });
      } catch {
        resolve(fail('unavailable'));
        return;
      }
      let status = 0;
      let grpcStatus;
      let finished = false;
      const chunks = [];
      const finish = (r) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        resolve(r);
      };
      const timer = setTimeout(() => {
        // The deadline cancels this call only; the connection stays.
        req.close(NGHTTP2_CANCEL);
        finish(fail('deadline'));
      }, left);
      req.on('response', (h) => {
        status = Number(h[':status']);
        if (h['grpc-status'] !== undefined) grpcStatus = String(h['grpc-status']); // trailers-only
      });
      req.on('trailers', (t) => {
        if (t['grpc-status'] !== undefined) grpcStatus = String(t['grpc-status']);
      });
      req.on('data', (c) => chunks.push(c));
      req.on('error', () => {});
      req.on('close', () => {
        if (status !== 200) return finish(fail(status ? `http-${status}` : 'unavailable'));
        if (grpcStatus !== '0') return finish(fail(grpcStatus === undefined ? 'unavailable' : `grpc-${grpcStatus}`));
        const data = Buffer.concat(chunks);
        finish({ ok: true, code: 'ok', startedAt, endedAt: nowMs(), message: data.length >= 5 ? data.subarray(5, 5 + data.readUInt32BE(1)) : Buffer.alloc(0) });
      });
      req.end(body);
    });
  }

  put(key, value, deadlineMs = 1000) {
    return this.unary('/etcdserverpb.KV/Put', frame(putRequest(key, value)), deadlineMs);
  }

  async status(deadlineMs = 1000) {
    const r = await this.unary('/etcdserverpb.Maintenance/Status', frame(Buffer.alloc(0)), deadlineMs);
    return r.ok ? { ...r, status: decodeStatus(r.message) } : r;
  }

  close() {
    this.closed = true;
    this.state = 'closed';
    clearTimeout(this.retryTimer);
    this.session?.destroy();
    this.session = undefined;
  }
}

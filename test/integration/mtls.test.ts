import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { makePki, type Pki } from '../support/pki.js';
import { freePort } from '../support/ports.js';
import { closed, eventually } from '../support/servers.js';
import { makeTempDir, removeDir } from '../support/tmp.js';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

// ballast as etcd's only door: mTLS termination with identity authorization,
// mTLS origination to a TLS-only etcd (--client-cert-auth), and certificate
// rotation without a restart. Real certificates, real handshakes, real etcd.

let dir: string;
let pki: Pki;
let etcd: EtcdCluster;
let proxy: InProcess;
let port: number;

beforeAll(async () => {
  dir = await makeTempDir();
  pki = await makePki(dir);
  const f = pki.files;
  etcd = await EtcdCluster.start({
    size: 3,
    clientTls: { cert: f['etcd-server.crt']!, key: f['etcd-server.key']!, ca: f['ca.crt']!, clientCertAuth: true },
  });
  port = await freePort();
  proxy = await startInProcess(`
tls:
  guard:
    cert: ${f['ballast-server.crt']}
    key: ${f['ballast-server.key']}
    clientCA: ${f['ca.crt']}
    crl: ${f['crl.pem']}
    handshakeTimeout: 1s
    allow:
      - { cn: kube-apiserver-etcd-client, o: "system:*" }
      - { uri: "spiffe://cluster.local/ns/kube-system/sa/*" }
  to-etcd:
    cert: ${f['ballast-client.crt']}
    key: ${f['ballast-client.key']}
    ca: ${f['ca.crt']}
listeners:
  - { name: etcd, listen: 127.0.0.1:${port}, cluster: etcd, tls: guard }
clusters:
  - name: etcd
    endpoints: [${etcd.members.map((m) => m.clientUrl).join(', ')}]
    tls: to-etcd
    balance: affinity
    health: { check: etcd }
`);
  await eventually(() => proxy.ballast.clusters.get('etcd')!.endpoints.every((e) => e.state === 'up'), 'members up through the mTLS etcd check');
});

afterAll(async () => {
  await proxy?.stop();
  await etcd?.close();
  await removeDir(dir);
});

const total = () => proxy.ballast.clusters.get('etcd')!.endpoints.reduce((n, e) => n + e.total, 0);
const refusals = () => proxy.ballast.listeners.get('etcd')!.tlsFailures;

function tlsClient(opts: tls.ConnectionOptions): Promise<{ socket: tls.TLSSocket; error?: undefined } | { socket?: undefined; error: Error }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: pki.ca.cert, servername: 'localhost', ALPNProtocols: ['h2'], ...opts });
    s.once('secureConnect', () => resolve({ socket: s }));
    s.once('error', (error) => resolve({ error }));
  });
}

/** Handshake as `name`, then send bytes: resolves with whether the connection survived. */
async function attempt(name: string | undefined, extra: tls.ConnectionOptions = {}): Promise<'open' | 'refused'> {
  const r = await tlsClient({ ...(name ? { cert: pki.certs[name]!.cert, key: pki.certs[name]!.key } : {}), ...extra });
  if (r.error) return 'refused';
  const s = r.socket;
  s.on('error', () => undefined);
  // TLS 1.3 clients learn of a refusal only after the handshake: write and see.
  s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
  const how = await Promise.race([closed(s, 3000).then(() => 'refused' as const), new Promise<'open'>((res) => setTimeout(() => res('open'), 500))]);
  s.destroy();
  return how;
}

describe('termination: who gets in', () => {
  it('etcdctl with an allowed identity reaches a TLS-only etcd through ballast (terminate + originate)', async () => {
    const f = pki.files;
    const flags = [`--endpoints=https://127.0.0.1:${port}`, `--cacert=${f['ca.crt']}`, `--cert=${f['apiserver.crt']}`, `--key=${f['apiserver.key']}`, '--command-timeout=5s'];
    const ctl = (args: string[]) => execFileP('etcdctl', [...flags, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, timeout: 10_000 });
    await ctl(['put', 'mtls/ctl', 'through-ballast']);
    const { stdout } = await ctl(['get', 'mtls/ctl', '--print-value-only']);
    expect(stdout.trim()).toBe('through-ballast');
  });

  it('the etcd3 client (grpc-js) with an allowed SPIFFE identity reads and writes through ballast', async () => {
    const client = new Etcd3({
      hosts: `https://127.0.0.1:${port}`,
      credentials: { rootCertificate: Buffer.from(pki.ca.cert), certChain: Buffer.from(pki.certs.spiffe!.cert), privateKey: Buffer.from(pki.certs.spiffe!.key) },
    });
    try {
      await client.put('mtls/grpc').value('yes');
      expect(await client.get('mtls/grpc').string()).toBe('yes');
    } finally {
      client.close();
    }
  });

  it('selects h2 by ALPN for clients that require it (grpc-go 1.67+ refuses a server that does not)', async () => {
    const r = await tlsClient({ cert: pki.certs.apiserver!.cert, key: pki.certs.apiserver!.key, ALPNProtocols: ['h2'] });
    expect(r.error).toBeUndefined();
    expect(r.socket!.alpnProtocol).toBe('h2');
    r.socket!.destroy();
  });

  it.each<[string, string, string | undefined]>([
    ['no client certificate', 'no_client_cert', undefined],
    ['a certificate from a foreign CA (same CA name)', 'unknown_ca', 'foreign'],
    ['an expired certificate', 'cert_expired', 'expired'],
    ['a certificate not valid yet', 'cert_not_yet_valid', 'not-yet-valid'],
    ['a revoked certificate (CRL)', 'cert_revoked', 'revoked'],
    ['a valid certificate whose identity is not allowed', 'identity_not_allowed', 'intruder'],
  ])('refuses %s, counted as %s, before a byte reaches etcd', async (_what, reason, name) => {
    const before = total();
    const counted = refusals().get(reason) ?? 0;
    expect(await attempt(name)).toBe('refused');
    await eventually(() => (refusals().get(reason) ?? 0) === counted + 1, `refusal counted as ${reason}`);
    expect(total()).toBe(before);
  });

  it('logs a refused identity by name', () => {
    const line = proxy.lines.find((l) => l.msg.includes('refused TLS client (identity_not_allowed)'));
    expect(line?.identity).toBe('CN=intruder');
  });

  it('refuses TLS 1.1 clients (minVersion TLS 1.2)', async () => {
    const counted = refusals().get('protocol_version') ?? 0;
    const r = await tlsClient({ cert: pki.certs.apiserver!.cert, key: pki.certs.apiserver!.key, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' });
    expect(r.error).toBeDefined();
    await eventually(() => (refusals().get('protocol_version') ?? 0) === counted + 1, 'protocol_version counted');
  });

  it('refuses plain TCP bytes on the TLS port', async () => {
    const before = total();
    const counted = refusals().get('not_tls') ?? 0;
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.write('GET /health HTTP/1.1\r\nHost: etcd\r\n\r\n');
    await closed(s);
    await eventually(() => (refusals().get('not_tls') ?? 0) === counted + 1, 'not_tls counted');
    expect(total()).toBe(before);
  });

  it('closes a half-sent ClientHello that stalls (slowloris) at the handshake timeout', async () => {
    const counted = refusals().get('handshake_timeout') ?? 0;
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    // A TLS record header promising 512 bytes of ClientHello, and 4 of them.
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]));
    expect(['end', 'close', 'error']).toContain(await closed(s, 5000));
    // (> rather than === : a client that gives up mid-handshake elsewhere in this file also counts here)
    await eventually(() => (refusals().get('handshake_timeout') ?? 0) > counted, 'handshake_timeout counted');
  });

  it('completes a handshake whose ClientHello arrives one byte at a time', async () => {
    // A relay that forwards the client's first kilobyte byte by byte.
    const relay = net.createServer((c) => {
      const up = net.connect(port, '127.0.0.1');
      up.on('error', () => c.destroy());
      c.on('error', () => up.destroy());
      up.pipe(c);
      let sent = 0;
      const queue: number[] = [];
      let pumping = false;
      const pump = () => {
        if (queue.length === 0) {
          pumping = false;
          return;
        }
        up.write(Buffer.from([queue.shift()!]));
        sent++;
        setImmediate(pump);
      };
      c.on('data', (d: Buffer) => {
        if (sent > 1024 && queue.length === 0) {
          up.write(d);
          return;
        }
        for (const b of d) queue.push(b);
        if (!pumping) {
          pumping = true;
          pump();
        }
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    try {
      const rport = (relay.address() as net.AddressInfo).port;
      const r = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: rport, ca: pki.ca.cert, servername: 'localhost', cert: pki.certs.apiserver!.cert, key: pki.certs.apiserver!.key, ALPNProtocols: ['h2'] });
        s.once('secureConnect', () => resolve(s));
        s.once('error', reject);
      });
      expect(r.authorized).toBe(true);
      r.destroy();
    } finally {
      relay.close();
    }
  });

  it('exposes each refusal reason in /metrics', async () => {
    const text = await proxy.ballast.metrics.registry.metrics();
    for (const reason of ['no_client_cert', 'unknown_ca', 'cert_expired', 'cert_not_yet_valid', 'cert_revoked', 'identity_not_allowed', 'not_tls', 'handshake_timeout', 'protocol_version']) {
      expect(text).toMatch(new RegExp(`ballast_tls_handshake_failures_total\\{listener="etcd",reason="${reason}"\\} [1-9]`));
    }
    expect(text).toMatch(/ballast_tls_certificate_expiry_seconds\{profile="guard"\} \d{5,}/);
  });
});

describe('origination', () => {
  it('offers h2 by ALPN to the upstream and verifies it by name per endpoint (kubernetes/kubernetes#83028)', async () => {
    // An upstream that records what the client offered.
    const seen: (string | false)[] = [];
    const upstream = tls.createServer({ cert: pki.certs['etcd-server']!.cert, key: pki.certs['etcd-server']!.key, ALPNProtocols: ['h2', 'http/1.1'] }, (s) => {
      seen.push(s.alpnProtocol ?? false);
      s.end('hello');
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const up = (upstream.address() as net.AddressInfo).port;
    const lport = await freePort();
    const p = await startInProcess(`
tls:
  out: { ca: ${pki.files['ca.crt']}, cert: ${pki.files['ballast-client.crt']}, key: ${pki.files['ballast-client.key']} }
listeners:
  - { name: plain, listen: 127.0.0.1:${lport}, cluster: up }
clusters:
  - name: up
    endpoints: [{ address: "127.0.0.1:${up}", servername: wrong.example }, { address: "127.0.0.1:${up}", servername: localhost, weight: 100 }]
    tls: out
    health: { check: none }
`).catch((e: Error) => e);
    // Two endpoints with the same address are refused by config validation;
    // use one endpoint with the wrong name, then one with the right name.
    expect(p).toBeInstanceOf(Error);
    const attemptWith = async (servername: string) => {
      const q = await startInProcess(`
tls:
  out: { ca: ${pki.files['ca.crt']}, cert: ${pki.files['ballast-client.crt']}, key: ${pki.files['ballast-client.key']} }
listeners:
  - { name: plain, listen: 127.0.0.1:${lport}, cluster: up }
clusters:
  - name: up
    endpoints: [{ address: "127.0.0.1:${up}", servername: ${servername} }]
    tls: out
    health: { check: none }
`);
      try {
        const s = net.connect(lport, '127.0.0.1');
        let got = '';
        s.on('data', (d) => (got += d.toString()));
        s.on('error', () => undefined);
        await closed(s);
        return { got, failures: q.ballast.clusters.get('up')!.endpoints[0]!.outcomes.get('tls_error') ?? 0 };
      } finally {
        await q.stop();
      }
    };
    const wrong = await attemptWith('wrong.example');
    expect(wrong.got).toBe('');
    expect(wrong.failures).toBeGreaterThanOrEqual(1);
    const right = await attemptWith('localhost');
    expect(right.got).toBe('hello');
    expect(seen).toEqual(['h2']);
    upstream.close();
  });

  it('passes TLS through untouched when the listener does not terminate (the apiserver default)', async () => {
    const upstream = tls.createServer({ cert: pki.certs['etcd-server']!.cert, key: pki.certs['etcd-server']!.key }, (s) => s.end('from upstream'));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const lport = await freePort();
    const q = await startInProcess(`
listeners:
  - { name: pass, listen: 127.0.0.1:${lport}, cluster: up }
clusters:
  - { name: up, endpoints: [127.0.0.1:${(upstream.address() as net.AddressInfo).port}], health: { check: none } }
`);
    try {
      const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const c = tls.connect({ host: '127.0.0.1', port: lport, ca: pki.ca.cert, servername: 'localhost' });
        c.once('secureConnect', () => resolve(c));
        c.once('error', reject);
      });
      // The certificate the client verified is the upstream's, not ballast's.
      expect(s.getPeerCertificate().subject.CN).toBe('etcd');
      let got = '';
      s.on('data', (d) => (got += d.toString()));
      await closed(s);
      expect(got).toBe('from upstream');
    } finally {
      await q.stop();
      upstream.close();
    }
  });
});

describe('rotation without restart', () => {
  it('new handshakes get the new certificate; an open connection lives on; a broken replacement is refused and the old one keeps serving', async () => {
    // A listener of its own, with its cert files in their own directory.
    const rdir = await makeTempDir();
    try {
      const certFile = path.join(rdir, 'server.crt');
      const keyFile = path.join(rdir, 'server.key');
      const first = await pki.issue('rot-1', { cn: 'ballast-rot-1', ips: ['127.0.0.1'], usage: ['server'] });
      writeFileSync(certFile, first.cert);
      writeFileSync(keyFile, first.key);
      const echoSrv = net.createServer((c) => c.pipe(c));
      await new Promise<void>((r) => echoSrv.listen(0, '127.0.0.1', r));
      const lport = await freePort();
      const q = await startInProcess(`
tls:
  rot: { cert: ${certFile}, key: ${keyFile}, clientCA: ${pki.files['ca.crt']} }
listeners:
  - { name: rot, listen: 127.0.0.1:${lport}, cluster: echo, tls: rot }
clusters:
  - { name: echo, endpoints: [127.0.0.1:${(echoSrv.address() as net.AddressInfo).port}], health: { check: none } }
`);
      const connectAs = () =>
        new Promise<tls.TLSSocket>((resolve, reject) => {
          const c = tls.connect({ host: '127.0.0.1', port: lport, ca: pki.ca.cert, cert: pki.certs.apiserver!.cert, key: pki.certs.apiserver!.key, checkServerIdentity: () => undefined });
          c.once('secureConnect', () => resolve(c));
          c.once('error', reject);
        });
      const cnOf = (s: tls.TLSSocket) => new X509Certificate(s.getPeerCertificate().raw).subject.split('\n').find((x) => x.startsWith('CN='));
      try {
        const open = await connectAs();
        expect(cnOf(open)).toBe('CN=ballast-rot-1');
        const profile = q.ballast.tls.get('rot')!;

        // Rotate: new key and cert, written the way kubeadm renews (in place).
        const second = await pki.issue('rot-2', { cn: 'ballast-rot-2', ips: ['127.0.0.1'], usage: ['server'] });
        writeFileSync(`${keyFile}.tmp`, second.key);
        writeFileSync(`${certFile}.tmp`, second.cert);
        renameSync(`${keyFile}.tmp`, keyFile);
        renameSync(`${certFile}.tmp`, certFile);
        await eventually(() => profile.version === 2, 'new material loaded from the file watch');
        const next = await connectAs();
        expect(cnOf(next)).toBe('CN=ballast-rot-2');
        next.destroy();
        // The connection opened before the rotation still carries bytes.
        open.write('still here');
        const echoed = await new Promise<string>((r) => open.once('data', (d) => r(d.toString())));
        expect(echoed).toBe('still here');

        // A broken replacement: a certificate that does not match the key.
        const third = await pki.issue('rot-3', { cn: 'ballast-rot-3', ips: ['127.0.0.1'], usage: ['server'] });
        writeFileSync(certFile, third.cert);
        await eventually(() => profile.reloadsFailed >= 1, 'broken material refused');
        expect(profile.lastError).toContain('does not match the certificate');
        expect(q.lines.some((l) => l.msg.includes('tls.rot: refused new material, still serving the old'))).toBe(true);
        const after = await connectAs();
        expect(cnOf(after)).toBe('CN=ballast-rot-2');
        after.destroy();
        // An unparsable file is refused the same way.
        writeFileSync(certFile, 'not a certificate');
        await eventually(() => profile.reloadsFailed >= 2, 'unparsable material refused');
        expect(profile.lastError).toContain('holds no PEM certificate');
        // SIGHUP-style reload with the good files back restores rotation.
        writeFileSync(certFile, second.cert);
        expect(profile.reload('SIGHUP')).toBe(true);
        open.destroy();
      } finally {
        await q.stop();
        echoSrv.close();
      }
    } finally {
      await removeDir(rdir);
    }
  });

  it('refuses an expired replacement certificate', async () => {
    const rdir = await makeTempDir();
    try {
      const certFile = path.join(rdir, 'c.crt');
      const keyFile = path.join(rdir, 'c.key');
      const good = await pki.issue('exp-1', { cn: 'ok', ips: ['127.0.0.1'], usage: ['server'] });
      writeFileSync(certFile, good.cert);
      writeFileSync(keyFile, good.key);
      const q = await startInProcess(`
tls:
  p: { cert: ${certFile}, key: ${keyFile}, clientCA: ${pki.files['ca.crt']} }
listeners:
  - { name: l, listen: 127.0.0.1:${await freePort()}, cluster: c, tls: p }
clusters:
  - { name: c, endpoints: [127.0.0.1:1], health: { check: none } }
`);
      try {
        const old = await pki.issue('exp-2', { cn: 'old', ips: ['127.0.0.1'], usage: ['server'], notBefore: new Date(Date.now() - 5 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
        writeFileSync(keyFile, old.key);
        writeFileSync(certFile, old.cert);
        const profile = q.ballast.tls.get('p')!;
        await eventually(() => profile.reloadsFailed >= 1, 'expired material refused');
        expect(profile.lastError).toMatch(/expired on/);
        expect(profile.version).toBe(1);
      } finally {
        await q.stop();
      }
    } finally {
      await removeDir(rdir);
    }
  });
});

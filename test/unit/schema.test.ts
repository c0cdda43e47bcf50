import { describe as group, expect, it } from 'vitest';
import { backupSchema, clusterSchema, configSchema, describe, listenerSchema, tlsProfileSchema } from '../../src/config/schema.js';

// The schema's defaults and messages pinned at the zod level: a default
// that changes silently changes every deployment that left the key out.
// (Raised from surviving mutants of `npm run mutation`; config.test.ts checks
// the loader's messages with their key paths.)

const minimal = { listeners: [{ name: 'l', listen: '127.0.0.1:2379', cluster: 'c' }], clusters: [{ name: 'c', endpoints: ['10.0.0.1:2379'] }] };

function message(schema: { safeParse(v: unknown): { success: boolean; error?: { issues: { message: string }[] } } }, v: unknown): string | undefined {
  const r = schema.safeParse(v);
  return r.success ? undefined : r.error!.issues[0]!.message;
}

group('defaults', () => {
  it('of a minimal config', () => {
    const c = configSchema.parse(minimal);
    expect(c.admin).toEqual({ enabled: true, maxConnections: 64, idleTimeout: 10_000, allowedHosts: [] });
    expect(c.log).toEqual({ level: 'info' });
    expect([c.drainTimeout, c.workers, c.workerSockets, c.handover]).toEqual([30_000, 1, 'auto', true]);
    expect(c.tls).toEqual({});
    expect(c.backup).toBeUndefined();
    const { listen, ...listener } = c.listeners[0]!;
    expect(listen).toMatchObject({ kind: 'inet', port: 2379 });
    expect(listener).toEqual({ name: 'l', cluster: 'c', maxConnections: 10_000, idleTimeout: 3_600_000, socketMode: '0600', accessLog: false, backlog: 511 });
    const { endpoints, ...cluster } = c.clusters[0]!;
    expect(endpoints).toMatchObject([{ weight: 100 }]);
    expect(cluster).toEqual({
      name: 'c',
      discovery: 'static',
      syncInterval: 30_000,
      discoveryHosts: [],
      discoveryMaxMembers: 9,
      balance: 'round-robin',
      connectTimeout: 1000,
      connectAttempts: 3,
      health: { check: 'tcp' },
      outlier: { consecutiveFailures: 2, baseEjection: 1000, maxEjection: 30_000 },
      slowStart: 0,
      panic: 'open',
      keepalive: { idle: 10_000 },
    });
  });

  it('of a TLS profile, an affinity section and a backup', () => {
    expect(tlsProfileSchema.parse({})).toEqual({ allow: [], requireClientCert: true, minVersion: 'TLSv1.2', handshakeTimeout: 5000, alpn: ['h2', 'http/1.1'] });
    const affinity = clusterSchema.parse({ name: 'c', balance: 'affinity', affinity: {} }).affinity;
    expect(affinity).toEqual({ key: 'client-identity', stickiness: 'sticky', ttl: 600_000 });
    expect(backupSchema.parse({ cluster: 'etcd', dir: '/b' })).toEqual({ cluster: 'etcd', dir: '/b', interval: 3_600_000, keep: 24, from: 'follower', timeout: 300_000, drillInterval: 0 });
  });
});

group('messages', () => {
  it('describe() names what was given', () => {
    expect([describe(undefined), describe(null), describe('x'), describe([1]), describe({}), describe(5), describe(true)]).toEqual(['nothing', 'null', '"x"', 'a list', 'a map', 'number 5', 'boolean true']);
  });

  it('durations: the expected form, and the minimum', () => {
    expect(message(tlsProfileSchema, { handshakeTimeout: 5 })).toBe('expected a duration like "500ms" or "2s", got number 5');
    expect(message(tlsProfileSchema, { handshakeTimeout: 'soon' })).toBe('expected a duration like "500ms" or "2s", got "soon"');
    expect(message(tlsProfileSchema, { handshakeTimeout: '0s' })).toBe('must be at least 1ms, got "0s"');
    expect(message(tlsProfileSchema, { handshakeTimeout: '1ms' })).toBeUndefined();
    expect(message(backupSchema, { cluster: 'c', dir: '/b', interval: '999ms' })).toBe('must be at least 1000ms, got "999ms"');
    expect(message(backupSchema, { cluster: 'c', dir: '/b', interval: '1s' })).toBeUndefined();
  });

  it('whole numbers: type, integrality, bounds (inclusive)', () => {
    const c = (connectAttempts: unknown) => message(clusterSchema, { name: 'c', connectAttempts });
    expect(c('3')).toBe('expected a whole number, got "3"');
    expect(c(1.5)).toBe('expected a whole number');
    expect(c(0)).toBe('must be at least 1');
    expect(c(17)).toBe('must be at most 16');
    expect([c(1), c(16)]).toEqual([undefined, undefined]);
  });

  it('names: 1-63 letters, digits, "-", "_", ".", not starting with punctuation', () => {
    const n = (name: unknown) => message(listenerSchema, { name, listen: '127.0.0.1:1', cluster: 'c' });
    expect(n(7)).toBe('expected a name, got number 7');
    expect(n('-x')).toBe('names are 1-63 characters of letters, digits, "-", "_", "." (they become metric labels)');
    expect(n('a b')).toMatch(/^names are/);
    expect(n('a'.repeat(64))).toMatch(/^names are/);
    expect([n('a'.repeat(63)), n('etcd_main.v3-x'), n('9')]).toEqual([undefined, undefined, undefined]);
  });

  it('addresses: a listener takes no scheme or hostname; an endpoint may', () => {
    expect(message(listenerSchema, { name: 'l', listen: 5, cluster: 'c' })).toBe('expected an address like "127.0.0.1:2379" or "unix:/path", got number 5');
    expect(message(listenerSchema, { name: 'l', listen: 'etcd.local:2379', cluster: 'c' })).toBeDefined();
    expect(message(listenerSchema, { name: 'l', listen: 'https://127.0.0.1:2379', cluster: 'c' })).toBeDefined();
    expect(message(clusterSchema, { name: 'c', endpoints: ['https://etcd.local:2379'] })).toBeUndefined();
  });

  it('an allow rule needs at least one field; any one is enough', () => {
    const rule = (r: unknown) => message(tlsProfileSchema, { allow: [r] });
    expect(rule({})).toBe('an allow rule needs at least one of cn, o, dns, uri');
    for (const r of [{ cn: 'a' }, { o: 'a' }, { dns: 'a' }, { uri: 'a' }]) expect(rule(r), JSON.stringify(r)).toBeUndefined();
    expect(rule({ cn: 'a', ou: 'b' })).toBeDefined(); // strict: unknown keys are typos
  });

  it('enums say what they accept', () => {
    expect(message(tlsProfileSchema, { minVersion: 'TLSv1.1' })).toBe('expected TLSv1.2 or TLSv1.3, got "TLSv1.1"');
    expect(message(clusterSchema, { name: 'c', panic: 'maybe' })).toBe('expected open or refuse, got "maybe"');
    expect(message(clusterSchema, { name: 'c', onDown: 'drop' })).toBe('expected close or keep, got "drop"');
    expect(message(clusterSchema, { name: 'c', discovery: 'dns' })).toBe('expected static or etcd-members, got "dns"');
    expect(message(clusterSchema, { name: 'c', health: { check: 'ping' } })).toBe('expected one of none, tcp, http, https, etcd, got "ping"');
    expect(message(clusterSchema, { name: 'c', affinity: { stickiness: 'glue' } })).toBe('expected sticky or rehash, got "glue"');
    expect(message(clusterSchema, { name: 'c', affinity: { key: 'ip' } })).toBe('expected client-identity, source-ip, cn or san, got "ip"');
    expect(message(backupSchema, { cluster: 'c', dir: '/b', from: 'anyone' })).toBe('expected follower, leader or any, got "anyone"');
    expect(message(configSchema, { ...minimal, log: { level: 'loud' } })).toBe('expected a log level (debug, info, warn, error), got "loud"');
    expect(message(configSchema, { ...minimal, workerSockets: 'many' })).toBe('expected auto, reuseport or shared, got "many"');
  });

  it('a config needs a listener and a cluster', () => {
    expect(message(configSchema, { ...minimal, listeners: [] })).toBe('at least one listener is needed');
    expect(message(configSchema, { ...minimal, clusters: [] })).toBe('at least one cluster is needed');
  });

  it('health details: a path starts with "/", statuses are codes or classes, jitter at most 0.5', () => {
    const h = (health: unknown) => message(clusterSchema, { name: 'c', health: { check: 'http', ...(health as object) } });
    expect(h({ path: 'readyz' })).toBe('expected a path starting with "/"');
    expect(h({ expectStatus: ['2xx', 200] })).toBeUndefined();
    expect(h({ expectStatus: ['6xx'] })).toBeDefined();
    expect(h({ jitter: 0.5 })).toBeUndefined();
    expect(h({ jitter: 0.51 })).toBeDefined();
    expect(message(listenerSchema, { name: 'l', listen: 'unix:/run/b.sock', cluster: 'c', socketMode: '0666' })).toBeUndefined();
    expect(message(listenerSchema, { name: 'l', listen: 'unix:/run/b.sock', cluster: 'c', socketMode: 'rw' })).toBe('expected an octal mode like "0600"');
    expect(message(configSchema, { ...minimal, admin: { allowedHosts: ['ballast.example:80'] } })).toBe('expected a host name without port, like "ballast.example.internal"');
  });

  it('accepts every listed value of an enum', () => {
    for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']) expect(message(configSchema, { ...minimal, log: { level } }), level).toBeUndefined();
    for (const key of ['client-identity', 'source-ip', 'cn', 'san']) expect(message(clusterSchema, { name: 'c', affinity: { key } }), key).toBeUndefined();
    for (const stickiness of ['sticky', 'rehash']) expect(message(clusterSchema, { name: 'c', affinity: { stickiness } })).toBeUndefined();
    for (const from of ['follower', 'leader', 'any']) expect(message(backupSchema, { cluster: 'c', dir: '/b', from })).toBeUndefined();
    for (const workerSockets of ['auto', 'reuseport', 'shared']) expect(message(configSchema, { ...minimal, workerSockets })).toBeUndefined();
    for (const v of ['TLSv1.2', 'TLSv1.3']) expect(message(tlsProfileSchema, { minVersion: v })).toBeUndefined();
  });

  it('patterns are anchored at both ends', () => {
    const mode = (socketMode: string) => message(listenerSchema, { name: 'l', listen: 'unix:/run/b.sock', cluster: 'c', socketMode });
    expect([mode('600'), mode('0600'), mode('0660')]).toEqual([undefined, undefined, undefined]);
    for (const bad of ['x600', '0600x', '06000', '0800']) expect(mode(bad), bad).toBeDefined();
    const status = (s: string) => message(clusterSchema, { name: 'c', health: { check: 'http', expectStatus: [s] } });
    expect(status('5xx')).toBeUndefined();
    for (const bad of ['x2xx', '2xxx', '0xx', '2XX']) expect(status(bad), bad).toBeDefined();
    const host = (h: string) => message(configSchema, { ...minimal, admin: { allowedHosts: [h] } });
    for (const ok of ['a', 'ab', 'a-b', 'ballast.example.internal', 'b.example.', 'x1.y-2.z3']) expect(host(ok), ok).toBeUndefined();
    for (const bad of ['-a', 'a-', 'a..b', '.a', 'a.-b', 'a.b-', 'a_b', 'ballast.example:80 ', 'a.b..']) expect(host(bad), bad).toBeDefined();
  });

  it('file paths and ALPN names must not be empty; any length above that is fine', () => {
    expect(message(tlsProfileSchema, { crl: '/etc/ballast/crl.pem', cert: '/c.pem', key: '/k.pem', ca: '/ca.pem', clientCA: '/cca.pem' })).toBeUndefined();
    for (const k of ['crl', 'cert', 'key', 'ca', 'clientCA']) expect(message(tlsProfileSchema, { [k]: '' }), k).toBeDefined();
    expect(message(tlsProfileSchema, { alpn: ['h2', 'http/1.1'] })).toBeUndefined();
    expect(message(tlsProfileSchema, { alpn: [''] })).toBeDefined();
  });
});

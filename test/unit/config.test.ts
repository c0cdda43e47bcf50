import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/config/address.js';
import { formatDuration, parseDuration } from '../../src/config/duration.js';
import { parseConfig } from '../../src/config/load.js';
import { problems } from '../support/config-problems.js';

const base = `
listeners:
  - { name: etcd, listen: 127.0.0.1:2379, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [10.0.0.1:2379, 10.0.0.2:2379]
`;


describe('durations', () => {
  it.each([
    ['500ms', 500],
    ['2s', 2000],
    ['1.5s', 1500],
    ['1m30s', 90_000],
    ['1h', 3_600_000],
    ['0s', 0],
  ])('parses %s', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['5', 'fast', '2 s', '-1s', '1d', 's', ''])('refuses %j', (text) => expect(parseDuration(text)).toBeUndefined());

  it('formats back to the shortest spelling', () => {
    expect(formatDuration(90_000)).toBe('90s');
    expect(formatDuration(120_000)).toBe('2m');
    expect(formatDuration(250)).toBe('250ms');
  });
});

describe('addresses', () => {
  it('reads IPv4, bracketed IPv6, all-interfaces and unix sockets', () => {
    expect(parseAddress('127.0.0.1:2379', { allowScheme: false, allowHostname: false })).toMatchObject({ ok: true, address: { kind: 'inet', host: '127.0.0.1', port: 2379, family: 4 } });
    expect(parseAddress('[::1]:7445', { allowScheme: false, allowHostname: false })).toMatchObject({ ok: true, address: { host: '::1', port: 7445, family: 6 } });
    expect(parseAddress(':7445', { allowScheme: false, allowHostname: false })).toMatchObject({ ok: true, address: { host: '', port: 7445, family: 0 } });
    expect(parseAddress('unix:/run/ballast.sock', { allowScheme: false, allowHostname: false })).toMatchObject({ ok: true, address: { kind: 'unix', path: '/run/ballast.sock' } });
  });

  it('reads endpoint URLs as etcd prints them', () => {
    expect(parseAddress('https://etcd-0.example:2379', { allowScheme: true, allowHostname: true })).toMatchObject({ ok: true, address: { host: 'etcd-0.example', port: 2379, scheme: 'https' } });
  });

  it.each([
    ['::1:2379', 'IPv6 addresses need brackets'],
    ['127.0.0.1', 'no port'],
    ['127.0.0.1:0', 'port must be 1-65535'],
    ['127.0.0.1:70000', 'port must be 1-65535'],
    ['unix:relative.sock', 'absolute path'],
    ['[1.2.3.4]:80', 'is not an IPv6 address'],
  ])('refuses %j (%s)', (text, message) => {
    const r = parseAddress(text, { allowScheme: false, allowHostname: true });
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.error).toContain(message);
  });

  it('refuses a host name where ballast must listen', () => {
    const r = parseAddress('localhost:2379', { allowScheme: false, allowHostname: false });
    expect(r.ok ? '' : r.error).toContain('expected an IP address to listen on');
  });
});

describe('config', () => {
  it('accepts the design document example and fills defaults', () => {
    const c = parseConfig(`
admin: { listen: 127.0.0.1:9901 }
tls:
  etcd-client:
    cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
    key:  /etc/kubernetes/pki/apiserver-etcd-client.key
    ca:   /etc/kubernetes/pki/etcd/ca.crt
  etcd-guard:
    cert: /etc/kubernetes/pki/etcd/server.crt
    key:  /etc/kubernetes/pki/etcd/server.key
    clientCA: /etc/kubernetes/pki/etcd/ca.crt
    allow: [{ cn: kube-apiserver-etcd-client }]
listeners:
  - { name: etcd, listen: 127.0.0.1:2379, cluster: etcd }
  - { name: etcd-guard, listen: 127.0.0.1:12379, cluster: etcd, tls: etcd-guard }
  - { name: apiserver, listen: 127.0.0.1:7445, cluster: apiserver }
clusters:
  - name: etcd
    endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379, https://10.0.0.3:2379]
    discovery: etcd-members
    tls: etcd-client
    balance: affinity
    health: { check: etcd, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
  - name: apiserver
    endpoints: [10.0.0.1:6443, 10.0.0.2:6443, 10.0.0.3:6443]
    balance: least-connections
    health: { check: https, path: /readyz, interval: 2s }
`);
    expect(c.listeners.map((l) => l.name)).toEqual(['etcd', 'etcd-guard', 'apiserver']);
    const etcd = c.clusters[0]!;
    expect(etcd.health).toMatchObject({ check: 'etcd', interval: 1000, timeout: 500, rise: 2, fall: 2, maxRaftLag: 1000, tls: 'etcd-client' });
    expect(etcd.onDown).toBe('close');
    expect(etcd.endpoints.map((e) => e.id)).toEqual(['10.0.0.1:2379', '10.0.0.2:2379', '10.0.0.3:2379']);
    expect(etcd.connectTimeout).toBe(1000);
    const api = c.clusters[1]!;
    expect(api.onDown).toBe('keep');
    expect(api.health).toMatchObject({ path: '/readyz', interval: 2000, timeout: 1000, expectStatus: ['2xx'] });
    expect(c.listeners[0]!.idleTimeout).toBe(3_600_000);
    expect(c.listeners[0]!.socketMode).toBe(0o600);
    expect(c.tls.get('etcd-guard')!.allow).toEqual([{ cn: 'kube-apiserver-etcd-client' }]);
    expect(c.drainTimeout).toBe(30_000);
    expect(c.admin.listen).toMatchObject({ host: '127.0.0.1', port: 9901 });
  });

  it('accepts endpoints as maps with their own server name', () => {
    const c = parseConfig(base.replace('[10.0.0.1:2379, 10.0.0.2:2379]', '[{ address: "https://10.0.0.1:2379", servername: etcd-0 }, 10.0.0.2:2379]'));
    expect(c.clusters[0]!.endpoints[0]).toMatchObject({ id: '10.0.0.1:2379', servername: 'etcd-0' });
  });

  // Each malformed config names the key path and what is wrong.
  it.each<[string, string, string]>([
    ['a dangling cluster reference', base.replace('cluster: etcd }', 'cluster: etc }'), 'listeners[0].cluster: no cluster named "etc" (have: etcd)'],
    ['a bad duration', base.replace('endpoints:', 'connectTimeout: fast\n    endpoints:'), 'clusters[0].connectTimeout: expected a duration like "500ms" or "2s", got "fast"'],
    ['a number for a duration', base.replace('endpoints:', 'connectTimeout: 5\n    endpoints:'), 'clusters[0].connectTimeout: expected a duration like "500ms" or "2s", got number 5'],
    ['an unknown key, with a suggestion', base.replace('endpoints:', 'helth: { check: tcp }\n    endpoints:'), 'clusters[0]: unknown key "helth" (did you mean "health"?)'],
    ['an unknown top-level key', `listener: []\n${base}`, '(top level): unknown key "listener" (did you mean "listeners"?)'],
    ['a duplicate cluster name', `${base}  - name: etcd\n    endpoints: [10.0.0.9:2379]\n`, 'clusters: the name "etcd" is used twice'],
    ['a duplicate listener name', base.replace('clusters:', '  - { name: etcd, listen: 127.0.0.1:2380, cluster: etcd }\nclusters:'), 'listeners: the name "etcd" is used twice'],
    ['two listeners on one address', base.replace('clusters:', '  - { name: other, listen: 127.0.0.1:2379, cluster: etcd }\nclusters:'), 'listeners: two listeners on 127.0.0.1:2379'],
    ['an endpoint without a port', base.replace('10.0.0.2:2379]', '10.0.0.2]'), 'clusters[0].endpoints[1].address: expected host:port, got "10.0.0.2" (no port)'],
    ['a duplicate endpoint', base.replace('10.0.0.2:2379]', '10.0.0.1:2379]'), 'clusters[0].endpoints: 10.0.0.1:2379 is listed twice'],
    ['an unknown balance policy', base.replace('endpoints:', 'balance: least-conns\n    endpoints:'), 'clusters[0].balance: expected one of round-robin, least-connections, random-two, affinity, got "least-conns"'],
    ['an unknown check', base.replace('endpoints:', 'health: { check: ping }\n    endpoints:'), 'clusters[0].health.check: expected one of none, tcp, http, https, etcd, got "ping"'],
    ['a check timeout longer than its interval', base.replace('endpoints:', 'health: { check: tcp, interval: 1s, timeout: 2s }\n    endpoints:'), 'clusters[0].health.timeout: 2000ms is longer than the interval (1000ms)'],
    ['an http path without a slash', base.replace('endpoints:', 'health: { check: http, path: readyz }\n    endpoints:'), 'clusters[0].health.path: expected a path starting with "/"'],
    ['a path on a tcp check', base.replace('endpoints:', 'health: { check: tcp, path: /readyz }\n    endpoints:'), 'clusters[0].health: path, expectStatus and expectBody apply to http and https checks'],
    ['a missing TLS profile', base.replace('cluster: etcd }', 'cluster: etcd, tls: guard }'), 'listeners[0].tls: no TLS profile named "guard" (have: none)'],
    ['a terminating profile without cert', `tls:\n  guard: { clientCA: /ca.crt }\n${base.replace('cluster: etcd }', 'cluster: etcd, tls: guard }')}`, 'listeners[0].tls: profile "guard" needs cert and key to terminate TLS'],
    ['client certs required without clientCA', `tls:\n  guard: { cert: /a.crt, key: /a.key }\n${base.replace('cluster: etcd }', 'cluster: etcd, tls: guard }')}`, 'requires client certificates but has no clientCA'],
    ['an empty cn pattern (it would match every CN-less certificate)', `tls:\n  guard: { cert: /a.crt, key: /a.key, clientCA: /ca.crt, allow: [{ cn: "" }] }\n${base.replace('cluster: etcd }', 'cluster: etcd, tls: guard }')}`, 'an empty cn pattern would match certificates without a cn'],
    ['allow rules with requireClientCert false (a client without a certificate would pass them)', `tls:\n  guard: { cert: /a.crt, key: /a.key, clientCA: /ca.crt, requireClientCert: false, allow: [{ cn: a }] }\n${base.replace('cluster: etcd }', 'cluster: etcd, tls: guard }')}`, 'tls.guard.requireClientCert: false would admit clients that send no certificate past the allow rules'],
    ['a malformed discoveryHosts entry', base.replace('endpoints:', 'discoveryHosts: ["10.0.0.0/33"]\n    endpoints:'), 'clusters[0].discoveryHosts[0]: expected an IP, a host name or a CIDR, optionally with :PORT or :*'],
    ['an originating profile without ca', `tls:\n  client: { cert: /a.crt, key: /a.key }\n${base.replace('endpoints:', 'tls: client\n    endpoints:')}`, 'clusters[0].tls: profile "client" needs ca to verify the upstream servers'],
    ['an unused TLS profile', `tls:\n  spare: { ca: /ca.crt }\n${base}`, 'tls.spare: defined but no listener or cluster uses it'],
    ['affinity settings without affinity balance', base.replace('endpoints:', 'affinity: { key: source-ip }\n    endpoints:'), 'clusters[0].affinity: set, but balance is "round-robin"'],
    ['discovery without an etcd check', base.replace('endpoints:', 'discovery: etcd-members\n    endpoints:'), 'clusters[0].discovery: etcd-members needs health.check: etcd'],
    ['a cluster with no endpoints', base.replace('endpoints: [10.0.0.1:2379, 10.0.0.2:2379]', 'endpoints: []'), 'clusters[0].endpoints: at least one endpoint is needed'],
    ['no listeners', 'listeners: []\nclusters: [{ name: a, endpoints: [10.0.0.1:1] }]\n', 'listeners: at least one listener is needed'],
    ['a listener on a host name', base.replace('listen: 127.0.0.1:2379', 'listen: localhost:2379'), 'listeners[0].listen: expected an IP address to listen on, got "localhost"'],
    ['a bad name', base.replace('name: etcd, listen', 'name: "etcd client", listen'), 'listeners[0].name: names are 1-63 characters'],
    ['a bad socket mode', base.replace('cluster: etcd }', 'cluster: etcd, socketMode: "rw" }'), 'listeners[0].socketMode: expected an octal mode like "0600"'],
    ['a negative maxConnections', base.replace('cluster: etcd }', 'cluster: etcd, maxConnections: -1 }'), 'listeners[0].maxConnections: must be at least 1'],
    ['a fractional rise', base.replace('endpoints:', 'health: { check: tcp, rise: 1.5 }\n    endpoints:'), 'clusters[0].health.rise: expected a whole number'],
    ['a backup of an unknown cluster', `${base}backup: { cluster: etc, dir: /var/backups }\n`, 'backup.cluster: no cluster named "etc" (have: etcd)'],
    ['a backup of a non-etcd cluster', `${base}backup: { cluster: etcd, dir: /var/backups }\n`, 'backup.cluster: "etcd" is not an etcd cluster'],
    ['a metrics address equal to the admin address', `admin: { listen: 127.0.0.1:9901, metricsListen: 127.0.0.1:9901 }\n${base}`, 'admin.metricsListen: same address as admin.listen'],
    ['an unknown log level', `log: { level: loud }\n${base}`, 'log.level: expected a log level'],
  ])('refuses %s', (_what, yaml, message) => {
    const p = problems(yaml);
    expect(p.join('\n')).toContain(message);
  });

  it('reports YAML syntax errors with their line', () => {
    const p = problems('listeners:\n  - { name: a, listen: 127.0.0.1:1\nclusters: []\n');
    expect(p[0]).toMatch(/^line \d+, column \d+: invalid YAML/);
  });

  it('refuses duplicate keys in a map (a classic copy-paste accident)', () => {
    const p = problems(`${base}listeners: []\n`);
    expect(p[0]).toContain('invalid YAML');
  });

  it('refuses a document that is not a map', () => {
    expect(problems('- a\n- b\n')).toEqual(['expected a map with listeners and clusters at the top level']);
  });

  it('lists every problem at once, not just the first', () => {
    const p = problems(base.replace('cluster: etcd }', 'cluster: etc, idleTimeout: soon }').replace('endpoints:', 'balance: fastest\n    endpoints:'));
    expect(p.length).toBeGreaterThanOrEqual(2);
    expect(p.some((x) => x.startsWith('listeners[0].idleTimeout'))).toBe(true);
    expect(p.some((x) => x.startsWith('clusters[0].balance'))).toBe(true);
  });

  it('prefixes the message with the source file', () => {
    try {
      parseConfig(base.replace('cluster: etcd }', 'cluster: nope }'), '/etc/ballast/ballast.yaml');
      throw new Error('accepted');
    } catch (err) {
      expect((err as Error).message).toBe('/etc/ballast/ballast.yaml: listeners[0].cluster: no cluster named "nope" (have: etcd)');
    }
  });
});

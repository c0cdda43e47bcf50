import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { addressKey, parseCidr, parseHostEntry, type Address } from './address.js';
import { configSchema, type AllowRule, type BackupConfig, type ParsedConfig, type TlsProfileConfig } from './schema.js';

// Loading is a pure function from text to either a complete, cross-checked
// Config or a list of errors that each name a key path. Nothing is applied
// until the whole file is known to be good (reload relies on this).

export type HealthCheckKind = 'none' | 'tcp' | 'http' | 'https' | 'etcd';

export interface HealthConfig {
  check: HealthCheckKind;
  interval: number;
  timeout: number;
  rise: number;
  fall: number;
  jitter: number;
  path: string;
  expectStatus: (number | string)[];
  expectBody: string | undefined;
  maxRaftLag: number;
  /** etcd: intervals an applied index may stay frozen while a peer's moves (0: off). */
  stallIntervals: number;
  host: string | undefined;
  /** TLS profile the check uses (https, etcd). */
  tls: string | undefined;
}

export interface EndpointSpec {
  address: Address;
  /** Stable identity: host:port (or unix:/path). Rendezvous hashing and metric labels use it. */
  id: string;
  servername: string | undefined;
  weight: number;
}

export interface ClusterConfig {
  name: string;
  endpoints: EndpointSpec[];
  discovery: 'static' | 'etcd-members';
  syncInterval: number;
  discoveryHosts: string[];
  discoveryMaxMembers: number;
  tls: string | undefined;
  balance: 'round-robin' | 'least-connections' | 'random-two' | 'affinity';
  affinity: { key: 'client-identity' | 'source-ip' | 'cn' | 'san'; stickiness: 'sticky' | 'rehash'; ttl: number; preferLocal: string | undefined };
  connectTimeout: number;
  connectAttempts: number;
  health: HealthConfig;
  outlier: { consecutiveFailures: number; baseEjection: number; maxEjection: number };
  onDown: 'close' | 'keep';
  slowStart: number;
  panic: 'open' | 'refuse';
  keepalive: { idle: number };
}

export interface ListenerConfig {
  name: string;
  listen: Address;
  cluster: string;
  tls: string | undefined;
  maxConnections: number;
  idleTimeout: number;
  socketMode: number;
  accessLog: boolean;
  backlog: number;
}

export interface TlsProfile extends Omit<TlsProfileConfig, 'allow'> {
  name: string;
  allow: AllowRule[];
}

export interface Config {
  admin: { enabled: boolean; listen: Address; metricsListen: Address | undefined; maxConnections: number; idleTimeout: number; allowedHosts: string[] };
  log: { level: string };
  drainTimeout: number;
  workers: number;
  handover: boolean;
  workerSockets: 'auto' | 'reuseport' | 'shared';
  tls: Map<string, TlsProfile>;
  listeners: ListenerConfig[];
  clusters: ClusterConfig[];
  backup: BackupConfig | undefined;
  vip: VipConfig | undefined;
  /** Where the config was read from, for reloads and messages. */
  source: string;
}

export interface VipConfig {
  /** As written: "192.0.2.10/24". */
  cidr: string;
  ip: string;
  prefix: number;
  family: 4 | 6;
  interface: string;
  cluster: string;
  leaseTTL: number;
  requireReady: boolean;
  node: string;
}

export class ConfigError extends Error {
  readonly code = 'BALLAST_CONFIG';
  constructor(
    readonly source: string,
    readonly problems: string[],
    /** What went wrong: the file could not be read, is not YAML, or does not pass the schema and its cross-checks. */
    readonly kind: 'io' | 'yaml' | 'schema' = 'schema',
  ) {
    super(`${source}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${problems.join('\n  ')}`}`);
    this.name = 'ConfigError';
  }
}

// Health defaults per check kind. etcd's are tight because a hung member
// stalls every client pinned to it; the failure budget is fall × timeout plus
// at most one interval (a failed check is re-run at once, not after a full
// interval). The timeout is forgiven when ballast's own event loop was late,
// so an overloaded proxy does not eject healthy members (k3s#10240).
export const HEALTH_DEFAULTS: Record<HealthCheckKind, Omit<HealthConfig, 'check' | 'path' | 'expectStatus' | 'expectBody' | 'host' | 'tls'>> = {
  none: { interval: 1000, timeout: 1000, rise: 1, fall: 1, jitter: 0, maxRaftLag: 0, stallIntervals: 0 },
  tcp: { interval: 2000, timeout: 1000, rise: 2, fall: 2, jitter: 0.1, maxRaftLag: 0, stallIntervals: 0 },
  http: { interval: 2000, timeout: 1000, rise: 2, fall: 2, jitter: 0.1, maxRaftLag: 0, stallIntervals: 0 },
  https: { interval: 2000, timeout: 1000, rise: 2, fall: 2, jitter: 0.1, maxRaftLag: 0, stallIntervals: 0 },
  // A status call on loopback or a LAN answers in a few ms; 250ms is still
  // a wide margin, and it keeps a hung member's detection under a second
  // (worst case: an interval, then two timeouts and the re-check between).
  etcd: { interval: 400, timeout: 250, rise: 2, fall: 2, jitter: 0.1, maxRaftLag: 1000, stallIntervals: 3 },
};

export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:9901';

export function loadConfigFile(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [`cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`], 'io');
  }
  return parseConfig(text, path);
}

export function parseConfig(text: string, source = '<config>'): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => {
        const pos = e.linePos?.[0];
        // prettyErrors appends " at line L, column C:" and a code frame; keep the sentence.
        const sentence = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
        return `${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}invalid YAML: ${sentence}`;
      }),
      'yaml',
    );
  }
  const raw: unknown = doc.toJS();
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(source, ['expected a map with listeners and clusters at the top level']);
  }
  const parsed = configSchema.safeParse(raw, { reportInput: true });
  if (!parsed.success) throw new ConfigError(source, formatIssues(parsed.error.issues, raw));
  const problems: string[] = [];
  const config = resolve(parsed.data, source, problems);
  if (problems.length > 0) throw new ConfigError(source, problems);
  return config;
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out === '' ? '(top level)' : out;
}

const KNOWN_KEYS: Record<string, string[]> = {};

function formatIssues(issues: z.core.$ZodIssue[], raw: unknown): string[] {
  const out: string[] = [];
  for (const issue of issues) {
    const where = formatPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const hint = suggest(key, siblingKeys(raw, issue.path, key));
        out.push(`${where}: unknown key "${key}"${hint ? ` (did you mean "${hint}"?)` : ''}`);
      }
      continue;
    }
    if (issue.code === 'invalid_type' && issue.input === undefined) {
      out.push(`${where}: required`);
      continue;
    }
    if (issue.code === 'invalid_union' && 'errors' in issue && issue.errors.length > 0) {
      // zod reports each branch; the branch whose path went deepest is the one the user meant.
      out.push(`${where}: ${issue.message}`);
      continue;
    }
    out.push(`${where}: ${issue.message}`);
  }
  return out;
}

function siblingKeys(_raw: unknown, path: readonly PropertyKey[], _key: string): string[] {
  const section = path.filter((p) => typeof p === 'string').join('.');
  return KNOWN_KEYS[section] ?? SECTION_KEYS[sectionOf(path)] ?? [];
}

function sectionOf(path: readonly PropertyKey[]): string {
  const names = path.filter((p): p is string => typeof p === 'string');
  if (names.length === 0) return '';
  if (names[0] === 'tls') return 'tls.*';
  return names.join('.');
}

const SECTION_KEYS: Record<string, string[]> = {
  '': ['admin', 'log', 'drainTimeout', 'workers', 'handover', 'workerSockets', 'tls', 'listeners', 'clusters', 'backup', 'vip'],
  admin: ['listen', 'metricsListen', 'enabled', 'maxConnections', 'idleTimeout', 'allowedHosts'],
  log: ['level'],
  'tls.*': ['cert', 'key', 'ca', 'clientCA', 'crl', 'allow', 'requireClientCert', 'minVersion', 'ciphers', 'handshakeTimeout', 'servername', 'alpn'],
  listeners: ['name', 'listen', 'cluster', 'tls', 'maxConnections', 'idleTimeout', 'socketMode', 'accessLog', 'backlog'],
  clusters: ['name', 'endpoints', 'discovery', 'syncInterval', 'discoveryHosts', 'discoveryMaxMembers', 'tls', 'balance', 'affinity', 'connectTimeout', 'connectAttempts', 'health', 'outlier', 'onDown', 'slowStart', 'panic', 'keepalive'],
  'clusters.health': ['check', 'interval', 'timeout', 'rise', 'fall', 'jitter', 'path', 'expectStatus', 'expectBody', 'maxRaftLag', 'stallIntervals', 'host', 'tls'],
  'clusters.outlier': ['consecutiveFailures', 'baseEjection', 'maxEjection'],
  'clusters.affinity': ['key', 'stickiness', 'ttl', 'preferLocal'],
  'clusters.keepalive': ['idle'],
  'clusters.endpoints': ['address', 'servername', 'weight'],
  backup: ['cluster', 'dir', 'interval', 'keep', 'from', 'timeout', 'drillInterval'],
  vip: ['address', 'interface', 'cluster', 'leaseTTL', 'requireReady', 'node'],
};

/** The known key closest to a typo, if it is close enough to be a typo. */
function suggest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

function resolve(p: ParsedConfig, source: string, problems: string[]): Config {
  const tls = new Map<string, TlsProfile>();
  for (const [name, profile] of Object.entries(p.tls)) tls.set(name, { ...profile, name });

  const clusterNames = p.clusters.map((c) => c.name);
  const have = (names: string[]) => (names.length > 0 ? names.join(', ') : 'none');
  duplicates(clusterNames).forEach((n) => problems.push(`clusters: the name "${n}" is used twice; cluster names must be unique`));
  duplicates(p.listeners.map((l) => l.name)).forEach((n) => problems.push(`listeners: the name "${n}" is used twice; listener names must be unique`));
  duplicates(p.listeners.map((l) => addressKey(l.listen))).forEach((a) => problems.push(`listeners: two listeners on ${a}; each needs its own address`));

  const listeners: ListenerConfig[] = p.listeners.map((l, i) => {
    if (!clusterNames.includes(l.cluster)) problems.push(`listeners[${i}].cluster: no cluster named "${l.cluster}" (have: ${have(clusterNames)})`);
    if (l.tls !== undefined) {
      const prof = tls.get(l.tls);
      if (!prof) problems.push(`listeners[${i}].tls: no TLS profile named "${l.tls}" (have: ${have([...tls.keys()])})`);
      else {
        if (!prof.cert || !prof.key) problems.push(`listeners[${i}].tls: profile "${l.tls}" needs cert and key to terminate TLS`);
        if (prof.requireClientCert && !prof.clientCA) {
          problems.push(`listeners[${i}].tls: profile "${l.tls}" requires client certificates but has no clientCA (add tls.${l.tls}.clientCA, or set requireClientCert: false)`);
        }
      }
    }
    if (l.listen.kind === 'unix' && l.listen.path.length > 107) problems.push(`listeners[${i}].listen: unix socket paths are limited to 107 bytes`);
    return {
      name: l.name,
      listen: l.listen,
      cluster: l.cluster,
      tls: l.tls,
      maxConnections: l.maxConnections,
      idleTimeout: l.idleTimeout,
      socketMode: parseInt(l.socketMode, 8),
      accessLog: l.accessLog,
      backlog: l.backlog,
    };
  });

  const clusters: ClusterConfig[] = p.clusters.map((c, i) => {
    const at = `clusters[${i}]`;
    const endpoints: EndpointSpec[] = c.endpoints.map((e) => ({ address: e.address, id: addressKey(e.address), servername: e.servername, weight: e.weight }));
    duplicates(endpoints.map((e) => e.id)).forEach((id) => problems.push(`${at}.endpoints: ${id} is listed twice`));
    if (endpoints.length === 0) {
      problems.push(c.discovery === 'etcd-members' ? `${at}.endpoints: discovery needs at least one seed endpoint to ask for the member list` : `${at}.endpoints: at least one endpoint is needed`);
    }
    if (c.tls !== undefined) {
      const prof = tls.get(c.tls);
      if (!prof) problems.push(`${at}.tls: no TLS profile named "${c.tls}" (have: ${have([...tls.keys()])})`);
      else if (!prof.ca) problems.push(`${at}.tls: profile "${c.tls}" needs ca to verify the upstream servers it connects to`);
      else if ((prof.cert === undefined) !== (prof.key === undefined)) problems.push(`${at}.tls: profile "${c.tls}" has ${prof.cert ? 'cert without key' : 'key without cert'}`);
    }
    if (c.affinity !== undefined && c.balance !== 'affinity') problems.push(`${at}.affinity: set, but balance is "${c.balance}"; use balance: affinity or remove it`);
    const kind = c.health.check;
    const d = HEALTH_DEFAULTS[kind];
    const health: HealthConfig = {
      check: kind,
      interval: c.health.interval ?? d.interval,
      timeout: c.health.timeout ?? d.timeout,
      rise: c.health.rise ?? d.rise,
      fall: c.health.fall ?? d.fall,
      jitter: c.health.jitter ?? d.jitter,
      path: c.health.path ?? '/',
      expectStatus: c.health.expectStatus ?? ['2xx'],
      expectBody: c.health.expectBody,
      maxRaftLag: c.health.maxRaftLag ?? d.maxRaftLag,
      stallIntervals: c.health.stallIntervals ?? d.stallIntervals,
      host: c.health.host,
      tls: c.health.tls ?? c.tls,
    };
    if (c.health.tls !== undefined) {
      const prof = tls.get(c.health.tls);
      if (!prof) problems.push(`${at}.health.tls: no TLS profile named "${c.health.tls}" (have: ${have([...tls.keys()])})`);
      else if (!prof.ca) problems.push(`${at}.health.tls: profile "${c.health.tls}" needs ca to verify the servers it checks`);
      if (kind !== 'https' && kind !== 'etcd') problems.push(`${at}.health.tls: applies to https and etcd checks, not "${kind}"`);
    }
    if ((kind === 'tcp' || kind === 'etcd' || kind === 'none') && (c.health.path !== undefined || c.health.expectStatus !== undefined || c.health.expectBody !== undefined)) {
      problems.push(`${at}.health: path, expectStatus and expectBody apply to http and https checks, not "${kind}"`);
    }
    if (kind !== 'etcd' && c.health.maxRaftLag !== undefined) problems.push(`${at}.health.maxRaftLag: applies to check: etcd only`);
    if (kind !== 'etcd' && c.health.stallIntervals !== undefined) problems.push(`${at}.health.stallIntervals: applies to check: etcd only`);
    if (health.timeout > health.interval && kind !== 'none') {
      problems.push(`${at}.health.timeout: ${health.timeout}ms is longer than the interval (${health.interval}ms); checks would overlap`);
    }
    if (kind === 'https' && c.tls === undefined) {
      // An https check against an apiserver in passthrough verifies with the system CAs.
    }
    if (c.discovery === 'etcd-members' && kind !== 'etcd') {
      problems.push(`${at}.discovery: etcd-members needs health.check: etcd (members are judged by their raft status)`);
    }
    if (c.outlier.maxEjection < c.outlier.baseEjection) problems.push(`${at}.outlier.maxEjection: shorter than baseEjection`);
    c.discoveryHosts.forEach((h, j) => {
      if (parseHostEntry(h) === undefined) problems.push(`${at}.discoveryHosts[${j}]: expected an IP, a host name or a CIDR, optionally with :PORT or :* (like 10.0.0.0/24 or 127.0.0.1:*), got "${h}"`);
    });
    const affinity = {
      key: c.affinity?.key ?? 'client-identity',
      stickiness: c.affinity?.stickiness ?? 'sticky',
      ttl: c.affinity?.ttl ?? 600_000,
      preferLocal: c.affinity?.preferLocal,
    } as ClusterConfig['affinity'];
    return {
      name: c.name,
      endpoints,
      discovery: c.discovery,
      syncInterval: c.syncInterval,
      discoveryHosts: c.discoveryHosts,
      discoveryMaxMembers: c.discoveryMaxMembers,
      tls: c.tls,
      balance: c.balance,
      affinity,
      connectTimeout: c.connectTimeout,
      connectAttempts: c.connectAttempts,
      health,
      outlier: c.outlier,
      onDown: c.onDown ?? (kind === 'etcd' ? 'close' : 'keep'),
      slowStart: c.slowStart,
      panic: c.panic,
      keepalive: c.keepalive,
    };
  });

  if (p.admin.metricsListen !== undefined && addressKey(p.admin.metricsListen) === addressKey(p.admin.listen ?? { kind: 'inet', host: '127.0.0.1', port: 9901, family: 4, text: '' })) {
    problems.push('admin.metricsListen: same address as admin.listen; give it its own port or leave it out');
  }
  if (p.backup !== undefined && !clusterNames.includes(p.backup.cluster)) {
    problems.push(`backup.cluster: no cluster named "${p.backup.cluster}" (have: ${have(clusterNames)})`);
  } else if (p.backup !== undefined) {
    const c = clusters.find((x) => x.name === p.backup!.cluster)!;
    if (c.health.check !== 'etcd') problems.push(`backup.cluster: "${c.name}" is not an etcd cluster (needs health.check: etcd)`);
  }

  let vip: VipConfig | undefined;
  if (p.vip !== undefined) {
    const v = p.vip;
    const c = clusters.find((x) => x.name === v.cluster);
    if (!c) problems.push(`vip.cluster: no cluster named "${v.cluster}" (have: ${have(clusterNames)})`);
    else if (c.health.check !== 'etcd') problems.push(`vip.cluster: "${c.name}" is not an etcd cluster (needs health.check: etcd); the election runs in etcd`);
    const cidr = parseCidr(v.address)!;
    vip = { cidr: `${cidr.ip}/${cidr.prefix}`, ip: cidr.ip, prefix: cidr.prefix, family: cidr.family, interface: v.interface, cluster: v.cluster, leaseTTL: v.leaseTTL, requireReady: v.requireReady, node: v.node ?? hostname() };
  }

  for (const [name, prof] of tls) {
    const used = listeners.some((l) => l.tls === name) || clusters.some((c) => c.tls === name || c.health.tls === name);
    if (!used) problems.push(`tls.${name}: defined but no listener or cluster uses it`);
    if (prof.allow.length > 0 && !prof.clientCA) problems.push(`tls.${name}.allow: rules need clientCA to verify the identities they match`);
    // Allow rules name who may pass; with requireClientCert false a client that
    // sends no certificate would pass them all. Say which is meant.
    if (prof.allow.length > 0 && !prof.requireClientCert) problems.push(`tls.${name}.requireClientCert: false would admit clients that send no certificate past the allow rules; set it to true (the default) or remove allow`);
  }

  return {
    admin: {
      enabled: p.admin.enabled,
      listen: p.admin.listen ?? { kind: 'inet', host: '127.0.0.1', port: 9901, family: 4, text: DEFAULT_ADMIN_LISTEN },
      metricsListen: p.admin.metricsListen,
      maxConnections: p.admin.maxConnections,
      idleTimeout: p.admin.idleTimeout,
      allowedHosts: p.admin.allowedHosts.map((h) => h.toLowerCase().replace(/\.$/, '')),
    },
    log: p.log,
    drainTimeout: p.drainTimeout,
    workers: p.workers,
    handover: p.handover,
    workerSockets: p.workerSockets,
    tls,
    listeners,
    clusters,
    backup: p.backup,
    vip,
    source,
  };
}

function duplicates(items: string[]): string[] {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const x of items) (seen.has(x) ? dup : seen).add(x);
  return [...dup];
}

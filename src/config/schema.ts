import { z } from 'zod';
import { parseAddress, parseCidr, type Address } from './address.js';
import { parseDuration } from './duration.js';

// The one source of truth for the config: types, defaults and messages come
// from here; `check-config`, `run`, reload and the README's reference all read
// it. Objects are strict: an unknown key is a typo until proven otherwise.

const duration = (min = 0) =>
  z.string({ error: (iss) => `expected a duration like "500ms" or "2s", got ${describe(iss.input)}` }).transform((text, ctx) => {
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected a duration like "500ms" or "2s", got "${text}"` });
      return z.NEVER;
    }
    if (ms < min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${min}ms, got "${text}"` });
      return z.NEVER;
    }
    return ms;
  });

const address = (what: 'listen' | 'endpoint') =>
  z.string({ error: (iss) => `expected an address like "127.0.0.1:2379" or "unix:/path", got ${describe(iss.input)}` }).transform((text, ctx): Address => {
    const r = parseAddress(text, { allowScheme: what === 'endpoint', allowHostname: what === 'endpoint' });
    if (!r.ok) {
      ctx.addIssue({ code: 'custom', message: r.error });
      return z.NEVER;
    }
    return r.address;
  });

const name = z
  .string({ error: (iss) => `expected a name, got ${describe(iss.input)}` })
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/, 'names are 1-63 characters of letters, digits, "-", "_", "." (they become metric labels)');

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.number({ error: (iss) => `expected a whole number, got ${describe(iss.input)}` }).int('expected a whole number').min(min, `must be at least ${min}`).max(max, `must be at most ${max}`);

export function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (typeof v === 'string') return `"${v}"`;
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  return `${typeof v} ${String(v)}`;
}

// --- TLS profiles -----------------------------------------------------------

// An empty pattern would match a certificate without that attribute (every
// CN-less certificate for `cn: ""`): refused, so an empty value is a typo, not a wildcard.
const pattern = (what: string) => z.string().min(1, `an empty ${what} pattern would match certificates without a ${what}; remove the key or write "*"`).optional();

const allowRule = z
  .strictObject({
    cn: pattern('cn'),
    o: pattern('o'),
    dns: pattern('dns'),
    uri: pattern('uri'),
  })
  .refine((r) => r.cn !== undefined || r.o !== undefined || r.dns !== undefined || r.uri !== undefined, {
    message: 'an allow rule needs at least one of cn, o, dns, uri',
  });
export type AllowRule = z.infer<typeof allowRule>;

const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3'], { error: (iss) => `expected TLSv1.2 or TLSv1.3, got ${describe(iss.input)}` });

export const tlsProfileSchema = z.strictObject({
  /** PEM certificate chain presented by ballast (server side when terminating, client side when originating). */
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  /** CA bundle that verifies upstream servers (origination). */
  ca: z.string().min(1).optional(),
  /** CA bundle that verifies clients (termination). */
  clientCA: z.string().min(1).optional(),
  /** Certificate revocation list (PEM) checked against client certificates. */
  crl: z.string().min(1).optional(),
  allow: z.array(allowRule).default([]),
  requireClientCert: z.boolean().default(true),
  minVersion: tlsVersion.default('TLSv1.2'),
  /** OpenSSL cipher list for TLS 1.2; TLS 1.3 suites are OpenSSL's defaults. */
  ciphers: z.string().optional(),
  handshakeTimeout: duration(1).prefault('5s'),
  /** SNI and the name checked in the upstream certificate (origination); per endpoint overrides. */
  servername: z.string().optional(),
  /** ALPN protocols offered/accepted. h2 first: gRPC (etcd, kube-apiserver) requires it. */
  alpn: z.array(z.string().min(1)).default(['h2', 'http/1.1']),
});
export type TlsProfileConfig = z.infer<typeof tlsProfileSchema>;

// --- listeners --------------------------------------------------------------

export const listenerSchema = z.strictObject({
  name,
  listen: address('listen'),
  cluster: name,
  /** TLS profile to terminate with; absent means bytes pass through untouched. */
  tls: name.optional(),
  maxConnections: int(1).default(10_000),
  /** Close a connection when neither side has sent a byte for this long (0 disables). */
  idleTimeout: duration(0).prefault('1h'),
  /** File mode of a unix socket listener: 0600 keeps it to ballast's user. */
  socketMode: z.string().regex(/^0?[0-7]{3}$/, 'expected an octal mode like "0600"').prefault('0600'),
  accessLog: z.boolean().default(false),
  /** listen(2) backlog: pending connections the kernel queues before accept. */
  backlog: int(1).default(511),
});
export type ListenerConfig = z.infer<typeof listenerSchema>;

// --- clusters ---------------------------------------------------------------

const endpointObject = z.strictObject({
  address: address('endpoint'),
  /** SNI and name check for this endpoint when originating TLS. */
  servername: z.string().optional(),
  weight: int(1, 1000).default(100),
});
// An endpoint is written as a bare address, or as a map when it needs its own
// server name; both reach the same schema so errors name the real problem.
const endpoint = z.preprocess((v) => (typeof v === 'string' ? { address: v } : v), endpointObject);
export type EndpointConfig = z.infer<typeof endpointObject>;

const healthSchema = z.strictObject({
  check: z.enum(['none', 'tcp', 'http', 'https', 'etcd'], { error: (iss) => `expected one of none, tcp, http, https, etcd, got ${describe(iss.input)}` }),
  interval: duration(10).optional(),
  timeout: duration(10).optional(),
  rise: int(1, 100).optional(),
  fall: int(1, 100).optional(),
  /** Fraction of the interval by which each check is randomly moved, so many ballasts don't probe in step. */
  jitter: z.number().min(0).max(0.5).optional(),
  /** http/https: path to GET. */
  path: z.string().startsWith('/', 'expected a path starting with "/"').optional(),
  /** http/https: accepted status codes, e.g. [200] or ["2xx"]. */
  expectStatus: z.array(z.union([int(100, 599), z.string().regex(/^[1-5]xx$/, 'expected a status like 200 or "2xx"')])).optional(),
  /** http/https: a substring the body must contain, e.g. "ok" for /readyz or "\"health\":\"true\"" for etcd's /health. */
  expectBody: z.string().optional(),
  /** etcd: a member whose raft index is more than this behind the highest seen is down. */
  maxRaftLag: int(0).optional(),
  /** etcd: a member whose applied index has not moved for this many intervals while a peer's has is down (0 disables). */
  stallIntervals: int(0, 100).optional(),
  /** http/https: Host header; default the endpoint's host. */
  host: z.string().optional(),
  /** TLS profile for https and etcd checks; default the cluster's own `tls`. */
  tls: name.optional(),
});
export type HealthConfigInput = z.infer<typeof healthSchema>;

const outlierSchema = z.strictObject({
  /** Consecutive connect failures or resets that eject an endpoint at once (0 disables). */
  consecutiveFailures: int(0, 1000).default(2),
  baseEjection: duration(1).prefault('1s'),
  maxEjection: duration(1).prefault('30s'),
});

const affinitySchema = z.strictObject({
  key: z.enum(['client-identity', 'source-ip', 'cn', 'san'], { error: (iss) => `expected client-identity, source-ip, cn or san, got ${describe(iss.input)}` }).default('client-identity'),
  stickiness: z.enum(['sticky', 'rehash'], { error: (iss) => `expected sticky or rehash, got ${describe(iss.input)}` }).default('sticky'),
  ttl: duration(0).prefault('10m'),
  /** A member on this host ranks first for every client (stacked etcd: the local member). */
  preferLocal: z.string().optional(),
});

const keepaliveSchema = z.strictObject({
  /** Idle time before the first TCP keepalive probe on both legs; 0 disables keepalive. */
  idle: duration(0).prefault('10s'),
});

export const clusterSchema = z.strictObject({
  name,
  endpoints: z.array(endpoint).default([]),
  discovery: z.enum(['static', 'etcd-members'], { error: (iss) => `expected static or etcd-members, got ${describe(iss.input)}` }).default('static'),
  syncInterval: duration(100).prefault('30s'),
  /** Hosts a discovered member may advertise besides the seeds' hosts: IPs, host names, or CIDRs like 10.0.0.0/24. */
  discoveryHosts: z.array(z.string().min(1)).default([]),
  /** Discovery refuses a member list with more voting members than this (etcd clusters have 3, 5 or 7). */
  discoveryMaxMembers: int(1, 100).default(9),
  /** TLS profile to originate with; absent means plain TCP (or passthrough of the client's TLS). */
  tls: name.optional(),
  balance: z
    .enum(['round-robin', 'least-connections', 'random-two', 'affinity'], {
      error: (iss) => `expected one of round-robin, least-connections, random-two, affinity, got ${describe(iss.input)}`,
    })
    .default('round-robin'),
  affinity: affinitySchema.optional(),
  connectTimeout: duration(1).prefault('1s'),
  /** Endpoints tried per client connection before giving up (bounded by the endpoint count). */
  connectAttempts: int(1, 16).default(3),
  health: healthSchema.prefault({ check: 'tcp' }),
  outlier: outlierSchema.prefault({}),
  /** What happens to open connections when their endpoint goes down. */
  onDown: z.enum(['close', 'keep'], { error: (iss) => `expected close or keep, got ${describe(iss.input)}` }).optional(),
  /** A recovered endpoint's share of new connections grows over this long (0: at once). */
  slowStart: duration(0).prefault('0s'),
  /** With no healthy endpoint: "open" tries them all anyway (Envoy's panic mode), "refuse" closes clients at once. */
  panic: z.enum(['open', 'refuse'], { error: (iss) => `expected open or refuse, got ${describe(iss.input)}` }).default('open'),
  keepalive: keepaliveSchema.prefault({}),
});
export type ClusterConfigInput = z.infer<typeof clusterSchema>;

export const backupSchema = z.strictObject({
  cluster: name,
  dir: z.string().min(1),
  interval: duration(1000).prefault('1h'),
  keep: int(1, 10_000).default(24),
  from: z.enum(['follower', 'leader', 'any'], { error: (iss) => `expected follower, leader or any, got ${describe(iss.input)}` }).default('follower'),
  timeout: duration(100).prefault('5m'),
  drillInterval: duration(0).prefault('0s'),
});
export type BackupConfig = z.infer<typeof backupSchema>;

// --- virtual IP (issue 18) ---------------------------------------------------

export const vipSchema = z.strictObject({
  /** The address with its prefix, IPv4 or IPv6: "192.0.2.10/24". */
  address: z.string({ error: (iss) => `expected an address with its prefix like "192.0.2.10/24", got ${describe(iss.input)}` }).refine((t) => parseCidr(t) !== undefined, { message: 'expected an IPv4 or IPv6 address with its prefix, like "192.0.2.10/24" or "2001:db8::10/64"' }),
  /** The interface the address goes on (the node's interface towards the clients). */
  interface: z.string().regex(/^[^\s/]{1,15}$/, 'expected an interface name like "eth0" (1-15 characters, no spaces or "/")'),
  /** An etcd cluster from clusters: (health.check: etcd) whose members hold the election; it needs no listener. */
  cluster: name,
  /** Lease time to live; whole seconds (etcd's granularity), at least 3s. */
  leaseTTL: duration(3000).refine((ms) => ms % 1000 === 0, { message: 'must be whole seconds (etcd lease TTLs are seconds), like "3s"' }).prefault('3s'),
  /** Hold the VIP only while /readyz would answer 200. */
  requireReady: z.boolean().default(true),
  /** This node's name in the election (the key's value, /status, logs); default the host name. */
  node: z.string().min(1).max(253).optional(),
});
export type VipConfigInput = z.infer<typeof vipSchema>;

export const configSchema = z.strictObject({
  admin: z
    .strictObject({
      listen: address('listen').optional(),
      /** A second, metrics-only address (/metrics, /healthz, /readyz) for Prometheus to reach over the network while /status stays on loopback. */
      metricsListen: address('listen').optional(),
      enabled: z.boolean().default(true),
      /** Open connections per admin server (listen and metricsListen each); beyond it new ones are closed at once. */
      maxConnections: int(1, 10_000).default(64),
      /** A connection that sends no complete request (or stays idle) this long is closed. */
      idleTimeout: duration(100).prefault('10s'),
      /** Host names (besides IP literals, localhost and this machine's hostname) the admin server answers to: the DNS-rebinding check. */
      allowedHosts: z.array(z.string().regex(/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/, 'expected a host name without port, like "ballast.example.internal"')).default([]),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], { error: (iss) => `expected a log level (debug, info, warn, error), got ${describe(iss.input)}` }).default('info'),
    })
    .prefault({}),
  /** On SIGTERM/SIGINT: stop accepting, let open connections finish for this long, then close them. */
  drainTimeout: duration(0).prefault('30s'),
  /** Worker processes sharing the listeners (0: one per core). */
  workers: int(0, 64).default(1),
  /** With workers: one listening socket per worker (SO_REUSEPORT, Node 22.12+) or one shared through node:cluster. */
  /** Bind listeners and admin servers with SO_REUSEPORT (Node 22.12+), so a new ballast can bind beside this one before it drains. */
  handover: z.boolean().default(true),
  workerSockets: z.enum(['auto', 'reuseport', 'shared'], { error: (iss) => `expected auto, reuseport or shared, got ${describe(iss.input)}` }).default('auto'),
  tls: z.record(name, tlsProfileSchema).default({}),
  listeners: z.array(listenerSchema).min(1, 'at least one listener is needed'),
  clusters: z.array(clusterSchema).min(1, 'at least one cluster is needed'),
  backup: backupSchema.optional(),
  vip: vipSchema.optional(),
});
export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.infer<typeof configSchema>;

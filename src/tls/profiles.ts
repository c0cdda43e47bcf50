import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { TlsProfileRuntime } from './tls-profile.js';

// The config's TLS profiles as runtimes: which role each one plays, and the
// affinity key a terminating profile derives for its cluster.

/** Which roles each profile plays: server (a listener terminates with it), client (originates or checks). */
export function profileRoles(c: Config): Map<string, { server: boolean; client: boolean }> {
  const roles = new Map<string, { server: boolean; client: boolean }>();
  const get = (n: string) => {
    if (!roles.has(n)) roles.set(n, { server: false, client: false });
    return roles.get(n)!;
  };
  for (const l of c.listeners) if (l.tls !== undefined) get(l.tls).server = true;
  for (const cl of c.clusters) {
    if (cl.tls !== undefined) get(cl.tls).client = true;
    if (cl.health.tls !== undefined) get(cl.health.tls).client = true;
  }
  return roles;
}

export function keyKindFor(c: Config, profile: string): () => 'client-identity' | 'cn' | 'san' | 'source-ip' {
  // A profile terminating for an affinity cluster derives the key that cluster asks for.
  const l = c.listeners.find((x) => x.tls === profile);
  const cl = l ? c.clusters.find((x) => x.name === l.cluster) : undefined;
  const kind = cl?.affinity.key ?? 'client-identity';
  return () => kind;
}

/** Load every profile's material; throws MaterialError naming the profile and file. */
export function buildTlsProfiles(c: Config, log: Logger): Map<string, TlsProfileRuntime> {
  const roles = profileRoles(c);
  const out = new Map<string, TlsProfileRuntime>();
  for (const [name, p] of c.tls) out.set(name, new TlsProfileRuntime(p, roles.get(name) ?? { server: false, client: false }, log, keyKindFor(c, name)));
  return out;
}

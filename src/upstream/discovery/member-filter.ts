import { BlockList, isIP } from 'node:net';
import { parseCidr, parseHostEntry, type Address } from '../../config/address.js';

// Which advertised client URLs discovery may turn into endpoints. A member
// list comes from the cluster itself, so a member (or whoever took one over)
// could otherwise advertise localhost, another port on this machine, any
// host, or a unix socket, and ballast would send clients' traffic there.
// Accepted: the seeds' scheme (https when the cluster originates TLS, else
// http), one of the seeds' ports, and a host that is a seed's host or in
// discoveryHosts (IPs, names or CIDRs); unix URLs only when a seed is one.

export type Verdict = { ok: true } | { ok: false; reason: string };

interface Rule {
  host?: string;
  net?: BlockList;
  /** Allowed ports; undefined: any. */
  ports: Set<number> | undefined;
}

export class MemberFilter {
  private readonly rules: Rule[] = [];
  private readonly seedPorts = new Set<number>();
  private readonly unixPaths = new Set<string>();

  constructor(
    seeds: readonly Address[],
    extraHosts: readonly string[],
    private readonly scheme: 'http' | 'https',
  ) {
    for (const a of seeds) if (a.kind === 'unix') this.unixPaths.add(a.path);
    else this.seedPorts.add(a.port);
    for (const a of seeds) if (a.kind === 'inet') this.rules.push({ host: a.host.toLowerCase(), ports: this.seedPorts });
    for (const text of extraHosts) {
      const e = parseHostEntry(text)!;
      const ports = e.port === '*' ? undefined : e.port === undefined ? this.seedPorts : new Set([e.port]);
      const cidr = parseCidr(e.host);
      if (cidr) {
        const net = new BlockList();
        net.addSubnet(cidr.ip, cidr.prefix, cidr.family === 4 ? 'ipv4' : 'ipv6');
        this.rules.push({ net, ports });
      } else this.rules.push({ host: e.host.toLowerCase(), ports });
    }
  }

  check(url: string, a: Address): Verdict {
    if (a.kind === 'unix') {
      return this.unixPaths.has(a.path) ? { ok: true } : { ok: false, reason: 'a unix socket that is not a seed' };
    }
    const scheme = /^([a-z]+):\/\//i.exec(url)?.[1]?.toLowerCase();
    if (scheme !== undefined && scheme !== this.scheme) return { ok: false, reason: `scheme ${scheme}, but this cluster's members are reached over ${this.scheme}` };
    const host = a.host.toLowerCase();
    const family = isIP(host);
    let hostKnown = false;
    for (const r of this.rules) {
      const hostMatches = r.host !== undefined ? r.host === host : family !== 0 && r.net!.check(host, family === 4 ? 'ipv4' : 'ipv6');
      if (!hostMatches) continue;
      hostKnown = true;
      if (r.ports === undefined || r.ports.has(a.port)) return { ok: true };
    }
    if (hostKnown) return { ok: false, reason: `port ${a.port} is not allowed for ${a.host} (the seeds' ports are ${[...this.seedPorts].join(', ') || 'none'}; write ${a.host}:${a.port} or ${a.host}:* in discoveryHosts to allow it)` };
    return { ok: false, reason: `host ${a.host} is neither a seed's host nor in discoveryHosts` };
  }
}

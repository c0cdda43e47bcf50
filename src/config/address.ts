import { isIP } from 'node:net';

// One syntax for every address in the config, so an operator never has to
// guess which form a key takes:
//   127.0.0.1:2379   [::1]:2379   0.0.0.0:7445   [::]:7445   :7445 (all IPv6+IPv4)
//   localhost:2379 (endpoints only: resolved at connect time)
//   unix:/run/ballast/etcd.sock
//   https://10.0.0.1:2379 (endpoints: the scheme is what etcd and kubeconfigs
//     print; it is informational, origination is decided by the cluster's `tls`)

export type Address =
  | { kind: 'inet'; host: string; port: number; family: 0 | 4 | 6; scheme?: string; text: string }
  | { kind: 'unix'; path: string; text: string };

export type AddressResult = { ok: true; address: Address } | { ok: false; error: string };

const HOSTNAME = /^(?=.{1,253}$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

export function parseAddress(input: string, opts: { allowScheme: boolean; allowHostname: boolean }): AddressResult {
  let text = input.trim();
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!path.startsWith('/')) return { ok: false, error: `expected an absolute path after "unix:", got "${input}"` };
    return { ok: true, address: { kind: 'unix', path, text } };
  }
  let scheme: string | undefined;
  const schemeMatch = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text);
  if (schemeMatch) {
    if (!opts.allowScheme) return { ok: false, error: `expected host:port without a scheme, got "${input}"` };
    scheme = schemeMatch[1]!.toLowerCase();
    if (scheme !== 'http' && scheme !== 'https') return { ok: false, error: `expected scheme http:// or https://, got "${scheme}://"` };
    text = text.slice(schemeMatch[0].length).replace(/\/$/, '');
    if (text.includes('/')) return { ok: false, error: `expected no path in "${input}": an endpoint is host:port` };
  }
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return { ok: false, error: `expected "[ipv6]:port", got "${input}"` };
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (isIP(host) !== 6) return { ok: false, error: `"${host}" is not an IPv6 address in "${input}"` };
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return { ok: false, error: `expected host:port, got "${input}" (no port)` };
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return { ok: false, error: `IPv6 addresses need brackets: "[${host}]:${portText}"` };
  }
  if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
    return { ok: false, error: `port must be 1-65535, got "${portText}" in "${input}"` };
  }
  const family = host === '' ? 0 : isIP(host);
  if (host !== '' && family === 0) {
    if (!opts.allowHostname) return { ok: false, error: `expected an IP address to listen on, got "${host}" (use 0.0.0.0 or [::] for all)` };
    if (!HOSTNAME.test(host)) return { ok: false, error: `"${host}" is not a valid host name` };
  }
  const address: Address = { kind: 'inet', host, port: Number(portText), family: family as 0 | 4 | 6, text: input.trim() };
  if (scheme !== undefined) address.scheme = scheme;
  return { ok: true, address };
}

/** host:port as it appears in logs, metric labels and rendezvous hashing. */
export function addressKey(a: Address): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.family === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** `10.0.0.0/24` or `fd00::/64`; undefined when `text` is not a CIDR. */
export function parseCidr(text: string): { ip: string; prefix: number; family: 4 | 6 } | undefined {
  const m = /^([^/\s]+)\/(\d{1,3})$/.exec(text.trim());
  if (!m) return undefined;
  const family = isIP(m[1]!);
  const prefix = Number(m[2]);
  if (family === 0 || prefix > (family === 4 ? 32 : 128)) return undefined;
  return { ip: m[1]!, prefix, family: family as 4 | 6 };
}

/**
 * A discoveryHosts entry: `HOST`, `CIDR`, either with `:PORT` or `:*`
 * (IPv6 in brackets when a port follows: `[fd00::/64]:*`). Without a port,
 * the seeds' ports apply. Undefined when malformed.
 */
export function parseHostEntry(text: string): { host: string; port: number | '*' | undefined } | undefined {
  const t = text.trim();
  let host = t;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+|\*))?$/.exec(t);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2];
  } else if (t.indexOf(':') !== -1 && t.indexOf(':') === t.lastIndexOf(':')) {
    host = t.slice(0, t.indexOf(':'));
    portText = t.slice(t.indexOf(':') + 1);
  }
  const hostName = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/i;
  if (parseCidr(host) === undefined && isIP(host) === 0 && !hostName.test(host)) return undefined;
  if (portText === undefined) return { host, port: undefined };
  if (portText === '*') return { host, port: '*' };
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) return undefined;
  return { host, port };
}

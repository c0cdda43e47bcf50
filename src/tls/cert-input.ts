// Checking and normalising what callers of the certificate factory pass in
// (names, SANs, serials, usages, validity), with errors that name the field
// and the fix. Kept apart from certs.ts, which builds and signs.

import { isIP } from 'node:net';
import type { CertUsage, KeyAlgorithm } from './certs.js';

export const DAY_MS = 24 * 60 * 60 * 1000;
// Certificates are back-dated a little: control-plane nodes' clocks drift,
// and a cert minted on one node must not be "not yet valid" on another.
export const CLOCK_SKEW_MS = 5 * 60 * 1000;

/** Canonical serial: lowercase, even-length hex, no colons, no leading zero bytes. */
export function normalizeSerial(input: string, what: string): string {
  const hex = input.trim().replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]+$/.test(hex)) {
    throw new TypeError(`${what}: expected a hex serial number like "0a1b2c", got ${JSON.stringify(input)}`);
  }
  let even = hex.length % 2 === 1 ? `0${hex}` : hex;
  while (even.length > 2 && even.startsWith('00')) even = even.slice(2);
  if (/^0+$/.test(even)) {
    throw new RangeError(`${what}: serial number must be positive, got ${JSON.stringify(input)}`);
  }
  // 20 octets is RFC 5280's limit; one more for a sign byte is added by the encoder.
  if (even.length > 40) {
    throw new RangeError(`${what}: serial number is longer than 20 bytes (RFC 5280 limit), got ${even.length / 2} bytes`);
  }
  return even;
}

export function validity(
  opts: { validDays?: number; notBefore?: Date; notAfter?: Date },
  defaultDays: number,
  what: string,
): { notBefore: Date; notAfter: Date } {
  const days = opts.validDays ?? defaultDays;
  if (!Number.isFinite(days) || days <= 0) {
    throw new RangeError(`${what}: validDays must be a positive number of days, got ${String(days)}`);
  }
  for (const key of ['notBefore', 'notAfter'] as const) {
    const d = opts[key];
    if (d !== undefined && (!(d instanceof Date) || Number.isNaN(d.getTime()))) {
      throw new TypeError(`${what}: ${key} must be a valid Date`);
    }
  }
  let notBefore: Date;
  let notAfter: Date;
  if (opts.notBefore) {
    notBefore = opts.notBefore;
    notAfter = opts.notAfter ?? new Date(notBefore.getTime() + days * DAY_MS);
  } else if (opts.notAfter) {
    notAfter = opts.notAfter;
    notBefore = new Date(Math.min(Date.now() - CLOCK_SKEW_MS, notAfter.getTime() - days * DAY_MS));
  } else {
    const now = Date.now();
    notBefore = new Date(now - CLOCK_SKEW_MS);
    notAfter = new Date(now + days * DAY_MS);
  }
  // ASN.1 time has one-second resolution; compare at that granularity.
  if (Math.floor(notAfter.getTime() / 1000) <= Math.floor(notBefore.getTime() / 1000)) {
    throw new RangeError(
      `${what}: notAfter (${notAfter.toISOString()}) must be later than notBefore (${notBefore.toISOString()})`,
    );
  }
  return { notBefore, notAfter };
}

export function checkAlgorithm(value: KeyAlgorithm | undefined, what: string): KeyAlgorithm {
  const alg = value ?? 'ecdsa-p256';
  if (alg !== 'ecdsa-p256' && alg !== 'rsa-2048') {
    throw new TypeError(`${what}: expected ecdsa-p256 or rsa-2048, got ${JSON.stringify(alg)}`);
  }
  return alg;
}

export function checkUsage(usage: CertUsage[] | undefined): CertUsage[] {
  if (!Array.isArray(usage) || usage.length === 0) {
    throw new TypeError(`issueCert: usage must list 'server' and/or 'client' (etcd server certs need both)`);
  }
  for (const u of usage) {
    if (u !== 'server' && u !== 'client') {
      throw new TypeError(`issueCert: usage: expected 'server' or 'client', got ${JSON.stringify(u)}`);
    }
  }
  // Stable order and no duplicate OIDs, whatever order the caller used.
  return (['server', 'client'] as const).filter((u) => usage.includes(u));
}

export function checkName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') {
    throw new TypeError(`${what}: expected a non-empty string, got ${JSON.stringify(value)}`);
  }
  if (/[\u0000-\u001f\u007f]/.test(value)) {
    throw new TypeError(`${what}: control characters are not allowed, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function checkDnsName(name: string): string {
  // IA5String only: Go refuses non-ASCII SANs; IDNs must be punycoded (xn--...).
  // A leading "*." wildcard is allowed for server certs.
  if (typeof name !== 'string' || !/^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/.test(name) || name.length > 253) {
    throw new TypeError(
      `DNS SAN: ${JSON.stringify(name)} is not a valid DNS name; use letters, digits, '-' and '.', punycode for IDNs` +
        (typeof name === 'string' && name.includes(':') && !isIP(name) ? ' (for a URI SAN use uris, for a group use o)' : ''),
    );
  }
  return name;
}

export function checkUri(uri: string): string {
  try {
    new URL(uri);
  } catch {
    throw new TypeError(`URI SAN: ${JSON.stringify(uri)} is not an absolute URI; write e.g. spiffe://cluster.local/ns/NS/sa/NAME`);
  }
  // Go parses URI SANs with url.Parse and rejects certs with unparsable ones;
  // non-ASCII would also break the IA5String encoding.
  if (!/^[\x21-\x7e]+$/.test(uri)) {
    throw new TypeError(`URI SAN: ${JSON.stringify(uri)} contains spaces or non-ASCII characters; percent-encode them`);
  }
  return uri;
}

/**
 * Text form that @peculiar's IP converter encodes correctly: it only parses
 * dotted IPv4 and plain hex-group IPv6, so IPv4-embedded IPv6 forms
 * ('::ffff:10.0.0.1') are rewritten to eight hex groups first.
 */
export function ipForSan(ip: string): string {
  const version = typeof ip === 'string' && !ip.includes('%') ? isIP(ip) : 0;
  if (version === 0) {
    throw new TypeError(`IP SAN: ${JSON.stringify(ip)} is not an IPv4 or IPv6 address (zone ids are not allowed); put host names in dns`);
  }
  if (version === 4) return ip;

  let s = ip.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = s.split('::');
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const groups = halves.length === 2 ? [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail] : head;
  if (groups.length !== 8) {
    throw new TypeError(`IP SAN: cannot expand IPv6 address ${JSON.stringify(ip)}`);
  }
  return groups.map((g) => parseInt(g, 16).toString(16)).join(':');
}

export function evenHex(hex: string): string {
  return hex.length % 2 === 1 ? `0${hex}` : hex;
}

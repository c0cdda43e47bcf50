import type { AllowRule } from '../config/schema.js';
import type { Identity } from './identity.js';

// Authorization of a verified client: the certificate chains to clientCA and
// is in date and unrevoked (OpenSSL checked that); the allow rules then say
// which identities may pass. A rule matches when every field it names matches
// (any of the certificate's O, DNS or URI values for those fields); any
// matching rule admits.
//
// Globs: `?` is one character and `*` any run of characters, but in `dns` and
// `uri` neither crosses a separator (`.` and `/`): `*.svc` is one label,
// `spiffe://td/ns/*/sa/x` one path segment, as a TLS wildcard or a SPIFFE ID
// path would be read. `**` crosses separators. In `cn` and `o`, which have no
// structure, `*` and `**` are the same.

export class Authorizer {
  private readonly rules: { cn?: RegExp; o?: RegExp; dns?: RegExp; uri?: RegExp }[];

  constructor(rules: readonly AllowRule[]) {
    this.rules = rules.map((r) => ({
      ...(r.cn !== undefined ? { cn: glob(r.cn) } : {}),
      ...(r.o !== undefined ? { o: glob(r.o) } : {}),
      ...(r.dns !== undefined ? { dns: glob(r.dns, '.') } : {}),
      ...(r.uri !== undefined ? { uri: glob(r.uri, '/') } : {}),
    }));
  }

  /** An empty rule list admits any certificate from clientCA. */
  allows(id: Identity): boolean {
    if (this.rules.length === 0) return true;
    return this.rules.some(
      (r) =>
        (r.cn === undefined || r.cn.test(id.cn)) &&
        (r.o === undefined || id.o.some((o) => r.o!.test(o))) &&
        (r.dns === undefined || id.dns.some((d) => r.dns!.test(d))) &&
        (r.uri === undefined || id.uri.some((u) => r.uri!.test(u))),
    );
  }
}

export function glob(pattern: string, separator?: string): RegExp {
  const one = separator === undefined ? '[^]' : `[^${escapeRe(separator)}]`;
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*' && pattern[i + 1] === '*') {
      re += '[^]*';
      while (pattern[i + 1] === '*') i++;
    } else if (ch === '*') re += `${one}*`;
    else if (ch === '?') re += one;
    else re += escapeRe(ch);
  }
  return new RegExp(`${re}$`);
}

function escapeRe(ch: string): string {
  return ch.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

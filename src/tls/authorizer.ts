import type { AllowRule } from '../config/schema.js';
import type { Identity } from './identity.js';

// Authorization of a verified client: the certificate chains to clientCA and
// is in date and unrevoked (OpenSSL checked that); the allow rules then say
// which identities may pass. A rule matches when every field it names matches
// (globs: `*` any run of characters, `?` one); any matching rule admits.

export class Authorizer {
  private readonly rules: { cn?: RegExp; o?: RegExp; dns?: RegExp; uri?: RegExp }[];

  constructor(rules: readonly AllowRule[]) {
    this.rules = rules.map((r) => ({
      ...(r.cn !== undefined ? { cn: glob(r.cn) } : {}),
      ...(r.o !== undefined ? { o: glob(r.o) } : {}),
      ...(r.dns !== undefined ? { dns: glob(r.dns) } : {}),
      ...(r.uri !== undefined ? { uri: glob(r.uri) } : {}),
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

export function glob(pattern: string): RegExp {
  let re = '^';
  for (const ch of pattern) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`${re}$`, 's');
}

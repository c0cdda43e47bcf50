import { describe, expect, it } from 'vitest';
import { Authorizer, glob } from '../../src/tls/authorizer.js';
import type { Identity } from '../../src/tls/identity.js';

// Allow rules as a pure function of (rules, identity): every field a rule
// names must match, any matching rule admits, an empty list admits all.
// (Raised from surviving mutants of `npm run mutation`.)

function id(fields: Partial<Identity>): Identity {
  return { cn: '', cnCount: 1, o: [], dns: [], uri: [], fingerprint: 'AA', serial: '01', issuer: 'i', revocationKey: 'i/01', notBefore: 0, notAfter: 1, text: '', ...fields };
}

const apiserver = id({ cn: 'kube-apiserver-etcd-client', o: ['system:masters'] });

describe('Authorizer', () => {
  it('admits any verified certificate when there are no rules', () => {
    expect(new Authorizer([]).allows(id({ cn: 'anyone' }))).toBe(true);
  });

  it('a CN rule admits that CN only', () => {
    const a = new Authorizer([{ cn: 'kube-apiserver-etcd-client' }]);
    expect(a.allows(apiserver)).toBe(true);
    expect(a.allows(id({ cn: 'intruder', o: ['system:masters'] }))).toBe(false);
  });

  it('a { cn, o } rule needs both: the right CN with another O, or none, is refused', () => {
    const a = new Authorizer([{ cn: 'kube-apiserver-etcd-client', o: 'system:masters' }]);
    expect(a.allows(apiserver)).toBe(true);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client', o: ['developers'] }))).toBe(false);
    expect(a.allows(id({ cn: 'kube-apiserver-etcd-client' }))).toBe(false);
    expect(a.allows(id({ cn: 'intruder', o: ['system:masters'] }))).toBe(false);
  });

  it('an O rule matches when any of several organizations matches', () => {
    const a = new Authorizer([{ o: 'system:masters' }]);
    expect(a.allows(id({ cn: 'x', o: ['developers', 'system:masters'] }))).toBe(true);
    expect(a.allows(id({ cn: 'x', o: ['developers', 'ops'] }))).toBe(false);
  });

  it('a DNS rule matches any DNS SAN, and needs one', () => {
    const a = new Authorizer([{ dns: '*.etcd.local' }]);
    expect(a.allows(id({ dns: ['other.example', 'm1.etcd.local'] }))).toBe(true);
    expect(a.allows(id({ dns: ['other.example'] }))).toBe(false);
    expect(a.allows(id({ cn: 'm1.etcd.local' }))).toBe(false);
  });

  it('a URI rule matches any URI SAN (SPIFFE), and needs one', () => {
    const a = new Authorizer([{ uri: 'spiffe://cluster.local/ns/kube-system/sa/*' }]);
    expect(a.allows(id({ uri: ['spiffe://cluster.local/ns/kube-system/sa/backup'] }))).toBe(true);
    expect(a.allows(id({ uri: ['spiffe://cluster.local/ns/default/sa/backup'] }))).toBe(false);
    expect(a.allows(id({ cn: 'spiffe://cluster.local/ns/kube-system/sa/backup' }))).toBe(false);
  });

  it('every field of a rule must match: { dns, uri } with only one of them is refused', () => {
    const a = new Authorizer([{ dns: 'a.local', uri: 'spiffe://x/y' }]);
    expect(a.allows(id({ dns: ['a.local'], uri: ['spiffe://x/y'] }))).toBe(true);
    expect(a.allows(id({ dns: ['a.local'] }))).toBe(false);
    expect(a.allows(id({ uri: ['spiffe://x/y'] }))).toBe(false);
  });

  it('any matching rule admits', () => {
    const a = new Authorizer([{ cn: 'first' }, { cn: 'second' }]);
    expect(a.allows(id({ cn: 'first' }))).toBe(true);
    expect(a.allows(id({ cn: 'second' }))).toBe(true);
    expect(a.allows(id({ cn: 'third' }))).toBe(false);
  });
});

describe('glob', () => {
  it('* is any run of characters, including none, and anchors both ends', () => {
    expect(glob('system:*').test('system:masters')).toBe(true);
    expect(glob('system:*').test('system:')).toBe(true);
    expect(glob('system:*').test('xsystem:masters')).toBe(false);
    expect(glob('*.local').test('a.b.local')).toBe(true);
    expect(glob('*.local').test('a.localx')).toBe(false);
  });

  it('? is exactly one character', () => {
    expect(glob('etcd-?').test('etcd-1')).toBe(true);
    expect(glob('etcd-?').test('etcd-')).toBe(false);
    expect(glob('etcd-?').test('etcd-12')).toBe(false);
  });

  it('regex metacharacters are literal', () => {
    expect(glob('a.b').test('a.b')).toBe(true);
    expect(glob('a.b').test('axb')).toBe(false);
    expect(glob('a+b').test('a+b')).toBe(true);
    expect(glob('a+b').test('aab')).toBe(false);
    expect(glob('(x)|y').test('(x)|y')).toBe(true);
    expect(glob('(x)|y').test('y')).toBe(false);
    expect(glob('[ab]').test('a')).toBe(false);
    expect(glob('a\\b').test('a\\b')).toBe(true);
    expect(glob('^a$').test('^a$')).toBe(true);
    expect(glob('{1}').test('{1}')).toBe(true);
    expect(glob('spiffe://x/y').test('spiffe://x/y')).toBe(true);
  });

  it('* spans any character, newlines included', () => {
    expect(glob('a*b').test('a\nb')).toBe(true);
    expect(glob('a?b').test('a\nb')).toBe(true);
  });
});

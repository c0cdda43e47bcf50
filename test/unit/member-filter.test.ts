// What discovery may follow (issue #15): a member list is the cluster's word.
import { describe, expect, it } from 'vitest';
import { parseAddress, parseHostEntry, type Address } from '../../src/config/address.js';
import { MemberFilter } from '../../src/upstream/discovery/member-filter.js';

const addr = (t: string): Address => {
  const r = parseAddress(t.replace(/^unix:\/\//, 'unix:'), { allowScheme: true, allowHostname: true });
  if (!r.ok) throw new Error(r.error);
  return r.address;
};
const seeds = ['https://10.0.0.11:2379', 'https://10.0.0.12:2379'].map(addr);
const verdict = (f: MemberFilter, url: string) => f.check(url, addr(url));

describe('member filter', () => {
  it('follows the seeds and refuses other hosts, ports, schemes and unix sockets', () => {
    const f = new MemberFilter(seeds, [], 'https');
    expect(verdict(f, 'https://10.0.0.12:2379')).toEqual({ ok: true });
    expect(verdict(f, 'https://10.0.0.13:2379')).toMatchObject({ ok: false, reason: expect.stringMatching(/host 10\.0\.0\.13 is neither/) });
    expect(verdict(f, 'https://localhost:2379')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://127.0.0.1:2379')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://10.0.0.11:9901')).toMatchObject({ ok: false, reason: expect.stringMatching(/^port 9901 is not allowed/) });
    expect(verdict(f, 'http://10.0.0.11:2379')).toMatchObject({ ok: false, reason: expect.stringMatching(/scheme http/) });
    expect(verdict(f, 'unix:///run/x.sock')).toMatchObject({ ok: false, reason: 'a unix socket that is not a seed' });
  });

  it('discoveryHosts: CIDRs and names on the seeds ports, or a port, or any port', () => {
    const f = new MemberFilter(seeds, ['10.0.1.0/24', 'etcd-4.example', '10.0.2.5:2389', '127.0.0.1:*', '[fd00::/64]:*'], 'https');
    expect(verdict(f, 'https://10.0.1.7:2379')).toEqual({ ok: true });
    expect(verdict(f, 'https://10.0.1.7:2380')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://10.0.3.7:2379')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://etcd-4.example:2379')).toEqual({ ok: true });
    expect(verdict(f, 'https://etcd-4.example.evil:2379')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://10.0.2.5:2389')).toEqual({ ok: true });
    expect(verdict(f, 'https://10.0.2.5:2379')).toMatchObject({ ok: false });
    expect(verdict(f, 'https://127.0.0.1:40001')).toEqual({ ok: true });
    expect(verdict(f, 'https://[fd00::5]:1')).toEqual({ ok: true });
  });

  it('parses discoveryHosts entries and refuses malformed ones', () => {
    expect(parseHostEntry('10.0.0.0/24')).toEqual({ host: '10.0.0.0/24', port: undefined });
    expect(parseHostEntry('127.0.0.1:*')).toEqual({ host: '127.0.0.1', port: '*' });
    expect(parseHostEntry('[::1]:2379')).toEqual({ host: '::1', port: 2379 });
    expect(parseHostEntry('fd00::1')).toEqual({ host: 'fd00::1', port: undefined });
    for (const bad of ['', 'http://x', '10.0.0.0/33', 'a b', 'x:0', 'x:99999', 'x:port']) expect(parseHostEntry(bad), bad).toBeUndefined();
  });
});

import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { describePlan, planReload, type ReloadPlan } from '../../src/reload/reload-plan.js';

// The reload plan is a pure function of the running config and the next one:
// each row edits a base config and says what the plan must do.

const base = `
admin: { listen: 127.0.0.1:7001 }
log: { level: info }
tls:
  front: { cert: /pki/front.crt, key: /pki/front.key, ca: /pki/ca.crt, clientCA: /pki/ca.crt, crl: /pki/ca.crl, allow: [{ cn: kube-apiserver }] }
  origin: { cert: /pki/client.crt, key: /pki/client.key, ca: /pki/ca.crt }
listeners:
  - { name: etcd, listen: 127.0.0.1:2379, cluster: etcd, tls: front }
  - { name: plain, listen: 127.0.0.1:2380, cluster: etcd }
clusters:
  - name: etcd
    endpoints: [10.0.0.1:2379, 10.0.0.2:2379]
    tls: origin
    balance: affinity
    health: { check: etcd, interval: 500ms }
`;

const prev = parseConfig(base, '<prev>');
const plan = (edit: (s: string) => string): ReloadPlan => {
  const d = planReload(prev, parseConfig(edit(base), '<next>'));
  if (d.kind !== 'apply') throw new Error(`refused: ${d.message}`);
  return d;
};

const summary = (p: ReloadPlan) => ({
  tls: { load: p.tls.load, remove: p.tls.remove, crlDropped: p.tls.crlDropped },
  clusters: { add: p.clusters.add.map((c) => c.name), update: p.clusters.update.map((u) => `${u.config.name}${u.restartLoops ? '+loops' : ''}`), remove: p.clusters.remove },
  listeners: {
    bind: p.listeners.bind.map((l) => l.name),
    rebind: p.listeners.rebind.map((l) => l.name),
    retire: p.listeners.retire,
    update: p.listeners.update.map((u) => `${u.config.name}${u.replaceTls ? '+tls' : ''}`),
  },
  logLevel: p.logLevel,
  backupChanged: p.backupChanged,
});

const none = {
  tls: { load: [], remove: [], crlDropped: [] },
  clusters: { add: [], update: [], remove: [] },
  listeners: { bind: [], rebind: [], retire: [], update: [] },
  logLevel: undefined,
  backupChanged: false,
};

describe('reload plan', () => {
  it('does nothing for the same config, whatever the file says in comments or key order', () => {
    const p = plan((s) => `# edited\n${s.replace('log: { level: info }', 'log:\n  level: info')}`);
    expect(summary(p)).toEqual(none);
    expect(describePlan(p)).toBe('no change');
  });

  it.each([
    ['a new listener binds', (s: string) => s.replace('clusters:', 'clusters:').replace('  - { name: plain', '  - { name: more, listen: 127.0.0.1:2381, cluster: etcd }\n  - { name: plain'), { listeners: { ...none.listeners, bind: ['more'] } }],
    ['a removed listener retires', (s: string) => s.replace('  - { name: plain, listen: 127.0.0.1:2380, cluster: etcd }\n', ''), { listeners: { ...none.listeners, retire: ['plain'] } }],
    ['a listener moved to another address binds anew and its old socket retires', (s: string) => s.replace('127.0.0.1:2380', '127.0.0.1:2390'), { listeners: { ...none.listeners, bind: ['plain'], retire: ['plain'] } }],
    ['termination switched on needs a new socket on the same address', (s: string) => s.replace('cluster: etcd }\nclusters', 'cluster: etcd, tls: front }\nclusters'), { listeners: { ...none.listeners, rebind: ['plain'], retire: ['plain'] } }],
    ['another backlog needs a new socket', (s: string) => s.replace('cluster: etcd }\nclusters', 'cluster: etcd, backlog: 64 }\nclusters'), { listeners: { ...none.listeners, rebind: ['plain'], retire: ['plain'] } }],
    ['a new idle timeout applies in place', (s: string) => s.replace('cluster: etcd }\nclusters', 'cluster: etcd, idleTimeout: 5m }\nclusters'), { listeners: { ...none.listeners, update: ['plain'] } }],
    [
      'a changed server profile is reloaded and swapped into its listener in place',
      (s: string) => s.replace('allow: [{ cn: kube-apiserver }]', 'allow: [{ cn: kube-apiserver-2 }]'),
      { tls: { ...none.tls, load: ['front'] }, listeners: { ...none.listeners, update: ['etcd+tls'] } },
    ],
    [
      'a dropped CRL is reloaded and flagged',
      (s: string) => s.replace(', crl: /pki/ca.crl', ''),
      { tls: { ...none.tls, load: ['front'], crlDropped: ['front'] }, listeners: { ...none.listeners, update: ['etcd+tls'] } },
    ],
    [
      'a profile that gains a role (a cluster now checks with it) is reloaded',
      (s: string) => s.replace('health: { check: etcd, interval: 500ms }', 'health: { check: etcd, interval: 500ms, tls: front }'),
      { tls: { ...none.tls, load: ['front'] }, clusters: { ...none.clusters, update: ['etcd+loops'] }, listeners: { ...none.listeners, update: ['etcd+tls'] } },
    ],
    [
      'an affinity key change reloads the terminating profile (it derives the key)',
      (s: string) => s.replace('balance: affinity', 'balance: affinity\n    affinity: { key: cn }'),
      { tls: { ...none.tls, load: ['front'] }, clusters: { ...none.clusters, update: ['etcd'] }, listeners: { ...none.listeners, update: ['etcd+tls'] } },
    ],
    ['an unused profile removed', (s: string) => s.replace('    tls: origin\n', '').replace('  origin: { cert: /pki/client.crt, key: /pki/client.key, ca: /pki/ca.crt }\n', ''), { tls: { ...none.tls, remove: ['origin'] }, clusters: { ...none.clusters, update: ['etcd+loops'] } }],
    ['new endpoints reconfigure the cluster without restarting its checks', (s: string) => s.replace('10.0.0.2:2379]', '10.0.0.2:2379, 10.0.0.3:2379]'), { clusters: { ...none.clusters, update: ['etcd'] } }],
    ['new health settings restart its checks', (s: string) => s.replace('interval: 500ms', 'interval: 1s'), { clusters: { ...none.clusters, update: ['etcd+loops'] } }],
    [
      'a new cluster with its listener',
      (s: string) => `${s.replace('  - { name: plain', '  - { name: api, listen: 127.0.0.1:6443, cluster: api }\n  - { name: plain')}  - name: api\n    endpoints: [10.0.0.1:6443]\n`,
      { clusters: { ...none.clusters, add: ['api'] }, listeners: { ...none.listeners, bind: ['api'] } },
    ],
    ['the log level', (s: string) => s.replace('level: info', 'level: debug'), { logLevel: 'debug' }],
    ['a backup section', (s: string) => `${s}backup: { cluster: etcd, dir: /var/backups/etcd }\n`, { backupChanged: true }],
  ])('%s', (_name, edit, want) => {
    expect(summary(plan(edit))).toEqual({ ...none, ...want });
  });

  it('a cluster removed with its listener', () => {
    const two = `${base.replace('  - { name: plain', '  - { name: api, listen: 127.0.0.1:6443, cluster: api }\n  - { name: plain')}  - name: api\n    endpoints: [10.0.0.1:6443]\n`;
    const d = planReload(parseConfig(two, '<prev>'), prev);
    expect(d.kind === 'apply' && summary(d)).toEqual({ ...none, clusters: { ...none.clusters, remove: ['api'] }, listeners: { ...none.listeners, retire: ['api'] } });
    expect(d.kind === 'apply' && describePlan(d)).toBe('listeners -api; clusters -api');
  });

  it.each([
    ['admin', (s: string) => s.replace('127.0.0.1:7001', '127.0.0.1:7002')],
    ['workers', (s: string) => `workers: 2\n${s}`],
    ['handover', (s: string) => `handover: false\n${s}`],
    ['workerSockets', (s: string) => `workerSockets: shared\n${s}`],
    ['vip', (s: string) => `vip: { address: 192.0.2.10/24, interface: eth0, cluster: etcd }\n${s}`],
  ])('refuses a change to %s as restart_required, naming it', (setting, edit) => {
    const d = planReload(prev, parseConfig(edit(base), '<next>'));
    expect(d).toMatchObject({ kind: 'refused', reason: 'restart_required', settings: [setting] });
    expect(d.kind === 'refused' && d.message).toMatch(new RegExp(`^${setting} changed: that needs a restart`));
  });

  it('names every setting that needs a restart, not only the first', () => {
    const d = planReload(prev, parseConfig(`workers: 2\nhandover: false\n${base.replace('127.0.0.1:7001', '127.0.0.1:7002')}`, '<next>'));
    expect(d.kind === 'refused' && d.settings).toEqual(['admin', 'workers', 'handover']);
  });
});

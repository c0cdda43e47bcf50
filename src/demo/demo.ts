import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { AdminServer } from '../admin/admin-server.js';
import { Ballast } from '../ballast.js';
import { loadConfigFile } from '../config/load.js';
import { createLogger } from '../log.js';
import { runCertsCommand } from '../tls/certs-command.js';
import { findEtcd, launchEtcdCluster, stopMembers, type LaunchedMember } from './etcd-launcher.js';

// `ballast demo`: a real 3-member etcd cluster on loopback that only accepts
// mTLS clients, and ballast in front of it doing what it does in production:
// mTLS termination with an allow list, origination with its own identity,
// session affinity, etcd health checks and member discovery. A small writer
// shows traffic and failover as it happens. Everything lives in one temp dir
// that Ctrl-C removes.

const USAGE = `usage: ballast demo [--base-port N] [--no-traffic] [--keep]

  --base-port N   ballast listens on N, its admin server on N+1, etcd members on N+10.. (client) and N+20.. (peer); default 23790
  --no-traffic    do not run the demo writer
  --keep          keep the temp dir (certificates, config, etcd logs) on exit
`;

export async function runDemo(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: { 'base-port': { type: 'string' }, 'no-traffic': { type: 'boolean' }, keep: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
  } catch (err) {
    process.stderr.write(`ballast demo: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const base = Number(values['base-port'] ?? 23790);
  if (!Number.isInteger(base) || base < 1024 || base > 65500) {
    process.stderr.write(`ballast demo: --base-port must be a whole number from 1024 to 65500, got "${values['base-port']}"\n`);
    return 2;
  }
  const etcdBin = findEtcd();
  if (!etcdBin) {
    process.stderr.write('ballast demo: the etcd binary is not installed. Install Debian\'s etcd-server and etcd-client (`sudo apt-get install etcd-server etcd-client`), or run `npm run demo` as root, which installs them.\n');
    return 1;
  }

  const dir = mkdtempSync(path.join(os.tmpdir(), 'ballast-demo-'));
  const say = (line = '') => process.stdout.write(`${line}\n`);
  let members: LaunchedMember[] = [];
  let ballast: Ballast | undefined;
  let admin: AdminServer | undefined;
  let traffic: Traffic | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      traffic?.stop();
      await ballast?.stop();
      await admin?.close();
      await stopMembers(members);
      if (!values.keep) rmSync(dir, { recursive: true, force: true });
    })());

  try {
    // 1. Certificates, made by `ballast certs`.
    const pki = path.join(dir, 'pki');
    const quiet = { log: () => undefined, error: (l: string) => process.stderr.write(`${l}\n`) };
    const code = await runCertsCommand(
      [
        '--out', pki,
        '--ca-cn', 'ballast-demo-etcd-ca',
        '--server', 'etcd:localhost,127.0.0.1',
        '--server', 'ballast:localhost,127.0.0.1',
        '--client', 'ballast-etcd-client',
        '--client', 'kube-apiserver-etcd-client:O=system:masters',
        '--client', 'intruder',
      ],
      quiet,
    );
    if (code !== 0) throw new Error('could not make the demo certificates');
    const f = (name: string) => path.join(pki, name);

    // 2. A TLS-only etcd cluster.
    const clientPorts = [base + 10, base + 11, base + 12];
    const peerPorts = [base + 20, base + 21, base + 22];
    say(`starting a 3-member etcd cluster (TLS only, client certificates required) in ${dir}`);
    members = await launchEtcdCluster({ binary: etcdBin, dir, clientPorts, peerPorts, tls: { cert: f('etcd.crt'), key: f('etcd.key'), ca: f('ca.crt') }, token: `ballast-demo-${process.pid}` });

    // 3. ballast in front of it.
    const configFile = path.join(dir, 'ballast.yaml');
    writeFileSync(
      configFile,
      `# written by ballast demo
admin: { listen: 127.0.0.1:${base + 1} }
log: { level: info }
drainTimeout: 2s
tls:
  guard:
    cert: ${f('ballast.crt')}
    key: ${f('ballast.key')}
    clientCA: ${f('ca.crt')}
    allow: [{ cn: kube-apiserver-etcd-client }]
  to-etcd:
    cert: ${f('ballast-etcd-client.crt')}
    key: ${f('ballast-etcd-client.key')}
    ca: ${f('ca.crt')}
listeners:
  - { name: etcd, listen: 127.0.0.1:${base}, cluster: etcd, tls: guard }
clusters:
  - name: etcd
    endpoints: [https://127.0.0.1:${clientPorts[0]}]   # a seed: the others are discovered
    discovery: etcd-members
    syncInterval: 5s
    discoveryHosts: ["127.0.0.1:*"]   # the demo's members share 127.0.0.1 on their own ports
    tls: to-etcd
    balance: affinity
    health: { check: etcd }
`,
    );
    const config = loadConfigFile(configFile);
    const log = createLogger('info');
    ballast = new Ballast(config, log);
    await ballast.start();
    admin = new AdminServer(ballast, config.admin.listen, log, 'full', config.admin);
    await admin.start();
    // Wait until ballast has discovered and checked all three members, so the
    // first thing the user sees is a healthy cluster.
    const cluster = ballast.clusters.get('etcd')!;
    const deadline = Date.now() + 30_000;
    while (!(cluster.endpoints.length === 3 && cluster.endpoints.every((e) => e.state === 'up')) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }

    const ctl = `ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:${base} --cacert=${f('ca.crt')} --cert=${f('kube-apiserver-etcd-client.crt')} --key=${f('kube-apiserver-etcd-client.key')}`;
    say('');
    say(`ballast is the only door to etcd: https://127.0.0.1:${base} (mTLS; only CN=kube-apiserver-etcd-client gets in)`);
    say(`status page:   http://127.0.0.1:${base + 1}/   (metrics: /metrics, JSON: /status)`);
    say('');
    say('talk to etcd through ballast:');
    say(`  ${ctl} put hello world`);
    say(`  ${ctl} get hello`);
    say(`  ${ctl} endpoint status -w table      # which member answered you (affinity)`);
    say('an identity that is not allowed is refused before a byte reaches etcd:');
    say(`  ${ctl.replace(/kube-apiserver-etcd-client/g, 'intruder')} get hello`);
    say('');
    say('break things and watch the status page:');
    for (const m of members) say(`  kill -9 ${m.pid}      # ${m.name} (${m.clientUrl}); or kill -STOP ${m.pid} to hang it, kill -CONT ${m.pid} to resume`);
    say('');
    say('Ctrl-C stops everything and removes the temp dir.');
    say('');
    if (!values['no-traffic']) {
      traffic = new Traffic(`https://127.0.0.1:${base}`, { ca: readFileSync(f('ca.crt')), cert: readFileSync(f('kube-apiserver-etcd-client.crt')), key: readFileSync(f('kube-apiserver-etcd-client.key')) }, members);
      traffic.start();
    }
  } catch (err) {
    process.stderr.write(`ballast demo: ${(err as Error).message}\n`);
    await cleanup();
    return 1;
  }

  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      say(`\n${signal}: stopping ballast and the etcd members, removing ${values.keep ? 'nothing (--keep)' : dir}`);
      void cleanup().then(() => resolve(0));
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

/** A demo writer: one put every 100 ms through ballast, a summary line every 2 s. */
class Traffic {
  private client: Etcd3;
  private timer: NodeJS.Timeout | undefined;
  private report: NodeJS.Timeout | undefined;
  private ok = 0;
  private failed = 0;
  private member = '';
  private n = 0;
  private names = new Map<string, string>();

  constructor(
    url: string,
    tls: { ca: Buffer; cert: Buffer; key: Buffer },
    private readonly members: LaunchedMember[],
  ) {
    this.client = new Etcd3({
      hosts: url,
      credentials: { rootCertificate: tls.ca, certChain: tls.cert, privateKey: tls.key },
      dialTimeout: 1000,
      defaultCallOptions: () => ({ deadline: Date.now() + 1000 }),
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    });
  }

  start(): void {
    void this.learnNames();
    this.timer = setInterval(() => void this.tick(), 100);
    this.report = setInterval(() => {
      const who = this.names.get(this.member) ?? this.member;
      process.stdout.write(`demo writer: ${this.ok} ok, ${this.failed} failed in the last 2s; answered by ${who || '?'}\n`);
      this.ok = 0;
      this.failed = 0;
    }, 2000);
  }

  private async learnNames(): Promise<void> {
    try {
      const list = await this.client.cluster.memberList({});
      for (const m of list.members) this.names.set(BigInt(m.ID).toString(16), m.name);
    } catch {
      // names are cosmetic
    }
  }

  private async tick(): Promise<void> {
    try {
      const r = await this.client.put(`demo/${this.n++ % 1000}`).value(new Date().toISOString()).exec();
      this.ok++;
      this.member = BigInt(r.header.member_id).toString(16);
    } catch {
      this.failed++;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.report) clearInterval(this.report);
    this.client.close();
    void this.members;
  }
}

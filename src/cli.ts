#!/usr/bin/env node
import { readFileSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import type { Config } from './config/load.js';
import { VERSION } from './version.js';
import { reusePortSupported } from './workers/reuse-port.js';

// Subcommands load what they need when they run: `--version` and `--help`
// answer at once, and `run` does not pay for `certs`' X.509 library.

const USAGE = `ballast ${VERSION}: a proxy that keeps Kubernetes control planes available

usage:
  ballast run --config FILE [--log-level LEVEL]   run in the foreground (SIGHUP reloads, SIGTERM drains)
  ballast check-config --config FILE              validate a config and the files it names, then exit
  ballast certs --out DIR [...]                   make a CA and server/client certificates (see: ballast certs --help)
  ballast demo [--base-port N]                    a 3-member etcd cluster behind ballast with mTLS, on loopback
  ballast backup --config FILE                    take one verified etcd snapshot into backup.dir now
  ballast restore-drill (--snapshot FILE | --dir DIR) [--keep-dir]
                                                  restore a snapshot into a throwaway etcd and check it serves the data
  ballast --version | --help

exit codes: 0 ok, 1 runtime failure, 2 bad usage or config
`;

async function main(argv: string[]): Promise<number> {
  if (cluster.isWorker && process.env.BALLAST_WORKER !== undefined) {
    const { runWorker } = await import('./workers/worker-main.js');
    return runWorker();
  }
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    case '-v':
    case '--version':
    case 'version':
      process.stdout.write(`ballast ${VERSION} (node ${process.versions.node})\n`);
      return 0;
    case 'run':
      return run(rest);
    case 'check-config':
      return checkConfig(rest);
    case 'certs': {
      const { runCertsCommand } = await import('./tls/certs-command.js');
      return runCertsCommand(rest, { log: (l) => process.stdout.write(`${l}\n`), error: (l) => process.stderr.write(`${l}\n`) });
    }
    case 'demo': {
      const { runDemo } = await import('./demo/demo.js');
      return runDemo(rest);
    }
    case 'backup': {
      const { runBackupCommand } = await import('./backup/backup-command.js');
      return runBackupCommand(rest);
    }
    case 'restore-drill': {
      const { runRestoreDrillCommand } = await import('./backup/restore-drill.js');
      return runRestoreDrillCommand(rest);
    }
    default:
      process.stderr.write(`ballast: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

function parse(args: string[], options: NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>['options']>): ReturnType<typeof parseArgs> | number {
  try {
    return parseArgs({ args, options, allowPositionals: false, strict: true });
  } catch (err) {
    process.stderr.write(`ballast: ${(err as Error).message}\n`);
    return 2;
  }
}

/** Load and fully validate a config, TLS files included. Prints the error and returns undefined on failure. */
export async function loadChecked(path: string): Promise<Config | undefined> {
  const { ConfigError, loadConfigFile } = await import('./config/load.js');
  const { buildTlsProfiles } = await import('./tls/profiles.js');
  const { createLogger } = await import('./log.js');
  try {
    const config = loadConfigFile(path);
    // Read every certificate and key now: a bad file is a config error, found before anything listens.
    const silent = createLogger('silent');
    for (const p of buildTlsProfiles(config, silent).values()) p.close();
    return config;
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`ballast: ${err.message}\n`);
    else process.stderr.write(`ballast: ${path}: ${(err as Error).message}\n`);
    return undefined;
  }
}

async function checkConfig(args: string[]): Promise<number> {
  const p = parse(args, { config: { type: 'string', short: 'c' } });
  if (typeof p === 'number') return p;
  const path = p.values.config as string | undefined;
  if (!path) {
    process.stderr.write('ballast check-config: --config FILE is required\n');
    return 2;
  }
  const config = await loadChecked(path);
  if (!config) return 2;
  process.stdout.write(
    `${path}: valid: ${config.listeners.length} listener(s) [${config.listeners.map((l) => `${l.name} ${l.listen.text} -> ${l.cluster}${l.tls ? ` (tls ${l.tls})` : ''}`).join(', ')}], ` +
      `${config.clusters.length} cluster(s) [${config.clusters.map((c) => `${c.name}: ${c.endpoints.length} endpoint(s), ${c.balance}, check ${c.health.check}`).join('; ')}], ` +
      `${config.tls.size} TLS profile(s)\n`,
  );
  return 0;
}

async function run(args: string[]): Promise<number> {
  const p = parse(args, { config: { type: 'string', short: 'c' }, 'log-level': { type: 'string' } });
  if (typeof p === 'number') return p;
  const path = p.values.config as string | undefined;
  if (!path) {
    process.stderr.write('ballast run: --config FILE is required\n');
    return 2;
  }
  const config = await loadChecked(path);
  if (!config) return 2;
  // Sockets and files ballast makes are its own until it widens them
  // (socketMode): a unix listener is never connectable by others between
  // bind and chmod, whatever umask ballast was started with.
  process.umask(0o077);
  const { createLogger } = await import('./log.js');
  const { Ballast } = await import('./ballast.js');
  const { AdminServer } = await import('./admin/admin-server.js');
  const level = (p.values['log-level'] as string | undefined) ?? config.log.level;
  const log = createLogger(level);
  const workers = config.workers === 0 ? availableParallelism() : config.workers;
  // One process, or a primary (control plane) with worker processes (data plane).
  // SO_REUSEPORT lets the next ballast bind these ports before this one drains (restarts refuse no one).
  const handover = config.handover && reusePortSupported();
  const ballast = new Ballast(config, log, undefined, workers > 1 ? 'control' : 'single', handover ? 'handover' : 'exclusive');
  let admin: InstanceType<typeof AdminServer> | undefined;
  let metricsServer: InstanceType<typeof AdminServer> | undefined;
  let supervisor: import('./workers/supervisor.js').Supervisor | undefined;
  try {
    await ballast.start();
    if (handover || (workers > 1 && reusePortSupported())) warnIfNoMigrate(log);
    if (workers > 1) {
      const { Supervisor } = await import('./workers/supervisor.js');
      const sharing = config.workerSockets === 'auto' ? (reusePortSupported() ? 'reuseport' : 'shared') : config.workerSockets;
      if (sharing === 'reuseport' && !reusePortSupported()) throw new Error(`workerSockets: reuseport needs Node.js 22.12 or later (this is ${process.versions.node}); use shared or auto`);
      supervisor = new Supervisor(ballast, workers, path, sharing, log);
      await supervisor.start();
    }
    if (config.admin.enabled) {
      admin = new AdminServer(ballast, config.admin.listen, log, 'full', config.admin, handover);
      await admin.start();
      if (config.admin.metricsListen) {
        metricsServer = new AdminServer(ballast, config.admin.metricsListen, log, 'metrics', config.admin, handover);
        await metricsServer.start();
      }
    }
  } catch (err) {
    process.stderr.write(`ballast: ${(err as Error).message}\n`);
    log.fatal({ err: (err as Error).message }, 'start failed');
    await supervisor?.drain(0);
    await ballast.stop();
    await admin?.close();
    await metricsServer?.close();
    return 1;
  }
  log.info({ version: VERSION, config: path, admin: config.admin.enabled ? config.admin.listen.text : null, pid: process.pid }, `ballast ${VERSION} started`);
  // In the primary only (workers go through runWorker): backups live with the health checks.
  await ballast.applyBackup(config.backup);

  // Reload on SIGHUP and when the config file changes (ConfigMap updates swap a symlink in its directory).
  let reloading = Promise.resolve(true);
  const reload = (trigger: string) => {
    reloading = reloading.then(async () => {
      const workers = supervisor;
      return ballast.reloadFromFile(trigger, workers ? () => workers.reloadWorkers() : undefined);
    });
  };
  process.on('SIGHUP', () => reload('SIGHUP'));
  let debounce: NodeJS.Timeout | undefined;
  try {
    const name = basename(path);
    const w = watch(dirname(path), { persistent: false }, (_e, f) => {
      if (f !== null && f.toString() !== name && !f.toString().startsWith('..')) return;
      if (debounce) clearTimeout(debounce);
      debounce = setTimeout(() => reload('file change'), 300);
    });
    w.on('error', () => undefined);
  } catch {
    log.warn({ config: path }, 'cannot watch the config file; reload with SIGHUP');
  }

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now');
        resolve(1);
        return;
      }
      stopping = true;
      log.info({ signal }, `${signal}: draining`);
      const drained = ballast.drain(ballast.config.drainTimeout, supervisor);
      void drained
        .then(async ({ closedAtDeadline }) => {
          await admin?.close();
          await metricsServer?.close();
          log.info({ closedAtDeadline }, 'stopped');
          resolve(0);
        })
        .catch((err: Error) => {
          log.error({ err: err.message }, 'drain failed');
          resolve(1);
        });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

// Node's process warnings go to the JSON log like everything else, except
// DEP0123: grpc-js (inside the etcd3 client used by health checks) passes an
// IP address as the TLS server name when a member is addressed by IP; Node
// ignores it and verifies the IP SAN, which is what we want.
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code === 'DEP0123') return;
  process.stderr.write(`${JSON.stringify({ level: 'warn', time: new Date().toISOString(), pid: process.pid, warning: w.name, code: w.code, msg: w.message })}\n`);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Give pino's async destination a moment to flush, then leave even if a
    // stray handle (a grpc channel closing) would keep the loop alive.
    setTimeout(() => process.exit(code), 50).unref();
  },
  (err: Error) => {
    process.stderr.write(`ballast: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);

/** Without net.ipv4.tcp_migrate_req, connections queued on a stopping ballast's socket are reset instead of moved to its successor. */
function warnIfNoMigrate(log: { info(o: object, msg: string): void }): void {
  let value: string;
  try {
    value = readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim();
  } catch {
    return; // not Linux, or a kernel before 5.14
  }
  if (value === '0') {
    log.info({ sysctl: 'net.ipv4.tcp_migrate_req', value }, 'handover: net.ipv4.tcp_migrate_req is 0, so a restart may reset the few connections still queued on the old process; set it to 1 (sysctl -w, or /etc/sysctl.d) for restarts that refuse no one');
  }
}

import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, existsSync } from 'node:fs';
import { connect } from 'node:net';
import path from 'node:path';

// Starts real etcd members on loopback for the demo: the `etcd` binary from
// Debian's etcd-server, each member with its own data dir and log file under
// one directory. Only processes started here are ever signalled, by PID.

export interface LaunchedMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  pid: number;
  logFile: string;
  process: ChildProcess;
}

export interface EtcdTls {
  cert: string;
  key: string;
  ca: string;
}

export function findEtcd(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/usr/local/bin'])) {
    const p = path.join(dir, 'etcd');
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

export async function launchEtcdCluster(opts: { binary: string; dir: string; clientPorts: number[]; peerPorts: number[]; tls: EtcdTls; token: string }): Promise<LaunchedMember[]> {
  const n = opts.clientPorts.length;
  const names = Array.from({ length: n }, (_, i) => `etcd-${i}`);
  const initial = names.map((name, i) => `${name}=http://127.0.0.1:${opts.peerPorts[i]}`).join(',');
  const members: LaunchedMember[] = [];
  for (let i = 0; i < n; i++) {
    const name = names[i]!;
    const clientUrl = `https://127.0.0.1:${opts.clientPorts[i]}`;
    const peerUrl = `http://127.0.0.1:${opts.peerPorts[i]}`;
    const logFile = path.join(opts.dir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    const child = spawn(
      opts.binary,
      [
        `--name=${name}`,
        `--data-dir=${path.join(opts.dir, `${name}.data`)}`,
        `--listen-client-urls=${clientUrl}`,
        `--advertise-client-urls=${clientUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=${initial}`,
        `--initial-cluster-token=${opts.token}`,
        '--initial-cluster-state=new',
        `--cert-file=${opts.tls.cert}`,
        `--key-file=${opts.tls.key}`,
        `--trusted-ca-file=${opts.tls.ca}`,
        '--client-cert-auth',
        '--logger=zap',
        `--log-outputs=${logFile}`,
      ],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    members.push({ name, clientUrl, peerUrl, pid: child.pid!, logFile, process: child });
  }
  await Promise.all(opts.clientPorts.map((p, i) => waitForPort(p, 20_000, members[i]!)));
  return members;
}

function waitForPort(port: number, ms: number, m: LaunchedMember): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (m.process.exitCode !== null) return reject(new Error(`${m.name} exited with code ${m.process.exitCode}; see ${m.logFile}`));
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`${m.name} did not listen on ${port} within ${ms}ms; see ${m.logFile}`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

export async function stopMembers(members: LaunchedMember[]): Promise<void> {
  await Promise.all(
    members.map(
      (m) =>
        new Promise<void>((resolve) => {
          const p = m.process;
          if (p.exitCode !== null || p.signalCode !== null) return resolve();
          p.once('exit', () => resolve());
          // A member the user SIGSTOPped must be continued to die cleanly.
          try {
            process.kill(m.pid, 'SIGCONT');
          } catch {
            // already gone
          }
          p.kill('SIGTERM');
          setTimeout(() => p.kill('SIGKILL'), 3000).unref();
        }),
    ),
  );
}

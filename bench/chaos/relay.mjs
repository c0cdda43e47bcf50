// A TCP relay that can cut links between local processes, ported to plain JS
// from test/support/tcp-relay.ts (the soak runs without a TypeScript step).
//
// Every etcd member advertises its relay's port as its peer URL, so all peer
// traffic into member i crosses relay i. isolate(i) then means: relay i drops
// everything (nobody reaches i), and every other relay drops connections
// whose caller is member i (i reaches nobody). The caller of an accepted
// loopback connection is found through /proc: /proc/net/tcp gives the
// caller's socket inode, and the candidate PIDs' /proc/PID/fd name it.
import fsp from 'node:fs/promises';
import net from 'node:net';

const noop = () => {};

export class TcpRelay {
  #listenPort;
  #identify;
  #server;
  #links = new Set();
  #blockAll;
  #blockedSources = new Map();
  #closed = false;

  /** `listenPort` 0 picks a free port; read it from `port` after start(). */
  constructor(listenPort, targetHost, targetPort, { host = '127.0.0.1', identify } = {}) {
    this.#listenPort = listenPort;
    this.targetHost = targetHost;
    this.targetPort = targetPort;
    this.host = host;
    this.#identify = identify;
  }

  get port() {
    return this.#listenPort;
  }

  async start() {
    const server = net.createServer({ pauseOnConnect: true }, (s) => this.#onConnection(s));
    server.on('error', noop);
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.#listenPort, host: this.host, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#listenPort = server.address().port;
    this.#server = server;
  }

  /** Cut every link: existing ones now, new ones on arrival ('blackhole' drops bytes silently). */
  block(mode = 'blackhole') {
    this.#blockAll = mode;
    for (const link of this.#links) this.#cut(link, mode);
  }

  unblock() {
    this.#blockAll = undefined;
    this.#dropCutLinks();
  }

  /** Cut only links whose caller `identify` names `source`; unknown callers are cut too while any source is blocked. */
  blockFrom(source, mode = 'blackhole') {
    this.#blockedSources.set(source, mode);
    for (const link of this.#links) if (link.identified && link.source === source) this.#cut(link, mode);
  }

  unblockFrom(source) {
    this.#blockedSources.delete(source);
    this.#dropCutLinks();
  }

  async close() {
    this.#closed = true;
    for (const link of this.#links) this.#destroy(link);
    this.#links.clear();
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise((resolve) => server.close(() => resolve()));
  }

  #onConnection(client) {
    client.on('error', noop);
    if (this.#closed) {
      client.destroy();
      return;
    }
    const link = { client, upstream: undefined, source: undefined, identified: false, cut: undefined };
    this.#links.add(link);
    client.once('close', () => this.#destroy(link));
    if (this.#blockAll) {
      this.#cut(link, this.#blockAll);
      return;
    }
    if (!this.#identify) {
      this.#forward(link);
      return;
    }
    const hold = this.#blockedSources.size > 0;
    if (!hold) this.#forward(link);
    this.#identify(client)
      .catch(() => undefined)
      .then((source) => {
        link.source = source;
        link.identified = true;
        if (!this.#links.has(link) || link.cut) return;
        const mode = this.#blockAll ?? (source === undefined ? this.#blockedSources.values().next().value : this.#blockedSources.get(source));
        if (mode) this.#cut(link, mode);
        else if (hold) this.#forward(link);
      });
  }

  #forward(link) {
    const { client } = link;
    const upstream = net.connect({ host: this.targetHost, port: this.targetPort });
    link.upstream = upstream;
    upstream.on('error', noop);
    upstream.once('close', () => this.#destroy(link));
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }

  #cut(link, mode) {
    if (link.cut) return;
    link.cut = mode;
    const { client, upstream } = link;
    if (mode === 'reset') {
      client.resetAndDestroy();
      upstream?.resetAndDestroy();
      return;
    }
    client.unpipe();
    if (upstream) {
      upstream.unpipe();
      upstream.on('data', noop);
      upstream.resume();
    }
    client.on('data', noop);
    client.resume();
  }

  #dropCutLinks() {
    for (const link of this.#links) {
      if (!link.cut) continue;
      const still = this.#blockAll !== undefined || (link.source !== undefined && this.#blockedSources.has(link.source));
      if (!still) this.#destroy(link);
    }
  }

  #destroy(link) {
    if (!this.#links.delete(link)) return;
    link.client.destroy();
    link.upstream?.destroy();
  }
}

/** Which of `candidatePids` owns the other end of an accepted loopback `socket` (Linux /proc). */
export async function socketOwnerPid(socket, candidatePids) {
  const callerPort = socket.remotePort;
  const ourPort = socket.localPort;
  if (callerPort === undefined || ourPort === undefined) return undefined;
  const pids = [...candidatePids];
  if (pids.length === 0) return undefined;
  for (let attempt = 0; attempt < 2; attempt++) {
    const inode = await findSocketInode(callerPort, ourPort);
    if (inode !== undefined) {
      const target = `socket:[${inode}]`;
      const owners = await Promise.all(pids.map((pid) => pidHasFd(pid, target)));
      const i = owners.indexOf(true);
      if (i >= 0) return pids[i];
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}

async function findSocketInode(localPort, remotePort) {
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      const [, local, remote] = f;
      const inode = f[9];
      if (!local || !remote || !inode || inode === '0') continue;
      const lp = parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
      const rp = parseInt(remote.slice(remote.lastIndexOf(':') + 1), 16);
      if (lp === localPort && rp === remotePort) return inode;
    }
  }
  return undefined;
}

async function pidHasFd(pid, target) {
  const dir = `/proc/${pid}/fd`;
  let fds;
  try {
    fds = await fsp.readdir(dir);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if ((await fsp.readlink(`${dir}/${fd}`)) === target) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

// A tiny TCP relay used to cut real network links between local processes
// without root: a process dials the relay instead of its target, and the test
// decides per relay (and per calling process) whether bytes get through.
//
// `block()` cuts every link through the relay; `blockFrom(source)` cuts only
// connections whose caller `identify` names `source` (see `socketOwnerPid`,
// which finds the calling process through /proc on Linux).
import net from 'node:net';
import fsp from 'node:fs/promises';

/**
 * How a blocked link fails:
 * - 'blackhole': connections stay open but bytes are silently dropped both
 *   ways (like a network partition: the caller only notices by timeouts).
 * - 'reset': connections are reset (RST) at once (like a closed port).
 */
export type BlockMode = 'blackhole' | 'reset';

export interface TcpRelayOptions {
  /** Address to listen on; default 127.0.0.1. */
  host?: string;
  /**
   * Names the caller of an accepted connection (for `blockFrom`); resolves
   * undefined when unknown. Runs once per connection.
   */
  identify?: (socket: net.Socket) => Promise<string | undefined>;
}

interface Link {
  client: net.Socket;
  upstream: net.Socket | undefined;
  source: string | undefined;
  identified: boolean;
  /** Set once the link is cut (blackholed links are kept until unblock/close). */
  cut: BlockMode | undefined;
}

const noop = (): void => {};

export class TcpRelay {
  readonly host: string;
  readonly targetHost: string;
  readonly targetPort: number;
  #listenPort: number;
  #identify: TcpRelayOptions['identify'];
  #server: net.Server | undefined;
  #links = new Set<Link>();
  #blockAll: BlockMode | undefined;
  #blockedSources = new Map<string, BlockMode>();
  #closed = false;
  #stats = { accepted: 0, identified: 0, unidentified: 0 };

  /** `listenPort` 0 picks a free port; read it from `port` after `start()`. */
  constructor(listenPort: number, targetHost: string, targetPort: number, opts: TcpRelayOptions = {}) {
    this.#listenPort = listenPort;
    this.targetHost = targetHost;
    this.targetPort = targetPort;
    this.host = opts.host ?? '127.0.0.1';
    this.#identify = opts.identify;
  }

  /** The port the relay listens on (the real one once started). */
  get port(): number {
    return this.#listenPort;
  }

  /** True while `block()` is in force. */
  get blocked(): boolean {
    return this.#blockAll !== undefined;
  }

  /** Number of connections currently held by the relay (forwarding or cut). */
  get connectionCount(): number {
    return this.#links.size;
  }

  /** Counters: connections accepted, and how many `identify` named or could not name. */
  get stats(): Readonly<{ accepted: number; identified: number; unidentified: number }> {
    return { ...this.#stats };
  }

  /** Open connections per identified caller (undefined: unknown or not yet identified). */
  connectionsBySource(): Map<string | undefined, number> {
    const out = new Map<string | undefined, number>();
    for (const l of this.#links) if (!l.cut) out.set(l.source, (out.get(l.source) ?? 0) + 1);
    return out;
  }

  async start(): Promise<void> {
    if (this.#server) throw new Error('TcpRelay already started');
    if (this.#closed) throw new Error('TcpRelay is closed');
    const server = net.createServer({ pauseOnConnect: true }, (s) => this.#onConnection(s));
    server.on('error', noop); // only listen errors matter; they reject below
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.#listenPort, host: this.host, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    if (addr && typeof addr !== 'string') this.#listenPort = addr.port;
    this.#server = server;
  }

  /** Cut every link: existing connections are cut, new ones are cut on arrival. */
  block(mode: BlockMode = 'blackhole'): void {
    this.#blockAll = mode;
    for (const link of this.#links) this.#cut(link, mode);
  }

  /** Undo `block()`. Links it cut are closed so callers reconnect cleanly. */
  unblock(): void {
    this.#blockAll = undefined;
    this.#dropCutLinks();
  }

  /**
   * Cut only connections whose caller `identify` names `source`. While any
   * source is blocked, new connections wait for `identify` before forwarding,
   * and those whose caller cannot be named are cut as well (fail closed).
   */
  blockFrom(source: string, mode: BlockMode = 'blackhole'): void {
    this.#blockedSources.set(source, mode);
    for (const link of this.#links) if (link.identified && link.source === source) this.#cut(link, mode);
  }

  /** Undo `blockFrom(source)`. */
  unblockFrom(source: string): void {
    this.#blockedSources.delete(source);
    this.#dropCutLinks();
  }

  /** Stop listening and destroy every connection. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const link of this.#links) this.#destroy(link);
    this.#links.clear();
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  #onConnection(client: net.Socket): void {
    client.on('error', noop);
    if (this.#closed) {
      client.destroy();
      return;
    }
    this.#stats.accepted++;
    const link: Link = { client, upstream: undefined, source: undefined, identified: false, cut: undefined };
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
    // While some source is blocked, hold the connection until we know who
    // called, so nothing leaks through; otherwise forward right away and
    // identify in the background (for a later blockFrom).
    const holdUntilIdentified = this.#blockedSources.size > 0;
    if (!holdUntilIdentified) this.#forward(link);
    this.#identify(client)
      .catch(() => undefined)
      .then((source) => {
        link.source = source;
        link.identified = true;
        if (!this.#links.has(link) || link.cut) return;
        if (source === undefined) this.#stats.unidentified++;
        else this.#stats.identified++;
        // Fail closed: while some source is blocked, a caller we cannot name is cut too.
        const mode =
          this.#blockAll ??
          (source === undefined ? this.#blockedSources.values().next().value : this.#blockedSources.get(source));
        if (mode) this.#cut(link, mode);
        else if (holdUntilIdentified) this.#forward(link);
      });
  }

  #forward(link: Link): void {
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

  #cut(link: Link, mode: BlockMode): void {
    if (link.cut) return;
    link.cut = mode;
    const { client, upstream } = link;
    if (mode === 'reset') {
      client.resetAndDestroy();
      if (upstream) upstream.resetAndDestroy();
      return;
    }
    // Blackhole: stop forwarding, keep both sockets open, swallow whatever arrives.
    client.unpipe();
    if (upstream) {
      upstream.unpipe();
      upstream.on('data', noop);
      upstream.resume();
    }
    client.on('data', noop);
    client.resume();
  }

  /** Close links that are cut but no longer covered by any block. */
  #dropCutLinks(): void {
    for (const link of this.#links) {
      if (!link.cut) continue;
      const stillBlocked =
        this.#blockAll !== undefined || (link.source !== undefined && this.#blockedSources.has(link.source));
      if (!stillBlocked) this.#destroy(link);
    }
  }

  #destroy(link: Link): void {
    if (!this.#links.delete(link)) return;
    link.client.destroy();
    link.upstream?.destroy();
  }
}

/**
 * Linux only: which of `candidatePids` owns the other end of `socket`, an
 * accepted loopback connection. Reads /proc/net/tcp{,6} for the caller's
 * socket inode, then looks for it among the candidates' open fds.
 */
export async function socketOwnerPid(socket: net.Socket, candidatePids: Iterable<number>): Promise<number | undefined> {
  const callerPort = socket.remotePort;
  const ourPort = socket.localPort;
  if (callerPort === undefined || ourPort === undefined) return undefined;
  const pids = [...candidatePids];
  if (pids.length === 0) return undefined;
  for (let attempt = 0; attempt < 2; attempt++) {
    const inode = await findSocketInode(callerPort, ourPort);
    if (inode !== undefined) {
      const link = `socket:[${inode}]`;
      const owners = await Promise.all(pids.map((pid) => pidHasFd(pid, link)));
      const i = owners.indexOf(true);
      if (i >= 0) return pids[i];
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}

async function findSocketInode(localPort: number, remotePort: number): Promise<string | undefined> {
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const remote = f[2];
      const inode = f[9];
      if (!local || !remote || !inode || inode === '0') continue;
      const lp = parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
      const rp = parseInt(remote.slice(remote.lastIndexOf(':') + 1), 16);
      if (lp === localPort && rp === remotePort) return inode;
    }
  }
  return undefined;
}

async function pidHasFd(pid: number, target: string): Promise<boolean> {
  const dir = `/proc/${pid}/fd`;
  let fds: string[];
  try {
    fds = await fsp.readdir(dir);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if ((await fsp.readlink(`${dir}/${fd}`)) === target) return true;
    } catch {
      // fd closed meanwhile
    }
  }
  return false;
}

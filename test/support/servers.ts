// Real loopback servers for proxy tests: echo, sink (a reader that can stop
// reading), a black hole (a listener whose accept queue is full, so SYNs are
// dropped and connects hang), and a hung server (SIGSTOPped process).
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

export interface TestServer {
  port: number;
  host: string;
  /** Sockets accepted so far. */
  accepted: number;
  sockets: Set<net.Socket>;
  close(): Promise<void>;
}

function listen(server: net.Server, host: string, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function wrap(server: net.Server, host: string, port: number, sockets: Set<net.Socket>, counter: { accepted: number }): TestServer {
  return {
    port,
    host,
    get accepted() {
      return counter.accepted;
    },
    sockets,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Echoes every byte back; a FIN from the client is answered with a FIN after the echo. */
export async function startEchoServer(host = '127.0.0.1', port = 0): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const counter = { accepted: 0 };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    counter.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.pipe(s);
  });
  const p = await listen(server, host, port);
  return wrap(server, host, p, sockets, counter);
}

/** Answers each connection with a fixed greeting naming itself, then echoes: tells tests which backend they reached. */
export async function startNamedServer(name: string, host = '127.0.0.1', port = 0): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const counter = { accepted: 0 };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    counter.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.write(`${name}\n`);
    s.pipe(s);
  });
  const p = await listen(server, host, port);
  return wrap(server, host, p, sockets, counter);
}

export interface SinkServer extends TestServer {
  received: number;
  /** Stop reading: the kernel buffers fill and the sender must feel backpressure. */
  pauseAll(): void;
  resumeAll(): void;
}

/** Counts bytes; starts paused (never reads) when `paused` is true. */
export async function startSinkServer(opts: { paused: boolean }, host = '127.0.0.1'): Promise<SinkServer> {
  const sockets = new Set<net.Socket>();
  const counter = { accepted: 0 };
  let received = 0;
  let paused = opts.paused;
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    counter.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.on('data', (d) => (received += d.length));
    s.on('end', () => s.end());
    if (paused) s.pause();
  });
  const port = await listen(server, host);
  const base = wrap(server, host, port, sockets, counter);
  // defineProperty, not Object.assign: assign would copy the getter's value once.
  Object.defineProperty(base, 'received', { get: () => received, enumerable: true });
  return Object.assign(base, {
    pauseAll() {
      paused = true;
      for (const s of sockets) s.pause();
    },
    resumeAll() {
      paused = false;
      for (const s of sockets) s.resume();
    },
  }) as SinkServer;
}

export interface ChildServer {
  port: number;
  pid: number;
  stop(): void;
  cont(): void;
  close(): Promise<void>;
}

/**
 * A listener in a child process that we SIGSTOP, so the kernel still holds its
 * socket but nobody accepts: once the accept queue (backlog 1) is full, new
 * SYNs are dropped and connects hang until they time out. `fill` opens the
 * connections that fill the queue.
 */
export async function startBlackHole(host = '127.0.0.1'): Promise<ChildServer & { fill(): Promise<void> }> {
  const child = spawn(
    process.execPath,
    ['-e', `const s=require('net').createServer(()=>{});s.listen({port:0,host:${JSON.stringify(host)},backlog:1},()=>console.log(s.address().port))`],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const port = await firstLine(child);
  child.kill('SIGSTOP');
  const fillers: net.Socket[] = [];
  return {
    port,
    pid: child.pid!,
    stop: () => child.kill('SIGSTOP'),
    cont: () => child.kill('SIGCONT'),
    async fill() {
      // Backlog 1 holds two established connections on Linux; open a few more
      // and wait until one of them hangs, which proves the queue is full.
      for (let i = 0; i < 6; i++) {
        const s = net.connect(port, host);
        s.on('error', () => undefined);
        fillers.push(s);
        const connected = await Promise.race([
          new Promise<boolean>((r) => s.once('connect', () => r(true))),
          new Promise<boolean>((r) => setTimeout(() => r(false), 300)),
        ]);
        if (!connected) return;
      }
      throw new Error('black hole: accept queue never filled');
    },
    close: async () => {
      for (const s of fillers) s.destroy();
      await killChild(child);
    },
  };
}

/** An echo server in a child process, so tests can SIGSTOP it (hung upstream) or SIGKILL it (dead upstream). */
export async function startChildEchoServer(host = '127.0.0.1', port = 0): Promise<ChildServer> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const s=require('net').createServer({allowHalfOpen:true},(c)=>{c.on('error',()=>{});c.pipe(c)});s.listen({port:${port},host:${JSON.stringify(host)}},()=>console.log(s.address().port))`,
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const p = await firstLine(child);
  return {
    port: p,
    pid: child.pid!,
    stop: () => child.kill('SIGSTOP'),
    cont: () => child.kill('SIGCONT'),
    close: () => killChild(child),
  };
}

function firstLine(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(Number(buf.slice(0, nl)));
    });
    child.once('exit', (code) => reject(new Error(`child exited with ${code} before listening`)));
  });
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGCONT');
  child.kill('SIGKILL');
  await exited;
}

/** Connect and resolve once connected. */
export function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Read from a socket until `predicate(all bytes so far)` holds, or reject after `ms`. */
export function readUntil(s: net.Socket, predicate: (buf: Buffer) => boolean, ms = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`readUntil: timed out after ${ms}ms with ${buf.length} bytes: ${JSON.stringify(buf.toString().slice(0, 80))}`));
    }, ms);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (predicate(buf)) {
        cleanup();
        resolve(buf);
      }
    };
    const onEnd = () => {
      cleanup();
      if (predicate(buf)) resolve(buf);
      else reject(new Error(`readUntil: stream ended with ${buf.length} bytes: ${JSON.stringify(buf.toString().slice(0, 80))}`));
    };
    const onClose = onEnd;
    const cleanup = () => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('end', onEnd);
      s.off('close', onClose);
    };
    s.on('data', onData);
    s.on('end', onEnd);
    s.on('close', onClose);
  });
}

/** Resolves when the socket is closed by the other side (or errors), with how it ended. */
export function closed(s: net.Socket, ms = 10_000): Promise<'end' | 'close' | 'error'> {
  return new Promise((resolve, reject) => {
    if (s.destroyed) return resolve('close');
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms}ms`)), ms);
    const done = (how: 'end' | 'close' | 'error') => {
      clearTimeout(timer);
      resolve(how);
    };
    s.once('end', () => done('end'));
    s.once('close', () => done('close'));
    s.once('error', () => done('error'));
    s.resume();
  });
}

/** Poll `fn` until it returns a truthy value, or throw with `what` after `ms`. */
export async function eventually<T>(fn: () => T | Promise<T>, what: string, ms = 10_000, every = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`not true after ${ms}ms: ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

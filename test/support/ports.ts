// Free TCP port allocation for tests. Ports come from the kernel (listen on
// port 0), so they are free at the moment of the call; a different process can
// still grab one before the caller binds it, so callers that spawn servers on
// these ports should treat EADDRINUSE as retryable.
import net from 'node:net';

function listenEphemeral(host: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ port: 0, host, exclusive: true }, () => {
      srv.off('error', reject);
      resolve(srv);
    });
  });
}

function closeServer(srv: net.Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

function portOf(srv: net.Server): number {
  const addr = srv.address();
  if (addr === null || typeof addr === 'string') throw new Error('server has no TCP address');
  return addr.port;
}

/** One port that was free on `host` a moment ago. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = await listenEphemeral(host);
  const port = portOf(srv);
  await closeServer(srv);
  return port;
}

/**
 * `n` distinct free ports on `host`. All listeners are held open until every
 * port is allocated, so the kernel cannot hand out the same port twice.
 */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`freePorts: bad count ${n}`);
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) servers.push(await listenEphemeral(host));
    return servers.map(portOf);
  } finally {
    await Promise.all(servers.map(closeServer));
  }
}

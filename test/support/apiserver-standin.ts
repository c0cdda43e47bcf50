// A STAND-IN for kube-apiserver (no package of it can be installed here): an
// HTTPS server that answers /readyz and /livez the way the real one does
// ("ok" with 200, or a list of failed checks with 500), and whose readiness a
// test flips. It is only used where the real apiserver cannot be.
import https from 'node:https';
import type { AddressInfo } from 'node:net';

export interface ApiserverStandIn {
  port: number;
  ready: boolean;
  requests: number;
  close(): Promise<void>;
}

export async function startApiserverStandIn(tls: { cert: string; key: string }, host = '127.0.0.1'): Promise<ApiserverStandIn> {
  const state = { ready: true, requests: 0 };
  const server = https.createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
    state.requests++;
    if (req.url === '/livez') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
    } else if (req.url === '/readyz') {
      if (state.ready) res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
      else res.writeHead(500, { 'content-type': 'text/plain' }).end('[-]etcd failed: reason withheld\nreadyz check failed');
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  return {
    port: (server.address() as AddressInfo).port,
    get ready() {
      return state.ready;
    },
    set ready(v: boolean) {
      state.ready = v;
    },
    get requests() {
      return state.requests;
    },
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

import type { Etcd3, IOptions } from 'etcd3';

// etcd3 brings grpc-js and protobufjs and parses etcd's protos when it is
// imported: about half a second of start-up on a busy node. It is loaded the
// first time an etcd check, discovery or backup needs it, so a ballast that
// only balances apiservers (and `ballast --version`) never pays for it.

type Etcd3Module = typeof import('etcd3');
type Cockatiel = typeof import('cockatiel');

let loading: Promise<{ etcd3: Etcd3Module; cockatiel: Cockatiel }> | undefined;

export function loadEtcd3(): Promise<{ etcd3: Etcd3Module; cockatiel: Cockatiel }> {
  loading ??= Promise.all([import('etcd3'), import('cockatiel')]).then(([etcd3, cockatiel]) => ({ etcd3, cockatiel }));
  return loading;
}

/** A client with etcd3's own retries and circuit breaker turned off: ballast judges failures itself. */
export async function createEtcdClient(options: IOptions): Promise<Etcd3> {
  const { etcd3, cockatiel } = await loadEtcd3();
  return new etcd3.Etcd3({ faultHandling: { host: () => cockatiel.noop, global: cockatiel.noop }, ...options });
}

/** etcd's member ids arrive as decimal strings; etcdctl and logs show hex. */
export function hexId(decimal: string): string {
  try {
    return BigInt(decimal).toString(16);
  } catch {
    return decimal;
  }
}

// A client that writes unique keys through ballast without pause, the way a
// kube-apiserver leans on etcd, and remembers exactly what it was told: every
// acknowledged write (key -> revision) and every response revision it saw.
// The checker then reads the keys back from the cluster directly.
import { Etcd3, type IOptions } from 'etcd3';

export interface WriterStats {
  acked: Map<string, number>;
  failures: number;
  /** Response header revisions in the order seen (writes and reads). */
  revisions: number[];
  /** Member ids (hex) that answered, in order of first appearance. */
  members: string[];
  /** Wall-clock gaps from the first failed write to the next acknowledged one. */
  errorWindowsMs: number[];
}

export class EtcdWriter {
  readonly stats: WriterStats = { acked: new Map(), failures: 0, revisions: [], members: [], errorWindowsMs: [] };
  private client: Etcd3;
  private running = false;
  private loop: Promise<void> | undefined;
  private seq = 0;
  private failingSince = 0;
  lastMember = '';

  constructor(
    hosts: string,
    private readonly prefix: string,
    opts: Partial<IOptions> = {},
    /** Per-call deadline, like grpc-go's context deadline in kube-apiserver. */
    private readonly deadlineMs = 1000,
  ) {
    this.client = new Etcd3({
      hosts,
      dialTimeout: deadlineMs,
      defaultCallOptions: () => ({ deadline: Date.now() + deadlineMs }),
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.min_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 500 },
      ...opts,
    });
  }

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    this.client.close();
  }

  /** Resolves once `n` more writes have been acknowledged. */
  async waitForAcks(n: number, timeoutMs = 30_000): Promise<void> {
    const target = this.stats.acked.size + n;
    const deadline = Date.now() + timeoutMs;
    while (this.stats.acked.size < target) {
      if (Date.now() > deadline) throw new Error(`writer: ${this.stats.acked.size} acks, wanted ${target} within ${timeoutMs}ms (failures so far: ${this.stats.failures})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async run(): Promise<void> {
    while (this.running) {
      const key = `${this.prefix}/${String(this.seq).padStart(8, '0')}`;
      try {
        const res = await this.client.put(key).value(`v${this.seq}`).exec();
        const rev = Number(res.header.revision);
        this.stats.acked.set(key, rev);
        this.note(res.header);
        if (this.failingSince > 0) {
          this.stats.errorWindowsMs.push(Date.now() - this.failingSince);
          this.failingSince = 0;
        }
        this.seq++;
      } catch {
        // Not acknowledged: it may or may not have been applied; either is
        // allowed. A retry uses a new key so "acknowledged" stays exact.
        this.stats.failures++;
        if (this.failingSince === 0) this.failingSince = Date.now();
        this.seq++;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  private note(header: { revision: string; member_id: string }): void {
    this.stats.revisions.push(Number(header.revision));
    const m = BigInt(header.member_id).toString(16);
    this.lastMember = m;
    if (!this.stats.members.includes(m)) this.stats.members.push(m);
  }

  /** Ask through ballast which member this client is on now. */
  async memberNow(): Promise<string> {
    const s = await this.client.maintenance.status();
    return BigInt(s.header.member_id).toString(16);
  }
}

/** Every acknowledged key must be readable with its value from the cluster. Returns the keys that are missing. */
export async function missingAcked(hosts: string[], acked: Map<string, number>, opts: Partial<IOptions> = {}): Promise<string[]> {
  const client = new Etcd3({ hosts, ...opts });
  try {
    const missing: string[] = [];
    const keys = [...acked.keys()];
    const prefixes = new Set(keys.map((k) => k.slice(0, k.lastIndexOf('/') + 1)));
    const present = new Set<string>();
    for (const p of prefixes) for (const k of await client.getAll().prefix(p).keys()) present.add(k);
    for (const k of keys) if (!present.has(k)) missing.push(k);
    return missing;
  } finally {
    client.close();
  }
}

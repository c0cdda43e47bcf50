import type { Endpoint } from '../endpoint.js';
import { untried, type Balancer, type PickContext } from './balancer.js';

/**
 * Fewest active connections per unit of weight, from an indexed binary heap:
 * pick reads the root, and each open or close moves one endpoint O(log n).
 * Endpoints carry their heap position so no search is needed.
 */
export class LeastConnectionsBalancer implements Balancer {
  readonly policy = 'least-connections';
  private heap: Endpoint[] = [];

  update(eligible: readonly Endpoint[]): void {
    for (const e of this.heap) e.heapIndex = -1;
    this.heap = [...eligible];
    this.heap.forEach((e, i) => (e.heapIndex = i));
    for (let i = (this.heap.length >> 1) - 1; i >= 0; i--) this.down(i);
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const root = this.heap[0];
    if (root === undefined) return undefined;
    if (untried(root, ctx.tried)) return root;
    // Failover path only: a short scan over the few endpoints not yet tried.
    let best: Endpoint | undefined;
    for (const e of this.heap) if (untried(e, ctx.tried) && (best === undefined || load(e) < load(best))) best = e;
    return best;
  }

  opened(e: Endpoint): void {
    if (e.heapIndex >= 0) this.down(e.heapIndex);
  }

  closed(e: Endpoint): void {
    if (e.heapIndex >= 0) this.up(e.heapIndex);
  }

  private up(i: number): void {
    const h = this.heap;
    const e = h[i]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = h[parent]!;
      if (load(p) <= load(e)) break;
      h[i] = p;
      p.heapIndex = i;
      i = parent;
    }
    h[i] = e;
    e.heapIndex = i;
  }

  private down(i: number): void {
    const h = this.heap;
    const n = h.length;
    const e = h[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && load(h[r]!) < load(h[l]!) ? r : l;
      const child = h[c]!;
      if (load(child) >= load(e)) break;
      h[i] = child;
      child.heapIndex = i;
      i = c;
    }
    h[i] = e;
    e.heapIndex = i;
  }
}

function load(e: Endpoint): number {
  return e.active / e.weight;
}

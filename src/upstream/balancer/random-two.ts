import type { Endpoint } from '../endpoint.js';
import { untried, type Balancer, type PickContext } from './balancer.js';

/**
 * Power of two choices: sample two endpoints at random, take the one with
 * fewer active connections per weight. Nearly as even as least-connections
 * and free of herding when many ballasts see the same counts.
 */
export class RandomTwoBalancer implements Balancer {
  readonly policy = 'random-two';
  private list: readonly Endpoint[] = [];

  constructor(private readonly random: () => number = Math.random) {}

  update(eligible: readonly Endpoint[]): void {
    this.list = [...eligible];
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const l = this.list;
    const n = l.length;
    if (n === 0) return undefined;
    if (ctx.tried === null) {
      if (n === 1) return l[0];
      const i = Math.floor(this.random() * n);
      let j = Math.floor(this.random() * (n - 1));
      if (j >= i) j++;
      const a = l[i]!;
      const b = l[j]!;
      return a.active * b.weight <= b.active * a.weight ? a : b;
    }
    let best: Endpoint | undefined;
    for (const e of l) if (untried(e, ctx.tried) && (best === undefined || e.active * best.weight < best.active * e.weight)) best = e;
    return best;
  }

  opened(): void {}
  closed(): void {}
}

import type { Endpoint } from '../endpoint.js';
import { untried, type Balancer, type PickContext } from './balancer.js';

/**
 * Round robin over a precomputed schedule. Unequal weights are expanded once
 * per update into a smooth interleaving (nginx's smooth weighted round robin),
 * so pick() stays a single array read.
 */
export class RoundRobinBalancer implements Balancer {
  readonly policy = 'round-robin';
  private schedule: Endpoint[] = [];
  private next = 0;

  update(eligible: readonly Endpoint[]): void {
    this.schedule = smoothSchedule(eligible);
    if (this.next >= this.schedule.length) this.next = 0;
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const s = this.schedule;
    const n = s.length;
    for (let i = 0; i < n; i++) {
      const e = s[this.next]!;
      this.next = this.next + 1 === n ? 0 : this.next + 1;
      if (untried(e, ctx.tried)) return e;
    }
    return undefined;
  }

  opened(): void {}
  closed(): void {}
}

const MAX_SCHEDULE = 1000;

export function smoothSchedule(eligible: readonly Endpoint[]): Endpoint[] {
  if (eligible.length === 0) return [];
  const weights = eligible.map((e) => e.weight);
  if (weights.every((w) => w === weights[0])) return [...eligible];
  const g = weights.reduce(gcd);
  const scaled = weights.map((w) => w / g);
  const total = scaled.reduce((a, b) => a + b, 0);
  const length = Math.min(total, MAX_SCHEDULE);
  const current = scaled.map(() => 0);
  const out: Endpoint[] = [];
  for (let step = 0; step < length; step++) {
    let best = 0;
    for (let i = 0; i < scaled.length; i++) {
      current[i]! += scaled[i]!;
      if (current[i]! > current[best]!) best = i;
    }
    current[best]! -= total;
    out.push(eligible[best]!);
  }
  return out;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

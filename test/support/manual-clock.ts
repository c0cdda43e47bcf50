import type { Clock, TimerHandle } from '../../src/clock.js';

/** A clock tests move by hand: an hour of health checks in a millisecond. */
export class ManualClock implements Clock {
  // Starts far from zero: code must not treat time 0 as "never".
  private t = 1_000_000;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void; handle: TimerHandle }[] = [];

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = {};
    this.timers.push({ at: this.t + Math.max(0, ms), seq: this.seq++, fn, handle });
    return handle;
  }

  clearTimeout(handle: TimerHandle): void {
    this.timers = this.timers.filter((x) => x.handle !== handle);
  }

  get pending(): number {
    return this.timers.length;
  }

  /**
   * Move time without firing anything, as a blocked event loop does; the
   * overdue timers fire late on the next advance().
   */
  stall(ms: number): void {
    this.t += ms;
  }

  /** Move time forward, firing due timers in order; lets promises settle between timers. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flush();
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = end;
    await flush();
  }
}

/** Let pending promise callbacks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
}

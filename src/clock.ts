// Health logic, back-off and affinity TTLs take their sense of time from a
// Clock so tests can drive an hour of state changes without sleeping.

export interface TimerHandle {
  unref?(): unknown;
}

export interface Clock {
  /** Milliseconds, monotonic for the purpose of intervals. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    // Control-plane timers never keep the process alive: listeners do.
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

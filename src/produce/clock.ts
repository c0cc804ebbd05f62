/**
 * Time, as the producer sees it: its timers (the seal interval, retries with
 * backoff, the back-pressure poll, close's deadline) and the wall clock
 * behind them. The system clock in production; a test drives a manual one
 * and advances it, instead of sleeping and hoping a timer has fired.
 */
export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
  /**
   * Calls `fn` once after `ms`; the timer never keeps the process alive. A
   * promise `fn` returns is the work the timer started: the system clock
   * lets it run, a test's clock waits for it before it moves on.
   */
  setTimeout(fn: () => unknown, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

/** An opaque timer, from the clock that made it. */
export interface TimerHandle {
  readonly id: unknown;
}

/** Node's own timers and Date.now(). */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(() => void fn(), ms);
    // A gateway's exit is decided by the gateway, not by the producer's timers.
    t.unref();
    return { id: t };
  },
  clearTimeout(handle) {
    if (handle !== undefined) clearTimeout(handle.id as NodeJS.Timeout);
  },
};

/** Resolves after `ms` of `clock` time. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}

/**
 * Rejects after `ms` of `clock` time unless `p` settles first. The losing
 * promise may still settle later; its outcome no longer matters.
 */
export function withTimeout<T>(clock: Clock, p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: TimerHandle | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clock.clearTimeout(timer));
}

import type { Clock, TimerHandle } from "../../src/produce/clock.js";

/**
 * A clock a test moves by hand: timers fire only inside advance(), in the
 * order they are due, so a test says "an interval passes" instead of
 * sleeping through one and hoping its timer has run.
 */
export class ManualClock implements Clock {
  private time: number;
  private readonly timers = new Map<number, { at: number; fn: () => unknown }>();
  private nextId = 0;

  constructor(start = Date.UTC(2026, 11, 2, 12, 0, 0)) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => unknown, ms: number): TimerHandle {
    const id = ++this.nextId;
    this.timers.set(id, { at: this.time + Math.max(0, ms), fn });
    return { id };
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    if (handle !== undefined) this.timers.delete(handle.id as number);
  }

  /** Timers waiting to fire. */
  get pending(): number {
    return this.timers.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way
   * (those they set included), each at its own time, and waits for the work
   * each one started (the promise it returned: a send, a Redis read) before
   * the next: what a test then sees is what those timers did.
   */
  async advance(ms: number): Promise<void> {
    const until = this.time + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => unknown }] | undefined;
      for (const entry of this.timers)
        if (entry[1].at <= until && (next === undefined || entry[1].at < next[1].at)) next = entry;
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.time = Math.max(this.time, next[1].at);
      const work = next[1].fn();
      if (work instanceof Promise) await work.catch(() => undefined);
      await settle();
    }
    this.time = until;
    await settle();
  }

  /** Moves time forward without firing anything: an event loop blocked that long. */
  skip(ms: number): void {
    this.time += ms;
  }
}

/** Lets promise callbacks and I/O already done run (a few turns of the event loop). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

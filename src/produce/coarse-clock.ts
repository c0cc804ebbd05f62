import { systemClock, type Clock, type TimerHandle } from "./clock.js";

/**
 * The producer's view of the wall clock, for event dates. Date.now() is a
 * system call where the VM gives no fast path for it, and it would run once
 * per request for a value that only picks the daily row's date and bounds a
 * startTime window of hours. So the time is read once per timer period, and
 * again every `refreshEvery` reads so a long synchronous run of records
 * cannot outrun it.
 */
export class CoarseClock {
  private now: number;
  private reads = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;

  constructor(
    private readonly clock: Clock = systemClock,
    private readonly periodMs = 10,
    private readonly refreshEvery = 256,
  ) {
    this.now = clock.now();
    this.tick();
  }

  /** Epoch milliseconds, behind the real clock by at most one period (or refreshEvery reads). */
  read(): number {
    if (++this.reads >= this.refreshEvery) {
      this.reads = 0;
      this.now = this.clock.now();
    }
    return this.now;
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  private tick(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => {
      this.now = this.clock.now();
      this.tick();
    }, this.periodMs);
  }
}

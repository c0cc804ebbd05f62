/**
 * The producer's clock. Date.now() costs ~75 ns on the VMs this runs on
 * (clock_gettime without a vDSO fast path): a tenth of record()'s budget, for
 * a value that only picks the daily row's date and bounds a startTime window
 * of hours. So the time is read once per timer period, and again every
 * `refreshEvery` reads so a long synchronous run of records cannot outrun it.
 */
export class CoarseClock {
  private now = Date.now();
  private reads = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    periodMs = 10,
    private readonly refreshEvery = 256,
  ) {
    this.timer = setInterval(() => {
      this.now = Date.now();
    }, periodMs);
    // The process's lifetime is the gateway's business, not the clock's.
    this.timer.unref();
  }

  /** Epoch milliseconds, behind the real clock by at most one period (or refreshEvery reads). */
  read(): number {
    if (++this.reads >= this.refreshEvery) {
      this.reads = 0;
      this.now = Date.now();
    }
    return this.now;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

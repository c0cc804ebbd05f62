/**
 * A step of the flush pipeline started now and awaited later (the next
 * transaction's jobs being prepared, the last one's being acknowledged).
 * Its failure is held until someone asks for the result, never reported as
 * an unhandled rejection in between, and `settled` lets a failing flush wait
 * for it to end without caring how.
 */
export class InFlight<T> {
  private readonly outcome: Promise<{ ok: true; value: T } | { ok: false; error: unknown }>;

  constructor(work: Promise<T>) {
    this.outcome = work.then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );
  }

  /** The step's value, or its error thrown. */
  async result(): Promise<T> {
    const o = await this.outcome;
    if (!o.ok) throw o.error;
    return o.value;
  }

  /** Resolves once the step has ended, whichever way. */
  get settled(): Promise<void> {
    return this.outcome.then(() => undefined);
  }
}

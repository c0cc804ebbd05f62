import { Registry } from "prom-client";

/**
 * One Prometheus registry per process, and on it one metric set per role
 * the process plays: a gateway registers the producer's and the gateway's
 * sets, a flush worker the flush's and the queues'. A process exports only
 * what it measures: no role's series stand at a constant 0 in another
 * role's process (a gateway reporting "no lock held" or "no jobs queued"
 * would hide the worker's real figures behind a fleet-wide max or min).
 *
 * Each set lives beside the code it measures (produce/producer-metrics.ts,
 * flush/flush-metrics.ts, queue/queue-gauges.ts, persist/persist-metrics.ts,
 * gateway/gateway-metrics.ts) and is made at most once per registry by
 * `use`, so two parts of one process share it. Labels are bounded: reasons,
 * outcomes, queue kinds and states, never ids; the one identity label is the
 * lock holder's id (one value per process).
 */
export class SpendMetrics {
  readonly registry = new Registry();
  private readonly sets = new Map<string, unknown>();

  /** The metric set `key`, made with `make` on first use. */
  use<T>(key: string, make: (registry: Registry) => T): T {
    let set = this.sets.get(key) as T | undefined;
    if (set === undefined) {
      set = make(this.registry);
      this.sets.set(key, set);
    }
    return set;
  }
}

/** Rows one flush commits, or one seal emits: 1 to max_jobs_per_flush × max_rows_per_job and beyond. */
export const ROWS_BUCKETS = [1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000];

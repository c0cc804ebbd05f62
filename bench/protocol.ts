/**
 * What the benchmark's parent and its child processes say to each other.
 * Children are started through test/support/processes.ts (stdout captured,
 * stdin closed), so the start barrier lives in Redis under the run's prefix
 * (cleaned with it) and each child's report is its last stdout line.
 */
import type { Redis } from "ioredis";

export type SinkMode = "buffered" | "direct";

export const barrierKeys = (prefix: string) => ({
  /** INCR by each producer once its connections are up. */
  ready: `${prefix}:bench:ready`,
  /** INCR by the flush worker child once it runs. */
  workerReady: `${prefix}:bench:worker-ready`,
  /** Set by the parent: epoch ms at which every producer starts recording. */
  go: `${prefix}:bench:go`,
  /** INCR by each producer once close() has delivered its buffer. */
  closed: `${prefix}:bench:closed`,
});

/** Staleness markers are end users with this prefix: one entity row each, easy to poll by range. */
export const MARKER_PREFIX = "bench-marker-";
/** Each marker's spend, as an exact decimal string. */
export const MARKER_SPEND = "0.000001";

export interface ProducerReport {
  index: number;
  seed: number;
  goAt: number;
  /** Generator events drawn during the window (accepted or not). */
  events: number;
  /** Indices (in generator order) of events record() refused (buffer full): they were never recorded. */
  rejected: number[];
  /** Markers recorded: id and record() time (epoch ms). */
  markers: { id: string; at: number }[];
  /** Events drawn per whole second since goAt. */
  perSecond: number[];
  windowMs: number;
  closeMs: number;
  /** spend_producer_enqueue_failures_total at exit: failed sends, each retried. */
  enqueueFailures: number;
  /** Time spent not recording because the producer was backlogged (back-pressure). */
  pausedMs: number;
  /**
   * The part of pausedMs in which the producer admitted nothing at all
   * (issue 22, goal 3): with on/off back-pressure every pause is a full stop.
   */
  stoppedMs: number;
  /** Set when close() gave up: that spend never reached the sink. */
  closeError?: string;
}

export interface WorkerReport {
  outcomes: Record<string, number>;
  transactions: number;
  batches: number;
  duplicates: number;
  entityRows: number;
  dailyRows: number;
  /** Committed flushes: epoch ms when onFlush saw them, the rows they wrote, how long they held the lock, in how many transactions. */
  commits: { at: number; rows: number; ms: number; transactions: number }[];
  errors: string[];
  /**
   * The worker process's CPU (user + system) from its start to its report,
   * seconds. Absent from the reports of workers of older checkouts
   * (BENCH_DRAIN_BASELINE), like maxRssMb.
   */
  cpuSeconds?: number;
  /** Its peak resident memory, MB: what the jobs it held in memory cost at most. */
  maxRssMb?: number;
}

/** The child's report is its last stdout line (pino or a stray log above it is ignored). */
export function lastJsonLine(stdout: string): unknown {
  const last = stdout.trim().split("\n").pop() ?? "";
  return JSON.parse(last);
}

/** Polls `key` until it holds at least `target`, failing early if `abort` says so. */
export async function waitForCount(
  redis: Redis,
  key: string,
  target: number,
  timeoutMs: number,
  abort: () => string | undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = Number((await redis.get(key)) ?? "0");
    if (n >= target) return;
    const why = abort();
    if (why !== undefined) throw new Error(why);
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${key} to reach ${target} (at ${n})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

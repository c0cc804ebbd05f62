import { DEAD_LETTER_REASONS } from "../persist/dead-letters.js";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Queue } from "bullmq";
import { oldestJobAt } from "../queue/backlog.js";

/** What a producer exposes for the in-memory gauges. */
export interface BufferStats {
  /** Distinct entity rows held: aggregated plus sealed but not yet delivered. */
  entityRows: number;
  /** Distinct daily rows held: aggregated plus sealed but not yet delivered. */
  dailyRows: number;
  /** Rows sealed into batches that the sink has not accepted yet (a subset of the above). */
  undeliveredRows?: number;
  /** Sealed batches the sink has not accepted yet. */
  undeliveredBatches?: number;
  /** Events accepted by record() since the producer started (monotonic). */
  recordedEvents?: number;
  /** 1 while the producer has back-pressure on (a rule of spend_producer_backpressure_episodes_total holds). */
  backlogged?: number;
}

/** The spend queues one process reports on (one set per flush partition). */
export interface WatchedQueues {
  entity: Queue;
  daily: Queue;
  /** The flush worker's scheduling queue, if this process has it. */
  flush?: Queue;
}

/** Why a flush lost its lock (bounded label values). */
export type LockLossReason = "taken_over" | "expired" | "renewal_failed";

/** Where a retryable database failure was retried (bounded label values). */
export type RetryPath = "flush" | "direct";

/** BullMQ job states reported by spend_queue_jobs, and the name BullMQ's getJobCounts uses. */
const JOB_STATES = {
  waiting: "wait",
  active: "active",
  delayed: "delayed",
  prioritized: "prioritized",
  failed: "failed",
  completed: "completed",
} as const;

/** Flush durations: a few ms for a small batch, up to max_flush_seconds (60) and the tx timeout. */
export const FLUSH_DURATION_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
];
/** Rows one flush commits: 1 to max_jobs_per_flush × max_rows_per_job and beyond. */
export const FLUSH_ROWS_BUCKETS = [1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000];
/**
 * A producer's seal: well under a millisecond for a few rows, ~0.5-2 µs per
 * row on the benchmark's machines, so seconds only for a buffer near
 * max_buffered_rows (200 000 by default).
 */
export const SEAL_DURATION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];
/** Batches (jobs) one flush commits: up to max_jobs_per_flush per transaction, several transactions. */
export const FLUSH_BATCHES_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000];

/**
 * One registry per process. The five gauges carry the seed's names exactly;
 * the rest say what an operator needs to trust the numbers. Labels are
 * bounded: reasons, outcomes, queue kinds and states, never ids. The one
 * identity label is the lock holder's id (one value per process).
 */
export class SpendMetrics {
  readonly registry = new Registry();
  private readonly buffers = new Set<() => BufferStats>();
  /** Events recorded by producers no longer watched, so the counter never goes back. */
  private retiredEvents = 0;
  private readonly queueSets = new Map<string, WatchedQueues>();
  private readonly lockHeld: Gauge;
  private readonly lockHolder: Gauge<"holder">;
  private readonly lockLastAcquired: Gauge<"holder">;
  private flusherSince: number | undefined;
  private lastFlushOk = 0;

  readonly eventsRejected: Counter<"reason">;
  readonly enqueueFailures: Counter;
  readonly backpressureEpisodes: Counter<"reason">;
  readonly sealDuration: Histogram;
  readonly sealRows: Histogram;
  readonly flushes: Counter<"outcome">;
  readonly flushDuration: Histogram;
  readonly flushRows: Histogram<"kind">;
  readonly flushBatches: Histogram;
  readonly rowsCommitted: Counter<"kind">;
  readonly batchesCommitted: Counter;
  readonly duplicateBatches: Counter;
  readonly poisonJobs: Counter<"queue">;
  readonly deadLetters: Counter<"queue" | "reason">;
  readonly deadLetteredRows: Counter<"queue" | "reason">;
  readonly isolations: Counter;
  readonly redisRepairs: Counter<"what">;
  readonly fencingRejections: Counter;
  readonly lastSuccessfulFlush: Gauge;
  readonly lockAcquisitions: Counter;
  readonly lockLosses: Counter<"reason">;
  readonly transactionRetries: Counter<"reason" | "path">;

  constructor() {
    const registers = [this.registry];
    this.lockHeld = new Gauge({
      name: "litellm_pod_lock_manager_size",
      help: "1 while this pod holds the lock to write spend to the database, else 0.",
      registers,
    });
    this.lockHeld.set(0);
    this.lockHolder = new Gauge({
      name: "spend_lock_holder_info",
      help: "1, labelled with this process's lock holder id, while this process holds the flush lock; absent otherwise.",
      labelNames: ["holder"],
      registers,
    });
    this.lockLastAcquired = new Gauge({
      name: "spend_lock_last_acquired_timestamp_seconds",
      help: "Unix time this process last acquired the flush lock, labelled with its holder id (one series per process).",
      labelNames: ["holder"],
      registers,
    });

    const sum = (pick: (s: BufferStats) => number | undefined): number => {
      let total = 0;
      for (const stats of this.buffers) total += pick(stats()) ?? 0;
      return total;
    };
    new Gauge({
      name: "litellm_in_memory_spend_update_queue_size",
      help: "Distinct entity spend rows (keys, users, teams, members, orgs, end users, tags) aggregated in this process, not yet sent.",
      registers,
      collect() {
        this.set(sum((s) => s.entityRows));
      },
    });
    new Gauge({
      name: "litellm_in_memory_daily_spend_update_queue_size",
      help: "Distinct daily spend rows aggregated in this process, not yet sent.",
      registers,
      collect() {
        this.set(sum((s) => s.dailyRows));
      },
    });
    const retired = (): number => this.retiredEvents;
    new Counter({
      name: "spend_events_recorded_total",
      help: "Spend events accepted by this process's producers (read from a plain count on scrape: no cost per event).",
      registers,
      collect() {
        this.reset();
        this.inc(retired() + sum((s) => s.recordedEvents));
      },
    });
    new Gauge({
      name: "spend_producer_undelivered_rows",
      help: "Rows sealed into batches that the sink (Redis or PostgreSQL) has not accepted yet; they are retried.",
      registers,
      collect() {
        this.set(sum((s) => s.undeliveredRows));
      },
    });
    new Gauge({
      name: "spend_producer_undelivered_batches",
      help: "Sealed batches that the sink has not accepted yet; they are retried with the same batch id.",
      registers,
      collect() {
        this.set(sum((s) => s.undeliveredBatches));
      },
    });
    new Gauge({
      name: "spend_producer_backpressure",
      help: "Producers in this process with back-pressure on (the gateway answers 503 meanwhile): see spend_producer_backpressure_episodes_total for the rules.",
      registers,
      collect() {
        this.set(sum((s) => s.backlogged));
      },
    });

    const pending = async (pick: (q: WatchedQueues) => Queue): Promise<number> => {
      let total = 0;
      for (const set of this.queueSets.values()) {
        const c = await pick(set).getJobCounts("wait", "active", "delayed", "prioritized");
        total += Object.values(c).reduce((a, b) => a + b, 0);
      }
      return total;
    };
    new Gauge({
      name: "litellm_redis_spend_update_queue_size",
      help: "Entity spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      async collect() {
        this.set(await pending((s) => s.entity));
      },
    });
    new Gauge({
      name: "litellm_redis_daily_spend_update_queue_size",
      help: "Daily spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      async collect() {
        this.set(await pending((s) => s.daily));
      },
    });

    const queueSets = this.queueSets;
    new Gauge({
      name: "spend_queue_jobs",
      help: "BullMQ jobs by queue (entity, daily, flush) and state, summed over flush partitions; read from Redis on scrape.",
      labelNames: ["queue", "state"],
      registers,
      async collect() {
        const totals = new Map<string, number>();
        for (const set of queueSets.values()) {
          const named: [string, Queue | undefined][] = [
            ["entity", set.entity],
            ["daily", set.daily],
            ["flush", set.flush],
          ];
          for (const [name, q] of named) {
            if (q === undefined) continue;
            const c = await q.getJobCounts(...Object.values(JOB_STATES));
            for (const [state, bull] of Object.entries(JOB_STATES)) {
              const k = `${name}\u0000${state}`;
              totals.set(k, (totals.get(k) ?? 0) + (c[bull] ?? 0));
            }
          }
        }
        this.reset();
        for (const [k, v] of totals) {
          const [queue = "", state = ""] = k.split("\u0000");
          this.set({ queue, state }, v);
        }
      },
    });
    new Gauge({
      name: "spend_backlog_age_seconds",
      help: "Age of the oldest spend job waiting in Redis (0 when none), by queue (entity, daily); read from Redis on scrape.",
      labelNames: ["queue"],
      registers,
      async collect() {
        this.reset();
        if (queueSets.size === 0) return;
        const now = Date.now();
        for (const name of ["entity", "daily"] as const) {
          let oldest = now;
          for (const set of queueSets.values())
            oldest = Math.min(oldest, await oldestJobAt(set[name], now));
          this.set({ queue: name }, Math.max(0, (now - oldest) / 1000));
        }
      },
    });

    this.eventsRejected = new Counter({
      name: "spend_events_rejected_total",
      help: "Spend events refused at the producer or ingest boundary, by reason.",
      labelNames: ["reason"],
      registers,
    });
    this.enqueueFailures = new Counter({
      name: "spend_producer_enqueue_failures_total",
      help: "Failed attempts to send a sealed batch to its sink (it is kept and retried).",
      registers,
    });
    this.backpressureEpisodes = new Counter({
      name: "spend_producer_backpressure_episodes_total",
      help: "Times a producer turned back-pressure on, by the rule that did: backlog_age (the oldest job not yet committed is past backpressure_backlog_age_seconds), held_rows (the rows gateways hold exceed half a seal interval of flush work), held_rows_no_rate (no flush rate published yet, and they hold more than max_rows_per_transaction).",
      labelNames: ["reason"] as const,
      registers,
    });
    this.sealDuration = new Histogram({
      name: "spend_producer_seal_duration_seconds",
      help: "Time one seal of a producer's buffer held its event loop: the rows touched since the last seal drained and split into jobs, synchronously (sending them is asynchronous and not counted).",
      buckets: SEAL_DURATION_BUCKETS,
      registers,
    });
    this.sealRows = new Histogram({
      name: "spend_producer_seal_rows",
      help: "Rows (entity + daily) one seal of a producer's buffer emitted.",
      buckets: FLUSH_ROWS_BUCKETS,
      registers,
    });
    this.flushes = new Counter({
      name: "spend_flushes_total",
      help: "Flush runs by outcome: committed, empty, lock_busy, fenced_off, lease_lost, failed.",
      labelNames: ["outcome"],
      registers,
    });
    this.flushDuration = new Histogram({
      name: "spend_flush_duration_seconds",
      help: "Time from lock acquisition to commit of a flush that wrote rows.",
      buckets: FLUSH_DURATION_BUCKETS,
      registers,
    });
    this.flushRows = new Histogram({
      name: "spend_flush_rows",
      help: "Distinct database rows one committed flush upserted, by kind (entity, daily).",
      labelNames: ["kind"],
      buckets: FLUSH_ROWS_BUCKETS,
      registers,
    });
    this.flushBatches = new Histogram({
      name: "spend_flush_batches",
      help: "Spend batches (jobs) one committed flush applied.",
      buckets: FLUSH_BATCHES_BUCKETS,
      registers,
    });
    this.rowsCommitted = new Counter({
      name: "spend_rows_committed_total",
      help: "Distinct database rows upserted by flushes, by kind (entity, daily).",
      labelNames: ["kind"],
      registers,
    });
    this.batchesCommitted = new Counter({
      name: "spend_batches_committed_total",
      help: "Spend batches applied by flushes.",
      registers,
    });
    this.duplicateBatches = new Counter({
      name: "spend_duplicate_batches_total",
      help: "Batches delivered again after they were applied, and skipped.",
      registers,
    });
    this.poisonJobs = new Counter({
      name: "spend_poison_jobs_total",
      help: "Spend jobs set aside as failed because their payload is malformed.",
      labelNames: ["queue"],
      registers,
    });
    this.deadLetters = new Counter({
      name: "spend_dead_letters_total",
      help: "Dead letters written (spend_dead_letter): spend set aside instead of blocking the flush, by queue (entity, daily, job) and reason (malformed, invalid_unicode, database). Replay with `haimaker-spend dead-letter replay`.",
      labelNames: ["queue", "reason"],
      registers,
    });
    this.deadLetteredRows = new Counter({
      name: "spend_dead_lettered_rows_total",
      help: "Spend rows set aside in dead letters, by queue and reason (see spend_dead_letters_total).",
      labelNames: ["queue", "reason"],
      registers,
    });
    // Born at 0 for every label pair, so increase() sees the first dead letter.
    for (const queue of ["entity", "daily", "job"])
      for (const reason of DEAD_LETTER_REASONS) {
        this.deadLetters.inc({ queue, reason }, 0);
        this.deadLetteredRows.inc({ queue, reason }, 0);
      }
    this.isolations = new Counter({
      name: "spend_flush_isolations_total",
      help: "Flush transactions run again to isolate rows PostgreSQL refused (the rest of the flush commits; the refused rows become dead letters).",
      registers,
    });
    this.redisRepairs = new Counter({
      name: "spend_redis_repairs_total",
      help: "Things a flush worker found missing in Redis and put back (Redis restarted empty, keys deleted or evicted), by what: scheduler, partition_count, fence.",
      labelNames: ["what"],
      registers,
    });
    for (const what of ["scheduler", "partition_count", "fence"])
      this.redisRepairs.inc({ what }, 0);
    this.fencingRejections = new Counter({
      name: "spend_fencing_rejections_total",
      help: "Flush transactions rejected because a newer lock holder already committed.",
      registers,
    });
    this.lastSuccessfulFlush = new Gauge({
      name: "spend_last_successful_flush_timestamp_seconds",
      help: "Unix time of the last flush that committed (0 if none yet).",
      registers,
    });
    this.lockAcquisitions = new Counter({
      name: "spend_lock_acquisitions_total",
      help: "Times this process acquired the flush lock (once per flush that ran).",
      registers,
    });
    this.lockLosses = new Counter({
      name: "spend_lock_losses_total",
      help: "Times this process lost the flush lock before releasing it, by reason (taken_over, expired, renewal_failed).",
      labelNames: ["reason"],
      registers,
    });
    this.transactionRetries = new Counter({
      name: "spend_transaction_retries_total",
      help: "Database transactions retried after a retryable failure, by reason (deadlock, serialization, connection, timeout) and path (flush, direct).",
      labelNames: ["reason", "path"],
      registers,
    });
  }

  /**
   * Marks whether this process holds the flush lock: litellm_pod_lock_manager_size,
   * and spend_lock_holder_info{holder} while it does.
   */
  setLockHeld(held: boolean, holder?: string): void {
    this.lockHeld.set(held ? 1 : 0);
    this.lockHolder.reset();
    if (held && holder !== undefined) {
      this.lockHolder.set({ holder }, 1);
      this.lockLastAcquired.reset();
      this.lockLastAcquired.set({ holder }, Date.now() / 1000);
    }
  }

  /**
   * Called once by each Flusher: from then on this process reports
   * spend_seconds_since_last_successful_flush (processes that never flush,
   * like gateways, do not, so a fleet-wide min() is not pinned at 0).
   */
  attachFlusher(): void {
    if (this.flusherSince !== undefined) return;
    this.flusherSince = Date.now();
    const seconds = (): number => {
      const since = this.lastFlushOk || this.flusherSince || Date.now();
      return Math.max(0, (Date.now() - since) / 1000);
    };
    new Gauge({
      name: "spend_seconds_since_last_successful_flush",
      help: "Seconds since this process's last flush that did its job (committed, or found nothing to do); since start if none yet.",
      registers: [this.registry],
      collect() {
        this.set(seconds());
      },
    });
  }

  /** Counts a flush by outcome; committed and empty flushes reset the time since the last success. */
  recordFlush(outcome: string): void {
    this.flushes.inc({ outcome });
    if (outcome === "committed" || outcome === "empty") this.lastFlushOk = Date.now();
  }

  /** Adds a producer's buffer to the in-memory gauges; returns a function that removes it. */
  watchBuffer(stats: () => BufferStats): () => void {
    this.buffers.add(stats);
    return () => {
      if (this.buffers.delete(stats)) this.retiredEvents += stats().recordedEvents ?? 0;
    };
  }

  /**
   * Reports these queues in the Redis gauges, job counts and backlog age.
   * One call per flush partition (key: the partition; a second call with the
   * same key replaces the first).
   */
  watchQueues(queues: WatchedQueues, partition: number | string = 0): void {
    this.queueSets.set(String(partition), queues);
  }
}

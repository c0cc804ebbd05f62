import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { Logger } from "../observe/logger.js";
import { ROWS_BUCKETS, type SpendMetrics } from "../observe/metrics.js";
import { DEAD_LETTER_REASONS } from "../persist/dead-letters.js";

/** Flush durations: a few ms for a small batch, up to max_flush_seconds and the transaction timeout. */
const FLUSH_DURATION_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
];
/** Batches (jobs) one flush commits: up to max_jobs_per_flush per transaction, several transactions. */
const FLUSH_BATCHES_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000];

/** Why a flush lost its lock (bounded label values). */
export type LockLossReason = "taken_over" | "expired" | "renewal_failed";
const LOCK_LOSS_REASONS: readonly LockLossReason[] = ["taken_over", "expired", "renewal_failed"];

/** Flush outcomes (spend_flushes_total{outcome}). */
export const FLUSH_OUTCOMES = [
  "committed",
  "empty",
  "lock_busy",
  "fenced_off",
  "lease_lost",
  "failed",
] as const;

/** Something a flush worker found missing in Redis and put back (spend_redis_repairs_total{what}). */
export const REDIS_REPAIRS = ["scheduler", "partition_count", "fence"] as const;
export type RedisRepair = (typeof REDIS_REPAIRS)[number];

/**
 * Counts and logs something Redis had lost and the flush put back: one place
 * for the worker's own checks and a flush that found its fence counter behind
 * (SpendRedisStateLost fires on the counter).
 */
export function reportRedisRepair(
  metrics: FlushMetrics,
  log: Logger,
  what: RedisRepair,
  fields: Record<string, unknown>,
): void {
  metrics.redisRepairs.inc({ what });
  log.warn(
    { what, ...fields },
    "Redis had lost what the flush worker keeps there (restarted empty, keys deleted or evicted): put back",
  );
}

/** The flush worker's metrics: only processes that flush export them. */
export class FlushMetrics {
  private readonly leader: Gauge;
  private readonly leaderInfo: Gauge<"holder">;
  private readonly lockLastAcquired: Gauge<"holder">;
  readonly flushes: Counter<"outcome">;
  readonly flushDuration: Histogram;
  readonly flushRows: Histogram<"kind">;
  readonly flushBatches: Histogram;
  readonly rowsCommitted: Counter<"kind">;
  readonly batchesCommitted: Counter;
  readonly duplicateBatches: Counter;
  readonly jobsReclaimed: Counter;
  readonly poisonJobs: Counter<"queue">;
  readonly deadLetters: Counter<"queue" | "reason">;
  readonly deadLetteredRows: Counter<"queue" | "reason">;
  readonly isolations: Counter;
  readonly redisRepairs: Counter<"what">;
  readonly scheduleRestarts: Counter;
  readonly fencingRejections: Counter;
  readonly lastSuccessfulFlush: Gauge;
  readonly lockAcquisitions: Counter;
  readonly lockLosses: Counter<"reason">;

  constructor(registry: Registry) {
    const registers = [registry];
    this.leader = new Gauge({
      name: "litellm_pod_lock_manager_size",
      help: "1 while this worker pod leads the flush (holds the leadership lease: the one pod that writes spend to the database), else 0. Summed over workers: 1.",
      registers,
    });
    this.leader.set(0);
    this.leaderInfo = new Gauge({
      name: "spend_lock_holder_info",
      help: "1, labelled with this worker's id, while it leads the flush; absent otherwise.",
      labelNames: ["holder"],
      registers,
    });
    this.lockLastAcquired = new Gauge({
      name: "spend_lock_last_acquired_timestamp_seconds",
      help: "Unix time this process last acquired the flush lock, labelled with its holder id (one series per process).",
      labelNames: ["holder"],
      registers,
    });
    this.flushes = new Counter({
      name: "spend_flushes_total",
      help: "Flush runs by outcome: committed, empty, lock_busy, fenced_off, lease_lost, failed.",
      labelNames: ["outcome"],
      registers,
    });
    for (const outcome of FLUSH_OUTCOMES) this.flushes.inc({ outcome }, 0);
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
      buckets: ROWS_BUCKETS,
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
    for (const kind of ["entity", "daily"]) this.rowsCommitted.inc({ kind }, 0);
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
    this.jobsReclaimed = new Counter({
      name: "spend_jobs_reclaimed_total",
      help: "Spend jobs left active by an earlier lock holder whose lease had lapsed (a worker that died or stalled mid-flush) and put back in the queue: by the next flush when it took the lock, or by BullMQ's stalled check once the job's lock expired.",
      registers,
    });
    this.poisonJobs = new Counter({
      name: "spend_poison_jobs_total",
      help: "Spend jobs too malformed to read, set aside whole as dead letters (and marked failed in BullMQ).",
      labelNames: ["queue"],
      registers,
    });
    for (const queue of ["entity", "daily"]) this.poisonJobs.inc({ queue }, 0);
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
    for (const what of REDIS_REPAIRS) this.redisRepairs.inc({ what }, 0);
    this.scheduleRestarts = new Counter({
      name: "spend_flush_schedule_restarts_total",
      help: "Times the leader found the flush schedule's next tick overdue with none pending (a replica died between taking a tick and scheduling the next) and scheduled it again.",
      registers,
    });
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
    for (const reason of LOCK_LOSS_REASONS) this.lockLosses.inc({ reason }, 0);
  }

  /**
   * Marks whether this worker leads the flush: litellm_pod_lock_manager_size,
   * and spend_lock_holder_info{holder} while it does.
   */
  setLeader(leads: boolean, holder: string): void {
    this.leader.set(leads ? 1 : 0);
    this.leaderInfo.reset();
    if (leads) this.leaderInfo.set({ holder }, 1);
  }

  /** Counts one acquisition of a flush lock (once per flush that runs). */
  lockAcquired(holder: string): void {
    this.lockAcquisitions.inc();
    this.lockLastAcquired.reset();
    this.lockLastAcquired.set({ holder }, Date.now() / 1000);
  }

  /** Counts a flush by outcome. */
  recordFlush(outcome: string): void {
    this.flushes.inc({ outcome });
  }
}

/** This registry's flush metrics (made on first use). */
export function flushMetrics(m: SpendMetrics): FlushMetrics {
  return m.use("flush", (r) => new FlushMetrics(r));
}

import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Queue } from "bullmq";

/** What a producer exposes for the in-memory gauges. */
export interface BufferStats {
  entityRows: number;
  dailyRows: number;
}

/**
 * One registry per process. The five gauges carry the seed's names exactly;
 * the rest say what an operator needs to trust the numbers. Labels are
 * bounded: reasons and outcomes, never ids.
 */
export class SpendMetrics {
  readonly registry = new Registry();
  private readonly buffers = new Set<() => BufferStats>();
  private queues: { entity: Queue; daily: Queue } | undefined;
  private readonly lockHeld: Gauge;

  readonly eventsRejected: Counter<"reason">;
  readonly enqueueFailures: Counter;
  readonly flushes: Counter<"outcome">;
  readonly flushDuration: Histogram;
  readonly rowsCommitted: Counter<"kind">;
  readonly batchesCommitted: Counter;
  readonly duplicateBatches: Counter;
  readonly poisonJobs: Counter<"queue">;
  readonly fencingRejections: Counter;
  readonly lastSuccessfulFlush: Gauge;

  constructor() {
    const registers = [this.registry];
    this.lockHeld = new Gauge({
      name: "litellm_pod_lock_manager_size",
      help: "1 while this pod holds the lock to write spend to the database, else 0.",
      registers,
    });
    this.lockHeld.set(0);

    const sum = (pick: (s: BufferStats) => number): number => {
      let total = 0;
      for (const stats of this.buffers) total += pick(stats());
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
    const pending = async (q: Queue | undefined): Promise<number> => {
      if (q === undefined) return 0;
      const c = await q.getJobCounts("wait", "active", "delayed", "prioritized");
      return Object.values(c).reduce((a, b) => a + b, 0);
    };
    const entityQueue = () => this.queues?.entity;
    const dailyQueue = () => this.queues?.daily;
    new Gauge({
      name: "litellm_redis_spend_update_queue_size",
      help: "Entity spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      async collect() {
        this.set(await pending(entityQueue()));
      },
    });
    new Gauge({
      name: "litellm_redis_daily_spend_update_queue_size",
      help: "Daily spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      async collect() {
        this.set(await pending(dailyQueue()));
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
    this.flushes = new Counter({
      name: "spend_flushes_total",
      help: "Flush runs by outcome: committed, empty, lock_busy, fenced_off, lease_lost, failed.",
      labelNames: ["outcome"],
      registers,
    });
    this.flushDuration = new Histogram({
      name: "spend_flush_duration_seconds",
      help: "Time from lock acquisition to commit of a flush that wrote rows.",
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
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
  }

  /** Marks whether this process holds the flush lock (litellm_pod_lock_manager_size). */
  setLockHeld(held: boolean): void {
    this.lockHeld.set(held ? 1 : 0);
  }

  /** Adds a producer's buffer to the in-memory gauges; returns a function that removes it. */
  watchBuffer(stats: () => BufferStats): () => void {
    this.buffers.add(stats);
    return () => this.buffers.delete(stats);
  }

  /** Reports these queues' pending jobs in the Redis gauges. */
  watchQueues(queues: { entity: Queue; daily: Queue }): void {
    this.queues = queues;
  }
}

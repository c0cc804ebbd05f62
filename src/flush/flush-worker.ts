import type { RedisClient } from "../queue/connection.js";
import { Queue, Worker } from "bullmq";
import type { AppConfig } from "../config/config.js";
import { FlushLock } from "../lock/flush-lock.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import type { Db } from "../persist/prisma.js";
import { createRedis } from "../queue/connection.js";
import { redisKeys, type RedisKeys } from "../queue/keys.js";
import { ensurePartitionCount } from "../queue/partitions.js";
import { openSpendQueues, type SpendQueues } from "../queue/spend-queues.js";
import { Flusher, type FlushReport, type FlushStep } from "./flusher.js";
import { SpendDrain } from "./spend-drain.js";

export interface FlushWorkerDeps {
  config: AppConfig;
  db: Db;
  metrics: SpendMetrics;
  logger: Logger;
  /** Identifies this replica in the lock's value. */
  holderId?: string;
  onStep?: (step: FlushStep) => Promise<void> | void;
  /** See FlusherOptions.idleInTransactionTimeoutMs. */
  idleInTransactionTimeoutMs?: number;
  /** Called after every flush, e.g. by tests waiting for the backlog to clear. */
  onFlush?: (report: FlushReport) => void;
  /** Flush partitions (each with its own queues, lock and schedule). Default 1. */
  partitions?: number;
  /** Flushes this replica runs at once (of different partitions). Default 1. */
  concurrency?: number;
  /**
   * A connection to use instead of one made from config.redis (e.g. a Redis
   * Cluster client). The caller keeps owning it: close() leaves it open.
   */
  connection?: RedisClient;
}

/** One flush partition's own pieces: queues, lock, drain and flusher. */
export interface FlushPartition {
  readonly keys: RedisKeys;
  readonly queues: SpendQueues;
  readonly drain: SpendDrain;
  readonly flusher: Flusher;
}

/**
 * The flush worker deployment: a BullMQ job scheduler fires the repeatable
 * flush job every interval (one schedule per partition); a worker with
 * concurrency 1 (by default) runs it; the Flusher inside takes the
 * partition's explicit Redis lock. Any number of replicas may run: the
 * scheduler fires one job per interval, the lock admits one writer per
 * partition, and the fencing token rejects a writer whose lease has lapsed.
 */
export class FlushWorker {
  /** Partition 0's keys, queues and flusher: the whole pipeline when unpartitioned. */
  readonly keys: RedisKeys;
  readonly flusher: Flusher;
  readonly queues: SpendQueues;
  readonly partitions: readonly FlushPartition[];
  private readonly flushQueue: Queue<{ partition?: number }>;
  private worker: Worker<{ partition?: number }> | undefined;

  private constructor(
    private readonly redis: RedisClient,
    private readonly deps: FlushWorkerDeps,
  ) {
    const { config, db, metrics, logger } = deps;
    const count = deps.partitions ?? 1;
    this.partitions = Array.from({ length: count }, (_, p): FlushPartition => {
      const keys = redisKeys(config.keyPrefix, p);
      const drain = new SpendDrain(redis, keys, config.worker.lockLeaseMs);
      const lock = new FlushLock(redis, keys, config.worker.lockLeaseMs, deps.holderId);
      const flusher = new Flusher(
        db,
        lock,
        drain,
        metrics,
        {
          maxJobsPerFlush: config.worker.maxJobsPerFlush,
          maxRowsPerTransaction: config.worker.maxRowsPerTransaction,
          maxFlushMs: config.worker.maxFlushMs,
          transactionTimeoutMs: config.worker.transactionTimeoutMs,
          appliedBatchRetentionDays: config.worker.appliedBatchRetentionDays,
          fencePartition: keys.fencePartition,
          ...(deps.onStep !== undefined ? { onStep: deps.onStep } : {}),
          // Published for producers' back-pressure; kept a minute, so a worker
          // gone quiet stops vouching for a rate it no longer delivers.
          onRate: (rowsPerSec) =>
            void redis
              .set(keys.flushRate, String(Math.round(rowsPerSec)), "PX", 60_000)
              .catch(() => undefined),
          ...(deps.idleInTransactionTimeoutMs !== undefined
            ? { idleInTransactionTimeoutMs: deps.idleInTransactionTimeoutMs }
            : {}),
        },
        logger.child({ partition: p }),
      );
      return { keys, queues: openSpendQueues(redis, keys), drain, flusher };
    });
    const first = this.partitions[0];
    if (first === undefined) throw new Error("partitions must be at least 1");
    this.keys = first.keys;
    this.flusher = first.flusher;
    this.queues = first.queues;
    this.flushQueue = new Queue(this.keys.flushQueue, {
      connection: redis,
      prefix: this.keys.bullPrefix,
    });
    this.flushQueue.on("error", () => undefined);
    for (const p of this.partitions) {
      metrics.watchQueues(
        p.keys.partition === 0 ? { ...p.queues, flush: this.flushQueue } : p.queues,
        p.keys.partition,
      );
    }
  }

  static async start(deps: FlushWorkerDeps): Promise<FlushWorker> {
    const redis = deps.connection ?? createRedis(deps.config.redis, "worker");
    try {
      await ensurePartitionCount(redis, deps.config.keyPrefix, deps.partitions ?? 1);
    } catch (err) {
      if (deps.connection === undefined) redis.disconnect();
      throw err;
    }
    const fw = new FlushWorker(redis, deps);
    await fw.run();
    return fw;
  }

  private async run(): Promise<void> {
    const { config, logger } = this.deps;
    await Promise.all(this.partitions.map((p) => p.drain.start()));
    // Upsert, not add: every replica declares the same schedules, and
    // re-declaring one with a new interval updates it in place.
    for (const p of this.partitions) {
      await this.flushQueue.upsertJobScheduler(
        p.keys.flushSchedulerId,
        { every: config.worker.flushEveryMs },
        {
          name: "flush",
          data: { partition: p.keys.partition },
          opts: { removeOnComplete: { count: 100 }, removeOnFail: { count: 100 } },
        },
      );
    }
    this.worker = new Worker<{ partition?: number }>(
      this.keys.flushQueue,
      async (job) => {
        const p = this.partitions[job.data.partition ?? 0];
        // A schedule left by a deployment with more partitions: nothing of ours to flush.
        if (p === undefined) return { outcome: "unknown_partition" };
        const report = await p.flusher.flushOnce();
        this.deps.onFlush?.(report);
        return { ...report, fence: report.fence?.toString() };
      },
      {
        connection: this.redis,
        prefix: this.keys.bullPrefix,
        concurrency: this.deps.concurrency ?? 1,
        // A flush job is cheap to lose (the next tick replaces it): never retry it.
        maxStalledCount: 0,
      },
    );
    this.worker.on("error", (err) => logger.warn({ err: err.message }, "flush worker error"));
    this.worker.on("failed", (_job, err) => logger.error({ err: err.message }, "flush job failed"));
  }

  /** Runs one flush of every partition now, outside the schedule (CLI, tests, shutdown). */
  async flushNow(): Promise<FlushReport> {
    const reports = await Promise.all(this.partitions.map((p) => p.flusher.flushOnce()));
    return reports[0] as FlushReport;
  }

  /** Lets the current flush finish, then stops. The schedules stay for other replicas. */
  async close(): Promise<void> {
    await this.worker?.close();
    for (const p of this.partitions) {
      await p.drain.close();
      await p.queues.close();
    }
    await this.flushQueue.close();
    if (this.deps.connection === undefined) this.redis.disconnect();
  }
}

import { Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { AppConfig } from "../config/config.js";
import { FlushLock } from "../lock/flush-lock.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import type { Db } from "../persist/prisma.js";
import { createRedis } from "../queue/connection.js";
import { redisKeys, type RedisKeys } from "../queue/keys.js";
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
}

/**
 * The flush worker deployment: a BullMQ job scheduler fires the repeatable
 * flush job every interval; a concurrency-1 worker runs it; the Flusher inside
 * takes the explicit Redis lock. Any number of replicas may run: the
 * scheduler fires one job per interval, the lock admits one writer, and the
 * fencing token rejects a writer whose lease has lapsed.
 */
export class FlushWorker {
  readonly keys: RedisKeys;
  readonly flusher: Flusher;
  readonly queues: SpendQueues;
  private readonly flushQueue: Queue;
  private worker: Worker | undefined;

  private constructor(
    private readonly redis: Redis,
    private readonly drain: SpendDrain,
    private readonly deps: FlushWorkerDeps,
  ) {
    const { config, db, metrics, logger } = deps;
    this.keys = redisKeys(config.keyPrefix);
    const lock = new FlushLock(redis, this.keys, config.worker.lockLeaseMs, deps.holderId);
    this.flusher = new Flusher(
      db,
      lock,
      drain,
      metrics,
      {
        maxJobsPerFlush: config.worker.maxJobsPerFlush,
        maxFlushMs: config.worker.maxFlushMs,
        transactionTimeoutMs: config.worker.transactionTimeoutMs,
        appliedBatchRetentionDays: config.worker.appliedBatchRetentionDays,
        fencePartition: this.keys.fencePartition,
        ...(deps.onStep !== undefined ? { onStep: deps.onStep } : {}),
        ...(deps.idleInTransactionTimeoutMs !== undefined
          ? { idleInTransactionTimeoutMs: deps.idleInTransactionTimeoutMs }
          : {}),
      },
      logger,
    );
    this.flushQueue = new Queue(this.keys.flushQueue, {
      connection: redis,
      prefix: this.keys.bullPrefix,
    });
    this.flushQueue.on("error", () => undefined);
    this.queues = openSpendQueues(redis, this.keys);
    metrics.watchQueues(this.queues);
  }

  static async start(deps: FlushWorkerDeps): Promise<FlushWorker> {
    const redis = createRedis(deps.config.redis, "worker");
    const keys = redisKeys(deps.config.keyPrefix);
    const drain = new SpendDrain(redis, keys, deps.config.worker.lockLeaseMs);
    const fw = new FlushWorker(redis, drain, deps);
    await fw.run();
    return fw;
  }

  private async run(): Promise<void> {
    const { config, logger } = this.deps;
    await this.drain.start();
    // Upsert, not add: every replica declares the same schedule, and
    // re-declaring it with a new interval updates it in place.
    await this.flushQueue.upsertJobScheduler(
      this.keys.flushSchedulerId,
      { every: config.worker.flushEveryMs },
      { name: "flush", opts: { removeOnComplete: { count: 100 }, removeOnFail: { count: 100 } } },
    );
    this.worker = new Worker(
      this.keys.flushQueue,
      async () => {
        const report = await this.flusher.flushOnce();
        this.deps.onFlush?.(report);
        return { ...report, fence: report.fence?.toString() };
      },
      {
        connection: this.redis,
        prefix: this.keys.bullPrefix,
        concurrency: 1,
        // A flush job is cheap to lose (the next tick replaces it): never retry it.
        maxStalledCount: 0,
      },
    );
    this.worker.on("error", (err) => logger.warn({ err: err.message }, "flush worker error"));
    this.worker.on("failed", (_job, err) => logger.error({ err: err.message }, "flush job failed"));
  }

  /** Runs one flush now, outside the schedule (CLI, tests, shutdown). */
  flushNow(): Promise<FlushReport> {
    return this.flusher.flushOnce();
  }

  /** Lets the current flush finish, then stops. The schedule stays for other replicas. */
  async close(): Promise<void> {
    await this.worker?.close();
    await this.drain.close();
    await this.flushQueue.close();
    await this.queues.close();
    this.redis.disconnect();
  }
}

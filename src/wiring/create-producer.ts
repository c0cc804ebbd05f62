import type { AppConfig } from "../config/config.js";
import { redact } from "../config/redact.js";
import type { SpendSink } from "../contract/spend-sink.js";
import { createLogger, type Logger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import type { Db } from "../persist/prisma.js";
import { producerSettings, SpendProducer, type ProducerOptions } from "../produce/producer.js";
import type { PartitionGuard } from "../queue/partition-guard.js";
import type { RedisClient } from "../redis/connection.js";

export interface SpendProducerDeps<P extends SpendProducer = SpendProducer> {
  /**
   * A Redis connection to use (a Cluster client included) instead of one made
   * from the configuration. The caller keeps owning it: close() leaves it open.
   */
  redis?: RedisClient;
  /** A PostgreSQL client for the buffer off (DirectSink); the caller keeps owning it. */
  db?: Db;
  /** Where the producer's metrics go. Default: a registry of its own (`producer.metrics`). */
  metrics?: SpendMetrics;
  /**
   * Where refused events, delivery failures and back-pressure are logged.
   * Default: JSON lines on stdout at the configured log level, never silent.
   */
  logger?: Logger;
  /** A stable id for this process's batches. Default: a random UUID. */
  producerId?: string;
  /**
   * Settings the configuration does not decide (timeouts, the back-pressure
   * poll), or overrides of what it does, for tests and special cases.
   */
  options?: Partial<Omit<ProducerOptions, "sink" | "metrics" | "logger" | "onClose" | "halted">>;
  /**
   * Makes the producer from its wired options: a subclass (a benchmark's
   * switchable producer, a test's instrumented one). Default: `new SpendProducer`.
   */
  construct?: (options: ProducerOptions) => P;
  /** How long start-up waits for Redis to answer the partition check. Default 5 000 ms. */
  startupWaitMs?: number;
  /** How often the partition count is checked again while running. Default 5 000 ms. */
  partitionCheckEveryMs?: number;
}

/**
 * The producer a gateway embeds, wired from a validated configuration: the
 * Redis buffer (BullMQ queues, one set per flush partition, agreeing with
 * the workers on the partition count) when use_redis_transaction_buffer is
 * on, PostgreSQL directly when it is off. Everything it creates, it closes
 * in `producer.close()`; what the caller passed in, it leaves open.
 *
 * Rejects with PartitionMismatchError if Redis answers and records another
 * flush partition count than the configuration's.
 */
export async function createSpendProducer<P extends SpendProducer = SpendProducer>(
  config: AppConfig,
  deps: SpendProducerDeps<P> = {},
): Promise<P> {
  const metrics = deps.metrics ?? new SpendMetrics();
  const logger = deps.logger ?? createLogger("spend-producer", config.logLevel);
  let sink: SpendSink;
  const closers: (() => Promise<void> | void)[] = [];
  let guard: PartitionGuard | undefined;
  // Only the chosen sink's modules are loaded: BullMQ or Prisma, not both
  // (a fleet of processes starting at once on a small machine feels it).
  if (config.useRedisBuffer) {
    const [{ connectRedis }, { QueueSink }, { openPartitionQueues }, { PartitionGuard }] =
      await Promise.all([
        import("../redis/connection.js"),
        import("../queue/queue-sink.js"),
        import("../queue/spend-queues.js"),
        import("../queue/partition-guard.js"),
      ]);
    const redis = deps.redis ?? connectRedis(config.redis, "producer");
    if (deps.redis === undefined) closers.push(() => redis.disconnect());
    sink = new QueueSink(openPartitionQueues(redis, config.keyPrefix, config.partitions), {
      jobFormat: config.producer.jobFormat,
    });
    guard = new PartitionGuard(
      redis,
      config.keyPrefix,
      config.partitions,
      logger,
      deps.partitionCheckEveryMs,
    );
    closers.unshift(() => guard?.stop());
    try {
      await guard.start(deps.startupWaitMs);
    } catch (err) {
      for (const c of closers) await c();
      throw err;
    }
  } else {
    // LiteLLM's default, and easy to get by leaving the line out of a config
    // file: said once at startup, so an operator never runs it unknowingly.
    logger.warn(
      { buffer: "direct", database: redact(config.databaseUrl) },
      "the Redis buffer is off (general_settings.use_redis_transaction_buffer is not true): this process writes spend to PostgreSQL itself, which deadlocks with many gateways",
    );
    const [{ createDb }, { DirectSink }] = await Promise.all([
      import("../persist/prisma.js"),
      import("../persist/direct-sink.js"),
    ]);
    const db = deps.db ?? createDb(config.databaseUrl, { max: 2 });
    if (deps.db === undefined) closers.push(() => db.$disconnect());
    sink = new DirectSink(db, {
      transactionTimeoutMs: config.worker.transactionTimeoutMs,
      metrics,
    });
  }
  const options: ProducerOptions = {
    sink,
    ...producerSettings(config),
    ...deps.options,
    ...(deps.producerId !== undefined ? { producerId: deps.producerId } : {}),
    metrics,
    logger,
    halted: () => guard?.mismatch,
    onClose: async () => {
      for (const c of closers) await c();
    },
  };
  return deps.construct !== undefined ? deps.construct(options) : (new SpendProducer(options) as P);
}

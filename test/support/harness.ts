import { Redis } from "ioredis";
import { trafficGenerator } from "../../src/demo/traffic.js";
import type { AppConfig } from "../../src/config/config.js";
import { Flusher, type FlusherOptions } from "../../src/flush/flusher.js";
import { SpendDrain } from "../../src/flush/spend-drain.js";
import { FlushLock } from "../../src/lock/flush-lock.js";
import { silentLogger } from "../../src/observe/logger.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { queueGauges } from "../../src/queue/queue-gauges.js";
import { flushMetrics } from "../../src/flush/flush-metrics.js";
import type { ProducerOptions, SpendProducer } from "../../src/produce/producer.js";
import { createSpendProducer } from "../../src/wiring/create-producer.js";
import type { Db } from "../../src/persist/prisma.js";
import { createRedis } from "../../src/redis/connection.js";
import { redisKeys, type RedisKeys } from "../../src/redis/keys.js";
import { openSpendQueues, type SpendQueues } from "../../src/queue/spend-queues.js";
import type { Ledger } from "./ledger.js";

/**
 * The pipeline's parts wired by hand, without the job scheduler, so a test
 * decides exactly when each flush runs.
 */
export class Harness {
  readonly keys: RedisKeys;
  readonly redis: Redis;
  readonly queues: SpendQueues;
  readonly drain: SpendDrain;
  readonly metrics = new SpendMetrics();
  private readonly producers: SpendProducer[] = [];

  constructor(
    readonly config: AppConfig,
    readonly db: Db,
  ) {
    this.keys = redisKeys(config.keyPrefix);
    this.redis = createRedis(config.redis, "worker");
    this.queues = openSpendQueues(this.redis, this.keys);
    this.drain = new SpendDrain(this.redis, this.keys, config.worker.lockLeaseMs);
    queueGauges(this.metrics).watch(this.queues);
    // The worker's side of this process: its metrics exist before its first flush, as in a worker.
    flushMetrics(this.metrics);
  }

  lock(holderId?: string, leaseMs = this.config.worker.lockLeaseMs): FlushLock {
    return new FlushLock(this.redis, this.keys, leaseMs, holderId);
  }

  flusher(opts: Partial<FlusherOptions> = {}, lock = this.lock()): Flusher {
    return new Flusher(this.db, lock, this.drain, this.metrics, {
      fencePartition: this.keys.fencePartition,
      maxJobsPerFlush: this.config.worker.maxJobsPerFlush,
      ...opts,
    });
  }

  /**
   * A producer made as a gateway makes one (createSpendProducer), whose timer
   * never fires on its own: tests call flush()/close(). `config` overrides
   * this harness's (e.g. another daily job format).
   */
  async producer(
    opts: Partial<ProducerOptions> = {},
    config: AppConfig = this.config,
  ): Promise<SpendProducer> {
    const { metrics, logger, sink: _sink, onClose: _onClose, halted: _halted, ...options } = opts;
    const p = await createSpendProducer(config, {
      metrics: metrics ?? this.metrics,
      logger: logger ?? silentLogger,
      options: { flushIntervalMs: 3_600_000, flushJitterMs: 0, ...options },
    });
    this.producers.push(p);
    return p;
  }

  /**
   * Records `n` seeded generated events through a new producer (and into
   * `ledger`), then closes it: everything is in Redis.
   */
  async recordTraffic(
    n: number,
    seed: number,
    ledger: Ledger,
    opts: Partial<ProducerOptions> = {},
  ): Promise<void> {
    const p = await this.producer(opts);
    const gen = trafficGenerator(seed);
    for (let i = 0; i < n; i++) {
      const e = gen();
      p.record(e);
      ledger.record(e);
    }
    await p.close();
  }

  async waitingJobs(): Promise<number> {
    const [a, b] = await Promise.all([
      this.queues.entity.getWaitingCount(),
      this.queues.daily.getWaitingCount(),
    ]);
    return a + b;
  }

  /**
   * True when no spend job is waiting or in flight. A flush moves the jobs it
   * takes to active and completes them only after its commit, so no job in
   * those states means everything recorded is in PostgreSQL. The flush lock
   * is not part of it: replicas flushing every 100 ms take it even to find
   * nothing, and a poll in step with them could see it held for ever.
   */
  async settled(): Promise<boolean> {
    const s = await this.pipelineState();
    const pending =
      Object.values(s.entity).reduce((x, y) => x + y, 0) +
      Object.values(s.daily).reduce((x, y) => x + y, 0);
    return pending === 0;
  }

  /** Job counts by state and the flush lock's holder and TTL: what a stuck wait reports. */
  async describe(): Promise<string> {
    return JSON.stringify(await this.pipelineState());
  }

  private async pipelineState(): Promise<{
    entity: Record<string, number>;
    daily: Record<string, number>;
    lock: string | null;
    lockTtlMs: number;
  }> {
    const states = ["wait", "active", "delayed", "prioritized"] as const;
    const [entity, daily, lock, lockTtlMs] = await Promise.all([
      this.queues.entity.getJobCounts(...states),
      this.queues.daily.getJobCounts(...states),
      this.redis.get(this.keys.flushLock),
      this.redis.pttl(this.keys.flushLock),
    ]);
    return { entity, daily, lock, lockTtlMs };
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.producers.map((p) => p.close()));
    await this.drain.close();
    await this.queues.close();
    this.redis.disconnect();
  }
}

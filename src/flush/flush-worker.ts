import { errorText, RepeatedErrors } from "../observe/error-text.js";
import { randomUUID } from "node:crypto";
import type { RedisClient } from "../redis/connection.js";
import { Queue, Worker } from "bullmq";
import type { AppConfig } from "../config/config.js";
import { FlushLock } from "../lock/flush-lock.js";
import { FlushLeadership } from "../lock/leadership.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import { FLUSH_RATE_TTL_MS } from "../queue/backlog.js";
import { queueGauges } from "../queue/queue-gauges.js";
import {
  flushMetrics,
  REDIS_REPAIRS,
  reportRedisRepair,
  type RedisRepair,
} from "./flush-metrics.js";
import type { Db } from "../persist/prisma.js";
import { createRedis } from "../redis/connection.js";
import { redisKeys, type RedisKeys } from "../redis/keys.js";
import {
  ensurePartitionCount,
  heartbeat,
  leaveRegistry,
  PartitionMismatchError,
} from "../queue/partitions.js";
import { openSpendQueues, type SpendQueues } from "../queue/spend-queues.js";
import { Flusher, type FlusherOptions, type FlushReport } from "./flusher.js";
import { SpendDrain } from "./spend-drain.js";

export interface FlushWorkerDeps {
  config: AppConfig;
  db: Db;
  metrics: SpendMetrics;
  logger: Logger;
  /** Identifies this replica in the lock's value. */
  holderId?: string;
  onStep?: FlusherOptions["onStep"];
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
  /**
   * How often the worker checks that what it keeps in Redis is there (flush
   * schedules, the partition count, fencing counters, its heartbeat) and puts
   * back what is missing. Default: the flush interval, between 1 and 5 s.
   */
  maintainEveryMs?: number;
}

export { REDIS_REPAIRS, type RedisRepair };

/** One flush partition's own pieces: queues, lock, drain and flusher. */
export interface FlushPartition {
  readonly keys: RedisKeys;
  readonly queues: SpendQueues;
  readonly drain: SpendDrain;
  readonly flusher: Flusher;
  readonly lock: FlushLock;
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
  /** This replica's id: its lock values, its heartbeat in the worker registry. */
  readonly workerId: string;
  private readonly flushQueue: Queue<{ partition?: number }>;
  private worker: Worker<{ partition?: number }> | undefined;
  private readonly leadership: FlushLeadership;
  /** Whether this replica takes flush jobs now (it leads); its BullMQ worker is paused otherwise. */
  private leading = false;
  private workerStarted = false;
  private leadTimer: NodeJS.Timeout | undefined;
  private leadTick: Promise<void> | undefined;
  private maintainTimer: NodeJS.Timeout | undefined;
  /** Each partition's flush running in this process: a scheduled one and a takeover's never overlap. */
  private readonly running = new Map<number, Promise<FlushReport>>();
  private takingOver: Promise<void> | undefined;
  private maintaining: Promise<void> | undefined;
  private closed = false;
  private readonly startedAt = Date.now();
  /** Set when the recorded partition count changed under this worker: it stops flushing. */
  private mismatch: string | undefined;

  private constructor(
    private readonly redis: RedisClient,
    private readonly deps: FlushWorkerDeps,
  ) {
    const { config, db, metrics, logger } = deps;
    const count = deps.partitions ?? 1;
    this.workerId = deps.holderId ?? randomUUID();
    this.partitions = Array.from({ length: count }, (_, p): FlushPartition => {
      const keys = redisKeys(config.keyPrefix, p);
      const drain = new SpendDrain(redis, keys, config.worker.lockLeaseMs);
      const lock = new FlushLock(redis, keys, config.worker.lockLeaseMs, this.workerId);
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
          lockTimeoutMs: config.worker.lockTimeoutMs,
          appliedBatchRetentionDays: config.worker.appliedBatchRetentionDays,
          fencePartition: keys.fencePartition,
          ...(deps.onStep !== undefined ? { onStep: deps.onStep } : {}),
          // Published for producers' back-pressure: how fast the flush commits,
          // and (by what is left of its lifetime) that it still does.
          onRate: (rowsPerSec) =>
            void redis
              .set(keys.flushRate, String(Math.round(rowsPerSec)), "PX", FLUSH_RATE_TTL_MS)
              .catch(() => undefined),
          ...(deps.idleInTransactionTimeoutMs !== undefined
            ? { idleInTransactionTimeoutMs: deps.idleInTransactionTimeoutMs }
            : {}),
        },
        logger.child({ partition: p }),
      );
      return { keys, queues: openSpendQueues(redis, keys), drain, flusher, lock };
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
    this.leadership = new FlushLeadership(
      redis,
      this.keys.flushLeader,
      this.workerId,
      config.worker.leaderLeaseMs,
    );
    flushMetrics(metrics).setLeader(false, this.workerId);
    for (const p of this.partitions) {
      queueGauges(metrics).watch(
        p.keys.partition === 0 ? { ...p.queues, flush: this.flushQueue } : p.queues,
        p.keys.partition,
      );
    }
  }

  static async start(deps: FlushWorkerDeps): Promise<FlushWorker> {
    const redis = deps.connection ?? createRedis(deps.config.redis, "worker");
    const workerId = deps.holderId ?? randomUUID();
    try {
      await ensurePartitionCount(redis, deps.config.keyPrefix, deps.partitions ?? 1, {
        role: "worker",
        workerId,
      });
    } catch (err) {
      if (deps.connection === undefined) redis.disconnect();
      throw err;
    }
    const fw = new FlushWorker(redis, { ...deps, holderId: workerId });
    await fw.run();
    return fw;
  }

  private async run(): Promise<void> {
    const { config, logger } = this.deps;
    // The first transaction of a process opens its connection and readies
    // Prisma's query path: a few hundred ms, better spent now than in the
    // first flush (after a takeover, the flush a backlog is waiting for).
    // PostgreSQL away or slow: the first flush will say so; start-up waits 2 s at most.
    const warm = this.deps.db
      .$transaction((tx) => tx.$executeRawUnsafe("SELECT 1"))
      .catch(() => undefined);
    await Promise.race([warm, new Promise((r) => setTimeout(r, 2_000).unref())]);
    // Jobs returned by BullMQ's stalled check are reclaimed too: counted and
    // logged as a flush's own reclaim is, whichever of the two got there first.
    const reclaimed = flushMetrics(this.deps.metrics).jobsReclaimed;
    await Promise.all(
      this.partitions.map((p) =>
        p.drain.start((jobId) => {
          reclaimed.inc();
          this.deps.logger.info(
            { partition: p.keys.partition, job: jobId },
            "a spend job left active by a worker that died (its lock expired): back in the queue",
          );
        }),
      ),
    );
    // Upsert, not add: every replica declares the same schedules, and
    // re-declaring one with a new interval updates it in place.
    for (const p of this.partitions) await this.declareSchedule(p);
    await heartbeat(this.redis, config.keyPrefix, this.workerId, this.partitions.length);
    this.worker = new Worker<{ partition?: number }>(
      this.keys.flushQueue,
      async (job) => {
        const p = this.partitions[job.data.partition ?? 0];
        // A schedule left by a deployment with more partitions: nothing of ours to flush.
        if (p === undefined) return { outcome: "unknown_partition" };
        // The count changed under this worker: its partitions are not the ones producers use.
        if (this.mismatch !== undefined) return { outcome: "partition_mismatch" };
        const report = await this.flushPartition(p);
        return { ...report, fence: report.fence?.toString() };
      },
      {
        connection: this.redis,
        prefix: this.keys.bullPrefix,
        concurrency: this.deps.concurrency ?? 1,
        // A flush job is cheap to lose (the next tick replaces it): never retry it.
        maxStalledCount: 0,
        // Only the leader takes flush jobs: started when this replica first leads.
        autorun: false,
      },
    );
    // BullMQ reports a Redis outage once per reconnect attempt and command (four
    // identical lines a second): the same error is logged once per 30 s, with
    // how often it recurred meanwhile.
    const workerErrors = new RepeatedErrors(30_000);
    this.worker.on("error", (err) => {
      const said = workerErrors.note(errorText(err));
      if (said !== undefined) logger.warn(said, "flush worker error");
    });
    this.worker.on("failed", (_job, err) =>
      logger.error({ err: errorText(err) }, "flush job failed"),
    );
    await this.lead();
    // Renewed well within the lease; a standby asks as often, so it takes
    // over within about a second of the lease running out.
    const leadEvery = Math.min(1_000, config.worker.leaderLeaseMs / 3);
    const leadLoop = (): void => {
      if (this.closed) return;
      this.leadTimer = setTimeout(() => {
        this.leadTick = this.lead().finally(() => {
          this.leadTick = undefined;
          leadLoop();
        });
      }, leadEvery);
      this.leadTimer.unref();
    };
    leadLoop();
    const every =
      this.deps.maintainEveryMs ?? Math.min(5_000, Math.max(1_000, config.worker.flushEveryMs));
    const tick = (): void => {
      if (this.closed) return;
      this.maintainTimer = setTimeout(() => {
        this.maintaining = this.maintain().finally(() => {
          this.maintaining = undefined;
          tick();
        });
      }, every);
      this.maintainTimer.unref();
    };
    tick();
  }

  /**
   * Takes or renews the flush leadership and starts or pauses taking flush
   * jobs to match. Losing it pauses without waiting for a flush under way:
   * that flush holds its own lock and fence, and ends on its own.
   */
  private async lead(): Promise<void> {
    const leads = await this.leadership.tick();
    if (this.closed || leads === this.leading) return;
    this.leading = leads;
    const worker = this.worker;
    flushMetrics(this.deps.metrics).setLeader(leads, this.workerId);
    if (leads) {
      this.deps.logger.info({ worker: this.workerId }, "leads the flush");
      if (worker === undefined) return;
      this.takingOver ??= this.takeOver().finally(() => (this.takingOver = undefined));
      if (!this.workerStarted) {
        this.workerStarted = true;
        worker
          .run()
          .catch((err: unknown) =>
            this.deps.logger.error({ err: (err as Error).message }, "flush worker stopped"),
          );
      } else {
        // Not awaited: it runs until the worker pauses or closes.
        worker
          .resume()
          .catch((err: unknown) =>
            this.deps.logger.error({ err: (err as Error).message }, "flush worker stopped"),
          );
      }
    } else {
      this.deps.logger.warn(
        { worker: this.workerId },
        "no longer leads the flush: another replica took over or Redis did not answer",
      );
      await worker?.pause(true).catch(() => undefined);
    }
  }

  /**
   * Runs one flush of a partition, or joins the one this process is already
   * running: the schedule's job and a takeover would otherwise race for the
   * same lock, and one of them would only count a "lock_busy".
   */
  private flushPartition(p: FlushPartition, takeOverFrom?: string): Promise<FlushReport> {
    const current = this.running.get(p.keys.partition);
    if (current !== undefined) return current;
    const run = (async (): Promise<FlushReport> => {
      const report = await p.flusher.flushOnce(takeOverFrom !== undefined ? { takeOverFrom } : {});
      // Any outcome, even "lock_busy": the schedule fires and flushes end (readiness).
      void this.redis
        .set(p.keys.flushLastRun, String(Date.now()), "PX", 86_400_000)
        .catch(() => undefined);
      this.deps.onFlush?.(report);
      return report;
    })().finally(() => this.running.delete(p.keys.partition));
    this.running.set(p.keys.partition, run);
    return run;
  }

  /**
   * Flushes every partition the moment this replica starts leading, rather
   * than at the schedule's next tick (up to worker_flush_every_seconds away):
   * after a leader dies, its backlog moves again at once, and the first flush
   * gives back the jobs the dead leader had taken (SpendDrain.reclaim). A
   * partition whose lock is held by a replica that no longer leads (the dead
   * leader: its lock outlives its leadership by up to the difference of the
   * two leases) is taken over rather than waited for; that is safe whoever
   * the holder is, because PostgreSQL's fence refuses a displaced holder's
   * commit and the batch ids skip what it committed before. A lock this
   * replica itself holds (a flush it runs, e.g. flushNow) is waited for.
   */
  private async takeOver(): Promise<void> {
    await Promise.all(
      this.partitions.map(async (p) => {
        for (let attempt = 0; attempt < 3; attempt++) {
          if (this.closed || !this.leading || this.mismatch !== undefined) return;
          const report = await this.flushPartition(p).catch(() => undefined);
          if (report?.outcome !== "lock_busy") return;
          const holder = await p.lock.holder().catch(() => null);
          if (holder !== null && FlushLock.holderOf(holder.token) !== this.workerId) {
            if (this.closed || !this.leading) return;
            this.deps.logger.warn(
              { partition: p.keys.partition, holder: FlushLock.holderOf(holder.token) },
              "the flush lock is held by a replica that no longer leads: taking it over",
            );
            const taken = await this.flushPartition(p, holder.token).catch(() => undefined);
            if (taken?.outcome !== "lock_busy") return;
            continue;
          }
          const waitMs = Math.min((holder?.ttlMs ?? 0) + 50, p.lock.leaseMs);
          await new Promise((r) => setTimeout(r, waitMs).unref());
        }
      }),
    );
  }

  /** Whether this replica leads the flush now (takes the flush jobs). */
  get leads(): boolean {
    return this.leading;
  }

  /** Upsert, not add: every replica declares the same schedules, and re-declaring one with a new interval updates it in place. */
  private async declareSchedule(p: FlushPartition): Promise<void> {
    await this.flushQueue.upsertJobScheduler(
      p.keys.flushSchedulerId,
      { every: this.deps.config.worker.flushEveryMs },
      {
        name: "flush",
        data: { partition: p.keys.partition },
        opts: { removeOnComplete: { count: 100 }, removeOnFail: { count: 100 } },
      },
    );
  }

  /**
   * Puts back what this worker keeps in Redis if it is gone: Redis restarted
   * without its data, the prefix's keys were deleted or evicted. Without it,
   * the schedule that fires every flush is gone for good and nothing is
   * flushed until someone restarts the worker, while readiness says ready.
   * Spend that was in Redis then is lost with it; everything sent after the
   * repair flows again with no restart.
   */
  private async maintain(): Promise<void> {
    const { config, logger } = this.deps;
    try {
      await heartbeat(this.redis, config.keyPrefix, this.workerId, this.partitions.length);
      try {
        const agreed = await ensurePartitionCount(
          this.redis,
          config.keyPrefix,
          this.partitions.length,
          { role: "worker", workerId: this.workerId },
        );
        if (agreed === "recorded") this.repaired("partition_count", 0);
        if (this.mismatch !== undefined) logger.info("partition count agrees again: flushing");
        this.mismatch = undefined;
      } catch (err) {
        if (!(err instanceof PartitionMismatchError)) throw err;
        if (this.mismatch === undefined)
          logger.fatal({ err: err.message }, "flush partition count changed: not flushing");
        this.mismatch = err.message;
      }
      for (const p of this.partitions) {
        const schedule = await this.flushQueue.getJobScheduler(p.keys.flushSchedulerId);
        if (schedule === undefined) {
          await this.declareSchedule(p);
          this.repaired("scheduler", p.keys.partition);
        } else if (await this.scheduleStalled(p, schedule.next)) {
          await this.declareSchedule(p);
          flushMetrics(this.deps.metrics).scheduleRestarts.inc();
          logger.warn(
            { partition: p.keys.partition, overdueMs: Date.now() - (schedule.next ?? 0) },
            "the flush schedule's next tick was overdue with none pending (a replica died as it took a tick): scheduled again",
          );
        }
        if ((await this.redis.exists(p.keys.flushFence)) === 0) {
          // PostgreSQL remembers the newest token that committed: start above it,
          // so the next flush is not fenced off for a counter Redis forgot.
          const row = await this.deps.db.flushFence.findUnique({
            where: { partition: p.keys.fencePartition },
          });
          // A flush may have put it back between the two looks: counted once.
          if (row !== null && (await p.lock.raiseFence(row.token)) < row.token)
            this.repaired("fence", p.keys.partition);
        }
      }
    } catch (err) {
      // Redis or PostgreSQL away: the next tick tries again; readiness reports it meanwhile.
      logger.warn({ err: errorText(err) }, "flush worker maintenance failed");
    }
  }

  /**
   * Whether the schedule's newest tick is overdue and nothing of it is
   * pending. BullMQ schedules a scheduler's next job from the worker that took
   * the current one, in a call after taking it: a leader killed between the
   * two leaves no next tick, and the one it took waits for BullMQ's stall
   * check (30 to 60 s) before anyone runs it, so nothing is flushed until
   * then. Only the leader asks: it is the one that runs the ticks.
   */
  private async scheduleStalled(p: FlushPartition, next: number | undefined): Promise<boolean> {
    if (!this.leading || next === undefined) return false;
    // Two ticks and a second of slack: a tick a busy leader has yet to take is not stalled.
    if (next > Date.now() - 2 * this.deps.config.worker.flushEveryMs - 1_000) return false;
    const state = await this.flushQueue.getJobState(`repeat:${p.keys.flushSchedulerId}:${next}`);
    return !["waiting", "delayed", "prioritized", "waiting-children"].includes(state);
  }

  private repaired(what: RedisRepair, partition: number): void {
    reportRedisRepair(flushMetrics(this.deps.metrics), this.deps.logger, what, { partition });
  }

  /**
   * Readiness: every partition's flush schedule exists in Redis, the partition
   * count agrees, and a flush of every partition has run to an end (any
   * outcome) within `stallMs` (default: three flush intervals plus the
   * longest flush and a lease).
   */
  async checkReady(stallMs?: number): Promise<void> {
    const { config } = this.deps;
    if (this.mismatch !== undefined) throw new Error(this.mismatch);
    const limit =
      stallMs ??
      3 * config.worker.flushEveryMs + config.worker.maxFlushMs + config.worker.lockLeaseMs;
    const now = Date.now();
    for (const p of this.partitions) {
      if ((await this.flushQueue.getJobScheduler(p.keys.flushSchedulerId)) === undefined)
        throw new Error(`partition ${p.keys.partition}: the flush schedule is missing from Redis`);
      const last = Number((await this.redis.get(p.keys.flushLastRun)) ?? 0);
      const since = now - Math.max(last, this.startedAt);
      if (since > limit)
        throw new Error(
          `partition ${p.keys.partition}: no flush has run for ${Math.round(since / 1000)} s (stalled past ${Math.round(limit / 1000)} s)`,
        );
    }
  }

  /** Runs one flush of every partition now, outside the schedule (CLI, tests, shutdown). */
  async flushNow(): Promise<FlushReport> {
    const reports = await Promise.all(this.partitions.map((p) => p.flusher.flushOnce()));
    return reports[0] as FlushReport;
  }

  /** Lets the current flush finish, then stops. The schedules stay for other replicas. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.maintainTimer !== undefined) clearTimeout(this.maintainTimer);
    if (this.leadTimer !== undefined) clearTimeout(this.leadTimer);
    await this.maintaining;
    await this.leadTick;
    await leaveRegistry(this.redis, this.deps.config.keyPrefix, this.workerId).catch(
      () => undefined,
    );
    await this.worker?.close();
    await this.takingOver;
    await Promise.allSettled([...this.running.values()]);
    // After the last flush ended: a standby takes over at its next tick, not after the lease.
    if (this.leading) {
      this.leading = false;
      flushMetrics(this.deps.metrics).setLeader(false, this.workerId);
      await this.leadership.resign().catch(() => undefined);
    }
    for (const p of this.partitions) {
      await p.drain.close();
      await p.queues.close();
    }
    await this.flushQueue.close();
    if (this.deps.connection === undefined) this.redis.disconnect();
  }
}

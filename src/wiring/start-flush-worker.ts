import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Queue } from "bullmq";
import type { AppConfig } from "../config/config.js";
import { FlushWorker, type FlushWorkerDeps } from "../flush/flush-worker.js";
import { createLogger, type Logger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { createDb, type Db } from "../persist/prisma.js";
import { connectRedis, type RedisClient } from "../redis/connection.js";

export interface FlushWorkerOptions {
  /**
   * The HTTP port for /metrics, /health/* and Bull Board (/admin/queues).
   * Default: config.metricsPort (METRICS_PORT, else spend_buffer_settings.metrics_port).
   * 0 picks a free port; `false` serves no HTTP at all (an embedding process serving its own).
   */
  port?: number | false;
  host?: string;
  /** Default: JSON lines on stdout at the configured log level. */
  logger?: Logger;
  /** Where the worker's metrics go. Default: a registry of its own (`service.metrics`). */
  metrics?: SpendMetrics;
  /** A PostgreSQL client to use; the caller keeps owning it. Default: one made and closed here. */
  db?: Db;
  /**
   * A Redis connection for the worker's blocking commands (a Cluster client
   * included); the caller keeps owning it. Default: one made and closed here.
   */
  redis?: RedisClient;
  /** Identifies this replica in the lock's value and the worker registry. Default: a random UUID. */
  holderId?: string;
  onFlush?: FlushWorkerDeps["onFlush"];
  onStep?: FlushWorkerDeps["onStep"];
  /** See FlushWorkerDeps.maintainEveryMs. */
  maintainEveryMs?: number;
  /** See FlushWorkerDeps.idleInTransactionTimeoutMs. */
  idleInTransactionTimeoutMs?: number;
}

export interface FlushWorkerService {
  readonly worker: FlushWorker;
  readonly metrics: SpendMetrics;
  /** The HTTP server, unless started with `port: false`. */
  readonly server?: Server;
  /** The port it listens on (0 without a server). */
  readonly port: number;
  /** Lets the current flush finish, then stops everything this service opened. */
  close(): Promise<void>;
}

/**
 * A flush worker replica, wired from a validated configuration: the
 * FlushWorker (a job scheduler fires each partition's flush; a worker of
 * concurrency worker_concurrency runs it under the partition's Redis lock and
 * PostgreSQL fence), and on one HTTP port /metrics, /health/liveliness,
 * /health/readiness (Redis, PostgreSQL, the flush schedule and that flushes
 * run) and Bull Board at /admin/queues. Any number of replicas may run.
 *
 * Rejects with PartitionMismatchError if Redis records another flush
 * partition count while spend is pending or another worker runs it.
 */
export async function startFlushWorker(
  config: AppConfig,
  opts: FlushWorkerOptions = {},
): Promise<FlushWorkerService> {
  const logger = opts.logger ?? createLogger("flush-worker", config.logLevel);
  const metrics = opts.metrics ?? new SpendMetrics();
  const db = opts.db ?? createDb(config.databaseUrl);
  // One connection (single Redis or Cluster) for the worker's blocking commands.
  const workerRedis = opts.redis ?? connectRedis(config.redis, "worker");
  const owned = async (): Promise<void> => {
    if (opts.redis === undefined) workerRedis.disconnect();
    if (opts.db === undefined) await db.$disconnect();
  };
  const startWorker = (): Promise<FlushWorker> =>
    FlushWorker.start({
      config,
      db,
      metrics,
      logger,
      partitions: config.partitions,
      concurrency: config.worker.concurrency,
      connection: workerRedis,
      ...(opts.holderId !== undefined ? { holderId: opts.holderId } : {}),
      ...(opts.onFlush !== undefined ? { onFlush: opts.onFlush } : {}),
      ...(opts.onStep !== undefined ? { onStep: opts.onStep } : {}),
      ...(opts.maintainEveryMs !== undefined ? { maintainEveryMs: opts.maintainEveryMs } : {}),
      ...(opts.idleInTransactionTimeoutMs !== undefined
        ? { idleInTransactionTimeoutMs: opts.idleInTransactionTimeoutMs }
        : {}),
    });
  if (opts.port === false) {
    let worker: FlushWorker;
    try {
      worker = await startWorker();
    } catch (err) {
      await owned();
      throw err;
    }
    return {
      worker,
      metrics,
      port: 0,
      close: async () => {
        await worker.close();
        await owned();
      },
    };
  }

  // The HTTP side (express, Bull Board) loads only for a worker that serves it.
  const [
    { mountBullBoard },
    { createApp, listen },
    { postgresCheck, readinessHandler, redisCheck },
  ] = await Promise.all([
    import("../serve/bull-board.js"),
    import("../serve/http.js"),
    import("../serve/readiness.js"),
  ]);
  // Listening comes first: a worker refused for a port in use must not have
  // led and flushed before it said so. /metrics answers from here on;
  // readiness and the board once the worker has started.
  const app = createApp(metrics);
  let server: Server;
  try {
    server = await listen(app, opts.port ?? config.metricsPort, opts.host ?? "0.0.0.0");
  } catch (err) {
    await owned();
    throw err;
  }
  let worker: FlushWorker;
  try {
    worker = await startWorker();
  } catch (err) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await owned();
    throw err;
  }
  // The board's and readiness's own connection: the worker's is busy with blocking commands.
  const redis = connectRedis(config.redis, "producer");
  const flushQueue = new Queue(worker.keys.flushQueue, {
    connection: redis,
    prefix: worker.keys.bullPrefix,
  });
  flushQueue.on("error", () => undefined);
  let draining = false;
  app.get(
    "/health/readiness",
    readinessHandler(
      {
        redis: redisCheck(redis),
        postgres: postgresCheck(db),
        // The schedule exists, the partition count agrees, and flushes run.
        flush: () => worker.checkReady(),
      },
      { draining: () => draining },
    ),
  );
  // Every flush partition's spend queues when the worker has several (partition 0 alone otherwise).
  mountBullBoard(
    app,
    [
      ...worker.partitions.flatMap(({ queues }) => [
        {
          queue: queues.entity as Queue,
          description: "Entity spend batches (keys, users, teams, members, orgs, end users, tags)",
        },
        { queue: queues.daily as Queue, description: "Daily spend batches (per entity and day)" },
      ]),
      { queue: flushQueue, description: "The scheduled flush job (one writer at a time)" },
    ],
    config.admin,
    config.masterKey !== undefined ? { masterKey: config.masterKey } : {},
  );
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await worker.close();
      await flushQueue.close();
      redis.disconnect();
      await owned();
      await closed;
    })();
    return closing;
  };
  return { port, server, worker, metrics, close };
}

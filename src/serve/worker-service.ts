import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Queue } from "bullmq";
import type { AppConfig } from "../config/config.js";
import { FlushWorker, type FlushWorkerDeps } from "../flush/flush-worker.js";
import { silentLogger, type Logger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { createDb } from "../persist/prisma.js";
import { connectRedis } from "../redis/connection.js";
import { mountBullBoard } from "./bull-board.js";
import { createApp, listen } from "./http.js";
import { postgresCheck, readinessHandler, redisCheck } from "./readiness.js";

export interface WorkerServiceOptions {
  /** Default: config.metricsPort (METRICS_PORT, else spend_buffer_settings.metrics_port). 0 picks a free port. */
  port?: number;
  host?: string;
  logger?: Logger;
  holderId?: string;
  onFlush?: FlushWorkerDeps["onFlush"];
  /** See FlushWorkerDeps.maintainEveryMs. */
  maintainEveryMs?: number;
}

export interface WorkerService {
  readonly port: number;
  readonly server: Server;
  readonly worker: FlushWorker;
  /** Lets the current flush finish, then stops everything this service opened. */
  close(): Promise<void>;
}

/**
 * The flush worker deployment: the FlushWorker, and on one HTTP port
 * /metrics, /health/liveliness, /health/readiness (Redis and PostgreSQL) and
 * Bull Board at /admin/queues showing the entity, daily and flush queues.
 */
export async function startWorkerService(
  config: AppConfig,
  opts: WorkerServiceOptions = {},
): Promise<WorkerService> {
  const logger = opts.logger ?? silentLogger;
  const metrics = new SpendMetrics();
  const db = createDb(config.databaseUrl);
  // One connection (single Redis or Cluster) for the worker, owned here.
  const workerRedis = connectRedis(config.redis, "worker");
  const worker = await FlushWorker.start({
    config,
    db,
    metrics,
    logger,
    partitions: config.partitions,
    concurrency: config.worker.concurrency,
    connection: workerRedis,
    ...(opts.holderId !== undefined ? { holderId: opts.holderId } : {}),
    ...(opts.onFlush !== undefined ? { onFlush: opts.onFlush } : {}),
    ...(opts.maintainEveryMs !== undefined ? { maintainEveryMs: opts.maintainEveryMs } : {}),
  });
  // The board's and readiness's own connection: the worker's is busy with blocking commands.
  const redis = connectRedis(config.redis, "producer");
  const flushQueue = new Queue(worker.keys.flushQueue, {
    connection: redis,
    prefix: worker.keys.bullPrefix,
  });
  flushQueue.on("error", () => undefined);
  const app = createApp(metrics);
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
  const partitions = worker.partitions;
  mountBullBoard(
    app,
    [
      ...partitions.flatMap(({ queues }) => [
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
  const server = await listen(app, opts.port ?? config.metricsPort, opts.host ?? "0.0.0.0");
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await worker.close();
      await flushQueue.close();
      workerRedis.disconnect();
      redis.disconnect();
      await db.$disconnect();
      await closed;
    })();
    return closing;
  };
  return { port, server, worker, close };
}

import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { AppConfig } from "../config/config.js";
import { silentLogger, type Logger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { producerSettings, SpendProducer } from "../produce/producer.js";
import type { SpendSink } from "../contract/spend-sink.js";
import { DirectSink } from "../persist/direct-sink.js";
import { createDb } from "../persist/prisma.js";
import { connectRedis, waitUntilReady, type RedisClient } from "../redis/connection.js";
import { ensurePartitionCount, PartitionMismatchError } from "../queue/partitions.js";
import { QueueSink } from "../queue/queue-sink.js";
import { openPartitionQueues, type SpendQueues } from "../queue/spend-queues.js";
import { listen } from "../serve/http.js";
import { postgresCheck, redisCheck, type Check } from "../serve/readiness.js";
import { createGatewayApp } from "./app.js";
import { KeyCache } from "./virtual-keys.js";

export interface GatewayOptions {
  /** Default: spend_buffer_settings.gateway_port. 0 picks a free port. */
  port?: number;
  host?: string;
  logger?: Logger;
  metrics?: SpendMetrics;
  /** Longest shutdown waits for requests in flight before closing their connections. Default 10 s. */
  drainRequestsMs?: number;
  /** Longest shutdown tries to deliver the spend it holds (ProducerOptions.closeTimeoutMs). Default 30 s. */
  closeTimeoutMs?: number;
  /** How often the recorded flush partition count is checked against this gateway's. Default 5 s. */
  partitionCheckEveryMs?: number;
}

export interface GatewayService {
  readonly port: number;
  readonly server: Server;
  readonly producer: SpendProducer;
  readonly keys: KeyCache;
  /** Stops accepting, finishes requests in flight, drains the producer, disconnects. */
  close(): Promise<void>;
}

/**
 * The gateway process ("proxy instance"): the HTTP app, a SpendProducer with
 * a QueueSink (buffer on) or a DirectSink (buffer off), the key cache, and an
 * orderly shutdown.
 */
export async function startGateway(
  config: AppConfig,
  opts: GatewayOptions = {},
): Promise<GatewayService> {
  const logger = opts.logger ?? silentLogger;
  const metrics = opts.metrics ?? new SpendMetrics();
  const db = createDb(config.databaseUrl, { max: 5 });
  let redis: RedisClient | undefined;
  let sink: SpendSink;
  let queues: SpendQueues[] = [];
  if (config.useRedisBuffer) {
    redis = connectRedis(config.redis, "producer");
    queues = openPartitionQueues(redis, config.keyPrefix, config.partitions);
    sink = new QueueSink(queues, { dailyJobFormat: config.producer.dailyJobFormat });
  } else {
    sink = new DirectSink(db, {
      transactionTimeoutMs: config.worker.transactionTimeoutMs,
      metrics,
    });
  }
  const producer = new SpendProducer({
    sink,
    ...producerSettings(config),
    metrics,
    logger,
    ...(opts.closeTimeoutMs !== undefined ? { closeTimeoutMs: opts.closeTimeoutMs } : {}),
  });
  const keys = new KeyCache(db, config.gateway.keyCacheTtlMs, config.gateway.keyCacheMaxEntries);
  const checks: Record<string, Check> = { postgres: postgresCheck(db) };
  let partitionError: string | undefined;
  let partitionTimer: NodeJS.Timeout | undefined;
  if (redis !== undefined) {
    checks.redis = redisCheck(redis);
    // Agree with the workers on the partition count, now and every few seconds:
    // a worker may switch it (drained, no other worker on the old count) while
    // this gateway runs. In the background: a gateway starts (and buffers)
    // while Redis is away. While it disagrees it is unready and refuses
    // requests (503): its spend would go to partitions nobody drains.
    const conn = redis;
    const checkEveryMs = opts.partitionCheckEveryMs ?? 5_000;
    const check = async (): Promise<void> => {
      try {
        await waitUntilReady(conn, 5_000);
        await ensurePartitionCount(conn, config.keyPrefix, config.partitions, { role: "gateway" });
        if (partitionError !== undefined) logger.info("flush partition count agrees again");
        partitionError = undefined;
      } catch (err) {
        if (!(err instanceof PartitionMismatchError)) return; // Redis away: try again later.
        if (partitionError === undefined)
          logger.fatal(
            { err: err.message },
            "flush partition count mismatch: this gateway refuses requests until restarted with the recorded count",
          );
        partitionError = err.message;
      }
    };
    const loop = (): void => {
      partitionTimer = setTimeout(() => {
        if (conn.status === "end") return;
        void check().finally(loop);
      }, checkEveryMs);
      partitionTimer.unref();
    };
    void check().finally(loop);
    checks.partitions = () =>
      partitionError === undefined ? Promise.resolve() : Promise.reject(new Error(partitionError));
  }
  let draining = false;
  const app = createGatewayApp({
    config,
    producer,
    keys,
    db,
    metrics,
    logger,
    checks,
    draining: () => draining,
    halted: () => partitionError,
    queues,
  });
  const server = await listen(app, opts.port ?? config.gateway.port, opts.host ?? "0.0.0.0");
  const port = (server.address() as AddressInfo).port;

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      clearTimeout(partitionTimer);
      // Stop accepting; keep-alive connections with no request in flight go now.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const drainMs = opts.drainRequestsMs ?? 10_000;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        closed,
        new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            server.closeAllConnections();
            resolve();
          }, drainMs);
        }),
      ]);
      clearTimeout(timer);
      try {
        // Every request that was answered has been recorded: deliver it all.
        await producer.close();
      } finally {
        redis?.disconnect();
        await db.$disconnect();
      }
    })();
    return closing;
  };
  return { port, server, producer, keys, close };
}

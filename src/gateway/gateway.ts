import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { AppConfig } from "../config/config.js";
import { silentLogger, type Logger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import type { SpendProducer } from "../produce/producer.js";
import { createDb } from "../persist/prisma.js";
import { queueGauges } from "../queue/queue-gauges.js";
import { QueueSink } from "../queue/queue-sink.js";
import { listen } from "../serve/http.js";
import { postgresCheck, redisCheck, type Check } from "../serve/readiness.js";
import { createSpendProducer } from "../wiring/create-producer.js";
import type { BudgetBook } from "../budget/budget-book.js";
import { createGatewayApp } from "./app.js";
import { gatewayBudgetBook } from "./gateway-budgets.js";
import { gatewayMetrics } from "./gateway-metrics.js";
import { IdempotencyStore } from "./idempotency.js";
import { announceKeyChanges, KeySync } from "./key-sync.js";
import { KeyCache, type KeySyncState } from "./virtual-keys.js";
import { redisKeys } from "../redis/keys.js";

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
  let producer: SpendProducer;
  try {
    producer = await createSpendProducer(config, {
      db,
      metrics,
      logger,
      ...(opts.partitionCheckEveryMs !== undefined
        ? { partitionCheckEveryMs: opts.partitionCheckEveryMs }
        : {}),
      ...(opts.closeTimeoutMs !== undefined
        ? { options: { closeTimeoutMs: opts.closeTimeoutMs } }
        : {}),
    });
  } catch (err) {
    await db.$disconnect();
    throw err;
  }
  const queues = producer.sink instanceof QueueSink ? producer.sink.queues : [];
  // The queues' depth and backlog age, read from Redis at each scrape: with
  // every worker down, the gateways still show what is piling up.
  for (const q of queues) queueGauges(metrics).watch(q, q.keys.partition);
  const redis = queues[0]?.connection;
  const gw = gatewayMetrics(metrics);
  const names = redisKeys(config.keyPrefix);
  const boundMs = config.gateway.keySyncMs;
  // Key changes reach every gateway through Redis (key-sync.ts). Without
  // Redis there is nobody to hear from: a cached key is re-read from
  // PostgreSQL once its entry is older than the bound.
  const keySync =
    redis !== undefined
      ? new KeySync(redis, names, boundMs, logger, (n) => gw.keyChangesApplied.inc(n))
      : undefined;
  const sync: KeySyncState = keySync ?? { boundMs, syncedThrough: () => -Infinity };
  const keys = new KeyCache(db, config.gateway.keyCacheTtlMs, config.gateway.keyCacheMaxEntries, {
    sync,
  });
  if (keySync !== undefined) {
    gw.watchKeySync(() => keySync.ageSeconds());
    await keySync.start(keys);
  }
  const checks: Record<string, Check> = { postgres: postgresCheck(db) };
  if (redis !== undefined) {
    checks.redis = redisCheck(redis);
    // While its flush partition count disagrees with the workers', the
    // gateway is unready and refuses requests (503): its spend would go to
    // partitions nobody drains (queue/partition-guard.ts).
    checks.partitions = () => {
      const why = producer.halted;
      return why === undefined ? Promise.resolve() : Promise.reject(new Error(why));
    };
  }
  // Budgets need Redis for their leases: with the buffer off they are stored, not enforced.
  let budgets: BudgetBook | undefined;
  if (redis !== undefined) {
    budgets = gatewayBudgetBook(config, { db, redis, queues, producer, metrics, logger });
    try {
      await budgets.start();
    } catch (err) {
      await producer.close().catch(() => undefined);
      await db.$disconnect();
      throw err;
    }
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
    queues,
    ...(budgets !== undefined ? { budgets } : {}),
    ...(redis !== undefined
      ? {
          announceKeyChanges: (tokens: readonly string[]) =>
            announceKeyChanges(redis, names, tokens),
          idempotency: new IdempotencyStore(
            redis,
            names,
            config.gateway.ingestIdempotencyTtlMs,
            config.gateway.ingestIdempotencyLeaseMs,
          ),
        }
      : {}),
  });
  const server = await listen(app, opts.port ?? config.gateway.port, opts.host ?? "0.0.0.0");
  const port = (server.address() as AddressInfo).port;

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
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
      keySync?.stop();
      try {
        // What this gateway leased and did not spend goes back to the others.
        await budgets?.close();
        // Every request that was answered has been recorded: deliver it all.
        await producer.close();
      } finally {
        await db.$disconnect();
      }
    })();
    return closing;
  };
  return { port, server, producer, keys, close };
}

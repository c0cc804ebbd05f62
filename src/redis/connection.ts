import { Cluster, Redis, type RedisOptions } from "ioredis";
import type { RedisConfig } from "../config/config.js";

/**
 * ioredis connections for each role. Producers fail fast (no offline queue,
 * one try per command): a gateway must never pile requests up in an
 * unbounded client-side queue while Redis is away; the producer keeps its
 * aggregates and retries instead. BullMQ workers need retries forever
 * (maxRetriesPerRequest: null) for their blocking commands.
 */
export type RedisRole = "producer" | "worker";

/** A single Redis or a Redis Cluster: every module that talks to Redis takes either. */
export type RedisClient = Redis | Cluster;

export interface ClusterNode {
  host: string;
  port: number;
}

export function redisOptions(cfg: RedisConfig, role: RedisRole): RedisOptions {
  return {
    host: cfg.host,
    port: cfg.port,
    db: cfg.db,
    ...(cfg.username !== undefined ? { username: cfg.username } : {}),
    ...(cfg.password !== undefined ? { password: cfg.password } : {}),
    ...(cfg.tls ? { tls: {} } : {}),
    ...(role === "producer"
      ? { enableOfflineQueue: false, maxRetriesPerRequest: 1 }
      : { maxRetriesPerRequest: null }),
    // Reconnect forever with a capped backoff: an outage ends, the process should not.
    retryStrategy: (attempt: number) => Math.min(100 * 2 ** Math.min(attempt, 5), 3_000),
    connectionName: `spend-buffer:${role}`,
    lazyConnect: false,
  };
}

export function createRedis(cfg: RedisConfig, role: RedisRole): Redis {
  const redis = new Redis(redisOptions(cfg, role));
  // Connection errors surface through the commands that fail; without a
  // listener ioredis would print each one as an unhandled error event.
  redis.on("error", () => undefined);
  return redis;
}

/**
 * A Redis Cluster client. Every key the project uses carries a hash tag, so
 * each BullMQ queue and each lock lives in one slot and partitions spread
 * across the cluster's masters.
 */
export function createCluster(
  nodes: readonly ClusterNode[],
  cfg: RedisConfig,
  role: RedisRole,
): Cluster {
  const { host: _host, port: _port, db: _db, ...perNode } = redisOptions(cfg, role);
  const cluster = new Cluster([...nodes], {
    redisOptions: perNode,
    // Producers fail fast here too; workers wait out a failover.
    enableOfflineQueue: role !== "producer",
    clusterRetryStrategy: (attempt: number) => Math.min(100 * 2 ** Math.min(attempt, 5), 3_000),
    slotsRefreshTimeout: 2_000,
  });
  cluster.on("error", () => undefined);
  return cluster;
}

/** The configured Redis: a Cluster client when cluster nodes are configured, else a single one. */
export function connectRedis(cfg: RedisConfig, role: RedisRole): RedisClient {
  return cfg.cluster !== undefined && cfg.cluster.length > 0
    ? createCluster(cfg.cluster, cfg, role)
    : createRedis(cfg, role);
}

/** Resolves once the connection is ready for commands (a producer's commands fail fast before). */
export function waitUntilReady(redis: RedisClient, timeoutMs = 5_000): Promise<void> {
  if (redis.status === "ready") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off("ready", onReady);
      reject(new Error(`Redis not reachable within ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = (): void => {
      clearTimeout(timer);
      resolve();
    };
    redis.once("ready", onReady);
  });
}

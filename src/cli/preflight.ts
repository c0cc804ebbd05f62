import { Redis } from "ioredis";
import pg from "pg";
import { redact, type AppConfig, type RedisConfig } from "../config/config.js";
import { redisOptions } from "../redis/connection.js";
import { StartupError } from "../config/startup-error.js";

export { StartupError };

export const PREFLIGHT_TIMEOUT_MS = 3_000;

/** The node did not answer at all (as opposed to answering wrongly). */
class UnreachableError extends StartupError {}

/** A client for one check: a short timeout, no retry, no offline queue. */
function probe(cfg: RedisConfig, node: { host: string; port: number }, timeoutMs: number): Redis {
  const redis = new Redis({
    ...redisOptions(cfg, "producer"),
    host: node.host,
    port: node.port,
    // Selected explicitly below: ioredis would report a refused SELECT only as an
    // error event and carry on in database 0.
    db: 0,
    lazyConnect: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectionName: "spend-buffer:preflight",
  });
  return redis;
}

/** Connects and runs `check`; a failed connection is reported by its socket error. */
async function withProbe<T>(
  cfg: RedisConfig,
  node: { host: string; port: number },
  timeoutMs: number,
  unreachable: (why: string) => string,
  check: (redis: Redis) => Promise<T>,
): Promise<T> {
  const redis = probe(cfg, node, timeoutMs);
  let lastError: Error | undefined;
  redis.on("error", (err: Error) => (lastError = err));
  try {
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      // "Connection is closed" says less than the socket error that closed it.
      const why = lastError ?? (err as Error);
      throw new UnreachableError(unreachable(why.message));
    }
    return await check(redis);
  } finally {
    redis.disconnect();
  }
}

/**
 * Connects once to Redis, pings it and selects the configured database, with a
 * short timeout and no retry. With cluster nodes configured, checks the seed
 * nodes instead (checkRedisCluster).
 */
export async function checkRedis(
  cfg: RedisConfig,
  timeoutMs = PREFLIGHT_TIMEOUT_MS,
): Promise<void> {
  if (cfg.cluster !== undefined && cfg.cluster.length > 0) {
    await checkRedisCluster(cfg, cfg.cluster, timeoutMs);
    return;
  }
  const where = `${cfg.host}:${cfg.port}/${cfg.db}${cfg.tls ? " (TLS)" : ""}`;
  await withProbe(
    cfg,
    cfg,
    timeoutMs,
    (why) => `Redis at ${where} is unreachable: ${why}`,
    async (redis) => {
      if (cfg.db === 0) return;
      try {
        await redis.select(cfg.db);
      } catch (err) {
        const databases = await configuredDatabases(redis);
        throw new StartupError(
          `Redis at ${cfg.host}:${cfg.port} has no database ${cfg.db} (${
            databases === undefined
              ? (err as Error).message
              : `its \`databases\` setting is ${databases}`
          })`,
        );
      }
    },
  );
}

/** The server's `databases` setting, when CONFIG GET is allowed (managed Redis often renames it). */
async function configuredDatabases(redis: Redis): Promise<string | undefined> {
  try {
    const reply = (await redis.config("GET", "databases")) as unknown;
    return Array.isArray(reply) && typeof reply[1] === "string" ? reply[1] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Every seed node that answers must be a Redis Cluster node whose view of the
 * cluster is `ok`, and at least one must answer. A standalone Redis named as a
 * seed would otherwise pass a ping, and the gateway would serve and never
 * deliver. Seeds that do not answer are tolerated while another does: the
 * client discovers the rest of the cluster from any one of them.
 */
async function checkRedisCluster(
  cfg: RedisConfig,
  nodes: readonly { host: string; port: number }[],
  timeoutMs: number,
): Promise<void> {
  const setting = cfg.clusterSetting ?? "the Redis cluster nodes";
  const results = await Promise.allSettled(
    nodes.map((node) =>
      withProbe(
        cfg,
        node,
        timeoutMs,
        (why) => `${node.host}:${node.port} (${why})`,
        async (redis) => {
          let info: string;
          try {
            info = String(await redis.call("CLUSTER", "INFO"));
          } catch (err) {
            const message = (err as Error).message;
            if (/cluster support disabled/i.test(message))
              throw new StartupError(
                `${setting} names ${node.host}:${node.port}, which is a standalone Redis (cluster support disabled)`,
              );
            throw new StartupError(
              `${setting} names ${node.host}:${node.port}, which refused CLUSTER INFO: ${message}`,
            );
          }
          const state = /^cluster_state:(\S+)/m.exec(info)?.[1] ?? "unknown";
          if (state !== "ok")
            throw new StartupError(
              `Redis Cluster node ${node.host}:${node.port} (${setting}) reports cluster_state:${state}`,
            );
        },
      ),
    ),
  );
  const unreachable: string[] = [];
  for (const r of results) {
    if (r.status === "fulfilled") continue;
    // A node that answered wrongly is decisive; one that did not answer only counts if none did.
    if (r.reason instanceof UnreachableError) unreachable.push(r.reason.message);
    else throw r.reason;
  }
  if (unreachable.length === nodes.length)
    throw new StartupError(
      `Redis Cluster seed nodes (${setting}) are all unreachable: ${unreachable.join(", ")}`,
    );
}

/**
 * A client (not connected) whose connection and every query give up after
 * `timeoutMs`: what an operator's command waits for PostgreSQL at most. An
 * error after connecting (the server going away) is left to the next query.
 */
export function postgresClient(databaseUrl: string, timeoutMs = PREFLIGHT_TIMEOUT_MS): pg.Client {
  const client = new pg.Client({
    connectionString: databaseUrl,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
  });
  client.on("error", () => undefined);
  return client;
}

/**
 * Connects once to PostgreSQL and runs SELECT 1, with a short timeout. With
 * `schema`, also checks that migrations have been applied. With `client`
 * (from postgresClient, not connected yet; its timeout then applies), checks
 * through it and leaves it connected for the caller's own queries, so a
 * caller that reads PostgreSQL next (`status`) opens one connection, not
 * two; the caller ends it.
 */
export async function checkPostgres(
  databaseUrl: string,
  opts: {
    schema?: boolean;
    allowMissingDatabase?: boolean;
    timeoutMs?: number;
    client?: pg.Client;
  } = {},
): Promise<void> {
  const own = opts.client === undefined;
  const client = opts.client ?? postgresClient(databaseUrl, opts.timeoutMs);
  try {
    try {
      await client.connect();
      await client.query("SELECT 1");
    } catch (err) {
      // `migrate` creates the database itself.
      const code = (err as { code?: string }).code;
      if (opts.allowMissingDatabase === true && code === "3D000") return;
      const why = redact((err as Error).message);
      // It answered: saying "unreachable" would send an operator to the network.
      const answered =
        code === "3D000"
          ? `refused the connection: ${why} (\`haimaker-spend migrate\` creates it)`
          : code === "28000" || code === "28P01"
            ? `refused the credentials: ${why}`
            : undefined;
      throw new StartupError(
        `PostgreSQL at ${redact(databaseUrl)} ${answered ?? `is unreachable: ${why}`}`,
      );
    }
    if (opts.schema === true) {
      const r = await client.query<{ t: string | null }>(
        `SELECT to_regclass('"LiteLLM_VerificationToken"')::text AS t`,
      );
      if (r.rows[0]?.t === null || r.rows[0]?.t === undefined)
        throw new StartupError(
          `PostgreSQL at ${redact(databaseUrl)} has no schema: run \`haimaker-spend migrate\` first`,
        );
    }
  } finally {
    if (own) await client.end().catch(() => undefined);
  }
}

/**
 * That this process's flush partition count agrees with the one Redis
 * records (queue/partitions.ts): a gateway that disagrees must not start,
 * its spend would go where no worker drains it. Throws PartitionMismatchError.
 */
export async function checkPartitions(config: AppConfig, role: "gateway"): Promise<void> {
  const { connectRedis, waitUntilReady } = await import("../redis/connection.js");
  const { ensurePartitionCount } = await import("../queue/partitions.js");
  const redis = connectRedis(config.redis, "producer");
  try {
    await waitUntilReady(redis, PREFLIGHT_TIMEOUT_MS);
    await ensurePartitionCount(redis, config.keyPrefix, config.partitions, { role });
  } finally {
    redis.disconnect();
  }
}

/** What each subcommand needs reachable before it starts. */
export async function preflight(
  config: AppConfig,
  needs: {
    redis?: boolean;
    postgres?: boolean;
    schema?: boolean;
    allowMissingDatabase?: boolean;
    /** Also check the partition count as this role (after Redis answered). */
    partitions?: "gateway" | undefined;
  },
): Promise<void> {
  await Promise.all([
    needs.redis === true
      ? checkRedis(config.redis).then(() =>
          needs.partitions !== undefined ? checkPartitions(config, needs.partitions) : undefined,
        )
      : Promise.resolve(),
    needs.postgres === true
      ? checkPostgres(config.databaseUrl, {
          ...(needs.schema !== undefined ? { schema: needs.schema } : {}),
          ...(needs.allowMissingDatabase !== undefined
            ? { allowMissingDatabase: needs.allowMissingDatabase }
            : {}),
        })
      : Promise.resolve(),
  ]);
}

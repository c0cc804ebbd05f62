import { Redis } from "ioredis";
import pg from "pg";
import { redact, type AppConfig, type RedisConfig } from "../config/config.js";
import { redisOptions } from "../queue/connection.js";
import { StartupError } from "./errors.js";

export { StartupError };

export const PREFLIGHT_TIMEOUT_MS = 3_000;

/** Connects once to Redis and pings it, with a short timeout and no retry. */
export async function checkRedis(
  cfg: RedisConfig,
  timeoutMs = PREFLIGHT_TIMEOUT_MS,
): Promise<void> {
  const where = `${cfg.host}:${cfg.port}/${cfg.db}${cfg.tls ? " (TLS)" : ""}`;
  const redis = new Redis({
    ...redisOptions(cfg, "producer"),
    lazyConnect: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectionName: "spend-buffer:preflight",
  });
  let lastError: Error | undefined;
  redis.on("error", (err: Error) => (lastError = err));
  try {
    await redis.connect();
    await redis.ping();
  } catch (err) {
    // "Connection is closed" says less than the socket error that closed it.
    const why = lastError ?? (err as Error);
    throw new StartupError(`Redis at ${where} is unreachable: ${why.message}`);
  } finally {
    redis.disconnect();
  }
}

/**
 * Connects once to PostgreSQL and runs SELECT 1, with a short timeout. With
 * `schema`, also checks that migrations have been applied.
 */
export async function checkPostgres(
  databaseUrl: string,
  opts: { schema?: boolean; allowMissingDatabase?: boolean; timeoutMs?: number } = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? PREFLIGHT_TIMEOUT_MS;
  const client = new pg.Client({
    connectionString: databaseUrl,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
  });
  client.on("error", () => undefined);
  try {
    try {
      await client.connect();
      await client.query("SELECT 1");
    } catch (err) {
      // `migrate` creates the database itself.
      if (opts.allowMissingDatabase === true && (err as { code?: string }).code === "3D000") return;
      throw new StartupError(
        `PostgreSQL at ${redact(databaseUrl)} is unreachable: ${redact((err as Error).message)}`,
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
    await client.end().catch(() => undefined);
  }
}

/** What each subcommand needs reachable before it starts. */
export async function preflight(
  config: AppConfig,
  needs: { redis?: boolean; postgres?: boolean; schema?: boolean; allowMissingDatabase?: boolean },
): Promise<void> {
  await Promise.all([
    needs.redis === true ? checkRedis(config.redis) : Promise.resolve(),
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

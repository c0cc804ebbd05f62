import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { buildConfig, type AppConfig } from "../../src/config/config.js";

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** A key prefix no other test uses, so queues and locks never collide. */
export function uniquePrefix(label: string): string {
  return `t-${label}-${randomBytes(4).toString("hex")}`;
}

/** Deletes every key under a test's prefix. */
export async function cleanRedis(prefix: string): Promise<void> {
  const r = new Redis(TEST_REDIS_URL);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await r.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    r.disconnect();
  }
}

/** A configuration for tests: short intervals, the given prefix and database. */
export function testConfig(
  prefix: string,
  databaseUrl: string,
  overrides: Record<string, unknown> = {},
): AppConfig {
  return buildConfig(
    {
      general_settings: { use_redis_transaction_buffer: true, proxy_batch_write_at: 0.2 },
      litellm_settings: { cache: true, cache_params: { type: "redis" } },
      spend_buffer_settings: {
        key_prefix: prefix,
        flush_jitter_seconds: 0.05,
        worker_flush_every_seconds: 0.2,
        lock_lease_seconds: 2,
        // The product's default: shorter, a leader starved of CPU on a loaded
        // test machine loses its lease mid-flush (leadership.test.ts sets 1 s).
        leader_lease_seconds: 3,
        ...overrides,
      },
    },
    { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: databaseUrl },
  );
}

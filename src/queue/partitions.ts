import type { RedisClient } from "./connection.js";
import { redisKeys } from "./keys.js";
import { openSpendQueues } from "./spend-queues.js";

/**
 * Producers and workers must agree on the partition count: a row hashed
 * under one count and flushed under another could be written by two
 * partitions at once, which brings lock waits (not double counting: batch
 * ids still apply each batch once). The count is recorded in Redis; a
 * process configured otherwise refuses to start while spend is pending
 * under the recorded count, and may switch it once everything is drained.
 */
export class PartitionMismatchError extends Error {
  readonly code = "PARTITION_MISMATCH";
  constructor(
    readonly recorded: number,
    readonly configured: number,
    readonly pendingJobs: number,
  ) {
    super(
      `Redis records ${recorded} flush partition(s) with ${pendingJobs} spend job(s) pending, but this process is configured for ${configured}. ` +
        `Drain first: stop the gateways (or keep them on ${recorded}), let the workers flush until the queues are empty, then restart everything with ${configured}.`,
    );
    this.name = "PartitionMismatchError";
  }
}

/** Pending (not yet flushed) spend jobs across every partition of a count. */
export async function pendingJobs(
  redis: RedisClient,
  prefix: string,
  partitions: number,
): Promise<number> {
  let total = 0;
  for (let p = 0; p < partitions; p++) {
    const q = openSpendQueues(redis, redisKeys(prefix, p));
    try {
      const counts = await Promise.all([
        q.entity.getJobCounts("wait", "active", "delayed", "prioritized"),
        q.daily.getJobCounts("wait", "active", "delayed", "prioritized"),
      ]);
      for (const c of counts) total += Object.values(c).reduce((a, b) => a + b, 0);
    } finally {
      await q.close();
    }
  }
  return total;
}

/** Records the partition count, or refuses a different one while spend is pending under it. */
export async function ensurePartitionCount(
  redis: RedisClient,
  prefix: string,
  configured: number,
): Promise<void> {
  const key = redisKeys(prefix).partitionCount;
  const recorded = await redis.get(key);
  if (recorded === null) {
    await redis.set(key, String(configured), "NX");
    return ensurePartitionCount(redis, prefix, configured);
  }
  const n = Number(recorded);
  if (n === configured) return;
  const pending = await pendingJobs(redis, prefix, n);
  if (pending > 0) throw new PartitionMismatchError(n, configured, pending);
  // Drained: switching is safe. Compare-and-set, so two processes cannot both switch it differently.
  const switched = await redis.eval(
    `if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2]) return 1 end return 0`,
    1,
    key,
    recorded,
    String(configured),
  );
  if (switched !== 1) return ensurePartitionCount(redis, prefix, configured);
}

import type { RedisClient } from "../redis/connection.js";
import { redisKeys } from "../redis/keys.js";
import { LuaScript } from "../redis/lua.js";
import { openSpendQueues } from "./spend-queues.js";

const switchScript = LuaScript.load(
  "switch-partition-count-1",
  new URL("./scripts/", import.meta.url),
);

/**
 * Producers and workers must agree on the partition count: a row hashed
 * under one count and flushed under another could be written by two
 * partitions at once (lock waits, not double counting: batch ids still apply
 * each batch once), and a producer with more partitions than the workers
 * fills queues nobody drains. The count is recorded in Redis.
 *
 * Who may change it: only a flush worker, only when no other live worker
 * runs with the recorded count and no spend is pending under it. A gateway
 * never changes it: one gateway deployed with a different setting would
 * otherwise switch the count under running workers, send its spend where
 * nobody drains it, and leave the workers unable to restart. A gateway that
 * disagrees refuses to start, and one that finds the count changed under it
 * stops serving (readiness and 503) until it is restarted with the new count.
 */
export class PartitionMismatchError extends Error {
  readonly code = "PARTITION_MISMATCH";
  constructor(
    readonly recorded: number,
    readonly configured: number,
    readonly pendingJobs: number,
    why: string,
  ) {
    super(
      `Redis records ${recorded} flush partition(s) but this process is configured for ${configured} (spend_buffer_settings.flush_partitions): ${why}`,
    );
    this.name = "PartitionMismatchError";
  }
}

/** Which process is agreeing on the count: only workers may switch it. */
export type PartitionRole = "gateway" | "worker";

export interface PartitionAgreement {
  role: PartitionRole;
  /** A worker's own id in the worker registry (it does not count as another live worker). */
  workerId?: string;
  /** How recent a worker's heartbeat must be for it to count as live. Default 15 000 ms. */
  liveWithinMs?: number;
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

/** Flush workers whose heartbeat is recent, with the partition count each runs with. */
export async function liveWorkers(
  redis: RedisClient,
  prefix: string,
  liveWithinMs = 15_000,
): Promise<{ id: string; partitions: number; seenAt: number }[]> {
  const all = await redis.hgetall(redisKeys(prefix).workers);
  const now = Date.now();
  const out: { id: string; partitions: number; seenAt: number }[] = [];
  for (const [id, value] of Object.entries(all)) {
    const [partitions, seenAt] = value.split(":").map(Number);
    if (partitions !== undefined && seenAt !== undefined && now - seenAt <= liveWithinMs)
      out.push({ id, partitions, seenAt });
  }
  return out;
}

/** A worker's heartbeat in the registry: alive, and running with this many partitions. */
export async function heartbeat(
  redis: RedisClient,
  prefix: string,
  workerId: string,
  partitions: number,
): Promise<void> {
  await redis.hset(redisKeys(prefix).workers, workerId, `${partitions}:${Date.now()}`);
}

/** Leaves the registry (a worker shutting down). */
export async function leaveRegistry(
  redis: RedisClient,
  prefix: string,
  workerId: string,
): Promise<void> {
  await redis.hdel(redisKeys(prefix).workers, workerId);
}

/**
 * Records the partition count if none is, or checks this process agrees with
 * the recorded one; a worker may switch it (see the class comment). Says
 * which it did: "recorded" (none was), "agreed" or "switched".
 */
export async function ensurePartitionCount(
  redis: RedisClient,
  prefix: string,
  configured: number,
  agreement: PartitionAgreement = { role: "worker" },
): Promise<"recorded" | "agreed" | "switched"> {
  const key = redisKeys(prefix).partitionCount;
  const recorded = await redis.get(key);
  if (recorded === null) {
    const set = await redis.set(key, String(configured), "NX");
    if (set === "OK") return "recorded";
    return ensurePartitionCount(redis, prefix, configured, agreement);
  }
  const n = Number(recorded);
  if (n === configured) return "agreed";
  if (agreement.role === "gateway")
    throw new PartitionMismatchError(
      n,
      configured,
      0,
      `a gateway never changes the count: start it with ${n}, or switch the workers first (stop the gateways, let the workers drain, restart the workers, then the gateways, with ${configured})`,
    );
  const others = (await liveWorkers(redis, prefix, agreement.liveWithinMs)).filter(
    (w) => w.id !== agreement.workerId && w.partitions !== configured,
  );
  if (others.length > 0)
    throw new PartitionMismatchError(
      n,
      configured,
      0,
      `${others.length} live worker(s) run with ${others.map((w) => w.partitions).join(", ")}: stop them before switching`,
    );
  const pending = await pendingJobs(redis, prefix, n);
  if (pending > 0)
    throw new PartitionMismatchError(
      n,
      configured,
      pending,
      `${pending} spend job(s) are pending under ${n}. Drain first: stop the gateways (or keep them on ${n}), let the workers flush until the queues are empty, then restart everything with ${configured}`,
    );
  // Drained: switching is safe. Compare-and-set, so two processes cannot both switch it differently.
  const switched = await switchScript.run(redis, [key], [recorded, String(configured)]);
  if (switched !== 1) return ensurePartitionCount(redis, prefix, configured, agreement);
  return "switched";
}

/** The recorded count, or null when Redis holds none (a new or emptied Redis). */
export async function recordedPartitionCount(
  redis: RedisClient,
  prefix: string,
): Promise<number | null> {
  const v = await redis.get(redisKeys(prefix).partitionCount);
  return v === null ? null : Number(v);
}

import { Queue } from "bullmq";
import pg from "pg";
import type { AppConfig } from "../config/config.js";
import { oldestJobAt } from "../queue/backlog.js";
import { connectRedis } from "../queue/connection.js";
import { redisKeys } from "../queue/keys.js";

export const JOB_STATES = [
  "wait",
  "active",
  "delayed",
  "prioritized",
  "completed",
  "failed",
] as const;

export interface QueueStatus {
  name: string;
  role: "entity" | "daily" | "flush";
  counts: Record<(typeof JOB_STATES)[number], number>;
  /** When the oldest waiting job was added (epoch ms), if any waits. */
  oldestWaitingAt?: number;
}

export interface SpendStatus {
  prefix: string;
  at: number;
  queues: QueueStatus[];
  /** Jobs waiting in the spend queues, and the age of the oldest one. */
  backlog: { jobs: number; oldestAgeMs?: number };
  lock: { held: false } | { held: true; holder: string; ttlMs: number };
  fence: {
    redis?: string;
    postgres?: { token: string; holder: string; updatedAt: string };
  };
  /** When a flush last committed (spend_flush_fence.updated_at). */
  lastFlushAt?: string;
  /** The newest spend_applied_batch.applied_at. */
  newestAppliedBatchAt?: string;
}

/** Reads the buffer's state from Redis and PostgreSQL, read-only. */
export async function collectStatus(config: AppConfig): Promise<SpendStatus> {
  const keys = redisKeys(config.keyPrefix);
  const redis = connectRedis(config.redis, "producer");
  const at = Date.now();
  // Every flush partition's spend queues; the lock and fence shown are partition 0's.
  const queues: [QueueStatus["role"], string][] = [];
  for (let p = 0; p < config.partitions; p++) {
    const k = redisKeys(config.keyPrefix, p);
    queues.push(["entity", k.spendQueue], ["daily", k.dailySpendQueue]);
  }
  queues.push(["flush", keys.flushQueue]);
  const client = new pg.Client({ connectionString: config.databaseUrl });
  try {
    const qs: QueueStatus[] = [];
    for (const [role, name] of queues) {
      const q = new Queue(name, { connection: redis, prefix: keys.bullPrefix });
      q.on("error", () => undefined);
      try {
        const c = await q.getJobCounts(...JOB_STATES);
        const counts = Object.fromEntries(
          JOB_STATES.map((s) => [s, c[s] ?? 0]),
        ) as QueueStatus["counts"];
        const oldest = await oldestJobAt(q, Infinity);
        qs.push({
          name,
          role,
          counts,
          ...(oldest !== Infinity ? { oldestWaitingAt: oldest } : {}),
        });
      } finally {
        await q.close();
      }
    }
    const spend = qs.filter((q) => q.role !== "flush");
    const oldest = Math.min(...spend.map((q) => q.oldestWaitingAt ?? Infinity));
    const [lockValue, pttl, fenceCounter] = await Promise.all([
      redis.get(keys.flushLock),
      redis.pttl(keys.flushLock),
      redis.get(keys.flushFence),
    ]);
    await client.connect();
    const fenceRow = await client.query<{ token: string; holder: string; updated_at: Date }>(
      `SELECT token::text, holder, updated_at FROM spend_flush_fence WHERE partition = $1`,
      [keys.fencePartition],
    );
    const applied = await client.query<{ at: Date | null }>(
      `SELECT max(applied_at) AS at FROM spend_applied_batch`,
    );
    const f = fenceRow.rows[0];
    const newest = applied.rows[0]?.at ?? null;
    return {
      prefix: config.keyPrefix,
      at,
      queues: qs,
      backlog: {
        jobs: spend.reduce((n, q) => n + q.counts.wait + q.counts.prioritized, 0),
        ...(Number.isFinite(oldest) ? { oldestAgeMs: at - oldest } : {}),
      },
      lock:
        lockValue === null
          ? { held: false }
          : {
              held: true,
              holder: lockValue.includes(":")
                ? lockValue.slice(0, lockValue.lastIndexOf(":"))
                : lockValue,
              ttlMs: pttl,
            },
      fence: {
        ...(fenceCounter !== null ? { redis: fenceCounter } : {}),
        ...(f !== undefined
          ? {
              postgres: { token: f.token, holder: f.holder, updatedAt: f.updated_at.toISOString() },
            }
          : {}),
      },
      ...(f !== undefined ? { lastFlushAt: f.updated_at.toISOString() } : {}),
      ...(newest !== null ? { newestAppliedBatchAt: newest.toISOString() } : {}),
    };
  } finally {
    redis.disconnect();
    await client.end().catch(() => undefined);
  }
}

function ago(iso: string | undefined, now: number): string {
  if (iso === undefined) return "never";
  return `${iso} (${seconds(now - Date.parse(iso))} ago)`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** The status as an operator reads it in a terminal. */
export function formatStatus(s: SpendStatus): string {
  const lines: string[] = [
    `spend buffer "${s.prefix}" at ${new Date(s.at).toISOString()}`,
    "queues:",
  ];
  const width = Math.max(...s.queues.map((q) => q.name.length));
  for (const q of s.queues) {
    const counts = JOB_STATES.map((st) => `${st} ${q.counts[st]}`).join("  ");
    lines.push(`  ${q.role.padEnd(6)} ${q.name.padEnd(width)}  ${counts}`);
  }
  lines.push(
    `backlog: ${s.backlog.jobs} jobs waiting` +
      (s.backlog.oldestAgeMs !== undefined ? `, oldest ${seconds(s.backlog.oldestAgeMs)} old` : ""),
  );
  lines.push(
    s.lock.held
      ? `flush lock: held by ${s.lock.holder}, lease expires in ${seconds(s.lock.ttlMs)}`
      : "flush lock: free (no flush running)",
  );
  lines.push(
    `fence: redis ${s.fence.redis ?? "-"}, postgres ${s.fence.postgres?.token ?? "-"}` +
      (s.fence.postgres !== undefined ? ` (last holder ${s.fence.postgres.holder})` : ""),
  );
  lines.push(`last successful flush: ${ago(s.lastFlushAt, s.at)}`);
  lines.push(`newest applied batch: ${ago(s.newestAppliedBatchAt, s.at)}`);
  return lines.join("\n") + "\n";
}

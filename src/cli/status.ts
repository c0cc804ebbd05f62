import { Queue } from "bullmq";
import pg from "pg";
import { redact, type AppConfig } from "../config/config.js";
import { errorText } from "../observe/error-text.js";
import { oldestJobAt, reportedHeldRows, totalFlushRate } from "../queue/backlog.js";
import { connectRedis } from "../redis/connection.js";
import { redisKeys } from "../redis/keys.js";
import { StartupError, checkPostgres, postgresClient } from "./preflight.js";

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

/** One flush partition's writer: its lock in Redis and its fence in both stores. */
export interface PartitionStatus {
  partition: number;
  lock: { held: false } | { held: true; holder: string; ttlMs: number };
  fence: {
    redis?: string;
    postgres?: { token: string; holder: string; updatedAt: string };
  };
}

export interface SpendStatus {
  prefix: string;
  at: number;
  queues: QueueStatus[];
  /** Jobs waiting in the spend queues, and the age of the oldest one. */
  backlog: { jobs: number; oldestAgeMs?: number };
  /**
   * What back-pressure weighs besides the backlog's age: the rows gateways
   * said they hold (their last reports), and the flush rate workers published
   * (rows/s, summed over the partitions that published one; absent: none did).
   */
  held: { gateways: number; rows: number; flushRowsPerSec?: number };
  /** The worker that leads the flush (takes the flush jobs) and how long its lease has left; absent: none. */
  leader?: { worker: string; ttlMs: number };
  /** Every flush partition (one unless spend_buffer_settings.flush_partitions says more). */
  partitions: PartitionStatus[];
  /** When a flush of any partition last committed (the newest spend_flush_fence.updated_at). */
  lastFlushAt?: string;
  /** The newest spend_applied_batch.applied_at. */
  newestAppliedBatchAt?: string;
  /**
   * Why PostgreSQL could not be read (unreachable, refused, no schema):
   * Redis's side is still shown, the fences' PostgreSQL half and the last
   * flush are not. Absent: it was read.
   */
  postgresUnavailable?: string;
}

/**
 * Reads the buffer's state from Redis and PostgreSQL, read-only. PostgreSQL
 * down does not stop it: during an outage the backlog in Redis is what an
 * operator most needs to see (postgresUnavailable says why the rest is missing).
 */
export async function collectStatus(config: AppConfig): Promise<SpendStatus> {
  const keys = redisKeys(config.keyPrefix);
  const partitionKeys = Array.from({ length: config.partitions }, (_, p) =>
    redisKeys(config.keyPrefix, p),
  );
  const redis = connectRedis(config.redis, "producer");
  const at = Date.now();
  const queues: [QueueStatus["role"], string][] = [];
  for (const k of partitionKeys)
    queues.push(["entity", k.spendQueue], ["daily", k.dailySpendQueue]);
  queues.push(["flush", keys.flushQueue]);
  const client = postgresClient(config.databaseUrl);
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
    const [held, rates] = await Promise.all([
      reportedHeldRows(redis, keys),
      Promise.all(partitionKeys.map((k) => redis.get(k.flushRate))),
    ]);
    const flushRowsPerSec = totalFlushRate(rates);
    const [leader, leaderTtl] = await Promise.all([
      redis.get(keys.flushLeader),
      redis.pttl(keys.flushLeader),
    ]);
    const inRedis = await Promise.all(
      partitionKeys.map((k) =>
        Promise.all([redis.get(k.flushLock), redis.pttl(k.flushLock), redis.get(k.flushFence)]),
      ),
    );
    const fromPostgres = await readPostgres(
      client,
      config.databaseUrl,
      partitionKeys.map((k) => k.fencePartition),
    );
    const fenceRows = "unavailable" in fromPostgres ? [] : fromPostgres.fences;
    const fences = new Map(fenceRows.map((r) => [r.partition, r]));
    const partitions = partitionKeys.map((k, i): PartitionStatus => {
      const [lockValue, pttl, fenceCounter] = inRedis[i] ?? [null, -2, null];
      const f = fences.get(k.fencePartition);
      return {
        partition: k.partition,
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
                postgres: {
                  token: f.token,
                  holder: f.holder,
                  updatedAt: f.updated_at.toISOString(),
                },
              }
            : {}),
        },
      };
    });
    const lastFlush = Math.max(
      ...fenceRows.map((r) => r.updated_at.getTime()),
      Number.NEGATIVE_INFINITY,
    );
    const newest = "unavailable" in fromPostgres ? null : fromPostgres.newestApplied;
    return {
      prefix: config.keyPrefix,
      at,
      queues: qs,
      backlog: {
        jobs: spend.reduce((n, q) => n + q.counts.wait + q.counts.prioritized, 0),
        ...(Number.isFinite(oldest) ? { oldestAgeMs: at - oldest } : {}),
      },
      held: { ...held, ...(flushRowsPerSec !== null ? { flushRowsPerSec } : {}) },
      ...(leader !== null ? { leader: { worker: leader, ttlMs: leaderTtl } } : {}),
      partitions,
      ...(Number.isFinite(lastFlush) ? { lastFlushAt: new Date(lastFlush).toISOString() } : {}),
      ...(newest !== null ? { newestAppliedBatchAt: newest.toISOString() } : {}),
      ...("unavailable" in fromPostgres ? { postgresUnavailable: fromPostgres.unavailable } : {}),
    };
  } finally {
    redis.disconnect();
    await client.end().catch(() => undefined);
  }
}

interface FenceRow {
  partition: string;
  token: string;
  holder: string;
  updated_at: Date;
}

/** The fences and the newest applied batch, or why PostgreSQL could not give them. */
async function readPostgres(
  client: pg.Client,
  databaseUrl: string,
  fencePartitions: string[],
): Promise<{ fences: FenceRow[]; newestApplied: Date | null } | { unavailable: string }> {
  try {
    // The preflight's check says why in an operator's terms (unreachable, refused, no schema),
    // and leaves the client connected for the reads below.
    await checkPostgres(databaseUrl, { schema: true, client });
    const fences = await client.query<FenceRow>(
      `SELECT partition, token::text, holder, updated_at FROM spend_flush_fence WHERE partition = ANY($1::text[])`,
      [fencePartitions],
    );
    const applied = await client.query<{ at: Date | null }>(
      `SELECT max(applied_at) AS at FROM spend_applied_batch`,
    );
    return { fences: fences.rows, newestApplied: applied.rows[0]?.at ?? null };
  } catch (err) {
    if (err instanceof StartupError) return { unavailable: err.message };
    return { unavailable: `PostgreSQL: ${redact(errorText(err))}` };
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
  const rate = s.held.flushRowsPerSec;
  lines.push(
    (s.held.gateways === 0
      ? "held by gateways: none reporting (they report only with back-pressure on)"
      : `held by gateways: ${s.held.rows} rows (${s.held.gateways} reporting)`) +
      "; flush rate: " +
      (rate === undefined
        ? "none published (gateways hold at most max_rows_per_transaction rows until one is)"
        : `${Math.round(rate)} rows/s, ${seconds((1000 * s.held.rows) / rate)} of work held`),
  );
  lines.push(
    s.leader !== undefined
      ? `flush leader: ${s.leader.worker}, lease expires in ${seconds(s.leader.ttlMs)}`
      : "flush leader: none (no worker running, or its lease ran out)",
  );
  for (const p of s.partitions) {
    // One partition: the plain lines; several: each one's writer on its own lines.
    const label = s.partitions.length === 1 ? "" : `partition ${p.partition} `;
    lines.push(
      p.lock.held
        ? `${label}flush lock: held by ${p.lock.holder}, lease expires in ${seconds(p.lock.ttlMs)}`
        : `${label}flush lock: free (no flush running)`,
    );
    lines.push(
      `${label}fence: redis ${p.fence.redis ?? "-"}, postgres ${p.fence.postgres?.token ?? "-"}` +
        (p.fence.postgres !== undefined
          ? ` (last holder ${p.fence.postgres.holder}, ${ago(p.fence.postgres.updatedAt, s.at)})`
          : ""),
    );
  }
  if (s.postgresUnavailable !== undefined) {
    lines.push(`last successful flush: unknown (${s.postgresUnavailable})`);
    return lines.join("\n") + "\n";
  }
  lines.push(`last successful flush: ${ago(s.lastFlushAt, s.at)}`);
  lines.push(`newest applied batch: ${ago(s.newestAppliedBatchAt, s.at)}`);
  return lines.join("\n") + "\n";
}

import type { Queue } from "bullmq";
import type { RedisClient } from "../redis/connection.js";
import type { RedisKeys } from "../redis/keys.js";
import { LuaScript } from "../redis/lua.js";
import type { PipelineLoad } from "../contract/spend-sink.js";
import type { SpendQueues } from "./spend-queues.js";

const heldRowsScript = LuaScript.load("held-producers-1", new URL("./scripts/", import.meta.url));

/**
 * When the oldest job waiting in a queue (or, with "active", also being
 * flushed) was added (epoch ms), or `none` if there is none. BullMQ LPUSHes
 * new jobs, so the oldest is at a list's tail (getRanges([state], -1, -1)); a
 * job given back to wait after a failed flush may land at either end, so both
 * ends are read. A few job timestamps per queue, never the job data.
 */
export async function oldestJobAt(
  q: Queue,
  none: number,
  states: readonly ("wait" | "active")[] = ["wait"],
): Promise<number> {
  const ids = new Set<string>();
  for (const state of states)
    for (const id of [
      ...(await q.getRanges([state], -1, -1)),
      ...(await q.getRanges([state], 0, 0)),
    ])
      ids.add(id);
  if (ids.size === 0) return none;
  const client = await q.getBackend().client;
  let oldest = none;
  for (const id of ids) {
    const ts = Number(await client.hget(q.toKey(id), "timestamp"));
    if (Number.isFinite(ts) && ts > 0) oldest = Math.min(oldest, ts);
  }
  return oldest;
}

/**
 * How long the oldest spend job not yet committed (waiting, or taken by a
 * flush still running) of any of these partitions has been in Redis, ms (0
 * when there is none): how far the flush is behind what producers sent.
 * Jobs in a running flush count: a flush that takes long is the backlog.
 */
export async function backlogAgeMs(partitions: readonly SpendQueues[]): Promise<number> {
  const now = Date.now();
  const queues = partitions.flatMap((set) => [set.entity, set.daily] as Queue[]);
  // In parallel: a producer reads this every second, and each read is a few round trips.
  const oldest = await Promise.all(queues.map((q) => oldestJobAt(q, now, ["wait", "active"])));
  return Math.max(0, now - Math.min(now, ...oldest));
}

/**
 * How long a worker's published flush rate (`keys.flushRate`) is kept: a
 * worker gone quiet stops vouching for a rate it no longer delivers. What is
 * left of it tells a reader how long ago the rate was published.
 */
export const FLUSH_RATE_TTL_MS = 60_000;

/**
 * The backlog age, plus the work no queue shows yet: this producer publishes
 * the rows it holds (one script call, which also sums every producer's) and
 * reads the flush rate each partition's worker published. All in parallel.
 */
export async function pipelineLoad(
  partitions: readonly SpendQueues[],
  producerId: string,
  heldRows: number,
  freshMs: number,
): Promise<PipelineLoad> {
  const first = partitions[0];
  if (first === undefined) throw new Error("no partitions");
  const [age, held, rates, ttls] = await Promise.all([
    backlogAgeMs(partitions),
    heldRowsScript.run(
      first.connection,
      [first.keys.heldRows],
      [producerId, Math.max(0, Math.round(heldRows)), Math.round(freshMs)],
    ),
    Promise.all(partitions.map((p) => p.connection.get(p.keys.flushRate))),
    Promise.all(partitions.map((p) => p.connection.pttl(p.keys.flushRate))),
  ]);
  const [rows, producers] = held as [unknown, unknown];
  return {
    backlogAgeMs: age,
    heldRows: Number(rows),
    producers: Math.max(1, Number(producers)),
    flushRowsPerSec: totalFlushRate(rates),
    flushRateAgeMs: freshestRateAge(ttls),
  };
}

/**
 * Ms since the most recently published rate was set, from what is left of
 * each rate's lifetime (PTTL); null when no rate carries the lifetime workers
 * give it (none published, or one set by hand without it).
 */
export function freshestRateAge(ttlsLeft: readonly number[]): number | null {
  const left = ttlsLeft.filter((t) => t > 0 && t <= FLUSH_RATE_TTL_MS);
  return left.length === 0 ? null : FLUSH_RATE_TTL_MS - Math.max(...left);
}

/**
 * The flush rates the partitions' workers published (`keys.flushRate`
 * values), summed, rows/s; null when none did. A partition whose rate is
 * unknown is not counted: the estimate errs towards "behind".
 */
export function totalFlushRate(published: readonly (string | null)[]): number | null {
  const known = published.map(Number).filter((r) => Number.isFinite(r) && r > 0);
  return known.length === 0 ? null : known.reduce((a, b) => a + b, 0);
}

/**
 * What producers last reported holding, read-only (the held-rows script's
 * hash: producer id -> "<rows>:<epoch ms>"): for an operator's view, not
 * back-pressure, which sums through the script and drops stale reports.
 */
export async function reportedHeldRows(
  redis: RedisClient,
  keys: RedisKeys,
): Promise<{ gateways: number; rows: number }> {
  const entries = await redis.hvals(keys.heldRows);
  const rows = entries.reduce((n, v) => n + (Number(v.split(":")[0]) || 0), 0);
  return { gateways: entries.length, rows };
}

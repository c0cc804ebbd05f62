import { RowTextError, decodeEntityRows } from "../contract/row-text.js";
import type { Queue } from "bullmq";
import { decimalToPico } from "../contract/money.js";
import { ENTITY_KINDS, type EntityKind } from "../contract/spend-batch.js";
import type { SpendProducer } from "../produce/producer.js";
import type { Db } from "../persist/prisma.js";
import { ENTITY_TABLES } from "../persist/tables.js";

/** What this process can see of one entity's spend. */
export interface LiveSpendSources {
  db: Db;
  /**
   * The entity spend queue(s): one set per flush partition. Without them,
   * spend still waiting in Redis is not counted.
   */
  queues?: { entity: Queue } | readonly { entity: Queue }[];
  /** This process's producer. Without it, spend buffered in this process is not counted. */
  producer?: Pick<SpendProducer, "pendingSpendDetail">;
}

/** Picodollars (10^-12 USD), exact. */
export interface LiveSpend {
  /** In PostgreSQL's entity table (what a budget check reads today). */
  committedPico: bigint;
  /** In spend jobs waiting in Redis or being flushed, not yet committed. */
  pendingRedisPico: bigint;
  /** In this process's producer: aggregated, or sealed and not yet delivered. */
  pendingLocalPico: bigint;
  totalPico: bigint;
  /**
   * When the read began. Spend recorded in this process before it is counted;
   * spend from other processes is counted once it reached Redis (their own
   * producer interval, proxy_batch_write_at, plus jitter, behind).
   */
  asOf: Date;
}

/** Jobs fetched from Redis at once: bounds memory and round trips in flight. */
const PAGE = 32;
const DIGITS = /^\d{1,38}$/;

/**
 * Live spend of one entity (key, user, team, team_member, org, end_user,
 * tag): what PostgreSQL has committed, plus what is still on its way.
 * For team_member, `id` is the user and `id2` the team; without `id2` every
 * membership of the user is summed.
 *
 * Cost: one indexed PostgreSQL query, plus reading every waiting and active
 * job of the entity spend queue(s) from Redis — O(pending jobs' rows), which
 * is as large as the backlog (at most max_rows_per_job rows per job). Meant
 * for a budget check or an admin view, not for every request at high rate;
 * cache the result for a second or two if it is.
 *
 * Each piece of spend is counted once. The reads go local → Redis →
 * PostgreSQL, and the PostgreSQL query, one statement and so one snapshot,
 * also returns which of the batch ids seen locally or in Redis are already
 * in spend_applied_batch: a job committed but not yet acked (both in
 * PostgreSQL and still active in Redis), or a batch that was delivered and
 * committed while this read ran, counts only as committed. A local batch
 * also seen in Redis (delivered during the read) counts once.
 *
 * A batch this producer seals during the read was counted as aggregated
 * and is skipped in Redis.
 *
 * Remaining window (a producer send and a flush commit must both fit inside
 * the few milliseconds of this call): spend aggregated in this process at
 * the start, then sealed, delivered and committed before the PostgreSQL
 * query, counts twice, once as local and once as committed. Spend other
 * processes send to Redis after the Redis read is counted by the next read
 * (once committed, by this one).
 */
export async function liveSpend(
  src: LiveSpendSources,
  kind: EntityKind,
  id: string,
  id2?: string,
): Promise<LiveSpend> {
  if (!(ENTITY_KINDS as readonly string[]).includes(kind))
    throw new TypeError(`unknown entity kind: ${kind as string}`);
  const asOf = new Date();

  // 1. This process's buffer, synchronously (nothing moves meanwhile).
  const local = src.producer?.pendingSpendDetail(kind, id, id2);
  const localBatches = local?.batches ?? new Map<string, bigint>();

  // 2. Redis: every waiting and active entity job, by batch id (= job id).
  const redisByBatch = new Map<string, bigint>();
  const queueSets =
    src.queues === undefined ? [] : Array.isArray(src.queues) ? src.queues : [src.queues];
  for (const { entity } of queueSets as readonly { entity: Queue }[]) {
    // One atomic listing of both states; a job moving between them is listed once.
    const ids = (await entity.getRanges(["wait", "active"], 0, -1)).filter(
      // Local batches count locally; batches sealed after step 1 were still aggregated then.
      (j) => !redisByBatch.has(j) && !localBatches.has(j) && local?.sealedLater(j) !== true,
    );
    for (let i = 0; i < ids.length; i += PAGE) {
      const jobs = await Promise.all(ids.slice(i, i + PAGE).map((j) => entity.getJob(j)));
      for (const job of jobs) {
        // Gone since it was listed: acked after its commit, so it is in PostgreSQL now.
        if (job?.id === undefined) continue;
        const data = job.data as
          { v?: unknown; batchId?: unknown; rows?: unknown; rowText?: unknown } | undefined;
        const batchId = typeof data?.batchId === "string" ? data.batchId : job.id;
        const spend = rowsSpend(jobRows(data), kind, id, id2);
        if (spend > 0n) redisByBatch.set(batchId, spend);
      }
    }
  }

  // 3. PostgreSQL, one statement: committed spend and which seen batches it already holds.
  const { table, keyColumns } = ENTITY_TABLES[kind];
  const first = keyColumns[0] ?? "";
  const second = keyColumns[1];
  // Only the team of a team member is a second key; without id2 every membership counts.
  const where =
    second !== undefined && id2 !== undefined
      ? `${first} = $2::text AND ${second} = $3::text`
      : `${first} = $2::text AND $3::text IS NOT NULL`;
  const seen = [...redisByBatch.keys(), ...localBatches.keys()];
  const rows = await src.db.$queryRawUnsafe<{ spend: string; applied: string[] }[]>(
    `SELECT (SELECT COALESCE(SUM(spend), 0)::text FROM "${table}" WHERE ${where}) AS spend,
            ARRAY(SELECT batch_id FROM spend_applied_batch WHERE batch_id = ANY($1::text[])) AS applied`,
    seen,
    id,
    id2 ?? "",
  );
  const row = rows[0];
  const committedPico = decimalToPico(row?.spend ?? "0");
  const applied = new Set(row?.applied ?? []);

  let pendingRedisPico = 0n;
  for (const [batchId, spend] of redisByBatch) if (!applied.has(batchId)) pendingRedisPico += spend;
  // A local batch already committed was delivered and flushed while we read:
  // the producer has not heard back from the sink yet. It counts as committed.
  let pendingLocalPico = local?.bufferedPico ?? 0n;
  for (const [batchId, spend] of localBatches) if (!applied.has(batchId)) pendingLocalPico += spend;

  return {
    committedPico,
    pendingRedisPico,
    pendingLocalPico,
    totalPico: committedPico + pendingRedisPico + pendingLocalPico,
    asOf,
  };
}

/** An entity job's rows in any format; a format 3 text that cannot be read (a poison job) has none. */
function jobRows(data: { v?: unknown; rows?: unknown; rowText?: unknown } | undefined): unknown {
  if (data?.v !== 3) return data?.rows;
  if (typeof data.rowText !== "string") return [];
  try {
    return decodeEntityRows(data.rowText);
  } catch (err) {
    if (err instanceof RowTextError) return [];
    throw err;
  }
}

/** The entity's spend in one job's rows; malformed rows (poison jobs are never applied) count 0. */
function rowsSpend(rows: unknown, kind: EntityKind, id: string, id2?: string): bigint {
  if (!Array.isArray(rows)) return 0n;
  let sum = 0n;
  for (const r of rows as unknown[]) {
    if (!Array.isArray(r)) continue;
    const row = r as unknown[];
    if (row[0] !== kind || row[1] !== id) continue;
    if (id2 !== undefined && row[2] !== id2) continue;
    const pico = row[3];
    if (typeof pico === "string" && DIGITS.test(pico)) sum += BigInt(pico);
  }
  return sum;
}

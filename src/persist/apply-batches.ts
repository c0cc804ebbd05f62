import { mergeRows, type MergedRows } from "../flush/merge.js";
import type { DailyRow, EntityRow } from "../queue/spend-batch.js";
import { numericArrayLiteral, textArrayLiteral } from "./pg-array.js";
import type { Tx } from "./prisma.js";
import {
  DAILY_COUNTER_COLUMNS,
  DAILY_DIMENSION_COLUMNS,
  DAILY_TABLES,
  ENTITY_TABLES,
} from "./tables.js";

export interface BatchToApply {
  batchId: string;
  entity?: readonly EntityRow[];
  daily?: readonly DailyRow[];
}

export interface Fence {
  partition: string;
  token: bigint;
  /** The lease's own token: an equal fence passes only for the same lease (Redis may have reset its counter). */
  holder: string;
}

export interface ApplyResult {
  /** Batches written by this call. */
  applied: string[];
  /** Batches skipped because an earlier transaction already applied them. */
  duplicates: string[];
  entityRows: number;
  dailyRows: number;
}

/** The flush's fencing token is older than one that already committed. */
export class FencedOffError extends Error {
  readonly code = "FENCED_OFF";
  constructor(
    readonly token: bigint,
    readonly committed: bigint,
  ) {
    super(`flush fenced off: token ${token} is older than committed token ${committed}`);
    this.name = "FencedOffError";
  }
}

/**
 * Applies spend batches inside the caller's transaction, exactly once each:
 *  1. the fencing token is checked and recorded (row lock: flushes serialize here);
 *  2. batch ids are recorded, and any already recorded are skipped;
 *  3. the remaining rows are merged and upserted, keys sorted, all tables in one statement.
 * All of it commits or none of it does.
 */
export async function applyBatches(
  tx: Tx,
  batches: readonly BatchToApply[],
  opts: { fence?: Fence; retentionDays?: number } = {},
): Promise<ApplyResult> {
  if (opts.fence !== undefined) await checkFence(tx, opts.fence);

  const ids = batches.map((b) => b.batchId);
  const fresh = new Set<string>();
  if (ids.length > 0) {
    const inserted = await tx.$queryRawUnsafe<{ batch_id: string }[]>(
      `INSERT INTO spend_applied_batch (batch_id, fence)
       SELECT id, $2::int8 FROM unnest($1::text[]) AS t(id)
       ON CONFLICT (batch_id) DO NOTHING
       RETURNING batch_id`,
      ids,
      opts.fence?.token.toString() ?? null,
    );
    for (const r of inserted) fresh.add(r.batch_id);
  }
  const applied = ids.filter((id) => fresh.has(id));
  const duplicates = ids.filter((id) => !fresh.has(id));

  const todo = batches.filter((b) => fresh.has(b.batchId));
  const merged = mergeRows(
    todo.map((b) => b.entity ?? []),
    todo.map((b) => b.daily ?? []),
  );
  await upsertMerged(tx, merged, opts.retentionDays);
  return {
    applied,
    duplicates,
    entityRows: merged.entityRowCount,
    dailyRows: merged.dailyRowCount,
  };
}

async function checkFence(tx: Tx, fence: Fence): Promise<void> {
  const rows = await tx.$queryRawUnsafe<{ token: string }[]>(
    `INSERT INTO spend_flush_fence AS f (partition, token, holder, updated_at)
     VALUES ($1, $2::int8, $3, now())
     ON CONFLICT (partition) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder, updated_at = now()
       WHERE f.token < EXCLUDED.token OR (f.token = EXCLUDED.token AND f.holder = EXCLUDED.holder)
     RETURNING token::text`,
    fence.partition,
    fence.token.toString(),
    fence.holder,
  );
  if (rows.length === 0) {
    const current = await tx.$queryRawUnsafe<{ token: string }[]>(
      `SELECT token::text FROM spend_flush_fence WHERE partition = $1`,
      fence.partition,
    );
    throw new FencedOffError(fence.token, BigInt(current[0]?.token ?? "0"));
  }
}

/** One SQL statement assembled from parts, numbering its parameters as they are added. */
class Statement {
  readonly parts: string[] = [];
  readonly params: string[] = [];
  param(value: string, type: string): string {
    this.params.push(value);
    return `$${this.params.length}::${type}`;
  }
}

/**
 * Writes merged rows in ONE statement: a data-modifying CTE per table, each
 * an INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE, each column one
 * array literal (pg-array.ts says why). Through Prisma every statement costs
 * a fixed ~0.3 ms of client CPU plus a round trip; one per table made that
 * the larger part of a small flush. CTEs that the outer query does not read
 * run to completion in an order fixed by the statement's shape, and every
 * writer builds the same shape (tables in kind order, keys sorted), so the
 * lock order is still the one all writers share. `alsoPurgeBatchesOlderThanDays`
 * folds the dedupe table's retention delete into the same statement.
 */
export async function upsertMerged(
  tx: Tx,
  merged: MergedRows,
  alsoPurgeBatchesOlderThanDays?: number,
): Promise<void> {
  const st = new Statement();
  for (const [kind, cols] of merged.entity) {
    const { table, keyColumns } = ENTITY_TABLES[kind];
    const keyList = keyColumns.join(", ");
    const params = [
      ...cols.keys.map((k) => st.param(textArrayLiteral(k), "text[]")),
      st.param(numericArrayLiteral(cols.spend), "numeric[]"),
    ].join(", ");
    st.parts.push(
      `INSERT INTO "${table}" AS t (${keyList}, spend, updated_at)
       SELECT ${keyList}, spend, now() FROM unnest(${params}) AS u(${keyList}, spend)
       ON CONFLICT (${keyList}) DO UPDATE SET spend = t.spend + EXCLUDED.spend, updated_at = now()`,
    );
  }
  const dims = DAILY_DIMENSION_COLUMNS.join(", ");
  const counters = DAILY_COUNTER_COLUMNS.join(", ");
  const counterUpdates = DAILY_COUNTER_COLUMNS.map((c) => `${c} = t.${c} + EXCLUDED.${c}`).join(
    ", ",
  );
  for (const [kind, cols] of merged.daily) {
    const { table, entityColumn } = DAILY_TABLES[kind];
    const all = `${entityColumn}, ${dims}, ${counters}, spend`;
    const params = [
      st.param(textArrayLiteral(cols.entityId), "text[]"),
      ...cols.dims.map((d) => st.param(textArrayLiteral(d), "text[]")),
      ...cols.counters.map((c) => st.param(numericArrayLiteral(c), "int8[]")),
      st.param(numericArrayLiteral(cols.spend), "numeric[]"),
    ].join(", ");
    st.parts.push(
      `INSERT INTO "${table}" AS t (${all}, updated_at)
       SELECT ${all}, now() FROM unnest(${params}) AS u(${all})
       ON CONFLICT (${entityColumn}, ${dims}) DO UPDATE SET ${counterUpdates},
         spend = t.spend + EXCLUDED.spend, updated_at = now()`,
    );
  }
  if (alsoPurgeBatchesOlderThanDays !== undefined) {
    // Dedupe only has to outlive redelivery (minutes); days of margin keep the table small.
    st.parts.push(
      `DELETE FROM spend_applied_batch
       WHERE applied_at < now() - make_interval(days => ${st.param(String(alsoPurgeBatchesOlderThanDays), "int")})`,
    );
  }
  if (st.parts.length === 0) return;
  const ctes = st.parts.map((sql, i) => `w${i} AS (${sql})`).join(",\n");
  await tx.$executeRawUnsafe(`WITH ${ctes}\nSELECT 1`, ...st.params);
}

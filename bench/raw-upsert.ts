/**
 * The raw baseline for flush throughput: the same rows, the same tables and
 * the same statement shape as applyBatches (fence upsert, batch-id insert,
 * one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE per table, keys
 * sorted, one transaction), written with a bare `pg` client and no Prisma. It
 * assumes what the benchmark guarantees (every batch fresh, every row key
 * distinct), so it skips applyBatches' merge of repeated keys across batches:
 * the difference between the two is what the project's layer costs.
 */
import type pg from "pg";
import { picoToDecimal } from "../src/contract/money.js";
import type { BatchToApply, Fence } from "../src/persist/apply-batches.js";
import type { MergedRows } from "../src/persist/merge.js";
import {
  DAILY_COUNTER_COLUMNS,
  DAILY_DIMENSION_COLUMNS,
  DAILY_TABLES,
  ENTITY_TABLES,
} from "../src/persist/tables.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  type DailyKind,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../src/contract/spend-batch.js";

const SEP = "\u001f";

/**
 * `pico`: the spend parameter holds picodollars (mergeRows' columns), scaled
 * to USD in SQL as upsert.ts does; otherwise it holds USD decimal text.
 */
function entitySql(kind: EntityKind, pico = false): string {
  const { table, keyColumns } = ENTITY_TABLES[kind];
  const keyList = keyColumns.join(", ");
  const params = keyColumns.map((_, i) => `$${i + 1}::text[]`).join(", ");
  const spend = pico ? "spend * 0.000000000001" : "spend";
  return `INSERT INTO "${table}" AS t (${keyList}, spend, updated_at)
    SELECT ${keyList}, ${spend}, now() FROM unnest(${params}, $${keyColumns.length + 1}::numeric[]) AS u(${keyList}, spend)
    ON CONFLICT (${keyList}) DO UPDATE SET spend = t.spend + EXCLUDED.spend, updated_at = now()`;
}

function dailySql(kind: DailyKind, pico = false): string {
  const { table, entityColumn } = DAILY_TABLES[kind];
  const dims = DAILY_DIMENSION_COLUMNS.join(", ");
  const counters = DAILY_COUNTER_COLUMNS.join(", ");
  const all = `${entityColumn}, ${dims}, ${counters}, spend`;
  const values = pico ? `${entityColumn}, ${dims}, ${counters}, spend * 0.000000000001` : all;
  const params = [
    "$1::text[]",
    ...DAILY_DIMENSION_COLUMNS.map((_, i) => `$${i + 2}::text[]`),
    ...DAILY_COUNTER_COLUMNS.map((_, i) => `$${i + 9}::int8[]`),
    "$16::numeric[]",
  ].join(", ");
  const updates = DAILY_COUNTER_COLUMNS.map((c) => `${c} = t.${c} + EXCLUDED.${c}`).join(", ");
  return `INSERT INTO "${table}" AS t (${all}, updated_at)
    SELECT ${values}, now() FROM unnest(${params}) AS u(${all})
    ON CONFLICT (${entityColumn}, ${dims}) DO UPDATE SET ${updates}, spend = t.spend + EXCLUDED.spend, updated_at = now()`;
}

/** The fence check and the batch ids, as applyBatches does first. */
async function fenceAndRecord(
  client: pg.Client,
  batchIds: readonly string[],
  fence: Fence,
): Promise<void> {
  const fenced = await client.query(
    `INSERT INTO spend_flush_fence AS f (partition, token, holder, updated_at)
     VALUES ($1, $2::int8, $3, now())
     ON CONFLICT (partition) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder, updated_at = now()
       WHERE f.token < EXCLUDED.token OR (f.token = EXCLUDED.token AND f.holder = EXCLUDED.holder)
     RETURNING token::text`,
    [fence.partition, fence.token.toString(), fence.holder],
  );
  if (fenced.rowCount !== 1) throw new Error("raw baseline fenced off");
  await client.query(
    `INSERT INTO spend_applied_batch (batch_id, fence)
     SELECT id, $2::int8 FROM unnest($1::text[]) AS t(id)
     ON CONFLICT (batch_id) DO NOTHING
     RETURNING batch_id`,
    [batchIds, fence.token.toString()],
  );
}

/**
 * One flush transaction as both raw references write it: BEGIN, the fence
 * and the batch ids, the caller's writes, COMMIT (ROLLBACK on any failure).
 */
export async function inTransaction(
  client: pg.Client,
  batchIds: readonly string[],
  fence: Fence,
  write: () => Promise<void>,
): Promise<void> {
  await client.query("BEGIN");
  try {
    await fenceAndRecord(client, batchIds, fence);
    await write();
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

/**
 * The drain section's reference: rows already merged (one per database row,
 * keys sorted, as mergeRows leaves them) written in one transaction with the
 * fence and the batch ids, one hand-written multi-row upsert per table, the
 * arrays passed as pg's own array parameters. What PostgreSQL needs to absorb
 * a transaction's rows when nothing else (Redis, parsing, merging) is in the way.
 */
export async function rawApplyMerged(
  client: pg.Client,
  merged: MergedRows,
  batchIds: readonly string[],
  fence: Fence,
): Promise<number> {
  await inTransaction(client, batchIds, fence, async () => {
    for (const kind of ENTITY_KINDS) {
      const cols = merged.entity.get(kind);
      if (cols !== undefined) await client.query(entitySql(kind, true), [...cols.keys, cols.spend]);
    }
    for (const kind of DAILY_KINDS) {
      const cols = merged.daily.get(kind);
      if (cols !== undefined)
        await client.query(dailySql(kind, true), [
          cols.entityId,
          ...cols.dims,
          ...cols.counters,
          cols.spend,
        ]);
    }
  });
  return merged.entityRowCount + merged.dailyRowCount;
}

/** A flush's rows by table, each table's rows sorted by key (the lock order every writer shares). */
export interface GroupedRows {
  entity: Map<EntityKind, EntityRow[]>;
  daily: Map<DailyKind, DailyRow[]>;
}

/** Groups the batches' rows by table and sorts them by key, as both raw references need. */
export function groupSorted(batches: readonly BatchToApply[]): GroupedRows {
  return {
    entity: byKindSorted(
      ENTITY_KINDS,
      batches.flatMap((b) => b.entity ?? []),
      (r) => r[1] + SEP + r[2],
    ),
    daily: byKindSorted(
      DAILY_KINDS,
      batches.flatMap((b) => b.daily ?? []),
      (r) => r.slice(1, 9).join(SEP),
    ),
  };
}

/** Rows by their kind (tables in kind order), each kind's rows sorted by `keyOf`. */
function byKindSorted<K extends string, R extends readonly [K, ...unknown[]]>(
  kinds: readonly K[],
  rows: readonly R[],
  keyOf: (r: R) => string,
): Map<K, R[]> {
  const byKind = new Map<K, [string, R][]>();
  for (const r of rows) {
    const list = byKind.get(r[0]) ?? [];
    list.push([keyOf(r), r]);
    byKind.set(r[0], list);
  }
  const out = new Map<K, R[]>();
  for (const kind of kinds) {
    const list = byKind.get(kind);
    if (list !== undefined)
      out.set(
        kind,
        list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([, r]) => r),
      );
  }
  return out;
}

/** Applies the batches in one transaction on `client`; returns the rows written. */
export async function rawApply(
  client: pg.Client,
  batches: readonly BatchToApply[],
  fence: Fence,
): Promise<number> {
  const { entity, daily } = groupSorted(batches);
  let rows = 0;
  // Same lock order as upsertMerged: tables in kind order, keys sorted.
  await inTransaction(
    client,
    batches.map((b) => b.batchId),
    fence,
    async () => {
      for (const [kind, list] of entity) {
        const two = ENTITY_TABLES[kind].keyColumns.length === 2;
        const params: string[][] = two ? [[], [], []] : [[], []];
        for (const r of list) {
          params[0]?.push(r[1]);
          if (two) params[1]?.push(r[2]);
          params[two ? 2 : 1]?.push(picoToDecimal(BigInt(r[3])));
        }
        await client.query(entitySql(kind), params);
        rows += list.length;
      }
      for (const [kind, list] of daily) {
        const params: string[][] = Array.from({ length: 16 }, () => []);
        for (const r of list) {
          for (let i = 0; i < 15; i++) params[i]?.push(String(r[1 + i]));
          params[15]?.push(picoToDecimal(BigInt(r[16])));
        }
        await client.query(dailySql(kind), params);
        rows += list.length;
      }
    },
  );
  return rows;
}

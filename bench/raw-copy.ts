/**
 * The second raw reference for flush throughput (issue 22, goal 4): the
 * fastest hand-written technique found, with the same guarantees as the
 * unnest reference in raw-upsert.ts (fence, batch ids, keys sorted, one
 * transaction). Each table's rows are streamed with COPY ... FROM STDIN into a
 * session-local staging table, then moved by one INSERT ... SELECT ... ON
 * CONFLICT DO UPDATE. COPY skips the parameter and array parsing of unnest;
 * what it cannot skip (the heap, the three indexes, the WAL) is the same work.
 * Prisma cannot speak COPY inside its interactive transaction, so this is a
 * reference the project's flush is measured against, not a path it can take.
 */
import { once } from "node:events";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import type { BatchToApply, Fence } from "../src/persist/apply-batches.js";
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
  type EntityKind,
} from "../src/contract/spend-batch.js";
import { groupSorted, inTransaction } from "./raw-upsert.js";

const stageOf = (kind: string, daily: boolean): string =>
  `bench_stage_${daily ? "daily" : "entity"}_${kind}`;

/**
 * Creates the staging tables once per connection, outside any timed
 * transaction: a writer that used this technique would keep them for the
 * session. ON COMMIT DELETE ROWS empties them at every commit.
 */
export async function prepareCopyStaging(client: pg.Client): Promise<void> {
  for (const kind of ENTITY_KINDS) {
    const keys = ENTITY_TABLES[kind].keyColumns.map((k) => `${k} text`).join(", ");
    await client.query(
      `CREATE TEMP TABLE IF NOT EXISTS ${stageOf(kind, false)} (${keys}, pico numeric) ON COMMIT DELETE ROWS`,
    );
  }
  for (const kind of DAILY_KINDS) {
    const cols = [
      `${DAILY_TABLES[kind].entityColumn} text`,
      ...DAILY_DIMENSION_COLUMNS.map((d) => `${d} text`),
      ...DAILY_COUNTER_COLUMNS.map((c) => `${c} int8`),
      "pico numeric",
    ].join(", ");
    await client.query(
      `CREATE TEMP TABLE IF NOT EXISTS ${stageOf(kind, true)} (${cols}) ON COMMIT DELETE ROWS`,
    );
  }
}

// COPY's text format: backslash escapes for the separator, line ends and itself.
const COPY_SPECIAL = /[\\\t\n\r]/;
const COPY_ESCAPES = /[\\\t\n\r]/g;
const COPY_ESCAPE: Record<string, string> = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" };
const field = (v: string | number): string =>
  typeof v === "string" && COPY_SPECIAL.test(v)
    ? v.replace(COPY_ESCAPES, (ch) => COPY_ESCAPE[ch] ?? ch)
    : String(v);

/** Streams lines into `table` with COPY FROM STDIN, in chunks of about 64 KiB. */
async function copyLines(
  client: pg.Client,
  table: string,
  lines: readonly string[],
): Promise<void> {
  const stream = client.query(copyFrom(`COPY ${table} FROM STDIN`));
  const done = once(stream, "finish");
  let chunk = "";
  for (const line of lines) {
    chunk += line + "\n";
    if (chunk.length >= 65_536) {
      if (!stream.write(chunk)) await once(stream, "drain");
      chunk = "";
    }
  }
  stream.end(chunk);
  await done;
}

function entityMove(kind: EntityKind): string {
  const { table, keyColumns } = ENTITY_TABLES[kind];
  const keyList = keyColumns.join(", ");
  return `INSERT INTO "${table}" AS t (${keyList}, spend, updated_at)
    SELECT ${keyList}, pico * 0.000000000001, now() FROM ${stageOf(kind, false)}
    ON CONFLICT (${keyList}) DO UPDATE SET spend = t.spend + EXCLUDED.spend, updated_at = now()`;
}

function dailyMove(kind: DailyKind): string {
  const { table, entityColumn } = DAILY_TABLES[kind];
  const dims = DAILY_DIMENSION_COLUMNS.join(", ");
  const all = `${entityColumn}, ${dims}, ${DAILY_COUNTER_COLUMNS.join(", ")}`;
  const updates = DAILY_COUNTER_COLUMNS.map((c) => `${c} = t.${c} + EXCLUDED.${c}`).join(", ");
  return `INSERT INTO "${table}" AS t (${all}, spend, updated_at)
    SELECT ${all}, pico * 0.000000000001, now() FROM ${stageOf(kind, true)}
    ON CONFLICT (${entityColumn}, ${dims}) DO UPDATE SET ${updates}, spend = t.spend + EXCLUDED.spend, updated_at = now()`;
}

/**
 * Applies the batches in one transaction on `client` (prepared with
 * prepareCopyStaging); returns the rows written. A staging table is read in
 * the order it was written, so rows reach each table in key order.
 */
export async function rawCopyApply(
  client: pg.Client,
  batches: readonly BatchToApply[],
  fence: Fence,
): Promise<number> {
  const { entity, daily } = groupSorted(batches);
  let rows = 0;
  await inTransaction(
    client,
    batches.map((b) => b.batchId),
    fence,
    async () => {
      for (const [kind, list] of entity) {
        const two = ENTITY_TABLES[kind].keyColumns.length === 2;
        const lines = list.map((r) =>
          two ? `${field(r[1])}\t${field(r[2])}\t${r[3]}` : `${field(r[1])}\t${r[3]}`,
        );
        await copyLines(client, stageOf(kind, false), lines);
        await client.query(entityMove(kind));
        rows += list.length;
      }
      for (const [kind, list] of daily) {
        const lines = list.map((r) => r.slice(1).map(field).join("\t"));
        await copyLines(client, stageOf(kind, true), lines);
        await client.query(dailyMove(kind));
        rows += list.length;
      }
    },
  );
  return rows;
}

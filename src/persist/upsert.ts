import type { Count } from "../contract/spend-batch.js";
import type { MergedRows } from "./merge.js";
import { numericArrayLiteral, textArrayLiteral } from "./pg-array.js";
import type { Tx } from "./prisma.js";
import {
  DAILY_COUNTER_COLUMNS,
  DAILY_DIMENSION_COLUMNS,
  DAILY_TABLES,
  ENTITY_TABLES,
} from "./tables.js";

/**
 * Spend arrives in picodollars (integer digits, the jobs' own strings) and is
 * scaled here: multiplying NUMERIC by 10^-12 is exact (the scales add up to
 * 12, spend's own), and costs PostgreSQL less than building the decimal text
 * of every row cost the worker.
 */
const PICO_TO_USD = "u.pico * 0.000000000001";

/**
 * One SQL statement assembled from parts, numbering its parameters as they
 * are added (after `params`, those of parts it extends).
 */
export class Statement {
  readonly parts: string[] = [];
  constructor(readonly params: string[] = []) {}
  param(value: string, type: string): string {
    this.params.push(value);
    return `$${this.params.length}::${type}`;
  }
}

/**
 * Writes merged rows in ONE statement: a data-modifying CTE per table, each
 * an INSERT ... SELECT FROM (SELECT unnest(...), ...) ON CONFLICT DO UPDATE,
 * each column one array literal (pg-array.ts says why) or, when every row
 * holds the same value, one scalar (ZippedRows). Through Prisma every statement costs
 * a fixed cost in client CPU plus a round trip; one per table made that
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
  await runUpsert(tx, buildUpsert(merged, alsoPurgeBatchesOlderThanDays));
}

/** upsertMerged's statement, ready to run: built ahead of its transaction, it costs nothing there. */
export interface UpsertStatement {
  sql: string;
  params: string[];
}

/**
 * The statement's parts, to be joined into a larger statement: one
 * `name AS (...)` per write, and their parameters, numbered from $1 (a caller
 * adding its own numbers them after these).
 */
export interface UpsertParts {
  ctes: readonly string[];
  params: readonly string[];
}

/** upsertMerged's statement, or undefined when there is nothing to write. */
export function buildUpsert(
  merged: MergedRows,
  alsoPurgeBatchesOlderThanDays?: number,
): UpsertStatement | undefined {
  const { ctes, params } = upsertParts(merged, alsoPurgeBatchesOlderThanDays);
  if (ctes.length === 0) return undefined;
  return { sql: `WITH ${ctes.join(",\n")}\nSELECT 1`, params: [...params] };
}

/**
 * `onlyIf`: a boolean SQL expression every row write is filtered by (the
 * retention delete is not: running it twice changes nothing), so a larger
 * statement can decide in PostgreSQL whether these rows are written at all.
 */
export function upsertParts(
  merged: MergedRows,
  alsoPurgeBatchesOlderThanDays?: number,
  onlyIf?: string,
): UpsertParts {
  const st = new Statement();
  const where = onlyIf !== undefined ? ` WHERE ${onlyIf}` : "";
  for (const [kind, cols] of merged.entity) {
    const { table, keyColumns } = ENTITY_TABLES[kind];
    const keyList = keyColumns.join(", ");
    const rows = new ZippedRows(st);
    cols.keys.forEach((k, i) => rows.text(keyColumns[i] as string, k));
    rows.number("pico", cols.spend, "numeric");
    st.parts.push(
      `INSERT INTO "${table}" AS t (${keyList}, spend, updated_at)
       SELECT ${keyList}, ${PICO_TO_USD}, now() FROM ${rows.sql(where)}
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
    const all = `${entityColumn}, ${dims}, ${counters}`;
    const rows = new ZippedRows(st);
    rows.text(entityColumn, cols.entityId);
    cols.dims.forEach((d, i) => rows.text(DAILY_DIMENSION_COLUMNS[i] as string, d));
    cols.counters.forEach((c, i) => rows.number(DAILY_COUNTER_COLUMNS[i] as string, c, "int8"));
    rows.number("pico", cols.spend, "numeric");
    st.parts.push(
      `INSERT INTO "${table}" AS t (${all}, spend, updated_at)
       SELECT ${all}, ${PICO_TO_USD}, now() FROM ${rows.sql(where)}
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
  return { ctes: st.parts.map((sql, i) => `w${i} AS (${sql})`), params: st.params };
}

/**
 * The rows one INSERT writes, given column by column (equal lengths), as a
 * subquery aliased `u`. Each column is one unnest in the select list, which
 * PostgreSQL steps in lock step (ProjectSet), producing each value as it
 * reads it; the same zip written `FROM unnest(a, b, ...)` first materialises
 * every column into its own tuplestore (spilling past work_mem), and at
 * 100,000 rows made the statement 15-20 % slower. A column holding one value
 * in every row (the date, an unused dimension, a counter that stayed 0) is
 * sent once as a scalar, which the select list repeats for every row: that
 * value is neither encoded, carried through Prisma's JSON, nor parsed
 * 100,000 times. The first column is always unnested: it gives the row count.
 */
class ZippedRows {
  private readonly list: string[] = [];
  constructor(private readonly st: Statement) {}

  text(name: string, values: readonly string[]): void {
    this.column(name, values, "text", () => textArrayLiteral(values));
  }

  number(name: string, values: readonly Count[], type: "int8" | "numeric"): void {
    this.column(name, values, type, () => numericArrayLiteral(values));
  }

  /** `where` goes inside: rows a statement does not write are never unnested. */
  sql(where: string): string {
    return `(SELECT ${this.list.join(", ")}${where}) AS u`;
  }

  private column(
    name: string,
    values: readonly (string | number)[],
    type: string,
    literal: () => string,
  ): void {
    const first = values[0];
    if (this.list.length > 0 && first !== undefined && allEqual(values, first))
      this.list.push(`${this.st.param(String(first), type)} AS ${name}`);
    else this.list.push(`unnest(${this.st.param(literal(), `${type}[]`)}) AS ${name}`);
  }
}

/** Every value `=== first` (a number and its digit string count as different: merely not folded). */
function allEqual(values: readonly (string | number)[], first: string | number): boolean {
  for (let i = 1; i < values.length; i++) if (values[i] !== first) return false;
  return true;
}

async function runUpsert(tx: Tx, statement: UpsertStatement | undefined): Promise<void> {
  if (statement !== undefined) await tx.$executeRawUnsafe(statement.sql, ...statement.params);
}

import { RowTextError, decodeDailyFacts, decodeDailyRows, decodeEntityRows } from "./row-text.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  ungroupDailyRows,
  type DailyGroup,
  type DailySpendJob,
  type EntitySpendJob,
  type SpendJobData,
} from "./spend-batch.js";

/**
 * The spend job contract (spend-batch.ts's zod schemas) checked by hand, for
 * the flush's hot path. A backlog is hundreds of thousands of rows, and the
 * schemas copied every row into a new array and checked it through layers
 * of closures: validation was the flush worker's largest CPU cost, and the
 * copies doubled the memory each taken job kept alive. These checks read
 * the payload in place and return it as it is.
 *
 * They accept exactly what the schemas accept (test/unit/job-check.test.ts
 * holds them to it on generated payloads): the schemas stay the contract, and
 * a payload refused here goes through them for the reason it is refused.
 */

const ENTITY = new Set<string>(ENTITY_KINDS);
const DAILY = new Set<string>(DAILY_KINDS);
const BATCH_ID = /^[\x21-\x7e]{1,200}$/;
const DIGITS = /^\d{1,38}$/;
const DATE = /^\d{4}-\d{2}-\d{2}$/;
const MAX_ID = 1024;

type Obj = Record<string, unknown>;

const isObject = (x: unknown): x is Obj => typeof x === "object" && x !== null && !Array.isArray(x);
const id = (x: unknown): boolean => typeof x === "string" && x.length <= MAX_ID;
const nonEmptyId = (x: unknown): boolean => id(x) && (x as string).length > 0;
const digits = (x: unknown): boolean => typeof x === "string" && DIGITS.test(x);
const count = (x: unknown): boolean =>
  typeof x === "number" ? Number.isSafeInteger(x) && x >= 0 : digits(x);

function header(d: Obj, v: 1 | 2 | 3 | 4): boolean {
  const p = d.partitions;
  return (
    d.v === v &&
    typeof d.batchId === "string" &&
    BATCH_ID.test(d.batchId) &&
    typeof d.producerId === "string" &&
    d.producerId.length <= 200 &&
    typeof d.sealedAt === "number" &&
    Number.isSafeInteger(d.sealedAt) &&
    d.sealedAt >= 0 &&
    (p === undefined || (typeof p === "number" && Number.isSafeInteger(p) && p >= 1 && p <= 1024))
  );
}

/** The seven counters and the spend, from `at` on. */
function counts(r: readonly unknown[], at: number): boolean {
  for (let i = at; i < at + 7; i++) if (!count(r[i])) return false;
  return digits(r[at + 7]);
}

/** The context's seven columns (date, then six ids), from `at` on. */
function context(r: readonly unknown[], at: number): boolean {
  if (typeof r[at] !== "string" || !DATE.test(r[at])) return false;
  for (let i = at + 1; i < at + 7; i++) if (!id(r[i])) return false;
  return true;
}

/**
 * A format 3 job of `kind` as format 1 (its text decoded, every value checked
 * by the decoder), or undefined if the schema must say why not.
 */
function readV3<Row>(
  data: Obj,
  kind: "entity" | "daily",
  decode: (text: string) => Row[],
): SpendJobData<Row> | undefined {
  const n = data.rowCount;
  if (
    !header(data, 3) ||
    data.kind !== kind ||
    typeof n !== "number" ||
    !Number.isSafeInteger(n) ||
    n < 0 ||
    typeof data.rowText !== "string"
  )
    return undefined;
  let rows: Row[];
  try {
    rows = decode(data.rowText);
  } catch (err) {
    if (err instanceof RowTextError) return undefined;
    throw err;
  }
  return rows.length === n ? asFormat1(data, rows) : undefined;
}

/**
 * A format 4 daily job as format 1 (its facts fanned out to rows, every
 * value checked by the decoder), or undefined if the schema must say why not.
 */
function readV4(data: Obj): DailySpendJob | undefined {
  const n = data.rowCount;
  if (
    !header(data, 4) ||
    data.kind !== "daily" ||
    typeof n !== "number" ||
    !Number.isSafeInteger(n) ||
    n < 0 ||
    typeof data.rowText !== "string"
  )
    return undefined;
  let decoded: { rows: DailySpendJob["rows"]; facts: number };
  try {
    decoded = decodeDailyFacts(data.rowText);
  } catch (err) {
    if (err instanceof RowTextError) return undefined;
    throw err;
  }
  return decoded.facts === n ? asFormat1(data, decoded.rows) : undefined;
}

/** A checked job's header around `rows`, as format 1. */
function asFormat1<Row>(data: Obj, rows: Row[]): SpendJobData<Row> {
  const { partitions } = data;
  return {
    v: 1,
    batchId: data.batchId as string,
    producerId: data.producerId as string,
    sealedAt: data.sealedAt as number,
    ...(partitions !== undefined ? { partitions: partitions as number } : {}),
    rows,
  };
}

/** An entity job as entityJobSchema reads it, or undefined if the schema must say why not. */
export function checkEntityJob(data: unknown): EntitySpendJob | undefined {
  if (!isObject(data)) return undefined;
  if (data.v === 3) return readV3(data, "entity", decodeEntityRows);
  if (!header(data, 1) || !Array.isArray(data.rows)) return undefined;
  for (const r of data.rows as unknown[]) {
    if (
      !Array.isArray(r) ||
      r.length !== 4 ||
      !ENTITY.has(r[0] as string) ||
      !nonEmptyId(r[1]) ||
      !id(r[2]) ||
      !digits(r[3])
    )
      return undefined;
  }
  return data as unknown as EntitySpendJob;
}

/**
 * A daily job of any format as dailyJobPayloadSchema reads it (format 2
 * ungrouped, format 3 decoded and format 4 fanned out into format 1's rows), or undefined if the schema must say why not.
 */
export function checkDailyJob(data: unknown): DailySpendJob | undefined {
  if (!isObject(data)) return undefined;
  if (data.v === 3) return readV3(data, "daily", decodeDailyRows);
  if (data.v === 4) return readV4(data);
  if (data.v === 1) {
    if (!header(data, 1) || !Array.isArray(data.rows)) return undefined;
    for (const r of data.rows as unknown[]) {
      if (
        !Array.isArray(r) ||
        r.length !== 17 ||
        !DAILY.has(r[0] as string) ||
        !nonEmptyId(r[1]) ||
        !context(r, 2) ||
        !counts(r, 9)
      )
        return undefined;
    }
    return data as unknown as DailySpendJob;
  }
  if (!header(data, 2) || !Array.isArray(data.groups)) return undefined;
  for (const g of data.groups as unknown[]) {
    if (!Array.isArray(g) || g.length !== 2) return undefined;
    const [ctx, cells] = g as unknown[];
    if (!Array.isArray(ctx) || ctx.length !== 7 || !context(ctx, 0)) return undefined;
    if (!Array.isArray(cells)) return undefined;
    for (const c of cells as unknown[]) {
      if (
        !Array.isArray(c) ||
        c.length !== 10 ||
        !DAILY.has(c[0] as string) ||
        !nonEmptyId(c[1]) ||
        !counts(c, 2)
      )
        return undefined;
    }
  }
  return asFormat1(data, ungroupDailyRows(data.groups as DailyGroup[]));
}

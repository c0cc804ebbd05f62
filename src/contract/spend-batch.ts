import { z } from "zod";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  type DailyCells,
  type DailyContextDims,
  type DailyGroup,
  type DailyRow,
  type EntityRow,
} from "./spend-rows.js";

import { RowTextError, decodeDailyFacts, decodeDailyRows, decodeEntityRows } from "./row-text.js";

export * from "./spend-rows.js";

/**
 * The contract between producers and the flush worker: what one BullMQ spend
 * job carries. Rows are tuples (formats 1 and 2) or one length-prefixed
 * string (format 3, row-text.ts), never objects: thousands of them sit in
 * Redis between flushes and field names would dominate their size.
 */

interface JobHeader {
  /** Unique per batch; also the BullMQ job id and the key of spend_applied_batch. */
  batchId: string;
  producerId: string;
  /** When the producer sealed the batch (epoch ms): measures staleness. */
  sealedAt: number;
  /** The producer's partition count (absent from producers before partitions existed: 1). */
  partitions?: number;
}

export interface SpendJobData<Row> extends JobHeader {
  /** Payload version, so a future format can be told apart in a mixed deployment. */
  v: 1;
  rows: Row[];
}

export type EntitySpendJob = SpendJobData<EntityRow>;
export type DailySpendJob = SpendJobData<DailyRow>;

/**
 * Format 2 of a daily job: rows grouped by their shared context. A key's
 * requests share date, key, model, group, provider, endpoint and tool, so
 * format 1 repeated those seven strings (most of a row's bytes) on every
 * row: format 2 is about half the size in Redis, and cheaper to seal.
 */
export interface DailySpendJobV2 extends JobHeader {
  v: 2;
  groups: DailyGroup[];
}

/**
 * Format 3 of either job: its rows as one string (row-text.ts), and how many
 * there are. Sealing writes the text as it drains, so a producer never holds
 * its rows as arrays, and a worker reads them in one pass.
 */
export interface SpendJobV3 extends JobHeader {
  v: 3;
  /** Which queue's rows the text holds (so a job read on its own, a dead letter, says). */
  kind: "entity" | "daily";
  rowCount: number;
  rowText: string;
}

/**
 * Format 4 of a daily job: daily facts (daily-facts.ts) as fact text
 * (row-text.ts), and how many facts there are. The worker fans them out to
 * daily rows. Entity jobs have no format 4: a producer sending format 4
 * writes them as format 3.
 */
export interface DailySpendJobV4 extends JobHeader {
  v: 4;
  kind: "daily";
  /** Facts in the text (not the rows they fan out to). */
  rowCount: number;
  rowText: string;
}

/** What a daily spend queue holds: any format (workers read all four). */
export type DailyJobPayload = DailySpendJob | DailySpendJobV2 | SpendJobV3 | DailySpendJobV4;

/** What an entity spend queue holds: format 1 or 3. */
export type EntityJobPayload = EntitySpendJob | SpendJobV3;

/**
 * Groups rows by context: consecutive rows with the same seven context
 * values share one group (a producer emits a context's rows together, and
 * their strings are the same objects, so these are pointer comparisons).
 */
export function groupDailyRows(rows: readonly DailyRow[]): DailyGroup[] {
  const groups: DailyGroup[] = [];
  let ctx: DailyContextDims | undefined;
  let cells: DailyCells[] = [];
  for (const r of rows) {
    if (
      ctx === undefined ||
      ctx[0] !== r[2] ||
      ctx[1] !== r[3] ||
      ctx[2] !== r[4] ||
      ctx[3] !== r[5] ||
      ctx[4] !== r[6] ||
      ctx[5] !== r[7] ||
      ctx[6] !== r[8]
    ) {
      ctx = [r[2], r[3], r[4], r[5], r[6], r[7], r[8]];
      cells = [];
      groups.push([ctx, cells]);
    }
    cells.push([r[0], r[1], r[9], r[10], r[11], r[12], r[13], r[14], r[15], r[16]]);
  }
  return groups;
}

/** The rows of grouped daily jobs, each with its context again (format 1's rows). */
export function ungroupDailyRows(groups: readonly DailyGroup[]): DailyRow[] {
  const rows: DailyRow[] = [];
  for (const [c, cells] of groups) {
    for (const x of cells) {
      rows.push([
        x[0],
        x[1],
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        x[2],
        x[3],
        x[4],
        x[5],
        x[6],
        x[7],
        x[8],
        x[9],
      ]);
    }
  }
  return rows;
}

// The flush worker re-validates every job: Redis is shared, and one malformed
// job must be set aside rather than block every batch behind it.
const id = z.string().max(1024);
const digits = z.string().regex(/^\d{1,38}$/);
const count = z.union([z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), digits]);
const date = z.string().regex(/^\d{4}-\d{2}-\d{2}$/);
const header = {
  v: z.literal(1),
  // Stored in spend_applied_batch: printable ASCII only (a producer makes
  // "<uuid>.<seq>"), so no id can be refused by PostgreSQL there, where a
  // refusal could not be isolated to the job.
  batchId: z.string().regex(/^[\x21-\x7e]{1,200}$/, "must be 1-200 printable ASCII characters"),
  producerId: z.string().max(200),
  sealedAt: z.number().int().nonnegative(),
  partitions: z.number().int().min(1).max(1024).optional(),
};

/** One entity row (EntityRow). */
export const entityRowSchema = z.tuple([z.enum(ENTITY_KINDS), id.min(1), id, digits]);

/** Format 1 of an entity job. */
export const entityJobV1Schema = z.object({
  ...header,
  rows: z.array(entityRowSchema),
});

/** Format 3 of a job of `kind`, before its text is read. */
const jobV3Schema = <K extends "entity" | "daily">(kind: K) =>
  z.object({
    ...header,
    v: z.literal(3),
    kind: z.literal(kind),
    rowCount: z.number().int().nonnegative(),
    rowText: z.string(),
  });
const entityJobV3Schema = jobV3Schema("entity");
const dailyJobV3Schema = jobV3Schema("daily");

/**
 * A format 3 job as format 1: its text decoded (row-text.ts checks every
 * value as the tuples' schemas do), and its row count checked against it.
 */
function decodeV3<Row>(
  job: z.infer<typeof entityJobV3Schema> | z.infer<typeof dailyJobV3Schema>,
  decode: (text: string) => Row[],
  ctx: z.RefinementCtx,
): SpendJobData<Row> {
  let rows: Row[];
  try {
    rows = decode(job.rowText);
  } catch (err) {
    if (!(err instanceof RowTextError)) throw err;
    ctx.addIssue({ code: "custom", path: ["rowText"], message: err.message });
    return z.NEVER;
  }
  if (rows.length !== job.rowCount) {
    ctx.addIssue({
      code: "custom",
      path: ["rowCount"],
      message: `says ${job.rowCount} rows, the text holds ${rows.length}`,
    });
    return z.NEVER;
  }
  const { rowCount: _n, rowText: _t, kind: _k, ...rest } = job;
  return { ...rest, v: 1, rows };
}

/** An entity job of either format, as format 1 (what the flush works on). */
export const entityJobSchema = z
  .discriminatedUnion("v", [entityJobV1Schema, entityJobV3Schema])
  .transform((job, ctx): EntitySpendJob => {
    if (job.v === 1) return job;
    return decodeV3(job, decodeEntityRows, ctx);
  });

const dailyKind = z.enum(DAILY_KINDS);

// A daily row's columns after its kind and entity id, in both formats.
const contextCols = [date, id, id, id, id, id, id] as const;
const countCols = [count, count, count, count, count, count, count, digits] as const;

/** One daily row in format 1 (DailyRow). */
export const dailyRowSchema = z.tuple([dailyKind, id.min(1), ...contextCols, ...countCols]);

/** Format 1: every row carries its context. */
export const dailyJobSchema = z.object({
  ...header,
  rows: z.array(dailyRowSchema),
});

/** Format 2: rows grouped by context. */
export const dailyJobV2Schema = z.object({
  ...header,
  v: z.literal(2),
  groups: z.array(
    z.tuple([z.tuple([...contextCols]), z.array(z.tuple([dailyKind, id.min(1), ...countCols]))]),
  ),
});

/** Format 4: daily facts, fanned out to rows as they are read. */
const dailyJobV4Schema = z.object({
  ...header,
  v: z.literal(4),
  kind: z.literal("daily"),
  rowCount: z.number().int().nonnegative(),
  rowText: z.string(),
});

/** Format 4's facts fanned out to format 1's rows; the fact count checked against the text. */
function decodeV4(job: z.infer<typeof dailyJobV4Schema>, ctx: z.RefinementCtx): DailySpendJob {
  let decoded: { rows: DailyRow[]; facts: number };
  try {
    decoded = decodeDailyFacts(job.rowText);
  } catch (err) {
    if (!(err instanceof RowTextError)) throw err;
    ctx.addIssue({ code: "custom", path: ["rowText"], message: err.message });
    return z.NEVER;
  }
  if (decoded.facts !== job.rowCount) {
    ctx.addIssue({
      code: "custom",
      path: ["rowCount"],
      message: `says ${job.rowCount} facts, the text holds ${decoded.facts}`,
    });
    return z.NEVER;
  }
  const { rowCount: _n, rowText: _t, kind: _k, ...rest } = job;
  return { ...rest, v: 1, rows: decoded.rows };
}

/** A daily job of any format, as format 1 (what the flush works on). */
export const dailyJobPayloadSchema = z
  .discriminatedUnion("v", [dailyJobSchema, dailyJobV2Schema, dailyJobV3Schema, dailyJobV4Schema])
  .transform((job, ctx): DailySpendJob => {
    if (job.v === 1) return job;
    if (job.v === 3) return decodeV3(job, decodeDailyRows, ctx);
    if (job.v === 4) return decodeV4(job, ctx);
    const { groups, ...rest } = job;
    return { ...rest, v: 1, rows: ungroupDailyRows(groups) };
  });

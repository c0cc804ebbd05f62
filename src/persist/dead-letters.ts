import {
  dailyJobPayloadSchema,
  dailyRowSchema,
  entityJobSchema,
  entityRowSchema,
  type DailyRow,
  type EntityRow,
} from "../contract/spend-batch.js";
import { applyIsolating } from "./isolate.js";
import type { Db, Tx } from "./prisma.js";
import { retryReason } from "./retryable.js";

/**
 * Spend the flush set aside rather than let it block every batch behind it
 * (spend_dead_letter). Each dead letter keeps its rows whole, in the job's own
 * row format, with why they were refused; `haimaker-spend dead-letter replay`
 * applies them once whatever refused them is fixed.
 */

/**
 * Why rows were set aside: a job too malformed to read, a string the database
 * would store as something else (a lone surrogate), or a refusal by
 * PostgreSQL itself (its SQLSTATE and message kept).
 */
export type DeadLetterReason = "malformed" | "invalid_unicode" | "database";

export const DEAD_LETTER_REASONS: readonly DeadLetterReason[] = [
  "malformed",
  "invalid_unicode",
  "database",
];

/** Which queue's rows a dead letter holds; "job" is a whole payload that could not be read. */
export type DeadLetterKind = "entity" | "daily" | "job";

export interface DeadLetter {
  /** The batch (job id) the rows came from. */
  batchId: string;
  kind: DeadLetterKind;
  reason: DeadLetterReason;
  sqlState?: string;
  detail: string;
  /** The rows (entity or daily tuples), or the job's whole payload for "job". */
  payload: unknown;
  rows: number;
}

/**
 * Text PostgreSQL stores exactly: a malformed job's id or a message quoting
 * its content may hold NUL (refused) or a lone surrogate (changed), and the
 * dead letter of a job must never fail for the job's own faults.
 */
export function storable(s: string): string {
  return s.isWellFormed() && !s.includes("\0") ? s : JSON.stringify(s).slice(1, -1);
}

/**
 * Writes dead letters inside the caller's transaction (the one that applies
 * the rest of their batches). A batch already set aside is left as it was:
 * it can only come back as the same batch, with the same rows.
 */
export async function insertDeadLetters(
  tx: Tx,
  partition: string,
  letters: readonly DeadLetter[],
): Promise<void> {
  if (letters.length === 0) return;
  // JSON.stringify escapes lone surrogates and NUL (\ud800, \u0000), so the
  // payload is plain well-formed text PostgreSQL stores as it is.
  await tx.$executeRawUnsafe(
    `INSERT INTO spend_dead_letter (batch_id, partition, kind, reason, sql_state, detail, payload, rows)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[])
     ON CONFLICT (batch_id, kind) DO NOTHING`,
    letters.map((l) => storable(l.batchId)),
    letters.map(() => partition),
    letters.map((l) => l.kind),
    letters.map((l) => l.reason),
    letters.map((l) => l.sqlState ?? null),
    letters.map((l) => storable(l.detail.slice(0, 2_000))),
    letters.map((l) => JSON.stringify(l.payload)),
    letters.map((l) => l.rows),
  );
}

/** A dead letter as spend_dead_letter holds it. */
export interface StoredDeadLetter {
  id: bigint;
  batchId: string;
  partition: string;
  kind: DeadLetterKind;
  reason: DeadLetterReason;
  sqlState: string | null;
  detail: string;
  rows: number;
  createdAt: Date;
  replayedAt: Date | null;
}

/** Dead letters, oldest first: those not replayed yet, or all with `all`. */
export async function listDeadLetters(
  db: Db,
  opts: { all?: boolean; limit?: number } = {},
): Promise<StoredDeadLetter[]> {
  const rows = await db.spendDeadLetter.findMany({
    where: opts.all === true ? {} : { replayedAt: null },
    orderBy: { id: "asc" },
    take: opts.limit ?? 1_000,
    omit: { payload: true },
  });
  return rows.map((r) => ({
    ...r,
    kind: r.kind as DeadLetterKind,
    reason: r.reason as DeadLetterReason,
  }));
}

/** What one replay did to one dead letter. */
export interface ReplayOutcome {
  id: bigint;
  /**
   * "replayed": every row applied; "partial": some still refused (kept);
   * "refused": none applied; "gone": replayed before, nothing left;
   * "unknown": no dead letter has this id (a mistyped one must not read as done).
   */
  outcome: "replayed" | "partial" | "refused" | "gone" | "unknown";
  appliedRows: number;
  remainingRows: number;
  detail?: string;
}

/**
 * Applies one dead letter's rows, once: its row is locked and marked in the
 * same transaction that writes its spend, so two replays (or a replay run
 * twice) apply it once. Rows are read with today's rules, so a fix that
 * makes them readable or storable (a new release, a migration, a changed
 * constraint) lets them through; rows PostgreSQL still refuses stay in the
 * dead letter with the new reason, and the ones applied leave it.
 */
export async function replayDeadLetter(
  db: Db,
  id: bigint,
  opts: { transactionTimeoutMs?: number; maxAttempts?: number } = {},
): Promise<ReplayOutcome> {
  const maxAttempts = opts.maxAttempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.$transaction((tx) => replayIn(tx, id), {
        timeout: opts.transactionTimeoutMs ?? 120_000,
        maxWait: opts.transactionTimeoutMs ?? 120_000,
      });
    } catch (err) {
      // Two writers isolating rows in different orders can deadlock; PostgreSQL
      // aborts one, which simply runs again.
      if (retryReason(err) === undefined || attempt >= maxAttempts) throw err;
      await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    }
  }
}

async function replayIn(tx: Tx, id: bigint): Promise<ReplayOutcome> {
  const locked = await tx.$queryRawUnsafe<{ kind: string; batch_id: string; payload: string }[]>(
    `SELECT kind, batch_id, payload FROM spend_dead_letter WHERE id = $1 AND replayed_at IS NULL FOR UPDATE`,
    id.toString(),
  );
  const letter = locked[0];
  if (letter === undefined) {
    const known = await tx.$queryRawUnsafe<unknown[]>(
      `SELECT 1 FROM spend_dead_letter WHERE id = $1`,
      id.toString(),
    );
    return { id, outcome: known.length > 0 ? "gone" : "unknown", appliedRows: 0, remainingRows: 0 };
  }
  const read = readRows(letter.kind, JSON.parse(letter.payload) as unknown);
  if (read.entity.length + read.daily.length === 0) {
    await tx.$executeRawUnsafe(
      `UPDATE spend_dead_letter SET detail = $2 WHERE id = $1`,
      id.toString(),
      storable(`replay refused: ${read.why}`),
    );
    return {
      id,
      outcome: "refused",
      appliedRows: 0,
      remainingRows: read.unread.length,
      detail: read.why,
    };
  }
  const iso = await applyIsolating(tx, [
    { batchId: letter.batch_id, entity: read.entity, daily: read.daily },
  ]);
  const remaining = [...read.unread, ...iso.refused.map((r) => r.row)];
  const applied = read.entity.length + read.daily.length - iso.refused.length;
  if (remaining.length === 0) {
    await tx.$executeRawUnsafe(
      `UPDATE spend_dead_letter SET replayed_at = now() WHERE id = $1`,
      id.toString(),
    );
    return { id, outcome: "replayed", appliedRows: applied, remainingRows: 0 };
  }
  const first = iso.refused[0]?.refusal;
  const why =
    first !== undefined
      ? `PostgreSQL still refuses ${iso.refused.length} row(s): ${first.sqlState} ${first.message}`
      : read.why;
  // The rows applied leave the dead letter, so a later replay cannot apply them again.
  await tx.$executeRawUnsafe(
    `UPDATE spend_dead_letter SET payload = $2, rows = $3, detail = $4, sql_state = $5 WHERE id = $1`,
    id.toString(),
    JSON.stringify(read.wrap(remaining)),
    remaining.length,
    storable(`${applied} row(s) replayed; ${why}`),
    first?.sqlState ?? null,
  );
  return {
    id,
    outcome: applied > 0 ? "partial" : "refused",
    appliedRows: applied,
    remainingRows: remaining.length,
    detail: why,
  };
}

interface ReadRows {
  entity: EntityRow[];
  daily: DailyRow[];
  unread: unknown[];
  why: string;
  /** The payload to keep for rows still refused, in the dead letter's own form. */
  wrap: (rows: unknown[]) => unknown;
}

/**
 * A dead letter's payload read with today's rules: rows as the flush would
 * take them, and what still cannot be read (with why).
 */
function readRows(kind: string, payload: unknown): ReadRows {
  const out: ReadRows = { entity: [], daily: [], unread: [], why: "", wrap: (rows) => rows };
  if (kind === "job") {
    const entity = entityJobSchema.safeParse(payload);
    const daily = entity.success ? undefined : dailyJobPayloadSchema.safeParse(payload);
    const rows: unknown[] = entity.success
      ? entity.data.rows
      : daily?.success === true
        ? daily.data.rows
        : [];
    if (rows.length === 0 && !entity.success && daily?.success !== true) {
      out.unread.push(payload);
      out.why = `the job still cannot be read: ${daily?.error.issues[0]?.message ?? "not a spend job"}`;
      return out;
    }
    const read = readRows(entity.success ? "entity" : "daily", rows);
    // A job letter stays a job: its remaining rows keep the job around them (as format 1).
    const job = (entity.success ? entity.data : daily?.data) as unknown as Record<string, unknown>;
    read.wrap = (remaining) => ({ ...job, v: 1, rows: remaining });
    return read;
  }
  const rows = Array.isArray(payload) ? (payload as unknown[]) : [payload];
  for (const row of rows) {
    const r = kind === "entity" ? entityRowSchema.safeParse(row) : dailyRowSchema.safeParse(row);
    const text = r.success
      ? (r.data as readonly unknown[]).filter((v) => typeof v === "string")
      : [];
    if (r.success && text.every((v) => v.isWellFormed())) {
      if (kind === "entity") out.entity.push(r.data as EntityRow);
      else out.daily.push(r.data as DailyRow);
    } else {
      out.unread.push(row);
      out.why ||= r.success
        ? "a row holds a string that is not well-formed Unicode"
        : `a row cannot be read: ${r.error.issues[0]?.message ?? "malformed"}`;
    }
  }
  return out;
}

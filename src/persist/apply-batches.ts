import { mergeRows } from "./merge.js";
import type { DailyRow, EntityRow } from "../contract/spend-batch.js";
import { insertDeadLetters, type DeadLetter, type DeadLetterReason } from "./dead-letters.js";
import { applyIsolating, type RefusedRow } from "./isolate.js";
import type { Tx } from "./prisma.js";
import type { Premerged } from "./premerge.js";
import {
  applyInOne,
  batchIdsSql,
  fenceSql,
  idleTimeoutSetting,
  type Fence,
} from "./apply-statement.js";
import { upsertMerged } from "./upsert.js";

export { upsertMerged };
export type { Fence };

/** Rows the flush refused before PostgreSQL saw them, set aside with their batch. */
export interface RefusedRows {
  kind: "entity" | "daily" | "job";
  reason: DeadLetterReason;
  detail: string;
  /** Refused rows, or for "job" the whole payload that could not be read. */
  payload: unknown;
  rows: number;
}

export interface BatchToApply {
  batchId: string;
  entity?: readonly EntityRow[];
  daily?: readonly DailyRow[];
  /** Set aside as a dead letter in the same transaction, if the batch is applied now. */
  refused?: RefusedRows;
}

export interface ApplyOptions {
  fence?: Fence;
  retentionDays?: number;
  /**
   * Find and set aside the rows PostgreSQL refuses instead of failing
   * (isolate.ts): for a retry after a refusal caused by the rows.
   */
  isolate?: boolean;
  /** Dead letters' partition when there is no fence (spend_dead_letter.partition). */
  partition?: string;
  /** See IsolationOptions. */
  maxIsolationStatements?: number;
  beforeStatement?: () => void;
  /**
   * The batches merged ahead (premerge.ts), used when every batch is fresh;
   * otherwise the fresh ones are merged here, as without it.
   */
  premerged?: Premerged;
  /**
   * PostgreSQL ends the session if this transaction sits idle this long:
   * set by the transaction's first statement.
   */
  idleInTransactionTimeoutMs?: number;
  /**
   * PostgreSQL's lock_timeout and statement_timeout for this transaction,
   * set (with the idle timeout) by a statement of their own before anything
   * else: a statement's own settings do not apply to it, and the usual flush
   * is one statement. Without them a row another session holds locked (an
   * open psql transaction) stalled the flush for as long as it was held.
   */
  lockTimeoutMs?: number;
  statementTimeoutMs?: number;
}

/** A batch (or part of one) set aside in this transaction. */
export interface DeadLetterSummary {
  batchId: string;
  kind: DeadLetter["kind"];
  reason: DeadLetterReason;
  sqlState?: string;
  rows: number;
  detail: string;
}

export interface ApplyResult {
  /** Batches written by this call. */
  applied: string[];
  /** Batches skipped because an earlier transaction already applied them. */
  duplicates: string[];
  entityRows: number;
  dailyRows: number;
  /** What this transaction set aside (spend_dead_letter). */
  deadLetters: DeadLetterSummary[];
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
 *  3. the remaining rows are merged and upserted, keys sorted, all tables in
 *     one statement (with `isolate`, the rows PostgreSQL refuses are found
 *     and set aside instead, see isolate.ts);
 *     with rows merged ahead, 1 to 3 are one statement, and the rows are
 *     merged again here only if a batch turns out to have been applied before;
 *  4. rows set aside (refused before or by PostgreSQL) become dead letters.
 * All of it commits or none of it does.
 */
export async function applyBatches(
  tx: Tx,
  batches: readonly BatchToApply[],
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  const ids = batches.map((b) => b.batchId);
  let fresh: Set<string>;
  // Lock and statement timeouts go first, in a statement of their own, with
  // the idle timeout; without them the idle timeout rides on the first statement.
  let idleTimeoutMs = opts.idleInTransactionTimeoutMs;
  if (opts.lockTimeoutMs !== undefined || opts.statementTimeoutMs !== undefined) {
    await setTimeouts(tx, idleTimeoutMs, opts.lockTimeoutMs, opts.statementTimeoutMs);
    idleTimeoutMs = undefined;
  }
  // The usual case in one statement: fence, batch ids and the rows merged
  // ahead, written only if every batch is fresh (apply-statement.ts).
  let wrote = false;
  const premerged = opts.isolate === true ? undefined : opts.premerged;
  if (premerged !== undefined && premergedFor(premerged, batches, opts.retentionDays)) {
    const r = await applyInOne(tx, premerged.writes, ids, {
      ...(opts.fence !== undefined ? { fence: opts.fence } : {}),
      ...(idleTimeoutMs !== undefined ? { idleInTransactionTimeoutMs: idleTimeoutMs } : {}),
    });
    if (!r.fencePassed && opts.fence !== undefined) await fencedOff(tx, opts.fence);
    fresh = new Set(r.fresh);
    wrote = r.wrote;
  } else {
    if (idleTimeoutMs !== undefined) await setTimeouts(tx, idleTimeoutMs, undefined, undefined);
    if (opts.fence !== undefined) await checkFence(tx, opts.fence);
    fresh = await recordBatchIds(tx, ids, opts.fence);
  }
  // A batch id twice in one call is applied once: the first copy wins.
  const applied: string[] = [];
  const duplicates: string[] = [];
  const todo: BatchToApply[] = [];
  for (const b of batches) {
    if (fresh.delete(b.batchId)) {
      applied.push(b.batchId);
      todo.push(b);
    } else duplicates.push(b.batchId);
  }

  const letters: DeadLetter[] = [];
  for (const b of todo) {
    const r = b.refused;
    if (r !== undefined)
      letters.push({
        batchId: b.batchId,
        kind: r.kind,
        reason: r.reason,
        detail: r.detail,
        payload: r.payload,
        rows: r.rows,
      });
  }

  let entityRows: number;
  let dailyRows: number;
  if (opts.isolate === true) {
    const iso = await applyIsolating(tx, todo, {
      ...(opts.maxIsolationStatements !== undefined
        ? { maxStatements: opts.maxIsolationStatements }
        : {}),
      ...(opts.beforeStatement !== undefined ? { beforeStatement: opts.beforeStatement } : {}),
    });
    entityRows = iso.entityRows;
    dailyRows = iso.dailyRows;
    letters.push(...lettersOf(iso.refused, letters));
    if (opts.retentionDays !== undefined)
      await upsertMerged(tx, mergeRows([], []), opts.retentionDays);
  } else if (wrote && premerged !== undefined) {
    entityRows = premerged.merged.entityRowCount;
    dailyRows = premerged.merged.dailyRowCount;
  } else {
    const merged = mergeRows(
      todo.map((b) => b.entity ?? []),
      todo.map((b) => b.daily ?? []),
    );
    await upsertMerged(tx, merged, opts.retentionDays);
    entityRows = merged.entityRowCount;
    dailyRows = merged.dailyRowCount;
  }
  await insertDeadLetters(tx, opts.fence?.partition ?? opts.partition ?? "", letters);
  return {
    applied,
    duplicates,
    entityRows,
    dailyRows,
    deadLetters: letters.map((l) => ({
      batchId: l.batchId,
      kind: l.kind,
      reason: l.reason,
      rows: l.rows,
      detail: l.detail,
      ...(l.sqlState !== undefined ? { sqlState: l.sqlState } : {}),
    })),
  };
}

/**
 * Whether rows were merged ahead from exactly these batches, in this order,
 * with the same retention: then they are what this call writes if every
 * batch is fresh (a batch applied before must not be added again).
 */
function premergedFor(
  p: Premerged,
  batches: readonly BatchToApply[],
  retentionDays: number | undefined,
): boolean {
  if (p.retentionDays !== retentionDays || p.batchIds.length !== batches.length) return false;
  return batches.every((b, i) => b.batchId === p.batchIds[i]);
}

/** Records batch ids; returns those recorded now (the others were applied before). */
async function recordBatchIds(
  tx: Tx,
  ids: readonly string[],
  fence: Fence | undefined,
): Promise<Set<string>> {
  const fresh = new Set<string>();
  if (ids.length === 0) return fresh;
  const inserted = await tx.$queryRawUnsafe<{ batch_id: string }[]>(
    batchIdsSql("$1::text[]", "$2::int8"),
    ids,
    fence?.token.toString() ?? null,
  );
  for (const r of inserted) fresh.add(r.batch_id);
  return fresh;
}

/** PostgreSQL ends the session if the transaction then sits idle this long (locks held). */
/** The transaction's idle, lock and statement timeouts (those given), in one round trip. */
async function setTimeouts(
  tx: Tx,
  idleMs: number | undefined,
  lockMs: number | undefined,
  statementMs: number | undefined,
): Promise<void> {
  const settings: [string, number][] = [];
  if (idleMs !== undefined) settings.push(["idle_in_transaction_session_timeout", idleMs]);
  if (lockMs !== undefined) settings.push(["lock_timeout", lockMs]);
  if (statementMs !== undefined) settings.push(["statement_timeout", statementMs]);
  await tx.$queryRawUnsafe(
    `SELECT ${settings.map((_, i) => `set_config($${2 * i + 1}, $${2 * i + 2}, true)`).join(", ")}`,
    ...settings.flatMap(([name, ms]) => [name, idleTimeoutSetting(ms)]),
  );
}

/**
 * One dead letter per batch and kind for the rows PostgreSQL refused
 * (spend_dead_letter keeps one per batch and kind). Rows of a batch that
 * already has one (rows refused before, e.g. a lone surrogate) join it.
 */
function lettersOf(refused: readonly RefusedRow[], existing: readonly DeadLetter[]): DeadLetter[] {
  const out = new Map<string, DeadLetter>();
  for (const r of refused) {
    const at = `${r.batchId}\u0000${r.kind}`;
    let letter = out.get(at) ?? existing.find((l) => l.batchId === r.batchId && l.kind === r.kind);
    const why = `PostgreSQL refused the rows: ${r.refusal.sqlState} ${r.refusal.message}`;
    if (letter === undefined) {
      letter = {
        batchId: r.batchId,
        kind: r.kind,
        reason: "database",
        sqlState: r.refusal.sqlState,
        detail: why,
        payload: [],
        rows: 0,
      };
      out.set(at, letter);
    } else if (letter.sqlState === undefined) {
      letter.sqlState = r.refusal.sqlState;
      letter.detail = `${letter.detail}; ${why}`;
    } else if (!letter.detail.includes(why) && letter.detail.length < 1_000) {
      // Each distinct reason once (a budget spent, a second constraint), not once a row.
      letter.detail = `${letter.detail}; ${why}`;
    }
    (letter.payload as unknown[]).push(r.row);
    letter.rows++;
  }
  return [...out.values()].filter((l) => !existing.includes(l));
}

async function checkFence(tx: Tx, fence: Fence): Promise<void> {
  const rows = await tx.$queryRawUnsafe<unknown[]>(
    fenceSql("$1", "$2::int8", "$3"),
    fence.partition,
    fence.token.toString(),
    fence.holder,
  );
  if (rows.length === 0) await fencedOff(tx, fence);
}

/** Throws FencedOffError, with the newer token that committed. */
async function fencedOff(tx: Tx, fence: Fence): Promise<never> {
  const current = await tx.$queryRawUnsafe<{ token: string }[]>(
    `SELECT token::text FROM spend_flush_fence WHERE partition = $1`,
    fence.partition,
  );
  throw new FencedOffError(fence.token, BigInt(current[0]?.token ?? "0"));
}

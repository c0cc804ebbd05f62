import type { DailyRow, EntityRow } from "../contract/spend-batch.js";
import type { MergedRows } from "./merge.js";
import { ONLY_IF_ALL_FRESH } from "./apply-statement.js";
import { upsertParts, type UpsertParts } from "./upsert.js";

/**
 * A set of batches merged and turned into their upsert statement before
 * their transaction opens, so a flush can do this CPU work while PostgreSQL
 * is still writing the previous transaction. Built for every batch of the
 * set: applyBatches uses it only when the set turns out to be all fresh
 * (no batch applied before), which it is unless a job was delivered again.
 */
export interface Premerged {
  /** The batch ids it was built from, in order: applyBatches checks they are the ones it applies. */
  readonly batchIds: readonly string[];
  readonly merged: MergedRows;
  /** Its writes, each only if every batch turns out fresh (apply-statement.ts). */
  readonly writes: UpsertParts;
  /** The retention applyBatches must have been asked for (the statement folds its delete in). */
  readonly retentionDays: number | undefined;
}

/** A batch as premerge reads it (applyBatches' BatchToApply is one). */
export interface PremergeBatch {
  batchId: string;
  entity?: readonly EntityRow[];
  daily?: readonly DailyRow[];
}

/**
 * `merged`: the rows of exactly these batches, merged (mergeRows, or a
 * RowMerger fed each batch's rows as it was taken).
 */
export function premerge(
  batches: readonly PremergeBatch[],
  merged: MergedRows,
  retentionDays?: number,
): Premerged {
  return {
    batchIds: batches.map((b) => b.batchId),
    merged,
    writes: upsertParts(merged, retentionDays, ONLY_IF_ALL_FRESH),
    retentionDays,
  };
}

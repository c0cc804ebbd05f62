import { mergeRows } from "./merge.js";
import type { DailyRow, EntityRow } from "../contract/spend-batch.js";
import type { Tx } from "./prisma.js";
import { storageRefusal, type StorageRefusal } from "./retryable.js";
import { upsertMerged } from "./upsert.js";

/**
 * Finds the rows PostgreSQL refuses in a set of batches, inside one
 * transaction, and applies all the others.
 *
 * Used only after the whole set's upsert failed with a refusal caused by the
 * rows (retryable.ts's storageRefusal: an index row too large, a NUL, two
 * rows PostgreSQL sees as one): no retry fixes that, and without isolation
 * the same batches would fail every flush, holding back every batch queued
 * behind them. Subsets are tried under a savepoint, halving a failing one,
 * first by batch and then by row within a batch, until each refused row is
 * alone: k refused rows among n cost O(k log n) statements. Everything still
 * commits in the one transaction, so a batch is applied but for its refused
 * rows, which the caller writes as a dead letter in the same transaction.
 */

export interface IsolatedBatch {
  batchId: string;
  entity?: readonly EntityRow[];
  daily?: readonly DailyRow[];
}

export interface RefusedRow {
  batchId: string;
  kind: "entity" | "daily";
  row: EntityRow | DailyRow;
  refusal: StorageRefusal;
}

export interface IsolationResult {
  refused: RefusedRow[];
  /** Rows written (as merged per statement). */
  entityRows: number;
  dailyRows: number;
  /** Statements tried. */
  statements: number;
}

export interface IsolationOptions {
  /**
   * Most statements one isolation may try. A subset still failing when it is
   * spent is set aside whole (every row kept, replayable), so a flush of
   * pathological batches still ends in bounded time. Default 2 000.
   */
  maxStatements?: number;
  /** Called before each statement (the flush checks its lease there). */
  beforeStatement?: () => void;
}

export async function applyIsolating(
  tx: Tx,
  batches: readonly IsolatedBatch[],
  opts: IsolationOptions = {},
): Promise<IsolationResult> {
  const maxStatements = opts.maxStatements ?? 2_000;
  const result: IsolationResult = { refused: [], entityRows: 0, dailyRows: 0, statements: 0 };

  const attempt = async (
    entity: readonly (readonly EntityRow[])[],
    daily: readonly (readonly DailyRow[])[],
  ): Promise<StorageRefusal | undefined> => {
    opts.beforeStatement?.();
    result.statements++;
    const merged = mergeRows(entity, daily);
    await tx.$executeRawUnsafe("SAVEPOINT isolate");
    try {
      await upsertMerged(tx, merged);
    } catch (err) {
      const refusal = storageRefusal(err);
      if (refusal === undefined) throw err;
      await tx.$executeRawUnsafe("ROLLBACK TO SAVEPOINT isolate");
      return refusal;
    }
    await tx.$executeRawUnsafe("RELEASE SAVEPOINT isolate");
    result.entityRows += merged.entityRowCount;
    result.dailyRows += merged.dailyRowCount;
    return undefined;
  };

  const setAside = (
    b: IsolatedBatch,
    rows: readonly (EntityRow | DailyRow)[],
    refusal: StorageRefusal,
  ): void => {
    const kind = b.entity !== undefined && b.entity.length > 0 ? "entity" : "daily";
    for (const row of rows) result.refused.push({ batchId: b.batchId, kind, row, refusal });
  };

  const spent = (): boolean => result.statements >= maxStatements;
  const exhausted = (r: StorageRefusal): StorageRefusal => ({
    ...r,
    message: `${r.message} (set aside with its neighbours: the isolation budget of ${maxStatements} statements was spent)`,
  });

  const rowsLevel = async (
    b: IsolatedBatch,
    rows: readonly (EntityRow | DailyRow)[],
    refusal: StorageRefusal,
  ): Promise<void> => {
    if (rows.length <= 1) return setAside(b, rows, refusal);
    if (spent()) return setAside(b, rows, exhausted(refusal));
    const mid = rows.length >> 1;
    for (const half of [rows.slice(0, mid), rows.slice(mid)]) {
      const r =
        b.entity !== undefined && b.entity.length > 0
          ? await attempt([half as EntityRow[]], [])
          : await attempt([], [half as DailyRow[]]);
      if (r !== undefined) await rowsLevel(b, half, r);
    }
  };

  const batchesLevel = async (
    bs: readonly IsolatedBatch[],
    refusal: StorageRefusal,
  ): Promise<void> => {
    if (bs.length === 1) {
      const b = bs[0] as IsolatedBatch;
      return rowsLevel(b, [...(b.entity ?? []), ...(b.daily ?? [])], refusal);
    }
    if (spent()) {
      for (const b of bs)
        setAside(b, [...(b.entity ?? []), ...(b.daily ?? [])], exhausted(refusal));
      return;
    }
    const mid = bs.length >> 1;
    for (const half of [bs.slice(0, mid), bs.slice(mid)]) {
      const r = await attempt(
        half.map((b) => b.entity ?? []),
        half.map((b) => b.daily ?? []),
      );
      if (r !== undefined) await batchesLevel(half, r);
    }
  };

  // One kind of rows per batch from here on: a producer seals entity and
  // daily rows into separate jobs, but a caller may hand over both at once.
  const nonEmpty: IsolatedBatch[] = [];
  for (const b of batches) {
    if (b.entity !== undefined && b.entity.length > 0)
      nonEmpty.push({ batchId: b.batchId, entity: b.entity });
    if (b.daily !== undefined && b.daily.length > 0)
      nonEmpty.push({ batchId: b.batchId, daily: b.daily });
  }
  if (nonEmpty.length === 0) return result;
  const first = await attempt(
    nonEmpty.map((b) => b.entity ?? []),
    nonEmpty.map((b) => b.daily ?? []),
  );
  if (first !== undefined) await batchesLevel(nonEmpty, first);
  return result;
}

import { textArrayLiteral } from "./pg-array.js";
import type { Tx } from "./prisma.js";
import { Statement, type UpsertParts } from "./upsert.js";

/**
 * A transaction's whole work in ONE statement, for the flush's usual case:
 * the session's idle timeout set, the fencing token checked and recorded,
 * the batch ids recorded, and the rows merged ahead written, but only if
 * the fence passed and every batch id was new. Through Prisma each statement
 * is a round trip during which PostgreSQL waits on a client whose event loop
 * is busy preparing the next transaction; six of them per transaction left
 * PostgreSQL idle a third of a backlog's drain. The fence and batch-id writes
 * run first (the outer query reads them), then the row writes in the order
 * the statement lists them: the lock order every writer shares, as when they
 * were separate statements. Its parts are built here once, and applyBatches
 * runs them as separate statements when it cannot use the one.
 */

/**
 * The fencing token recorded for the partition only if it is newer than the
 * one there, or equal from the same holder (Redis may have reset its
 * counter); returns a row only then. Arguments are SQL expressions.
 */
export function fenceSql(partition: string, token: string, holder: string): string {
  return `INSERT INTO spend_flush_fence AS f (partition, token, holder, updated_at)
     VALUES (${partition}, ${token}, ${holder}, now())
     ON CONFLICT (partition) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder, updated_at = now()
       WHERE f.token < EXCLUDED.token OR (f.token = EXCLUDED.token AND f.holder = EXCLUDED.holder)
     RETURNING token`;
}

/**
 * Records batch ids (a text[] expression), returning those new; `where`
 * (e.g. " WHERE EXISTS (...)") can keep them all out.
 */
export function batchIdsSql(ids: string, token: string, where = ""): string {
  return `INSERT INTO spend_applied_batch (batch_id, fence)
     SELECT id, ${token} FROM unnest(${ids}) AS t(id)${where}
     ON CONFLICT (batch_id) DO NOTHING
     RETURNING batch_id`;
}

/** Sets the transaction's idle timeout to `setting` (an expression, see idleTimeoutSetting). */
export function setIdleTimeoutSql(setting: string): string {
  return `SELECT set_config('idle_in_transaction_session_timeout', ${setting}, true)`;
}

export function idleTimeoutSetting(ms: number): string {
  return `${Math.ceil(ms)}ms`;
}

/** The condition the row writes of a statement built for `applyInOne` are filtered by. */
export const ONLY_IF_ALL_FRESH = "(SELECT ok FROM gate)";

/** A flush's fencing token, checked against the newest that committed (spend_flush_fence). */
export interface Fence {
  partition: string;
  token: bigint;
  /** The lease's own token: an equal fence passes only for the same lease (Redis may have reset its counter). */
  holder: string;
}

export interface OneStatementResult {
  /** False when a newer token has committed: nothing was written, the caller must roll back. */
  fencePassed: boolean;
  /** Batch ids recorded now (the others were applied before), in no particular order. */
  fresh: string[];
  /** Whether the rows were written: every batch id was fresh (and the fence passed). */
  wrote: boolean;
}

/**
 * `writes`: upsertParts built with ONLY_IF_ALL_FRESH, for exactly `batchIds`.
 * Without a fence, the batch ids and rows are written unfenced.
 */
export async function applyInOne(
  tx: Tx,
  writes: UpsertParts,
  batchIds: readonly string[],
  opts: { fence?: Fence; idleInTransactionTimeoutMs?: number },
): Promise<OneStatementResult> {
  const st = new Statement([...writes.params]);
  const ctes: string[] = [];
  const outputs: string[] = [];
  if (opts.idleInTransactionTimeoutMs !== undefined) {
    const timeout = st.param(idleTimeoutSetting(opts.idleInTransactionTimeoutMs), "text");
    ctes.push(`session AS (${setIdleTimeoutSql(timeout)} AS v)`);
    outputs.push("(SELECT v FROM session) AS idle_timeout");
  }
  const fence = opts.fence;
  let fenceToken = "NULL::int8";
  let fenced = "";
  if (fence !== undefined) {
    const partition = st.param(fence.partition, "text");
    fenceToken = st.param(fence.token.toString(), "int8");
    const holder = st.param(fence.holder, "text");
    ctes.push(`fence AS (${fenceSql(partition, fenceToken, holder)})`);
    outputs.unshift("(SELECT count(*) FROM fence)::int AS fence_passed");
    fenced = " WHERE EXISTS (SELECT 1 FROM fence)";
  }
  const ids = st.param(textArrayLiteral(batchIds), "text[]");
  const count = st.param(String(batchIds.length), "int");
  ctes.push(
    `fresh AS (${batchIdsSql(ids, fenceToken, fenced)})`,
    // A batch id twice in one call counts once: the rows then wait for the caller's own merge.
    `gate AS (SELECT (SELECT count(*) FROM fresh) = ${count} AS ok)`,
    ...writes.ctes,
  );
  outputs.push(
    "(SELECT coalesce(json_agg(batch_id), '[]'::json)::text FROM fresh) AS fresh",
    "(SELECT ok FROM gate) AS wrote",
  );
  const rows = await tx.$queryRawUnsafe<{ fence_passed?: number; fresh: string; wrote: boolean }[]>(
    `WITH ${ctes.join(",\n")}\nSELECT ${outputs.join(", ")}`,
    ...st.params,
  );
  const row = rows[0];
  if (row === undefined) throw new Error("the flush statement returned no row");
  const fencePassed = fence === undefined || row.fence_passed === 1;
  return {
    fencePassed,
    fresh: JSON.parse(row.fresh) as string[],
    wrote: fencePassed && row.wrote,
  };
}

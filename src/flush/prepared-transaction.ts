import type { Job } from "bullmq";
import type { BatchToApply } from "../persist/apply-batches.js";
import { storable } from "../persist/dead-letters.js";
import { RowMerger } from "../persist/merge.js";
import { premerge, type Premerged } from "../persist/premerge.js";
import type { SpendDrain, Taken, TakeLimits } from "./spend-drain.js";

/**
 * One flush transaction's work, done before the transaction opens: its jobs
 * taken (active under the lease's token), validated and merged to one row
 * per database row as they arrive, turned into batches, and the merged rows
 * written out as the upsert statement. The flush prepares the next transaction this way while
 * PostgreSQL writes the current one.
 */
export interface PreparedTransaction {
  readonly taken: Taken;
  readonly batches: readonly BatchToApply[];
  readonly premerged: Premerged;
  /** Jobs taken, valid and poison: what the transaction acknowledges once it commits. */
  readonly jobs: readonly Job[];
  /** When taking its jobs began (performance.now()). */
  readonly startedAt: number;
}

export interface PrepareOptions {
  limits: TakeLimits;
  token: string;
  retentionDays?: number;
  /** Hears of each job the moment it is taken (the flush's set of jobs it must give back on failure). */
  onTaken: (job: Job) => void;
}

export async function prepareTransaction(
  drain: SpendDrain,
  opts: PrepareOptions,
): Promise<PreparedTransaction> {
  const startedAt = performance.now();
  // Rows are merged as their jobs arrive: the take stops on what the
  // transaction will write, and the merge is done by the time it has.
  const merger = new RowMerger();
  const taken = await drain.take(opts.limits, opts.token, opts.onTaken, merger);
  const batches = toBatches(taken);
  return {
    taken,
    batches,
    premerged: premerge(batches, merger.finish(), opts.retentionDays),
    jobs: [...taken.jobs.map((t) => t.job), ...taken.poison.map((p) => p.job)],
    startedAt,
  };
}

/**
 * The batches applyBatches takes: each valid job's rows, with its ill-formed
 * rows set aside; each poison job a dead letter holding its whole payload.
 */
function toBatches(taken: Taken): BatchToApply[] {
  const batches: BatchToApply[] = taken.jobs.map((t): BatchToApply => {
    const refused =
      t.illFormed !== undefined
        ? {
            refused: {
              kind: t.kind,
              reason: "invalid_unicode" as const,
              detail: t.illFormed.detail,
              payload: t.illFormed.rows,
              rows: t.illFormed.rows.length,
            },
          }
        : {};
    return t.kind === "entity"
      ? { batchId: t.data.batchId, entity: t.data.rows, ...refused }
      : { batchId: t.data.batchId, daily: t.data.rows, ...refused };
  });
  for (const p of taken.poison)
    batches.push({
      batchId: storable(p.job.id ?? `${p.queue}:${p.job.timestamp}`),
      refused: {
        kind: "job",
        reason: "malformed",
        detail: `${p.queue} job: ${p.reason}`,
        payload: p.job.data,
        rows: 0,
      },
    });
  return batches;
}

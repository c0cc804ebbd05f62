import { decodeEntityRows, sealedDailyRows } from "../contract/row-text.js";
import type { SealedBatch, SpendSink } from "../contract/spend-sink.js";
import type { SpendMetrics } from "../observe/metrics.js";
import { persistMetrics } from "./persist-metrics.js";
import { applyBatches } from "./apply-batches.js";
import type { Db } from "./prisma.js";
import { retryReason } from "./retryable.js";

/**
 * The buffer off: each producer writes its own aggregates to PostgreSQL, the
 * mode the seed replaces. Kept for small deployments and as the benchmark's
 * comparison. Still exactly-once per batch (spend_applied_batch), but with
 * many instances the writers contend for the same rows.
 */
export class DirectSink implements SpendSink {
  constructor(
    private readonly db: Db,
    private readonly opts: {
      transactionTimeoutMs: number;
      /** Counts retryable failures (spend_transaction_retries_total{path="direct"}). */
      metrics?: SpendMetrics;
    },
  ) {}

  async write(b: SealedBatch): Promise<void> {
    const batch =
      b.kind === "entity"
        ? { batchId: b.batchId, entity: decodeEntityRows(b.rowText) }
        : { batchId: b.batchId, daily: sealedDailyRows(b) };
    try {
      await this.db.$transaction((tx) => applyBatches(tx, [batch]), {
        timeout: this.opts.transactionTimeoutMs,
        maxWait: this.opts.transactionTimeoutMs,
      });
    } catch (err) {
      // The producer keeps the batch and sends it again (same id): a retry.
      const reason = retryReason(err);
      if (reason !== undefined)
        if (this.opts.metrics !== undefined)
          persistMetrics(this.opts.metrics, "direct").transactionRetries.inc({
            reason,
            path: "direct",
          });
      throw err;
    }
  }

  async close(): Promise<void> {
    // The Db is shared and owned by whoever created it.
  }
}

import type { SealedBatch, SpendSink } from "../contract/spend-sink.js";
import type { Logger } from "../observe/logger.js";
import { withTimeout, type Clock } from "./clock.js";
import type { ProducerMetrics } from "./producer-metrics.js";

/**
 * Sealed batches on their way to the sink: sent in order, one sender at a
 * time, each send bounded by a timeout. A batch that fails stays first in
 * line with its id, and is sent again (same id: the sink makes a repeat
 * harmless), so delivery is at least once and a batch applies once.
 */
export class Delivery {
  private readonly batches: SealedBatch[] = [];
  private rows = 0;
  private flushRows = 0;
  private failures = 0;
  private sending: Promise<void> | undefined;

  constructor(
    private readonly sink: SpendSink,
    /**
     * Longest one send may take before it counts as failed and is retried: a
     * sink waiting for a connection that never comes must not stall the producer.
     */
    private readonly sendTimeoutMs: number,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly stats: ProducerMetrics,
  ) {}

  /** Batches not accepted by the sink yet (the first may be in flight). */
  get pending(): readonly SealedBatch[] {
    return this.batches;
  }

  /** Their rows (daily facts counted as facts). */
  get pendingRows(): number {
    return this.rows;
  }

  /** The rows the flush will write for them (SealedBatch.flushRows). */
  get pendingFlushRows(): number {
    return this.flushRows;
  }

  /** True while a send runs. */
  get busy(): boolean {
    return this.sending !== undefined;
  }

  /** Sends that failed in a row (0 once one succeeds). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  queue(batch: SealedBatch): void {
    this.batches.push(batch);
    this.rows += batch.rowCount;
    this.flushRows += batch.flushRows;
  }

  /** Rows of the pending batches of one kind. */
  rowsOf(kind: SealedBatch["kind"]): number {
    let n = 0;
    for (const b of this.batches) if (b.kind === kind) n += b.rowCount;
    return n;
  }

  /**
   * Starts sending the pending batches unless a send runs already (it takes
   * what is queued meanwhile), or the last one failed: the seal timer's
   * backoff retries then, rather than every caller of kick(). A failure is
   * kept, counted and retried as sendAll's is; the caller does not wait.
   */
  kick(): void {
    if (this.sending !== undefined || this.batches.length === 0 || this.failures > 0) return;
    void this.sendAll().catch(() => undefined);
  }

  /**
   * Sends every pending batch, in order. Waits for a send already running
   * first: batches leave in order and are never sent twice at once. Rejects if
   * a batch could not be sent (it stays pending).
   */
  async sendAll(): Promise<void> {
    while (this.sending !== undefined) await this.sending.catch(() => undefined);
    if (this.batches.length === 0) return;
    this.sending = this.sendInOrder();
    try {
      await this.sending;
    } finally {
      this.sending = undefined;
    }
  }

  private async sendInOrder(): Promise<void> {
    while (this.batches.length > 0) {
      const batch = this.batches[0] as SealedBatch;
      try {
        await withTimeout(this.clock, this.sink.write(batch), this.sendTimeoutMs, "send");
      } catch (err) {
        this.stats.enqueueFailures.inc();
        this.failures++;
        // One line per outage, not one per retry.
        if (this.failures === 1)
          this.log.warn(
            { err: (err as Error).message, batchId: batch.batchId },
            "spend batch not delivered; keeping it and retrying",
          );
        throw err;
      }
      this.batches.shift();
      this.rows -= batch.rowCount;
      this.flushRows -= batch.flushRows;
      if (this.failures > 0) {
        this.log.info({ failures: this.failures }, "spend delivery recovered");
        this.failures = 0;
      }
    }
  }
}

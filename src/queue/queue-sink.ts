import type { SealedBatch, SpendSink } from "../produce/spend-sink.js";
import { DAILY_JOB, ENTITY_JOB, type SpendQueues } from "./spend-queues.js";

/**
 * Sends batches to the BullMQ spend queues. The batch id is the job id, so
 * re-adding a batch whose first add timed out after all is a no-op while the
 * job exists; once it has been flushed and removed, PostgreSQL's
 * spend_applied_batch table makes the copy harmless.
 */
export class QueueSink implements SpendSink {
  constructor(
    private readonly queues: SpendQueues,
    private readonly ownsQueues = true,
  ) {}

  async write(b: SealedBatch): Promise<void> {
    const header = {
      v: 1 as const,
      batchId: b.batchId,
      producerId: b.producerId,
      sealedAt: b.sealedAt,
    };
    if (b.kind === "entity") {
      await this.queues.entity.add(ENTITY_JOB, { ...header, rows: b.rows }, { jobId: b.batchId });
    } else {
      await this.queues.daily.add(DAILY_JOB, { ...header, rows: b.rows }, { jobId: b.batchId });
    }
  }

  async close(): Promise<void> {
    if (this.ownsQueues) await this.queues.close();
  }
}

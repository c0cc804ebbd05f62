import type { SealedBatch, SpendSink } from "../produce/spend-sink.js";
import { backlogAgeMs } from "./backlog.js";
import { DAILY_JOB, ENTITY_JOB, type SpendQueues } from "./spend-queues.js";

/**
 * Sends batches to the BullMQ spend queues. The batch id is the job id, so
 * re-adding a batch whose first add timed out after all is a no-op while the
 * job exists; once it has been flushed and removed, PostgreSQL's
 * spend_applied_batch table makes the copy harmless.
 */
export class QueueSink implements SpendSink {
  private readonly partitions: readonly SpendQueues[];

  /** One SpendQueues per flush partition, indexed by partition (just one when unpartitioned). */
  constructor(
    queues: SpendQueues | readonly SpendQueues[],
    private readonly ownsQueues = true,
  ) {
    this.partitions = Array.isArray(queues) ? queues : [queues as SpendQueues];
  }

  async write(b: SealedBatch): Promise<void> {
    const queues = this.partitions[b.partition];
    if (queues === undefined) {
      throw new Error(
        `batch for partition ${b.partition}, but this sink has ${this.partitions.length}`,
      );
    }
    const header = {
      v: 1 as const,
      batchId: b.batchId,
      producerId: b.producerId,
      sealedAt: b.sealedAt,
      partitions: b.partitions,
    };
    if (b.kind === "entity") {
      await queues.entity.add(ENTITY_JOB, { ...header, rows: b.rows }, { jobId: b.batchId });
    } else {
      await queues.daily.add(DAILY_JOB, { ...header, rows: b.rows }, { jobId: b.batchId });
    }
  }

  backlogAgeMs(): Promise<number> {
    return backlogAgeMs(this.partitions);
  }

  async close(): Promise<void> {
    if (this.ownsQueues) await Promise.all(this.partitions.map((q) => q.close()));
  }
}

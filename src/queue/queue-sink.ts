import type { PipelineLoad, SealedBatch, SpendSink } from "../contract/spend-sink.js";
import { pipelineLoad } from "./backlog.js";
import { groupDailyRows, type DailyJobPayload } from "../contract/spend-batch.js";
import { DAILY_JOB, ENTITY_JOB, type SpendQueues } from "./spend-queues.js";

export interface QueueSinkOptions {
  /** Close the queues with the sink (default true). */
  ownsQueues?: boolean;
  /** Daily job format (spend_buffer_settings.daily_job_format); default 2. */
  dailyJobFormat?: 1 | 2;
}

/**
 * Sends batches to the BullMQ spend queues. The batch id is the job id, so
 * re-adding a batch whose first add timed out after all is a no-op while the
 * job exists; once it has been flushed and removed, PostgreSQL's
 * spend_applied_batch table makes the copy harmless.
 */
export class QueueSink implements SpendSink {
  /** One SpendQueues per flush partition, indexed by partition. */
  readonly queues: readonly SpendQueues[];

  private readonly ownsQueues: boolean;
  private readonly dailyJobFormat: 1 | 2;

  /** One SpendQueues per flush partition, indexed by partition (just one when unpartitioned). */
  constructor(queues: SpendQueues | readonly SpendQueues[], opts: QueueSinkOptions = {}) {
    this.queues = Array.isArray(queues) ? queues : [queues as SpendQueues];
    this.ownsQueues = opts.ownsQueues ?? true;
    this.dailyJobFormat = opts.dailyJobFormat ?? 2;
  }

  async write(b: SealedBatch): Promise<void> {
    const queues = this.queues[b.partition];
    if (queues === undefined) {
      throw new Error(
        `batch for partition ${b.partition}, but this sink has ${this.queues.length}`,
      );
    }
    const header = {
      batchId: b.batchId,
      producerId: b.producerId,
      sealedAt: b.sealedAt,
      partitions: b.partitions,
    };
    if (b.kind === "entity") {
      await queues.entity.add(ENTITY_JOB, { v: 1, ...header, rows: b.rows }, { jobId: b.batchId });
    } else {
      const data: DailyJobPayload =
        this.dailyJobFormat === 2
          ? { v: 2, ...header, groups: groupDailyRows(b.rows) }
          : { v: 1, ...header, rows: b.rows };
      await queues.daily.add(DAILY_JOB, data, { jobId: b.batchId });
    }
  }

  pipelineLoad(producerId: string, heldRows: number, freshMs: number): Promise<PipelineLoad> {
    return pipelineLoad(this.queues, producerId, heldRows, freshMs);
  }

  async close(): Promise<void> {
    if (this.ownsQueues) await Promise.all(this.queues.map((q) => q.close()));
  }
}

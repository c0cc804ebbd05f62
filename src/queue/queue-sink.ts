import type { PipelineLoad, SealedBatch, SpendSink } from "../contract/spend-sink.js";
import { pipelineLoad } from "./backlog.js";
import { decodeDailyRows, decodeEntityRows } from "../contract/row-text.js";
import {
  groupDailyRows,
  type DailyJobPayload,
  type EntityJobPayload,
  type SpendJobV3,
} from "../contract/spend-batch.js";
import { DAILY_JOB, ENTITY_JOB, type SpendQueues } from "./spend-queues.js";

export interface QueueSinkOptions {
  /** Close the queues with the sink (default true). */
  ownsQueues?: boolean;
  /** Job format (spend_buffer_settings.job_format); default 3. */
  jobFormat?: JobFormat;
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
  private readonly jobFormat: JobFormat;

  /** One SpendQueues per flush partition, indexed by partition (just one when unpartitioned). */
  constructor(queues: SpendQueues | readonly SpendQueues[], opts: QueueSinkOptions = {}) {
    this.queues = Array.isArray(queues) ? queues : [queues as SpendQueues];
    this.ownsQueues = opts.ownsQueues ?? true;
    this.jobFormat = opts.jobFormat ?? 3;
  }

  async write(b: SealedBatch): Promise<void> {
    const queues = this.queues[b.partition];
    if (queues === undefined) {
      throw new Error(
        `batch for partition ${b.partition}, but this sink has ${this.queues.length}`,
      );
    }
    if (b.kind === "entity")
      await queues.entity.add(ENTITY_JOB, entityJobPayload(b, this.jobFormat), {
        jobId: b.batchId,
      });
    else
      await queues.daily.add(DAILY_JOB, dailyJobPayload(b, this.jobFormat), { jobId: b.batchId });
  }

  pipelineLoad(producerId: string, heldRows: number, freshMs: number): Promise<PipelineLoad> {
    return pipelineLoad(this.queues, producerId, heldRows, freshMs);
  }

  async close(): Promise<void> {
    if (this.ownsQueues) await Promise.all(this.queues.map((q) => q.close()));
  }
}

/** How producers write spend jobs (spend_buffer_settings.job_format). */
export type JobFormat = 1 | 2 | 3;

/**
 * A batch's job payload in `format`: 3 carries the batch's row text as it
 * is (a scan for JSON, nothing to build); 1 and 2, for workers older than
 * format 3 during an upgrade, read the rows back from it first (entity jobs
 * have no format 2: they are written as 1).
 */
export function jobPayload(b: SealedBatch, format: JobFormat): EntityJobPayload | DailyJobPayload {
  return b.kind === "entity" ? entityJobPayload(b, format) : dailyJobPayload(b, format);
}

function entityJobPayload(b: SealedBatch, format: JobFormat): EntityJobPayload {
  if (format === 3) return v3(b);
  return { v: 1, ...header(b), rows: decodeEntityRows(b.rowText) };
}

function dailyJobPayload(b: SealedBatch, format: JobFormat): DailyJobPayload {
  if (format === 3) return v3(b);
  const rows = decodeDailyRows(b.rowText);
  return format === 2
    ? { v: 2, ...header(b), groups: groupDailyRows(rows) }
    : { v: 1, ...header(b), rows };
}

function v3(b: SealedBatch): SpendJobV3 {
  return { v: 3, kind: b.kind, ...header(b), rowCount: b.rowCount, rowText: b.rowText };
}

function header(b: SealedBatch): {
  batchId: string;
  producerId: string;
  sealedAt: number;
  partitions: number;
} {
  return {
    batchId: b.batchId,
    producerId: b.producerId,
    sealedAt: b.sealedAt,
    partitions: b.partitions,
  };
}

import type { PipelineLoad, SealedBatch, SpendSink } from "../contract/spend-sink.js";
import { pipelineLoad } from "./backlog.js";
import { decodeEntityRows, encodeDailyRows, sealedDailyRows } from "../contract/row-text.js";
import {
  groupDailyRows,
  type DailyJobPayload,
  type DailySpendJobV4,
  type EntityJobPayload,
  type SpendJobV3,
} from "../contract/spend-batch.js";
import { DAILY_JOB, ENTITY_JOB, type SpendQueues } from "./spend-queues.js";

export interface QueueSinkOptions {
  /** Close the queues with the sink (default true). */
  ownsQueues?: boolean;
  /** Job format (spend_buffer_settings.job_format); default 4. */
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
    this.jobFormat = opts.jobFormat ?? 4;
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
export type JobFormat = 1 | 2 | 3 | 4;

/**
 * A batch's job payload in `format`. A batch holds entity rows as format 3
 * text, and daily spend as format 4 fact text (a producer's seal) or format
 * 3 row text (an idempotent ingest batch). Format 4 sends either as it is
 * (a scan for JSON, nothing to build), and so does format 3 a row text;
 * formats 1-3, for workers older than format 4 during an upgrade, fan facts
 * out to daily rows first. Entity jobs have no format 2 or 4: they are
 * written as 1 or 3.
 */
export function jobPayload(b: SealedBatch, format: JobFormat): EntityJobPayload | DailyJobPayload {
  return b.kind === "entity" ? entityJobPayload(b, format) : dailyJobPayload(b, format);
}

function entityJobPayload(b: SealedBatch, format: JobFormat): EntityJobPayload {
  if (format >= 3) return v3(b);
  return { v: 1, ...header(b), rows: decodeEntityRows(b.rowText) };
}

function dailyJobPayload(b: SealedBatch, format: JobFormat): DailyJobPayload {
  if (b.textFormat === 4 && format === 4) return v4(b);
  if (b.textFormat === 3 && format >= 3) return v3(b);
  const rows = sealedDailyRows(b);
  if (format >= 3) return { ...v3(b), rowCount: rows.length, rowText: encodeDailyRows(rows) };
  return format === 2
    ? { v: 2, ...header(b), groups: groupDailyRows(rows) }
    : { v: 1, ...header(b), rows };
}

function v3(b: SealedBatch): SpendJobV3 {
  return { v: 3, kind: b.kind, ...header(b), rowCount: b.rowCount, rowText: b.rowText };
}

function v4(b: SealedBatch): DailySpendJobV4 {
  return { v: 4, kind: "daily", ...header(b), rowCount: b.rowCount, rowText: b.rowText };
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

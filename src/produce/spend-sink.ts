import type { DailyRow, EntityRow } from "../queue/spend-batch.js";

interface SealedHeader {
  batchId: string;
  producerId: string;
  sealedAt: number;
  /** The flush partition that owns every row of this batch. */
  partition: number;
  /** The producer's partition count, so a worker can see a mismatch. */
  partitions: number;
}

/** A sealed piece of a producer's buffer, ready to leave the process. */
export type SealedBatch =
  | (SealedHeader & { kind: "entity"; rows: EntityRow[] })
  | (SealedHeader & { kind: "daily"; rows: DailyRow[] });

/**
 * Where a producer sends its batches: BullMQ on Redis (the buffer on), or
 * PostgreSQL directly (the buffer off). write() may be called again with the
 * same batch after a failure that left the outcome unknown; a sink must make
 * that harmless (the batch id is the idempotency key).
 */
export interface SpendSink {
  write(batch: SealedBatch): Promise<void>;
  close(): Promise<void>;
  /**
   * How long the oldest batch this sink accepted has waited to be flushed,
   * ms (0: none waits). Sinks that write straight to the database have no
   * backlog and leave it out.
   */
  backlogAgeMs?(): Promise<number>;
}

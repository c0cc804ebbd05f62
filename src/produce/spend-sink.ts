import type { DailyRow, EntityRow } from "../queue/spend-batch.js";

/** A sealed piece of a producer's buffer, ready to leave the process. */
export type SealedBatch =
  | { kind: "entity"; batchId: string; producerId: string; sealedAt: number; rows: EntityRow[] }
  | { kind: "daily"; batchId: string; producerId: string; sealedAt: number; rows: DailyRow[] };

/**
 * Where a producer sends its batches: BullMQ on Redis (the buffer on), or
 * PostgreSQL directly (the buffer off). write() may be called again with the
 * same batch after a failure that left the outcome unknown; a sink must make
 * that harmless (the batch id is the idempotency key).
 */
export interface SpendSink {
  write(batch: SealedBatch): Promise<void>;
  close(): Promise<void>;
}

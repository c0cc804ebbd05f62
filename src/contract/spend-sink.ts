interface SealedHeader {
  batchId: string;
  producerId: string;
  sealedAt: number;
  /** The flush partition that owns every row of this batch. */
  partition: number;
  /** The producer's partition count, so a worker can see a mismatch. */
  partitions: number;
}

/**
 * A sealed piece of a producer's buffer, ready to leave the process, written
 * as the seal drained it (row-text.ts): entity rows as row text (format 3),
 * daily spend as fact text (format 4, daily-facts.ts) from a producer's
 * seal, or as row text from sealBatches (idempotent ingest batches, cut
 * the same way by every version).
 */
export interface SealedBatch extends SealedHeader {
  kind: "entity" | "daily";
  /** The job format of rowText: 3 (rows), or 4 (daily facts). */
  textFormat: 3 | 4;
  /** Rows, or daily facts. */
  rowCount: number;
  /**
   * Rows the flush will write for it: rowCount, or for daily facts the daily
   * rows they fan out to (counted before facts of one context that name the
   * same id add into one row). What back-pressure weighs against the flush's
   * rows a second.
   */
  flushRows: number;
  rowText: string;
}

/** How far behind the spend pipeline is, as one producer sees it. */
export interface PipelineLoad {
  /** Age of the oldest spend job not yet committed, ms (0: none). */
  backlogAgeMs: number;
  /** Rows held by every producer that reported within the freshness window, this one's included. */
  heldRows: number;
  /** Producers that reported within the freshness window, this one included (at least 1). */
  producers: number;
  /** Rows per second the flush commits, summed over partitions; null until a sizeable flush said. */
  flushRowsPerSec: number | null;
  /**
   * How long ago a worker last published its rate (after a sizeable
   * transaction committed), the freshest partition's, ms; null when unknown.
   * Recent: the flush is committing.
   */
  flushRateAgeMs: number | null;
}

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
   * How far behind the flush is: the age of the oldest batch this sink
   * accepted and not yet flushed, the rows every producer holds (this one
   * publishes `heldRows`, its own), and the rate the flush commits rows.
   * Sinks that write straight to the database have no backlog and leave it out.
   */
  pipelineLoad?(producerId: string, heldRows: number, freshMs: number): Promise<PipelineLoad>;
}

import type { SealedBatch } from "../contract/spend-sink.js";
import type { DrainedRows } from "./aggregator.js";
import { dailyIdentity, entityIdentity, partitionOf } from "./partition.js";

export interface SealHeader {
  producerId: string;
  sealedAt: number;
  /** The producer's partition count. */
  partitions: number;
}

/**
 * Drained rows as batches: split by the flush partition that owns each row
 * (a stable hash of its identity, so every producer sends a row to the same
 * partition), then into jobs of at most `maxRowsPerJob` rows, each with the
 * next batch id.
 */
export function sealBatches(
  drained: DrainedRows,
  header: SealHeader,
  maxRowsPerJob: number,
  nextBatchId: () => string,
): SealedBatch[] {
  const out: SealedBatch[] = [];
  for (const [partition, rows] of jobsOf(drained.entity, entityIdentity, header, maxRowsPerJob))
    out.push({ kind: "entity", batchId: nextBatchId(), partition, rows, ...header });
  for (const [partition, rows] of jobsOf(drained.daily, dailyIdentity, header, maxRowsPerJob))
    out.push({ kind: "daily", batchId: nextBatchId(), partition, rows, ...header });
  return out;
}

function* jobsOf<R>(
  rows: R[],
  identity: (r: R) => string,
  header: SealHeader,
  maxRowsPerJob: number,
): Generator<[number, R[]]> {
  for (const [partition, all] of byPartition(rows, identity, header.partitions))
    for (let i = 0; i < all.length; i += maxRowsPerJob)
      yield [partition, all.slice(i, i + maxRowsPerJob)];
}

/** Rows by the partition that owns each one (all in 0 when unpartitioned). */
function byPartition<R>(
  rows: R[],
  identity: (r: R) => string,
  partitions: number,
): Map<number, R[]> {
  const out = new Map<number, R[]>();
  if (partitions <= 1) {
    if (rows.length > 0) out.set(0, rows);
    return out;
  }
  for (const r of rows) {
    const p = partitionOf(identity(r), partitions);
    const list = out.get(p);
    if (list === undefined) out.set(p, [r]);
    else list.push(r);
  }
  return out;
}

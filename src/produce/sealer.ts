import type { SealedBatch } from "../contract/spend-sink.js";
import type { DrainedRows } from "./aggregator.js";
import { dailyIdentity, entityIdentity, partitionOf } from "./partition.js";

export interface SealHeader {
  producerId: string;
  sealedAt: number;
  /** The producer's partition count. */
  partitions: number;
}

/** A job's rows before it gets its batch id. */
export type UnnumberedBatch =
  | { kind: "entity"; partition: number; rows: DrainedRows["entity"] }
  | { kind: "daily"; partition: number; rows: DrainedRows["daily"] };

// Rows hashed to their partition before a step yields (each builds its identity string).
const PARTITION_STEP = 1_024;

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
  const steps = jobSteps(drained, header.partitions, maxRowsPerJob);
  let r = steps.next();
  while (r.done !== true) r = steps.next();
  return numberBatches(r.value, header, nextBatchId);
}

/** Each job with the next batch id, in order. */
export function numberBatches(
  jobs: readonly UnnumberedBatch[],
  header: SealHeader,
  nextBatchId: () => string,
): SealedBatch[] {
  return jobs.map((j) =>
    j.kind === "entity"
      ? { kind: "entity", batchId: nextBatchId(), partition: j.partition, rows: j.rows, ...header }
      : { kind: "daily", batchId: nextBatchId(), partition: j.partition, rows: j.rows, ...header },
  );
}

/**
 * The jobs of drained rows, entity jobs first, in steps: hashing every row to
 * its partition is O(rows), so it yields every PARTITION_STEP rows and a
 * caller can spread it over turns of the event loop (sealBatches runs it at once).
 */
export function* jobSteps(
  drained: DrainedRows,
  partitions: number,
  maxRowsPerJob: number,
): Generator<void, UnnumberedBatch[]> {
  const out: UnnumberedBatch[] = [];
  const entity = yield* byPartition(drained.entity, entityIdentity, partitions);
  for (const [partition, all] of entity)
    for (let i = 0; i < all.length; i += maxRowsPerJob)
      out.push({ kind: "entity", partition, rows: all.slice(i, i + maxRowsPerJob) });
  const daily = yield* byPartition(drained.daily, dailyIdentity, partitions);
  for (const [partition, all] of daily)
    for (let i = 0; i < all.length; i += maxRowsPerJob)
      out.push({ kind: "daily", partition, rows: all.slice(i, i + maxRowsPerJob) });
  return out;
}

/** Rows by the partition that owns each one (all in 0 when unpartitioned). */
function* byPartition<R>(
  rows: R[],
  identity: (r: R) => string,
  partitions: number,
): Generator<void, Map<number, R[]>> {
  const out = new Map<number, R[]>();
  if (partitions <= 1) {
    if (rows.length > 0) out.set(0, rows);
    return out;
  }
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as R;
    const p = partitionOf(identity(r), partitions);
    const list = out.get(p);
    if (list === undefined) out.set(p, [r]);
    else list.push(r);
    if ((i + 1) % PARTITION_STEP === 0) yield;
  }
  return out;
}

import type { SealedBatch } from "../contract/spend-sink.js";
import { Aggregator } from "./aggregator.js";
import { sealBatches } from "./sealer.js";
import {
  SpendEventError,
  checkIdsContent,
  normalizeSpendEvent,
  type ValidationLimits,
} from "./spend-event.js";

export interface StandaloneOptions {
  limits: ValidationLimits;
  /** "Now" for validation and for events without a startTime (epoch ms). */
  now: number;
  partitions: number;
  maxRowsPerJob: number;
  /** The batches' producerId, and the start of each batch id (`<producerId>.<n>`, n from 1). */
  producerId: string;
  /** sealedAt in the batches' header. */
  sealedAt: number;
}

/**
 * A batch of events sealed on its own, outside any producer's aggregate: all
 * validated first (all or none, as recordAll), then aggregated and cut into
 * jobs numbered `<producerId>.1`, `.2`, ... The result depends only on the
 * events and the options: sealed again with the same ones (another gateway
 * resuming a crashed attempt), it is the same batches under the same ids,
 * so whichever copy reaches PostgreSQL first is applied and the other is
 * skipped (spend_applied_batch).
 */
export function sealStandalone(
  events: readonly unknown[],
  o: StandaloneOptions,
):
  | { ok: true; batches: SealedBatch[] }
  | { ok: false; refused: { index: number; error: SpendEventError }[] } {
  const agg = new Aggregator();
  const refused: { index: number; error: SpendEventError }[] = [];
  for (let i = 0; i < events.length; i++) {
    try {
      const e = normalizeSpendEvent(events[i], o.limits, o.now);
      checkIdsContent(e);
      if (refused.length === 0) agg.add(e);
    } catch (err) {
      if (!(err instanceof SpendEventError)) throw err;
      refused.push({ index: i, error: err });
    }
  }
  if (refused.length > 0) return { ok: false, refused };
  if (!agg.hasPending) return { ok: true, batches: [] };
  let n = 0;
  const batches = sealBatches(
    agg.drain(),
    { producerId: o.producerId, sealedAt: o.sealedAt, partitions: o.partitions },
    o.maxRowsPerJob,
    () => `${o.producerId}.${++n}`,
  );
  return { ok: true, batches };
}

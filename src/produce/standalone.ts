import { sameDailyContext, type DailyRow, type EntityRow } from "../contract/spend-batch.js";
import type { SealedBatch } from "../contract/spend-sink.js";
import { Aggregator, type DrainedRows } from "./aggregator.js";
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
    canonicalOrder(agg.drain()),
    { producerId: o.producerId, sealedAt: o.sealedAt, partitions: o.partitions },
    o.maxRowsPerJob,
    () => `${o.producerId}.${++n}`,
  );
  return { ok: true, batches };
}

const ENTITY_RANK: Record<EntityRow[0], number> = {
  key: 0,
  user: 1,
  team: 2,
  org: 3,
  end_user: 4,
  tag: 5,
  team_member: 6,
};
const DAILY_RANK: Record<DailyRow[0], number> = { user: 0, team: 1, org: 2, end_user: 3, tag: 4 };

/**
 * A fresh aggregator's one drain in the order every version of it has sealed
 * such a batch, so that a batch cut into several jobs is cut the same way by
 * whichever gateway resumes it, whatever version it runs (the jobs' ids are
 * their position): entity rows by kind (key, user, team, org, end user, tag,
 * then memberships grouped by user), each kind in the order its ids first
 * appeared; daily rows by context, the keyless ones first, then by key in
 * the order keys first appeared, each key's contexts in the order they first
 * appeared, and within a context by kind (user, team, org, end user, tag).
 * The aggregator emits rows in the order they were first touched, which
 * within one kind (and one context) is already the order of first appearance.
 */
export function canonicalOrder(d: DrainedRows): DrainedRows {
  // Memberships grouped by user, users in the order of their first membership.
  const userRank = new Map<string, number>();
  for (const r of d.entity)
    if (r[0] === "team_member" && !userRank.has(r[1])) userRank.set(r[1], userRank.size);
  const entity = d.entity
    .map((r, i) => ({ r, i }))
    .sort(
      (a, b) =>
        ENTITY_RANK[a.r[0]] - ENTITY_RANK[b.r[0]] ||
        (a.r[0] === "team_member" && b.r[0] === "team_member"
          ? (userRank.get(a.r[1]) ?? 0) - (userRank.get(b.r[1]) ?? 0)
          : 0) ||
        a.i - b.i,
    )
    .map((x) => x.r);

  // A key's rank: where its row is among the entity rows (first appearance).
  const keyRank = new Map<string, number>();
  for (const r of entity) if (r[0] === "key") keyRank.set(r[1], keyRank.size);
  // The rows of one context are contiguous in a drain; each context is a run.
  const runs: { rank: number; at: number; rows: DailyRow[] }[] = [];
  let run: DailyRow[] | undefined;
  let last: DailyRow | undefined;
  for (const r of d.daily) {
    if (last === undefined || !sameDailyContext(last, r)) {
      run = [];
      const key = r[3];
      runs.push({ rank: key === "" ? -1 : (keyRank.get(key) ?? 0), at: runs.length, rows: run });
    }
    (run as DailyRow[]).push(r);
    last = r;
  }
  runs.sort((a, b) => a.rank - b.rank || a.at - b.at);
  const daily: DailyRow[] = [];
  for (const x of runs) {
    const rows = x.rows.map((r, i) => ({ r, i }));
    rows.sort((a, b) => DAILY_RANK[a.r[0]] - DAILY_RANK[b.r[0]] || a.i - b.i);
    for (const y of rows) daily.push(y.r);
  }
  return { entity, daily };
}

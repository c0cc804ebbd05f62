import type { Queue } from "bullmq";
import type { SpendQueues } from "./spend-queues.js";

/**
 * When the oldest job waiting in a queue was added (epoch ms), or `none` if
 * nothing waits. BullMQ LPUSHes new jobs, so the oldest is at the list's
 * tail (getRanges(["wait"], -1, -1)); a job given back to wait after a failed
 * flush may land at either end, so both ends are read. Two job timestamps
 * per queue, never the job data.
 */
export async function oldestWaiting(q: Queue, none: number): Promise<number> {
  const ids = new Set([
    ...(await q.getRanges(["wait"], -1, -1)),
    ...(await q.getRanges(["wait"], 0, 0)),
  ]);
  if (ids.size === 0) return none;
  const client = await q.getBackend().client;
  let oldest = none;
  for (const id of ids) {
    const ts = Number(await client.hget(q.toKey(id), "timestamp"));
    if (Number.isFinite(ts) && ts > 0) oldest = Math.min(oldest, ts);
  }
  return oldest;
}

/**
 * How long the oldest spend job of any of these partitions has waited, ms
 * (0 when none waits): how far the flush is behind what producers sent.
 */
export async function backlogAgeMs(partitions: readonly SpendQueues[]): Promise<number> {
  const now = Date.now();
  let oldest = now;
  for (const set of partitions)
    for (const q of [set.entity, set.daily] as Queue[]) oldest = await oldestWaiting(q, oldest);
  return Math.max(0, now - oldest);
}

import type { RedisClient } from "../redis/connection.js";
import { lockScripts } from "./scripts.js";

/**
 * The flush leadership: a lease in Redis, held and renewed across flushes by
 * one worker replica, the only one that takes flush jobs. Without it each
 * tick's job goes to whichever replica asks first, so "who flushes" changes
 * every few seconds and the per-flush lock is held only for the flush itself:
 * no gauge can say which pod is the writer. With it exactly one pod leads,
 * and the others stand by to take over when its lease lapses.
 *
 * Leadership decides who flushes, not whether a write is safe: the per-flush
 * lock and its fencing token still admit one writer per partition and reject
 * a stale one, so two workers that both believe they lead (a paused leader
 * whose lease lapsed) cannot corrupt anything.
 */
export class FlushLeadership {
  /** Until when (local clock) this process may believe it leads: its last renewal plus the lease. */
  private leadsUntil = 0;

  constructor(
    private readonly redis: RedisClient,
    private readonly key: string,
    readonly workerId: string,
    readonly leaseMs: number,
  ) {}

  /**
   * Takes or renews the lease. A failed call (Redis away) changes nothing by
   * itself: this process keeps leading until its last lease would have lapsed,
   * as every other replica sees it, and no longer.
   */
  async tick(now = Date.now()): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      // Bounded: with Redis away the client queues the call until it is back,
      // and a tick that waited for it kept this replica "leading" (gauge 1, no
      // log line) through the whole outage. An answer arriving later is moot:
      // the next tick asks again.
      const led = await Promise.race([
        lockScripts.lead.run(this.redis, [this.key], [this.workerId, this.leaseMs]),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("no answer")), this.leaseMs / 2);
        }),
      ]);
      this.leadsUntil = led === 1 ? now + this.leaseMs : 0;
    } catch {
      // Keep leadsUntil: the lease in Redis runs out on its own at about the same time.
    } finally {
      clearTimeout(timer);
    }
    return this.leads();
  }

  /** Whether this process leads now, by its own clock. */
  leads(now = Date.now()): boolean {
    return now < this.leadsUntil;
  }

  /** Gives the lease up (compare-and-delete), so a standby takes over at its next tick. */
  async resign(): Promise<void> {
    this.leadsUntil = 0;
    await lockScripts.release.run(this.redis, [this.key], [this.workerId]);
  }

  /** The worker id that leads now, as Redis says (null: none). */
  async leader(): Promise<string | null> {
    return this.redis.get(this.key);
  }
}

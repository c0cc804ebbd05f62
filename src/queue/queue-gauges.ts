import type { Queue } from "bullmq";
import { Gauge, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";
import type { RedisClient } from "../redis/connection.js";
import type { RedisKeys } from "../redis/keys.js";
import { oldestJobAt } from "./backlog.js";

/** The spend queues one process reports on (one set per flush partition). */
export interface WatchedQueues {
  entity: Queue;
  daily: Queue;
  /** The flush worker's scheduling queue, if this process has it. */
  flush?: Queue;
  /** Where the partition's last successful flush is recorded, and the connection to read it. */
  keys: Pick<RedisKeys, "flushLastSuccess">;
  connection: RedisClient;
}

/** Longest a scrape waits for Redis: an unreachable Redis must not hang /metrics. */
const READ_TIMEOUT_MS = 1_000;

/**
 * A collect() that reads Redis. If Redis does not answer (down, failing over,
 * timed out) the gauge reports nothing this scrape rather than a stale or
 * made-up value, and the other metrics of the scrape are served as usual:
 * a Redis outage is when an operator most needs the gateways' own counters.
 */
function fromRedis<T extends string>(
  read: (g: Gauge<T>) => Promise<void>,
): (this: Gauge<T>) => Promise<void> {
  return async function (this: Gauge<T>) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("Redis did not answer")), READ_TIMEOUT_MS);
    });
    try {
      await Promise.race([read(this), timeout]);
    } catch {
      // reset() alone would leave an unlabelled gauge at 0, a made-up value: remove its series.
      this.reset();
      this.remove({});
    } finally {
      clearTimeout(timer);
    }
  };
}

/** BullMQ job states reported by spend_queue_jobs, and the name BullMQ's getJobCounts uses. */
const JOB_STATES = {
  waiting: "wait",
  active: "active",
  delayed: "delayed",
  prioritized: "prioritized",
  failed: "failed",
  completed: "completed",
} as const;

/**
 * Gauges read from Redis on scrape: the spend jobs queued, the age of the
 * oldest, and how long since a flush last did its job. Exported by every
 * process that holds the queues (workers and gateways), read afresh at each
 * scrape, never a constant: with every worker down the gateways' series say
 * what is piling up and how stale the ledger is.
 */
export class QueueGauges {
  private readonly sets = new Map<string, WatchedQueues>();
  private readonly watchingSince = Date.now();

  constructor(registry: Registry) {
    const registers = [registry];
    const sets = this.sets;
    const since = this.watchingSince;
    const pending = async (pick: (q: WatchedQueues) => Queue): Promise<number> => {
      let total = 0;
      for (const set of sets.values()) {
        const c = await pick(set).getJobCounts("wait", "active", "delayed", "prioritized");
        total += Object.values(c).reduce((a, b) => a + b, 0);
      }
      return total;
    };
    new Gauge({
      name: "litellm_redis_spend_update_queue_size",
      help: "Entity spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      collect: fromRedis(async (g) => {
        g.set(await pending((s) => s.entity));
      }),
    });
    new Gauge({
      name: "litellm_redis_daily_spend_update_queue_size",
      help: "Daily spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      collect: fromRedis(async (g) => {
        g.set(await pending((s) => s.daily));
      }),
    });
    new Gauge({
      name: "spend_queue_jobs",
      help: "BullMQ jobs by queue (entity, daily, flush) and state, summed over flush partitions; read from Redis on scrape.",
      labelNames: ["queue", "state"],
      registers,
      collect: fromRedis(async (g) => {
        const totals = new Map<string, number>();
        for (const set of sets.values()) {
          const named: [string, Queue | undefined][] = [
            ["entity", set.entity],
            ["daily", set.daily],
            ["flush", set.flush],
          ];
          for (const [name, q] of named) {
            if (q === undefined) continue;
            const c = await q.getJobCounts(...Object.values(JOB_STATES));
            for (const [state, bull] of Object.entries(JOB_STATES)) {
              const k = `${name}\u0000${state}`;
              totals.set(k, (totals.get(k) ?? 0) + (c[bull] ?? 0));
            }
          }
        }
        g.reset();
        for (const [k, v] of totals) {
          const [queue = "", state = ""] = k.split("\u0000");
          g.set({ queue, state }, v);
        }
      }),
    });
    new Gauge({
      name: "spend_backlog_age_seconds",
      help: "Age of the oldest spend job not yet committed (waiting, or taken by a flush: a dead worker's jobs stay taken until another worker runs), 0 when none, by queue (entity, daily); read from Redis on scrape.",
      labelNames: ["queue"],
      registers,
      collect: fromRedis(async (g) => {
        g.reset();
        if (sets.size === 0) return;
        const now = Date.now();
        for (const name of ["entity", "daily"] as const) {
          let oldest = now;
          for (const set of sets.values())
            // Taken jobs count: with every worker dead they sit in active, not committed.
            oldest = Math.min(oldest, await oldestJobAt(set[name], now, ["wait", "active"]));
          g.set({ queue: name }, Math.max(0, (now - oldest) / 1000));
        }
      }),
    });
    new Gauge({
      name: "spend_seconds_since_last_successful_flush",
      help: "Seconds since a flush last did its job (committed, or found nothing to do), for the stalest flush partition, by any worker: read from Redis on scrape, by gateways and workers alike. With none recorded, since this process started watching.",
      registers,
      collect: fromRedis(async (g) => {
        g.reset();
        if (sets.size === 0) return;
        const now = Date.now();
        let stalest = now;
        for (const set of sets.values()) {
          const at = Number((await set.connection.get(set.keys.flushLastSuccess)) ?? 0);
          stalest = Math.min(stalest, at > 0 ? at : since);
        }
        g.set(Math.max(0, (now - stalest) / 1000));
      }),
    });
  }

  /**
   * Reports these queues. One call per flush partition (key: the partition;
   * a second call with the same key replaces the first).
   */
  watch(queues: WatchedQueues, partition: number | string = 0): void {
    this.sets.set(String(partition), queues);
  }
}

/** This registry's queue gauges (made on first use). */
export function queueGauges(m: SpendMetrics): QueueGauges {
  return m.use("queues", (r) => new QueueGauges(r));
}

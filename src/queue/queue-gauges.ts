import type { Queue } from "bullmq";
import { Gauge, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";
import { oldestJobAt } from "./backlog.js";

/** The spend queues one process reports on (one set per flush partition). */
export interface WatchedQueues {
  entity: Queue;
  daily: Queue;
  /** The flush worker's scheduling queue, if this process has it. */
  flush?: Queue;
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
 * Gauges read from Redis on scrape: the spend jobs queued and the age of the
 * oldest. Exported by the processes that hold the queues (workers), read
 * afresh at each scrape, never a constant: with every worker down the
 * series say what is piling up.
 */
export class QueueGauges {
  private readonly sets = new Map<string, WatchedQueues>();

  constructor(registry: Registry) {
    const registers = [registry];
    const sets = this.sets;
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
      async collect() {
        this.set(await pending((s) => s.entity));
      },
    });
    new Gauge({
      name: "litellm_redis_daily_spend_update_queue_size",
      help: "Daily spend batches (BullMQ jobs) waiting in Redis to be flushed.",
      registers,
      async collect() {
        this.set(await pending((s) => s.daily));
      },
    });
    new Gauge({
      name: "spend_queue_jobs",
      help: "BullMQ jobs by queue (entity, daily, flush) and state, summed over flush partitions; read from Redis on scrape.",
      labelNames: ["queue", "state"],
      registers,
      async collect() {
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
        this.reset();
        for (const [k, v] of totals) {
          const [queue = "", state = ""] = k.split("\u0000");
          this.set({ queue, state }, v);
        }
      },
    });
    new Gauge({
      name: "spend_backlog_age_seconds",
      help: "Age of the oldest spend job waiting in Redis (0 when none), by queue (entity, daily); read from Redis on scrape.",
      labelNames: ["queue"],
      registers,
      async collect() {
        this.reset();
        if (sets.size === 0) return;
        const now = Date.now();
        for (const name of ["entity", "daily"] as const) {
          let oldest = now;
          for (const set of sets.values())
            oldest = Math.min(oldest, await oldestJobAt(set[name], now));
          this.set({ queue: name }, Math.max(0, (now - oldest) / 1000));
        }
      },
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

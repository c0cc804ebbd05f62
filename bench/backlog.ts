/**
 * A backlog in Redis, as an outage or a deploy leaves one: P producers (each
 * a gateway with its own producer id and its own traffic) record realistic
 * traffic and seal it interval after interval while no flush worker runs.
 * The producers run in this process with their timers off: each interval is
 * sealed and sent by hand, so the backlog is the same from run to run and
 * building it does not depend on how busy the machine is.
 *
 * Everything recorded also goes into a Ledger, what PostgreSQL must hold once
 * the backlog is flushed, and the jobs are read back and grouped as a flush
 * would take them, for the raw `pg` reference (raw-upsert.ts).
 */
import { trafficGenerator, type TrafficShape } from "../src/demo/traffic.js";
import {
  dailyJobPayloadSchema,
  entityJobSchema,
  type DailyRow,
  type EntityRow,
} from "../src/contract/spend-batch.js";
import type { AppConfig } from "../src/config/config.js";
import { silentLogger } from "../src/observe/logger.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import type { SpendQueues } from "../src/queue/spend-queues.js";
import { createSpendProducer } from "../src/wiring/create-producer.js";
import { Ledger } from "../test/support/ledger.js";
import { RowMerger } from "../src/persist/merge.js";
import type { TakeLimits } from "../src/flush/spend-drain.js";

export interface BacklogPlan {
  /** Gateways, each with its own producer (id, seed, Redis connection). */
  producers: number;
  /** Seal intervals each producer records and sends before the worker starts. */
  intervals: number;
  /** Events each producer records per interval. */
  eventsPerInterval: number;
}

export interface Backlog {
  ledger: Ledger;
  events: number;
  /** The jobs as they wait in Redis, oldest first, as the worker will validate them. */
  entity: BacklogJob[];
  daily: BacklogJob[];
  jobs: number;
  /** Rows as producers sealed them (before any flush merges batches): the drain's unit. */
  sealedRows: number;
  /** Distinct database rows the backlog ends up in. */
  distinctRows: number;
}

/** One job as a flush sees it: its batch id and rows (one kind per job). */
export interface BacklogJob {
  batchId: string;
  entity?: EntityRow[];
  daily?: DailyRow[];
  rows: number;
}

/**
 * Records the backlog through real producers into `config`'s Redis (every
 * event dated `now`), then reads it back from `queues`.
 */
export async function buildBacklog(
  plan: BacklogPlan,
  shape: TrafficShape,
  config: AppConfig,
  queues: SpendQueues,
  now: number,
): Promise<Backlog> {
  const ledger = new Ledger();
  const metrics = new SpendMetrics();
  const producers = await Promise.all(
    Array.from({ length: plan.producers }, () =>
      createSpendProducer(config, {
        metrics,
        logger: silentLogger,
        // Sealed by hand below, one interval at a time.
        options: { flushIntervalMs: 3_600_000, flushJitterMs: 0, closeTimeoutMs: 60_000 },
      }),
    ),
  );
  const gens = producers.map((_, i) => trafficGenerator(1_000 + i, shape, () => now));
  try {
    for (let interval = 0; interval < plan.intervals; interval++) {
      await Promise.all(
        producers.map(async (p, i) => {
          const gen = gens[i] as ReturnType<typeof trafficGenerator>;
          for (let e = 0; e < plan.eventsPerInterval; e++) {
            const event = gen();
            p.record(event);
            ledger.record(event, now);
          }
          await p.flush();
        }),
      );
    }
  } finally {
    await Promise.all(producers.map((p) => p.close()));
  }
  const { entity, daily } = await readBacklog(queues);
  return {
    ledger,
    events: plan.producers * plan.intervals * plan.eventsPerInterval,
    entity,
    daily,
    jobs: entity.length + daily.length,
    sealedRows: [...entity, ...daily].reduce((a, j) => a + j.rows, 0),
    distinctRows: ledger.totals.size,
  };
}

/** Reads every waiting spend job back, oldest first, with its rows as the worker validates them. */
async function readBacklog(queues: SpendQueues): Promise<{
  entity: BacklogJob[];
  daily: BacklogJob[];
}> {
  const [entityJobs, dailyJobs] = await Promise.all([
    queues.entity.getJobs(["wait"], 0, -1, true),
    queues.daily.getJobs(["wait"], 0, -1, true),
  ]);
  const entity = entityJobs.map((j): BacklogJob => {
    const d = entityJobSchema.parse(j.data);
    return { batchId: d.batchId, entity: d.rows, rows: d.rows.length };
  });
  const daily = dailyJobs.map((j): BacklogJob => {
    const d = dailyJobPayloadSchema.parse(j.data);
    return { batchId: d.batchId, daily: d.rows, rows: d.rows.length };
  });
  return { entity, daily };
}

/**
 * Groups jobs into transactions the way SpendDrain.take does: entity jobs
 * first until the rows they merge into reach half of maxRows, then daily
 * jobs until all reach maxRows (at least one job of each), never more than
 * maxJobs jobs or maxSealedRows rows as sealed. The raw reference then writes
 * the same transactions. (The flush fetches a few jobs at a time, so its
 * transactions can end a job or two later: close, not identical.)
 */
export function groupAsTaken(
  jobs: { entity: BacklogJob[]; daily: BacklogJob[] },
  limits: TakeLimits,
): BacklogJob[][] {
  const out: BacklogJob[][] = [];
  let e = 0;
  let d = 0;
  while (e < jobs.entity.length || d < jobs.daily.length) {
    const group: BacklogJob[] = [];
    const merger = new RowMerger();
    const half = Math.max(1, Math.ceil(limits.maxJobs / 2));
    let sealed = 0;
    while (
      e < jobs.entity.length &&
      group.length < half &&
      (group.length === 0 ||
        (merger.entityRows < Math.ceil(limits.maxRows / 2) &&
          sealed < Math.ceil(limits.maxSealedRows / 2)))
    ) {
      const j = jobs.entity[e++] as BacklogJob;
      group.push(j);
      sealed += j.rows;
      merger.addEntity(j.entity ?? []);
    }
    const fromDaily = group.length;
    while (
      d < jobs.daily.length &&
      group.length < limits.maxJobs &&
      (group.length === fromDaily ||
        (merger.entityRows + merger.dailyRows < limits.maxRows && sealed < limits.maxSealedRows))
    ) {
      const j = jobs.daily[d++] as BacklogJob;
      group.push(j);
      sealed += j.rows;
      merger.addDaily(j.daily ?? []);
    }
    out.push(group);
  }
  return out;
}

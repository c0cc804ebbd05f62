/**
 * Section 5 (issue 6): partitioned flush. Part 1, flush throughput: the same
 * N distinct rows split by partitionOf into P disjoint sets, committed by P
 * concurrent transactions (applyBatches in a Prisma interactive transaction,
 * each with its own fence partition), next to the raw `pg` baseline doing the
 * same P-way split concurrently. P = 1 is the flush section's single
 * transaction (raw at P = 1: one INSERT ... ON CONFLICT statement per table,
 * the single-statement ceiling). Part 2, end to end, reuses pipeline.ts with
 * partitioned producers and one FlushWorker flushing every partition at once.
 */
import pg from "pg";
import type { TrafficShape } from "../src/demo/traffic.js";
import { applyBatches, type BatchToApply, type Fence } from "../src/persist/apply-batches.js";
import { contextIdentity, entityIdentity, partitionOf } from "../src/produce/partition.js";
import type { DailyRow, EntityRow } from "../src/contract/spend-batch.js";
import { serverCpuTicks } from "./db-stats.js";
import { ALL_TABLES, makeRows, tableState, toBatches } from "./flush-throughput.js";
import type { PipelineRunResult } from "./pipeline.js";
import type { PartitionsPlan, PipelinePlan } from "./plan.js";
import { rawApply } from "./raw-upsert.js";
import type { Resources } from "./resources.js";
import { progress, spread, timeAsync, type Spread } from "./util.js";

// Row identities exactly as the producer hashes them (src/produce/producer.ts).

type Arm = "prisma" | "raw";
type Phase = "insert" | "update";

export interface PartitionPhaseResult {
  /** Rows per second over all P transactions (N / wall time until the last one committed). */
  rowsPerSec: Record<Arm, Spread>;
  /** rowsPerSec / the same arm's P = 1 figure in the same repetition, median. */
  vsP1: Record<Arm, Spread>;
  /** Prisma / raw at this P, per repetition, median. */
  prismaVsRaw: Spread;
  /**
   * Cores kept busy while the P transactions ran: CPU of every postgres
   * process (the whole server, /proc) plus the bench process (which runs the
   * Prisma or pg client), divided by wall time. The machine has `cores`.
   */
  busyCores: Record<Arm, Spread>;
}

export interface PartitionFlushResult {
  partitions: number;
  /** Rows in each partition's set (entity + daily). */
  rowsPerPartition: number[];
  /** Sealed batches per partition (rowsPerJob rows each at most). */
  batchesPerPartition: number[];
  insert: PartitionPhaseResult;
  update: PartitionPhaseResult;
}

export interface PartitionsFlushResult {
  database: string;
  rows: number;
  entityRows: number;
  dailyRows: number;
  cores: number;
  byP: PartitionFlushResult[];
}

export interface PartitionsResult {
  flush?: PartitionsFlushResult;
  /** One buffered end-to-end run per P (pipeline.ts, `partitions` set). */
  e2e: PipelineRunResult[];
}

/** The pipeline section's plan, with this section's producers and window. */
export function partitionPipelinePlan(pipeline: PipelinePlan, plan: PartitionsPlan): PipelinePlan {
  return { ...pipeline, producers: plan.producers, durationMs: plan.durationMs };
}

/** Splits rows into P disjoint sets by the partition that owns each one. */
function split(
  rows: { entity: EntityRow[]; daily: DailyRow[] },
  P: number,
): { entity: EntityRow[]; daily: DailyRow[] }[] {
  const out = Array.from({ length: P }, () => ({
    entity: [] as EntityRow[],
    daily: [] as DailyRow[],
  }));
  for (const r of rows.entity) out[partitionOf(entityIdentity(r), P)]?.entity.push(r);
  for (const r of rows.daily) out[partitionOf(contextIdentity(r), P)]?.daily.push(r);
  return out;
}

export async function measurePartitionFlush(
  plan: PartitionsPlan,
  shape: TrafficShape,
  cores: number,
  res: Resources,
): Promise<PartitionsFlushResult> {
  const S = "partitions";
  const n = plan.flushRows;
  const maxP = Math.max(...plan.counts);
  const t = await res.database("partitions");
  const admin = new pg.Client({ connectionString: t.url });
  const clients = Array.from({ length: maxP }, () => new pg.Client({ connectionString: t.url }));
  let token = 0n;
  const fence = (p: number): Fence => ({
    partition: `bench:${p}`,
    token: ++token,
    holder: "bench",
  });
  try {
    await admin.connect();
    await Promise.all(clients.map((c) => c.connect()));
    await Promise.all(clients.map((c) => c.query("SELECT 1")));
    await Promise.all(clients.map(() => t.db.$queryRawUnsafe("SELECT 1")));

    const rows = makeRows(n, shape, Date.now());
    const rowSpend =
      rows.entity.reduce((a, r) => a + BigInt(r[3]), 0n) +
      rows.daily.reduce((a, r) => a + BigInt(r[16]), 0n);
    const sets = new Map(plan.counts.map((P) => [P, split(rows, P)]));

    // samples[P][phase][arm]: rows/s, busy cores per timed repetition.
    type Samples = Record<Phase, Record<Arm, { rate: number[]; busy: number[] }>>;
    const empty = (): Samples => ({
      insert: { prisma: { rate: [], busy: [] }, raw: { rate: [], busy: [] } },
      update: { prisma: { rate: [], busy: [] }, raw: { rate: [], busy: [] } },
    });
    const samples = new Map(plan.counts.map((P) => [P, empty()]));

    // One untimed round first: fresh tables and cold connections slow the first statements.
    for (let rep = -1; rep < plan.flushReps; rep++) {
      // Alternate the order of P and of the arms, so drift in machine load favours none.
      const order = rep % 2 === 0 ? [...plan.counts].reverse() : plan.counts;
      const arms: Arm[] = rep % 2 === 0 ? ["raw", "prisma"] : ["prisma", "raw"];
      const line: string[] = [];
      for (const P of order) {
        const parts = sets.get(P) ?? [];
        for (const arm of arms) {
          await admin.query(`TRUNCATE ${ALL_TABLES.map((x) => `"${x}"`).join(", ")}`);
          for (const phase of ["insert", "update"] as const) {
            const work: { batches: BatchToApply[]; fence: Fence }[] = parts.map((set, p) => ({
              batches: toBatches(set, plan.rowsPerJob, `${arm}-P${P}-${rep}-${phase}-p${p}`),
              fence: fence(p),
            }));
            const pg0 = serverCpuTicks();
            const timed = await timeAsync(async () => {
              await Promise.all(
                work.map(({ batches, fence: f }, p) =>
                  arm === "raw"
                    ? rawApply(clients[p] as pg.Client, batches, f)
                    : t.db.$transaction((tx) => applyBatches(tx, batches, { fence: f }), {
                        timeout: 600_000,
                        maxWait: 600_000,
                      }),
                ),
              );
            });
            const pgSeconds = (serverCpuTicks() - pg0) / 100;
            const wall = timed.wallNs / 1e9;
            if (rep < 0) continue;
            const s = samples.get(P)?.[phase][arm];
            s?.rate.push(n / wall);
            s?.busy.push((pgSeconds + timed.cpuNs / 1e9) / wall);
            if (phase === "update") line.push(`P=${P} ${arm} ${Math.round(n / wall)}`);
          }
          // After insert + update every row holds twice its spend, whatever P wrote it.
          const state = await tableState(admin);
          if (state.rows !== n || state.spendPico !== 2n * rowSpend) {
            throw new Error(
              `${arm} arm at P=${P} left ${state.rows} rows / ${state.spendPico} pico, expected ${n} / ${2n * rowSpend}`,
            );
          }
        }
      }
      if (rep >= 0)
        progress(
          S,
          `${n} rows rep ${rep + 1}/${plan.flushReps}, update rows/s: ${line.join(", ")}`,
        );
    }

    const base = samples.get(plan.counts[0] ?? 1);
    const byP = plan.counts.map((P): PartitionFlushResult => {
      const s = samples.get(P) ?? empty();
      const phase = (ph: Phase): PartitionPhaseResult => {
        const vs = (arm: Arm): Spread =>
          spread(s[ph][arm].rate.map((r, i) => r / (base?.[ph][arm].rate[i] ?? Number.NaN)));
        return {
          rowsPerSec: { prisma: spread(s[ph].prisma.rate), raw: spread(s[ph].raw.rate) },
          vsP1: { prisma: vs("prisma"), raw: vs("raw") },
          prismaVsRaw: spread(s[ph].prisma.rate.map((r, i) => r / (s[ph].raw.rate[i] ?? 0))),
          busyCores: { prisma: spread(s[ph].prisma.busy), raw: spread(s[ph].raw.busy) },
        };
      };
      const parts = sets.get(P) ?? [];
      return {
        partitions: P,
        rowsPerPartition: parts.map((x) => x.entity.length + x.daily.length),
        batchesPerPartition: parts.map((x) => toBatches(x, plan.rowsPerJob, "count").length),
        insert: phase("insert"),
        update: phase("update"),
      };
    });
    return {
      database: t.name,
      rows: n,
      entityRows: rows.entity.length,
      dailyRows: rows.daily.length,
      cores,
      byP,
    };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    await admin.end().catch(() => undefined);
    await res.dropDatabase(t);
  }
}

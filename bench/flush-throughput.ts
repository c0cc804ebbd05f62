/**
 * Section 2: distinct rows committed per second by applyBatches inside a
 * Prisma interactive transaction, next to the raw `pg` baseline
 * (raw-upsert.ts) writing the same rows into the same tables, in the same run.
 * Two phases per size: every row new (the INSERT path) and every row already
 * there (the ON CONFLICT DO UPDATE path, what a flush mostly does all day).
 */
import pg from "pg";
import type { TrafficShape } from "../src/demo/traffic.js";
import { mergeRows } from "../src/persist/merge.js";
import { premerge } from "../src/persist/premerge.js";
import { decimalToPico } from "../src/contract/money.js";
import { applyBatches, type BatchToApply, type Fence } from "../src/persist/apply-batches.js";
import { DAILY_TABLES, ENTITY_TABLES } from "../src/persist/tables.js";
import { Aggregator } from "../src/produce/aggregator.js";
import { validateSpendEvent } from "../src/produce/spend-event.js";
import type { DailyRow, EntityRow } from "../src/contract/spend-batch.js";
import { trafficGenerator } from "../src/demo/traffic.js";
import type { TestDatabase } from "../test/support/db.js";
import type { FlushPlan } from "./plan.js";
import { prepareCopyStaging, rawCopyApply } from "./raw-copy.js";
import { rawApply } from "./raw-upsert.js";
import type { Resources } from "./resources.js";
import { progress, spread, timeAsync, timeSync, type Spread } from "./util.js";

export interface PhaseResult {
  /** Rows per second, Prisma + applyBatches. */
  prismaRowsPerSec: Spread;
  /** Rows per second, raw pg, same statements. */
  rawRowsPerSec: Spread;
  /** prisma / raw per repetition (all arms measured back to back), median. */
  ratio: Spread;
  /** Rows per second, raw pg with COPY into staging tables (raw-copy.ts). */
  copyRowsPerSec: Spread;
  /** prisma / COPY per repetition, median. */
  ratioCopy: Spread;
}

type Arm = "prisma" | "raw" | "copy";

export interface SizeResult {
  rows: number;
  entityRows: number;
  dailyRows: number;
  batches: number;
  insert: PhaseResult;
  update: PhaseResult;
  /** CPU time of mergeRows alone (no database), ms: the part of applyBatches that is not SQL. */
  mergeMs: Spread;
}

export interface FlushThroughputResult {
  database: string;
  sizes: SizeResult[];
}

export const ALL_TABLES = [
  ...Object.values(ENTITY_TABLES).map((t) => t.table),
  ...Object.values(DAILY_TABLES).map((t) => t.table),
  "spend_applied_batch",
  "spend_flush_fence",
];

/** Distinct rows as producers really seal them: aggregated realistic traffic, trimmed to n. */
export function makeRows(
  n: number,
  shape: TrafficShape,
  now: number,
): { entity: EntityRow[]; daily: DailyRow[] } {
  const gen = trafficGenerator(n, shape, () => now);
  const agg = new Aggregator();
  while (agg.heldRowCount < n) agg.add(validateSpendEvent(gen(), undefined, now));
  const { entity, daily } = agg.drain();
  const total = entity.length + daily.length;
  const ne = Math.min(entity.length, Math.round((n * entity.length) / total));
  return { entity: entity.slice(0, ne), daily: daily.slice(0, n - ne) };
}

export function toBatches(
  rows: { entity: EntityRow[]; daily: DailyRow[] },
  perJob: number,
  tag: string,
): BatchToApply[] {
  const out: BatchToApply[] = [];
  for (let i = 0; i < rows.entity.length; i += perJob)
    out.push({ batchId: `${tag}.e${i}`, entity: rows.entity.slice(i, i + perJob) });
  for (let i = 0; i < rows.daily.length; i += perJob)
    out.push({ batchId: `${tag}.d${i}`, daily: rows.daily.slice(i, i + perJob) });
  return out;
}

/** Row count and spend of every spend table: both arms must leave the same thing behind. */
export async function tableState(client: pg.Client): Promise<{ rows: number; spendPico: bigint }> {
  let rows = 0;
  let spendPico = 0n;
  for (const table of ALL_TABLES.slice(0, -2)) {
    const r = await client.query<{ n: string; s: string | null }>(
      `SELECT count(*)::text AS n, sum(spend)::text AS s FROM "${table}"`,
    );
    rows += Number(r.rows[0]?.n ?? 0);
    spendPico += decimalToPico(r.rows[0]?.s ?? "0");
  }
  return { rows, spendPico };
}

export async function measureFlushThroughput(
  plan: FlushPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<FlushThroughputResult> {
  const S = "flush";
  const t: TestDatabase = await res.database("flush");
  const client = new pg.Client({ connectionString: t.url });
  await client.connect();
  let token = 0n;
  const fence = (): Fence => ({ partition: "bench:0", token: ++token, holder: "bench" });
  const sizes: SizeResult[] = [];
  try {
    // Connections and prepared plans warm on both sides before anything is timed.
    await t.db.$queryRawUnsafe("SELECT 1");
    await client.query("SELECT 1");
    await prepareCopyStaging(client);
    const now = Date.now();
    for (const { rows: n, reps } of plan.sizes) {
      const rows = makeRows(n, shape, now);
      const rowSpend =
        rows.entity.reduce((a, r) => a + BigInt(r[3]), 0n) +
        rows.daily.reduce((a, r) => a + BigInt(r[16]), 0n);
      const newPhase = () => ({
        prisma: [] as number[],
        raw: [] as number[],
        copy: [] as number[],
        ratio: [] as number[],
        ratioCopy: [] as number[],
      });
      const phases = { insert: newPhase(), update: newPhase() };
      const mergeMs: number[] = [];
      let batchCount = 0;
      // One untimed round first: the first statements against fresh tables are slower for both.
      for (let rep = -1; rep < reps; rep++) {
        // Each arm takes each place in the order in turn: whatever the machine does
        // to the first or last of a round is shared out.
        const order: Arm[] = ["prisma", "raw", "copy"];
        const arms = order.map((_, i) => order[(i + rep + 1) % order.length] as Arm);
        const secs: Record<Arm, { insert: number; update: number }> = {
          prisma: { insert: 0, update: 0 },
          raw: { insert: 0, update: 0 },
          copy: { insert: 0, update: 0 },
        };
        for (const arm of arms) {
          await client.query(`TRUNCATE ${ALL_TABLES.map((x) => `"${x}"`).join(", ")}`);
          for (const phase of ["insert", "update"] as const) {
            const batches = toBatches(rows, plan.rowsPerJob, `${arm}-${n}-${rep}-${phase}`);
            batchCount = batches.length;
            const f = fence();
            const timed = await timeAsync(async () => {
              if (arm === "raw") await rawApply(client, batches, f);
              else if (arm === "copy") await rawCopyApply(client, batches, f);
              else {
                // As the flush does it: merged (and the statement built) before
                // the transaction opens, timed all the same.
                const premerged = premerge(
                  batches,
                  mergeRows(
                    batches.map((b) => b.entity ?? []),
                    batches.map((b) => b.daily ?? []),
                  ),
                );
                await t.db.$transaction(
                  (tx) => applyBatches(tx, batches, { fence: f, premerged }),
                  { timeout: 600_000, maxWait: 600_000 },
                );
              }
            });
            secs[arm][phase] = timed.wallNs / 1e9;
          }
          // After insert + update every row holds twice its spend; anything else is a bug in an arm.
          const state = await tableState(client);
          if (state.rows !== n || state.spendPico !== 2n * rowSpend) {
            throw new Error(
              `${arm} arm left ${state.rows} rows / ${state.spendPico} pico, expected ${n} / ${2n * rowSpend}`,
            );
          }
        }
        if (rep < 0) continue;
        for (const phase of ["insert", "update"] as const) {
          const p = n / secs.prisma[phase];
          const r = n / secs.raw[phase];
          const c = n / secs.copy[phase];
          phases[phase].prisma.push(p);
          phases[phase].raw.push(r);
          phases[phase].copy.push(c);
          phases[phase].ratio.push(p / r);
          phases[phase].ratioCopy.push(p / c);
        }
        const batches = toBatches(rows, plan.rowsPerJob, "merge");
        mergeMs.push(
          timeSync(() =>
            mergeRows(
              batches.map((b) => b.entity ?? []),
              batches.map((b) => b.daily ?? []),
            ),
          ).cpuNs / 1e6,
        );
        progress(
          S,
          `${n} rows rep ${rep + 1}/${reps}: ` +
            (["insert", "update"] as const)
              .map(
                (ph) =>
                  `${ph} prisma ${Math.round(n / secs.prisma[ph])} rows/s vs raw ${Math.round(n / secs.raw[ph])}, COPY ${Math.round(n / secs.copy[ph])}`,
              )
              .join("; "),
        );
      }
      const phaseResult = (p: ReturnType<typeof newPhase>): PhaseResult => ({
        prismaRowsPerSec: spread(p.prisma),
        rawRowsPerSec: spread(p.raw),
        ratio: spread(p.ratio),
        copyRowsPerSec: spread(p.copy),
        ratioCopy: spread(p.ratioCopy),
      });
      sizes.push({
        rows: n,
        entityRows: rows.entity.length,
        dailyRows: rows.daily.length,
        batches: batchCount,
        insert: phaseResult(phases.insert),
        update: phaseResult(phases.update),
        mergeMs: spread(mergeMs),
      });
    }
  } finally {
    await client.end();
    await res.dropDatabase(t);
  }
  return { database: t.name, sizes };
}

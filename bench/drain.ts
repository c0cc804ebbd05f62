/**
 * Section 7: draining a backlog. P producers leave a backlog in Redis while
 * no worker runs (backlog.ts); then one flush worker process starts, with the
 * product's default configuration, and drains it. Measured: sealed rows per
 * second from the worker being ready to every job committed, the worker's
 * and PostgreSQL's CPU, and next to it, in the same run, a raw `pg` client
 * writing the same rows, merged per transaction as the flush takes them,
 * with a hand-written multi-row upsert (raw-upsert.ts): what PostgreSQL
 * alone needs. Both are reconciled exactly against the producers' ledger.
 */
import pg from "pg";
import type { TrafficShape } from "../src/demo/traffic.js";
import { mergeRows } from "../src/persist/merge.js";
import { SEALED_ROWS_PER_ROW_WRITTEN } from "../src/flush/flusher.js";
import type { SpendQueues } from "../src/queue/spend-queues.js";
import { openSpendQueues } from "../src/queue/spend-queues.js";
import { createRedis, type RedisClient } from "../src/redis/connection.js";
import { redisKeys } from "../src/redis/keys.js";
import { readTotals } from "../test/support/db-totals.js";
import { testConfig } from "../test/support/redis.js";
import { buildBacklog, groupAsTaken, type Backlog, type BacklogPlan } from "./backlog.js";
import { DbSampler } from "./db-stats.js";
import { reconcile, type Reconciliation } from "./pipeline.js";
import { barrierKeys, lastJsonLine, waitForCount, type WorkerReport } from "./protocol.js";
import { rawApplyMerged } from "./raw-upsert.js";
import type { Resources } from "./resources.js";
import { progress, sleep } from "./util.js";
import type { Spawned } from "../test/support/processes.js";
import type { AppConfig } from "../src/config/config.js";
import { Redis } from "ioredis";
import { TEST_REDIS_URL } from "../test/support/redis.js";

export interface DrainPlan extends BacklogPlan {
  /** Longest the drain (or the recovery) may take before the section fails. */
  timeoutMs: number;
  /**
   * max_rows_per_transaction of the workers; unset: the default. The smoke
   * run's small backlog sets it low, so its drain still spans several
   * transactions and the recovery's kill lands inside it.
   */
  maxRowsPerTransaction?: number;
}

export interface BacklogSummary {
  producers: number;
  intervals: number;
  eventsPerInterval: number;
  events: number;
  jobs: number;
  sealedRows: number;
  distinctRows: number;
}

export interface RawReference {
  transactions: number;
  /** Rows written, merged per transaction (what the upserts touched). */
  rowsWritten: number;
  wallMs: number;
  /** The backlog's sealed rows over the reference's wall time: comparable with the drain's. */
  sealedRowsPerSec: number;
  reconciled: boolean;
}

export interface DrainRun {
  /** Worker ready (its barrier) to every job committed and acknowledged. */
  wallMs: number;
  /** Process spawned to ready (loading, connections): not part of wallMs. */
  startMs: number;
  sealedRowsPerSec: number;
  transactions: number;
  /** Rows the transactions wrote (merged: one per database row per transaction). */
  rowsWritten: number;
  duplicates: number;
  outcomes: Record<string, number>;
  /** The worker process's CPU over its life, and PostgreSQL's backends' over the drain. */
  workerCpuSeconds: number;
  dbCpuSeconds: number;
  /** The worker's peak resident memory, MB. */
  workerMaxRssMb: number;
  errors: string[];
  reconciliation: Reconciliation;
}

export interface DrainResult {
  backlog: BacklogSummary;
  raw: RawReference;
  drain: DrainRun;
}

export function summarize(plan: BacklogPlan, b: Backlog): BacklogSummary {
  return {
    producers: plan.producers,
    intervals: plan.intervals,
    eventsPerInterval: plan.eventsPerInterval,
    events: b.events,
    jobs: b.jobs,
    sealedRows: b.sealedRows,
    distinctRows: b.distinctRows,
  };
}

/** Spend jobs not yet acknowledged (waiting, active, delayed, prioritised). */
export async function pendingSpendJobs(queues: SpendQueues): Promise<number> {
  const counts = await Promise.all([
    queues.entity.getJobCounts("wait", "active", "delayed", "prioritized"),
    queues.daily.getJobCounts("wait", "active", "delayed", "prioritized"),
  ]);
  return counts.flatMap((c) => Object.values(c)).reduce((a, b) => a + b, 0);
}

/** A backlog in a fresh database and prefix, with the queues to watch it drain. */
export interface BacklogSetup {
  label: string;
  prefix: string;
  url: string;
  dbName: string;
  config: AppConfig;
  redis: RedisClient;
  queues: SpendQueues;
  backlog: Backlog;
  close(): Promise<void>;
}

export async function setUpBacklog(
  label: string,
  plan: BacklogPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<BacklogSetup> {
  const t = await res.database(label);
  const prefix = res.prefix(label.replaceAll("_", "-"));
  const config = testConfig(prefix, t.url);
  const redis = createRedis(config.redis, "worker");
  const queues = openSpendQueues(redis, redisKeys(prefix));
  try {
    const built = Date.now();
    const backlog = await buildBacklog(plan, shape, config, queues, built);
    progress(
      label,
      `backlog in Redis: ${backlog.jobs} jobs, ${backlog.sealedRows} sealed rows (${backlog.distinctRows} distinct) from ${backlog.events} events of ${plan.producers} producers × ${plan.intervals} intervals, built in ${((Date.now() - built) / 1000).toFixed(1)} s`,
    );
    return {
      label,
      prefix,
      url: t.url,
      dbName: t.name,
      config,
      redis,
      queues,
      backlog,
      async close() {
        await queues.close().catch(() => undefined);
        redis.disconnect();
        await res.dropDatabase(t).catch(() => undefined);
        await res.cleanPrefix(prefix).catch(() => undefined);
      },
    };
  } catch (err) {
    await queues.close().catch(() => undefined);
    redis.disconnect();
    throw err;
  }
}

/**
 * A flush worker process with the product's defaults (flush-worker-child.ts);
 * resolves once it is ready. BENCH_CPU_PROF_DIR=<dir> writes its CPU profile
 * there (<name>.cpuprofile) when it stops.
 */
export async function startWorker(
  s: BacklogSetup,
  plan: DrainPlan,
  res: Resources,
  name: string,
): Promise<{ child: Spawned; spawnedAt: number; readyAt: number }> {
  const profDir = process.env.BENCH_CPU_PROF_DIR;
  const control = new Redis(TEST_REDIS_URL);
  const keys = barrierKeys(s.prefix);
  try {
    const before = Number((await control.get(keys.workerReady)) ?? "0");
    const spawnedAt = Date.now();
    const child = res.spawn("flush-worker-child.ts", {
      PREFIX: s.prefix,
      DATABASE_URL: s.url,
      DEFAULTS: "1",
      HOLDER: name,
      ...(plan.maxRowsPerTransaction !== undefined
        ? { MAX_ROWS: String(plan.maxRowsPerTransaction) }
        : {}),
      ...(profDir !== undefined && profDir !== ""
        ? { CPU_PROFILE: `${profDir}/${name}.cpuprofile` }
        : {}),
    });
    let exited: string | undefined;
    void child.done.then((r) => {
      exited = `${name} exited ${String(r.code ?? r.signal)}: ${r.stderr.slice(-1500)}`;
    });
    await waitForCount(control, keys.workerReady, before + 1, 120_000, () => exited);
    return { child, spawnedAt, readyAt: Date.now() };
  } finally {
    control.disconnect();
  }
}

/** Polls until every spend job is acknowledged (so committed); the time it saw that. */
export async function waitDrained(
  s: BacklogSetup,
  timeoutMs: number,
  onPoll?: (pending: number) => void,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pending = await pendingSpendJobs(s.queues);
    if (pending === 0) return Date.now();
    onPoll?.(pending);
    if (Date.now() > deadline) throw new Error(`${s.label}: ${pending} jobs still pending`);
    await sleep(25);
  }
}

export async function stopWorker(child: Spawned): Promise<WorkerReport> {
  child.kill("SIGTERM");
  const out = await child.done;
  return lastJsonLine(out.stdout) as WorkerReport;
}

/** The raw reference: the backlog's rows, merged per transaction as taken, written by bare `pg`. */
async function rawReference(
  backlog: Backlog,
  config: AppConfig,
  plan: DrainPlan,
  res: Resources,
): Promise<RawReference> {
  const t = await res.database("drain_raw");
  const client = new pg.Client({ connectionString: t.url });
  await client.connect();
  try {
    const maxRows = plan.maxRowsPerTransaction ?? config.worker.maxRowsPerTransaction;
    const groups = groupAsTaken(backlog, {
      maxJobs: config.worker.maxJobsPerFlush,
      maxRows,
      maxSealedRows: SEALED_ROWS_PER_ROW_WRITTEN * maxRows,
    });
    // Merged before the clock starts: the reference measures PostgreSQL, not the merge.
    const txs = groups.map((g) => ({
      ids: g.map((j) => j.batchId),
      merged: mergeRows(
        g.map((j) => j.entity ?? []),
        g.map((j) => j.daily ?? []),
      ),
    }));
    await client.query("SELECT 1");
    let token = 0n;
    let rows = 0;
    const t0 = performance.now();
    for (const tx of txs)
      rows += await rawApplyMerged(client, tx.merged, tx.ids, {
        partition: "bench:0",
        token: ++token,
        holder: "raw",
      });
    const wallMs = performance.now() - t0;
    const r = reconcile(backlog.ledger.totals, await readTotals(t.url));
    return {
      transactions: txs.length,
      rowsWritten: rows,
      wallMs,
      sealedRowsPerSec: (1000 * backlog.sealedRows) / wallMs,
      reconciled: r.ok,
    };
  } finally {
    await client.end();
    await res.dropDatabase(t);
  }
}

export async function measureDrain(
  plan: DrainPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<DrainResult> {
  const S = "drain";
  const s = await setUpBacklog("drain", plan, shape, res);
  try {
    const raw = await rawReference(s.backlog, s.config, plan, res);
    progress(
      S,
      `raw pg reference: ${raw.transactions} transactions, ${raw.rowsWritten} rows written in ${(raw.wallMs / 1000).toFixed(2)} s: ${Math.round(raw.sealedRowsPerSec)} sealed rows/s${raw.reconciled ? "" : " (DID NOT RECONCILE)"}`,
    );

    const sampler = new DbSampler(s.dbName, 250, () => Date.now());
    await sampler.start();
    const w = await startWorker(s, plan, res, "drain-worker");
    let last = 0;
    const drainedAt = await waitDrained(s, plan.timeoutMs, (pending) => {
      if (Date.now() - last < 2_000) return;
      last = Date.now();
      progress(S, `${pending} jobs left`);
    });
    const cpu = await sampler.stop();
    const report = await stopWorker(w.child);
    const wallMs = drainedAt - w.readyAt;
    const reconciliation = reconcile(s.backlog.ledger.totals, await readTotals(s.url));
    const drain: DrainRun = {
      wallMs,
      startMs: w.readyAt - w.spawnedAt,
      sealedRowsPerSec: (1000 * s.backlog.sealedRows) / wallMs,
      transactions: report.transactions,
      rowsWritten: report.entityRows + report.dailyRows,
      duplicates: report.duplicates,
      outcomes: report.outcomes,
      workerCpuSeconds: report.cpuSeconds,
      workerMaxRssMb: report.maxRssMb,
      dbCpuSeconds: cpu.backendCpuSeconds,
      errors: report.errors,
      reconciliation,
    };
    progress(
      S,
      `drained in ${(wallMs / 1000).toFixed(2)} s: ${Math.round(drain.sealedRowsPerSec)} sealed rows/s in ${drain.transactions} transactions writing ${drain.rowsWritten} rows (${(raw.sealedRowsPerSec / drain.sealedRowsPerSec).toFixed(2)}x slower than raw pg); worker CPU ${drain.workerCpuSeconds.toFixed(1)} s (peak RSS ${Math.round(drain.workerMaxRssMb)} MB), PostgreSQL CPU ${drain.dbCpuSeconds.toFixed(1)} s; ${reconciliation.ok ? "reconciled exactly" : `RECONCILIATION FAILED: ${reconciliation.mismatchedRows} rows differ`}`,
    );
    return { backlog: summarize(plan, s.backlog), raw, drain };
  } finally {
    await s.close();
  }
}

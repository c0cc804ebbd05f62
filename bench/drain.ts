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
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
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
import { progress, sleep, spread, type Spread } from "./util.js";
import type { Spawned } from "../test/support/processes.js";
import type { AppConfig } from "../src/config/config.js";
import { Redis } from "ioredis";
import { TEST_REDIS_URL } from "../test/support/redis.js";

export interface DrainPlan extends BacklogPlan {
  /** Longest the drain (or the recovery) may take before the section fails. */
  timeoutMs: number;
  /** Repetitions, each on a fresh backlog: the figures are their medians. */
  reps: number;
  /**
   * The drain before the pipelined flush, to hold this one to twice it when
   * no baseline checkout runs in the same run (BENCH_DRAIN_BASELINE): its
   * median sealed rows/s on the machine the full runs use, and where from.
   */
  before?: { commit: string; sealedRowsPerSec: number; measured: string };
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

/** One repetition: a fresh backlog, the raw reference, this checkout's worker, and maybe the baseline's. */
export interface DrainRep {
  raw: RawReference;
  drain: DrainRun;
  /** The same backlog drained by the baseline checkout's worker (BENCH_DRAIN_BASELINE). */
  baseline?: DrainRun;
}

export interface DrainResult {
  backlog: BacklogSummary;
  reps: DrainRep[];
  sealedRowsPerSec: Spread;
  rawSealedRowsPerSec: Spread;
  /** Set when a baseline checkout was measured in the same run, alternating with this one. */
  baseline?: { dir: string; commit: string; sealedRowsPerSec: Spread };
  reconciled: boolean;
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
  let closing: Promise<void> | undefined;
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
      // Idempotent: a repetition's finally closes what its arms may have closed.
      close() {
        closing ??= (async () => {
          await queues.close().catch(() => undefined);
          redis.disconnect();
          await res.dropDatabase(t).catch(() => undefined);
          await res.cleanPrefix(prefix).catch(() => undefined);
        })();
        return closing;
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
  /** A checkout to run the worker of (its bench/flush-worker-child.ts); default this one. */
  dir?: string,
): Promise<{ child: Spawned; spawnedAt: number; readyAt: number }> {
  const profDir = process.env.BENCH_CPU_PROF_DIR;
  const control = new Redis(TEST_REDIS_URL);
  const keys = barrierKeys(s.prefix);
  try {
    const before = Number((await control.get(keys.workerReady)) ?? "0");
    const spawnedAt = Date.now();
    const env = {
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
    };
    const child =
      dir === undefined
        ? res.spawn("flush-worker-child.ts", env)
        : res.spawnAt(join(dir, "bench/flush-worker-child.ts"), env);
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

/** Drains the backlog in `s` with one worker (this checkout's, or `dir`'s); reconciles it. */
async function drainOnce(
  s: BacklogSetup,
  plan: DrainPlan,
  res: Resources,
  name: string,
  dir?: string,
): Promise<DrainRun> {
  const sampler = new DbSampler(s.dbName, 250, () => Date.now());
  await sampler.start();
  const w = await startWorker(s, plan, res, name, dir);
  let last = 0;
  const drainedAt = await waitDrained(s, plan.timeoutMs, (pending) => {
    if (Date.now() - last < 2_000) return;
    last = Date.now();
    progress("drain", `${name}: ${pending} jobs left`);
  });
  const cpu = await sampler.stop();
  const report = await stopWorker(w.child);
  const wallMs = drainedAt - w.readyAt;
  return {
    wallMs,
    startMs: w.readyAt - w.spawnedAt,
    sealedRowsPerSec: (1000 * s.backlog.sealedRows) / wallMs,
    transactions: report.transactions,
    rowsWritten: report.entityRows + report.dailyRows,
    duplicates: report.duplicates,
    outcomes: report.outcomes,
    workerCpuSeconds: report.cpuSeconds ?? Number.NaN,
    // A baseline checkout's worker may not report it.
    workerMaxRssMb: report.maxRssMb ?? Number.NaN,
    dbCpuSeconds: cpu.backendCpuSeconds,
    errors: report.errors,
    reconciliation: reconcile(s.backlog.ledger.totals, await readTotals(s.url)),
  };
}

function describe(d: DrainRun): string {
  return `drained in ${(d.wallMs / 1000).toFixed(2)} s: ${Math.round(d.sealedRowsPerSec)} sealed rows/s in ${d.transactions} transactions writing ${d.rowsWritten} rows; worker CPU ${d.workerCpuSeconds.toFixed(1)} s (peak RSS ${Math.round(d.workerMaxRssMb)} MB), PostgreSQL CPU ${d.dbCpuSeconds.toFixed(1)} s; ${d.reconciliation.ok ? "reconciled exactly" : `RECONCILIATION FAILED: ${d.reconciliation.mismatchedRows} rows differ`}`;
}

/**
 * BENCH_DRAIN_BASELINE=<dir>: a checkout of another commit (with its
 * node_modules and generated Prisma client) whose worker drains the same
 * backlog in every repetition, alternating with this checkout's: the
 * before and after of a change, measured in one run on one machine.
 */
function baselineDir(): { dir: string; commit: string } | undefined {
  const dir = process.env.BENCH_DRAIN_BASELINE;
  if (dir === undefined || dir === "") return undefined;
  let commit = "unknown";
  try {
    commit = execFileSync("git", ["-C", dir, "rev-parse", "--short", "HEAD"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    // Not a git checkout (an exported tree): its BASELINE_COMMIT file, if any, names it.
    commit = readFileSafe(join(dir, "BASELINE_COMMIT")) ?? commit;
  }
  return { dir, commit };
}

function readFileSafe(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return undefined;
  }
}

export async function measureDrain(
  plan: DrainPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<DrainResult> {
  const S = "drain";
  const base = baselineDir();
  const reps: DrainRep[] = [];
  let backlog: BacklogSummary | undefined;
  for (let rep = 1; rep <= plan.reps; rep++) {
    const s = await setUpBacklog("drain", plan, shape, res);
    let raw: RawReference;
    let drain: DrainRun | undefined;
    let baseline: DrainRun | undefined;
    try {
      backlog = summarize(plan, s.backlog);
      raw = await rawReference(s.backlog, s.config, plan, res);
      progress(
        S,
        `rep ${rep}/${plan.reps}: raw pg reference: ${raw.transactions} transactions, ${raw.rowsWritten} rows written in ${(raw.wallMs / 1000).toFixed(2)} s: ${Math.round(raw.sealedRowsPerSec)} sealed rows/s${raw.reconciled ? "" : " (DID NOT RECONCILE)"}`,
      );
      // With a baseline, each arm drains a backlog of its own, built the same
      // way, and which goes first alternates, so drift in the machine's load hits both.
      const arms: ("this" | "baseline")[] =
        base === undefined ? ["this"] : rep % 2 === 0 ? ["baseline", "this"] : ["this", "baseline"];
      for (const [i, arm] of arms.entries()) {
        const target = i === 0 ? s : await setUpBacklog("drain", plan, shape, res);
        try {
          if (arm === "this") drain = await drainOnce(target, plan, res, "drain-worker");
          else {
            baseline = await drainOnce(target, plan, res, "baseline-worker", base?.dir);
            progress(S, `rep ${rep}/${plan.reps}: baseline ${describe(baseline)}`);
          }
        } finally {
          if (target !== s) await target.close();
        }
      }
    } finally {
      await s.close();
    }
    if (drain === undefined) throw new Error("this checkout's worker did not run");
    progress(S, `rep ${rep}/${plan.reps}: this checkout ${describe(drain)}`);
    reps.push({ raw, drain, ...(baseline !== undefined ? { baseline } : {}) });
  }
  if (backlog === undefined) throw new Error("no repetition ran");
  const result: DrainResult = {
    backlog,
    reps,
    sealedRowsPerSec: spread(reps.map((r) => r.drain.sealedRowsPerSec)),
    rawSealedRowsPerSec: spread(reps.map((r) => r.raw.sealedRowsPerSec)),
    reconciled: reps.every(
      (r) =>
        r.raw.reconciled &&
        r.drain.reconciliation.ok &&
        (r.baseline === undefined || r.baseline.reconciliation.ok),
    ),
  };
  if (base !== undefined)
    result.baseline = {
      ...base,
      sealedRowsPerSec: spread(reps.flatMap((r) => r.baseline?.sealedRowsPerSec ?? [])),
    };
  return result;
}

/**
 * Sections 3 and 4: one end-to-end run with N producer processes, buffered
 * (QueueSink + a FlushWorker process) or direct (each producer's DirectSink
 * writing to PostgreSQL itself). Measures the recording rate, backlog depth,
 * staleness of marker events, PostgreSQL's deadlocks, rollbacks and CPU, and
 * reconciles every row exactly against a replay of what was recorded.
 */
import { Redis } from "ioredis";
import pg from "pg";
import { trafficGenerator } from "../src/demo/traffic.js";
import { PICO_PER_USD } from "../src/contract/money.js";
import type { Spawned } from "../test/support/processes.js";
import { diffTotals, readTotals } from "../test/support/db-totals.js";
import { Ledger, type Totals } from "../test/support/ledger.js";
import { TEST_REDIS_URL } from "../test/support/redis.js";
import { redisKeys } from "../src/redis/keys.js";
import type { SpendQueues } from "../src/queue/spend-queues.js";
import { createRedis } from "../src/redis/connection.js";
import { openPartitionQueues } from "../src/queue/spend-queues.js";
import { testConfig } from "../test/support/redis.js";
import { counterDelta, dbCounters, DbSampler, type DbCounters, type DbSample } from "./db-stats.js";
import { ADMIN_DATABASE_URL } from "./machine.js";
import type { PipelinePlan } from "./plan.js";
import {
  barrierKeys,
  lastJsonLine,
  MARKER_PREFIX,
  MARKER_SPEND,
  waitForCount,
  type ProducerReport,
  type SinkMode,
  type WorkerReport,
} from "./protocol.js";
import type { Resources } from "./resources.js";
import { errorMessage, progress, quantile, sleep } from "./util.js";

export interface BacklogSample {
  t: number;
  /** Spend jobs waiting, active, delayed or prioritised in both queues. */
  jobs: number;
  redisMemoryMb: number;
}

export interface Reconciliation {
  ok: boolean;
  expectedRows: number;
  actualRows: number;
  /** Rows whose values differ, are missing or should not exist. */
  mismatchedRows: number;
  /** Spend recorded (sum over key rows: every generated request charges exactly one key). */
  expectedKeySpendUsd: string;
  actualKeySpendUsd: string;
  /** expected - actual over key rows, USD: positive is spend lost. */
  lostSpendUsd: string;
  /** A few differing rows, for the log. */
  sample: string[];
}

export interface PipelineRunResult {
  mode: SinkMode;
  run: number;
  /** Flush partitions (the partitions section); absent: the plain unpartitioned setup. */
  partitions?: number;
  producers: number;
  /** Paced runs: the events per second each producer was held to. */
  ratePerProducer?: number;
  durationMs: number;
  /** Events drawn by the producers during the window, and how many record() refused. */
  events: number;
  rejectedEvents: number;
  /** Sum over producers of events / own window: the recording rate while everyone ran. */
  eventsPerSec: number;
  /** Accepted events / (go until the last of them is in PostgreSQL): durable throughput. */
  durableEventsPerSec: number;
  /** Window end until every producer's close() returned, ms (max over producers). */
  closeMs: number;
  /** Window end until everything was in PostgreSQL (buffered: queues empty, no flush running). */
  drainMs: number;
  /** Events recorded per second of the window, all producers. */
  eventsTimeline: number[];
  backlog: BacklogSample[];
  maxBacklogJobs: number;
  backlogAtWindowEnd: number;
  /** Largest growth of Redis used_memory over its value at go, MB (the whole Redis: shared). */
  redisMemoryGrowthMb: number;
  /** Rows committed per second (buffered: the worker's commits; direct: not known per second). */
  committedRowsTimeline: number[];
  staleness: {
    markers: number;
    seen: number;
    p50Ms: number;
    p99Ms: number;
    maxMs: number;
    pollMs: number;
  };
  db: DbCounters & {
    backendCpuSeconds: number;
    serverCpuSeconds: number;
    maxLockWaits: number;
    meanLockWaits: number;
  };
  /** Failed sends counted by the producers' spend_producer_enqueue_failures_total (each retried). */
  enqueueFailures: number;
  closeErrors: string[];
  /** Producer-seconds spent held back by back-pressure (sum over producers), ms. */
  pausedMs: number;
  /** The part of pausedMs in which producers admitted nothing at all, ms (sum over producers). */
  stoppedMs: number;
  worker?: {
    outcomes: Record<string, number>;
    transactions: number;
    batches: number;
    duplicates: number;
    rows: number;
    /** One flush transaction, ms (median and max): a committed flush's lock time over its transactions. */
    flushMs: { median: number; max: number };
    errors: string[];
  };
  reconciliation: Reconciliation;
}

function perTransactionMs(w: WorkerReport): number[] {
  return w.commits.map((c) => c.ms / Math.max(1, c.transactions));
}

function sumKeySpend(t: Totals): bigint {
  let s = 0n;
  for (const [k, v] of t) if (k.startsWith("entity|key|")) s += v[0] ?? 0n;
  return s;
}

function usd(pico: bigint): string {
  const neg = pico < 0n;
  const abs = neg ? -pico : pico;
  const whole = abs / BigInt(PICO_PER_USD);
  const frac = (abs % BigInt(PICO_PER_USD)).toString().padStart(12, "0");
  return `${neg ? "-" : ""}${whole}.${frac}`;
}

export function reconcile(expected: Totals, actual: Totals): Reconciliation {
  let mismatched = 0;
  for (const [k, v] of expected) if (actual.get(k)?.join(",") !== v.join(",")) mismatched++;
  for (const k of actual.keys()) if (!expected.has(k)) mismatched++;
  const e = sumKeySpend(expected);
  const a = sumKeySpend(actual);
  return {
    ok: mismatched === 0,
    expectedRows: expected.size,
    actualRows: actual.size,
    mismatchedRows: mismatched,
    expectedKeySpendUsd: usd(e),
    actualKeySpendUsd: usd(a),
    lostSpendUsd: usd(e - a),
    sample: mismatched === 0 ? [] : diffTotals(expected, actual, 5),
  };
}

/** Rebuilds what every producer recorded: same seed, same fixed clock, minus refused events. */
function replay(reports: readonly ProducerReport[], plan: PipelinePlan): Ledger {
  const ledger = new Ledger();
  for (const r of reports) {
    const gen = trafficGenerator(r.seed, plan.shape, () => r.goAt);
    const refused = new Set(r.rejected);
    for (let i = 0; i < r.events; i++) {
      const e = gen();
      if (!refused.has(i)) ledger.record(e);
    }
    for (const m of r.markers)
      ledger.record({ spend: MARKER_SPEND, endUserId: m.id, startTime: m.at });
  }
  return ledger;
}

/** Polls PostgreSQL for marker end users and notes when each was first visible. */
class MarkerPoller {
  private readonly client: pg.Client;
  readonly firstSeen = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    databaseUrl: string,
    private readonly everyMs: number,
  ) {
    this.client = new pg.Client({ connectionString: databaseUrl });
  }

  async start(): Promise<void> {
    await this.client.connect();
    this.timer = setInterval(() => {
      this.running ??= this.poll()
        .catch(() => undefined)
        .finally(() => (this.running = undefined));
    }, this.everyMs);
  }

  async poll(): Promise<void> {
    const r = await this.client.query<{ id: string }>(
      `SELECT user_id AS id FROM "LiteLLM_EndUserTable" WHERE user_id >= $1 AND user_id < $2`,
      [MARKER_PREFIX, `${MARKER_PREFIX.slice(0, -1)}.`],
    );
    const now = Date.now();
    for (const { id } of r.rows) if (!this.firstSeen.has(id)) this.firstSeen.set(id, now);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.running;
    await this.client.end();
  }
}

/** Spend jobs not yet flushed (waiting, active, delayed, prioritised) over every partition's queues. */
async function pendingJobs(queues: readonly SpendQueues[]): Promise<number> {
  const counts = await Promise.all(
    queues.flatMap((q) => [
      q.entity.getJobCounts("wait", "active", "delayed", "prioritized"),
      q.daily.getJobCounts("wait", "active", "delayed", "prioritized"),
    ]),
  );
  return counts.flatMap((c) => Object.values(c)).reduce((a, b) => a + b, 0);
}

/**
 * `partitions` (buffered only): producers and the worker run partitioned
 * flush with that many partitions, the worker flushing all of them at once
 * (concurrency = partitions). Undefined: the plain setup, as deployed by default.
 */
export async function runPipeline(
  mode: SinkMode,
  run: number,
  plan: PipelinePlan,
  res: Resources,
  partitions?: number,
): Promise<PipelineRunResult> {
  const P = partitions ?? 1;
  const tag = partitions === undefined ? "" : `_p${partitions}`;
  const S =
    (partitions === undefined ? `${mode} run ${run}` : `${mode} P=${partitions}`) +
    (plan.ratePerProducer !== undefined ? ` paced ${plan.ratePerProducer}/s/producer` : "");
  const t = await res.database(`e2e_${mode}${tag}`);
  const prefix = res.prefix(`e2e-${mode}${tag.replace("_", "-")}`);
  const keys = barrierKeys(prefix);
  const control = new Redis(TEST_REDIS_URL);
  const admin = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
  await admin.connect();
  const queueRedis = createRedis(testConfig(prefix, t.url).redis, "worker");
  const queues = openPartitionQueues(queueRedis, prefix, P);
  let goAt = 0;
  const poller = new MarkerPoller(t.url, plan.pollMs);
  const sampler = new DbSampler(t.name, plan.sampleMs, () => goAt);
  let sampleTimer: NodeJS.Timeout | undefined;
  const children: Spawned[] = [];
  let worker: Spawned | undefined;
  try {
    const failed: (string | undefined)[] = [];
    // A child that died would otherwise leave a wait hanging until its timeout.
    const exitedEarly = (): string | undefined => failed.find((f) => f !== undefined);
    const watch = (child: Spawned, name: string): void => {
      const slot = failed.length;
      failed.push(undefined);
      void child.done.then((r) => {
        if (r.code !== 0) failed[slot] = `${name} exited ${r.code}: ${r.stderr.slice(-1500)}`;
      });
    };

    if (mode === "buffered") {
      worker = res.spawn("flush-worker-child.ts", {
        PREFIX: prefix,
        DATABASE_URL: t.url,
        WORKER_EVERY_MS: String(plan.workerEveryMs),
        ...(partitions !== undefined ? { PARTITIONS: String(partitions) } : {}),
      });
      watch(worker, "flush worker");
      await waitForCount(control, keys.workerReady, 1, 120_000, exitedEarly);
    }
    progress(S, `starting ${plan.producers} producer processes`);
    for (let i = 0; i < plan.producers; i++) {
      const child = res.spawn("producer-child.ts", {
        MODE: mode,
        CHILD_INDEX: String(i),
        SEED: String(1_000 + i),
        PREFIX: prefix,
        DATABASE_URL: t.url,
        SHAPE: JSON.stringify(plan.shape),
        DURATION_MS: String(plan.durationMs),
        MARKER_EVERY_MS: String(plan.markerEveryMs),
        INTERVAL_MS: String(plan.intervalMs),
        ...(plan.ratePerProducer !== undefined
          ? { RATE_PER_SEC: String(plan.ratePerProducer) }
          : {}),
        JITTER_MS: String(plan.jitterMs),
        NICE: String(plan.producerNice),
        ...(mode === "buffered" ? { BACKPRESSURE_MS: String(plan.backpressureMs) } : {}),
        ...(partitions !== undefined ? { PARTITIONS: String(partitions) } : {}),
      });
      children.push(child);
      watch(child, `producer ${i}`);
    }
    await waitForCount(control, keys.ready, plan.producers, 180_000, exitedEarly);

    await poller.start();
    const before = await dbCounters(admin, t.name);
    // A little ahead, so every child (polling every 10 ms) starts on the same instant.
    goAt = Date.now() + 300;
    await sampler.start();
    const backlog: BacklogSample[] = [];
    const sampleBacklog = async (): Promise<void> => {
      const [jobs, mem] = await Promise.all([pendingJobs(queues), control.info("memory")]);
      const used = Number(/used_memory:(\d+)/.exec(mem)?.[1] ?? 0);
      backlog.push({ t: (Date.now() - goAt) / 1000, jobs, redisMemoryMb: used / 1e6 });
    };
    let sampling: Promise<void> | undefined;
    sampleTimer = setInterval(() => {
      sampling ??= sampleBacklog()
        .catch(() => undefined)
        .finally(() => (sampling = undefined));
    }, plan.sampleMs);
    await control.set(keys.go, String(goAt));
    progress(S, `recording for ${plan.durationMs / 1000} s`);

    const windowEnd = goAt + plan.durationMs;
    let lastLine = 0;
    const status = (phase: string): void => {
      if (Date.now() - lastLine < 2_000) return;
      lastLine = Date.now();
      const b = backlog[backlog.length - 1];
      const queued = mode === "buffered" ? `backlog ${b?.jobs ?? 0} jobs, ` : "";
      progress(
        S,
        `${phase} t=${Math.max(0, (Date.now() - goAt) / 1000).toFixed(0)}s ${queued}markers visible ${poller.firstSeen.size}`,
      );
    };
    while (Number((await control.get(keys.closed)) ?? "0") < plan.producers) {
      const why = exitedEarly();
      if (why !== undefined) throw new Error(why);
      if (Date.now() > windowEnd + plan.drainTimeoutMs)
        throw new Error("producers did not close in time");
      status(Date.now() < windowEnd ? "recording" : "closing producers");
      await sleep(50);
    }
    const closedAt = Date.now();
    let backlogAtWindowEnd = 0;
    for (const b of backlog) if (b.t <= plan.durationMs / 1000) backlogAtWindowEnd = b.jobs;

    if (mode === "buffered") {
      const lockKeys = Array.from({ length: P }, (_, p) => redisKeys(prefix, p).flushLock);
      for (;;) {
        const pending = await pendingJobs(queues);
        // Empty queues are not enough: the last flush may still be committing what it took.
        if (pending === 0 && (await control.exists(...lockKeys)) === 0) break;
        const why = exitedEarly();
        if (why !== undefined) throw new Error(why);
        if (Date.now() > windowEnd + plan.drainTimeoutMs)
          throw new Error(`backlog did not drain: ${pending} jobs left`);
        status("draining");
        await sleep(50);
      }
    }
    const drainedAt = Date.now();
    // So the backlog series ends where the run ends: empty.
    await sampling;
    await sampleBacklog().catch(() => undefined);
    progress(
      S,
      `all spend in PostgreSQL ${((drainedAt - windowEnd) / 1000).toFixed(1)} s after the window`,
    );

    const outputs = await Promise.all(children.map((c) => c.done));
    const reports = outputs.map((o) => lastJsonLine(o.stdout) as ProducerReport);
    // One last look, then every marker should be visible.
    await poller.poll();
    clearInterval(sampleTimer);
    await sampling;
    const cpu = await sampler.stop();
    await poller.stop();

    let workerReport: WorkerReport | undefined;
    if (worker !== undefined) {
      worker.kill("SIGTERM");
      const out = await worker.done;
      workerReport = lastJsonLine(out.stdout) as WorkerReport;
    }
    // Backends flush their statistics when they exit; every client of this database is gone now.
    await sleep(500);
    const after = await dbCounters(admin, t.name);

    progress(S, "replaying what was recorded and reading PostgreSQL back");
    const ledger = replay(reports, plan);
    const actual = await readTotals(t.url);
    const reconciliation = reconcile(ledger.totals, actual);
    progress(
      S,
      reconciliation.ok
        ? `reconciled exactly: ${reconciliation.expectedRows} rows, ${reconciliation.expectedKeySpendUsd} USD`
        : `RECONCILIATION FAILED: ${reconciliation.mismatchedRows} rows differ, lost ${reconciliation.lostSpendUsd} USD`,
    );

    const events = reports.reduce((a, r) => a + r.events, 0);
    const rejected = reports.reduce((a, r) => a + r.rejected.length, 0);
    const eventsTimeline: number[] = [];
    for (const r of reports)
      r.perSecond.forEach((v, i) => (eventsTimeline[i] = (eventsTimeline[i] ?? 0) + v));
    const committedRowsTimeline: number[] = [];
    for (const c of workerReport?.commits ?? []) {
      const sec = Math.max(0, Math.floor((c.at - goAt) / 1000));
      committedRowsTimeline[sec] = (committedRowsTimeline[sec] ?? 0) + c.rows;
    }
    const staleness: number[] = [];
    for (const r of reports)
      for (const m of r.markers) {
        const seen = poller.firstSeen.get(m.id);
        if (seen !== undefined) staleness.push(seen - m.at);
      }
    const markers = reports.reduce((a, r) => a + r.markers.length, 0);
    const samples: DbSample[] = sampler.samples.filter((s) => s.t >= 0);
    const delta = counterDelta(before, after);
    return {
      mode,
      run,
      ...(partitions !== undefined ? { partitions } : {}),
      producers: plan.producers,
      ...(plan.ratePerProducer !== undefined ? { ratePerProducer: plan.ratePerProducer } : {}),
      durationMs: plan.durationMs,
      events,
      rejectedEvents: rejected,
      eventsPerSec: reports.reduce((a, r) => a + r.events / (r.windowMs / 1000), 0),
      durableEventsPerSec: (events - rejected) / ((drainedAt - goAt) / 1000),
      closeMs: closedAt - windowEnd,
      drainMs: drainedAt - windowEnd,
      eventsTimeline: Array.from(eventsTimeline, (v) => v ?? 0),
      backlog,
      maxBacklogJobs: backlog.reduce((a, b) => Math.max(a, b.jobs), 0),
      backlogAtWindowEnd,
      redisMemoryGrowthMb:
        backlog.reduce((a, b) => Math.max(a, b.redisMemoryMb), 0) -
        (backlog[0]?.redisMemoryMb ?? 0),
      committedRowsTimeline: Array.from(committedRowsTimeline, (v) => v ?? 0),
      staleness: {
        markers,
        seen: staleness.length,
        p50Ms: quantile(staleness, 0.5),
        p99Ms: quantile(staleness, 0.99),
        maxMs: quantile(staleness, 1),
        pollMs: plan.pollMs,
      },
      db: {
        ...delta,
        ...cpu,
        maxLockWaits: samples.reduce((a, s) => Math.max(a, s.lockWaits), 0),
        meanLockWaits:
          samples.length === 0 ? 0 : samples.reduce((a, s) => a + s.lockWaits, 0) / samples.length,
      },
      enqueueFailures: reports.reduce((a, r) => a + r.enqueueFailures, 0),
      closeErrors: reports.flatMap((r) => (r.closeError !== undefined ? [r.closeError] : [])),
      pausedMs: reports.reduce((a, r) => a + r.pausedMs, 0),
      stoppedMs: reports.reduce((a, r) => a + r.stoppedMs, 0),
      ...(workerReport !== undefined
        ? {
            worker: {
              outcomes: workerReport.outcomes,
              transactions: workerReport.transactions,
              batches: workerReport.batches,
              duplicates: workerReport.duplicates,
              rows: workerReport.entityRows + workerReport.dailyRows,
              flushMs: {
                median: quantile(perTransactionMs(workerReport), 0.5),
                max: quantile(perTransactionMs(workerReport), 1),
              },
              errors: workerReport.errors,
            },
          }
        : {}),
      reconciliation,
    };
  } finally {
    if (sampleTimer !== undefined) clearInterval(sampleTimer);
    // Whatever failed above, nothing of this run may outlive it.
    for (const c of children) c.kill("SIGTERM");
    worker?.kill("SIGTERM");
    await Promise.allSettled([...children.map((c) => c.done), ...(worker ? [worker.done] : [])]);
    await poller.stop().catch(() => undefined);
    await sampler.stop().catch(() => undefined);
    await Promise.all(queues.map((q) => q.close().catch(() => undefined)));
    queueRedis.disconnect();
    control.disconnect();
    await admin.end().catch(() => undefined);
    await res
      .dropDatabase(t)
      .catch((err: unknown) => progress(S, `drop failed: ${errorMessage(err)}`));
    await res
      .cleanPrefix(prefix)
      .catch((err: unknown) => progress(S, `Redis cleanup failed: ${errorMessage(err)}`));
  }
}

/**
 * The flush worker of the end-to-end benchmark, in its own process as it is
 * deployed (startFlushWorker, as `haimaker-spend worker` runs it), so its CPU work never delays the
 * parent's staleness polling. Runs FlushWorker until SIGTERM, then prints a
 * WorkerReport.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { Redis } from "ioredis";
import { startFlushWorker } from "../src/wiring/start-flush-worker.js";
import { silentLogger } from "../src/observe/logger.js";
import { createDb } from "../src/persist/prisma.js";
import { TEST_REDIS_URL, testConfig } from "../test/support/redis.js";
import { barrierKeys, type WorkerReport } from "./protocol.js";

const prefix = process.env.PREFIX ?? "";
const databaseUrl = process.env.DATABASE_URL ?? "";
/** Flush partitions, each flushed concurrently (concurrency = partitions). Default 1. */
const partitions = Number(process.env.PARTITIONS ?? "1");
/**
 * DEFAULTS=1 (the drain and recovery sections): the product's defaults for
 * the schedule and the leases, what a fresh deployment runs, rather than the
 * tests' short ones.
 */
const defaults = process.env.DEFAULTS === "1";
const config = testConfig(prefix, databaseUrl, {
  worker_flush_every_seconds: defaults
    ? undefined
    : Number(process.env.WORKER_EVERY_MS ?? "500") / 1000,
  // A flush of a large backlog outlives the tests' 2 s lease; the lease keeper renews it either way.
  lock_lease_seconds: defaults ? undefined : 15,
  leader_lease_seconds: defaults ? undefined : 1,
  flush_partitions: partitions,
  worker_concurrency: partitions,
  ...(process.env.MAX_ROWS !== undefined
    ? { max_rows_per_transaction: Number(process.env.MAX_ROWS) }
    : {}),
});
// One connection per concurrent flush transaction, plus room for the drain's bookkeeping.
const db = createDb(databaseUrl, { max: Math.max(4, partitions + 2) });
const report: WorkerReport = {
  outcomes: {},
  transactions: 0,
  batches: 0,
  duplicates: 0,
  entityRows: 0,
  dailyRows: 0,
  commits: [],
  errors: [],
  cpuSeconds: 0,
  maxRssMb: 0,
};
/**
 * CPU_PROFILE=<file>: V8's CPU profile of this worker from here to its
 * report (node --cpu-prof is refused in NODE_OPTIONS, and the bench starts
 * children through their env), to open in Chrome's DevTools. With
 * HEAP_SAMPLE=1 also <file>.heap: where it allocated, objects the GC has
 * collected since included (what the GC's time is spent on).
 */
const profileTo = process.env.CPU_PROFILE;
const profiler = profileTo !== undefined && profileTo !== "" ? new Session() : undefined;
if (profiler !== undefined) {
  profiler.connect();
  await profiler.post("Profiler.enable");
  await profiler.post("Profiler.setSamplingInterval", { interval: 200 });
  await profiler.post("Profiler.start");
  if (process.env.HEAP_SAMPLE === "1") {
    await profiler.post("HeapProfiler.enable");
    // V8 takes these two flags; Node's typings do not list them yet.
    const sampling = {
      samplingInterval: 65_536,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    };
    await profiler.post("HeapProfiler.startSampling", sampling);
  }
}
const worker = await startFlushWorker(config, {
  port: false,
  db,
  logger: silentLogger,
  holderId: process.env.HOLDER ?? "bench-worker",
  onFlush: (r) => {
    report.outcomes[r.outcome] = (report.outcomes[r.outcome] ?? 0) + 1;
    report.transactions += r.transactions;
    report.batches += r.batches;
    report.duplicates += r.duplicates;
    report.entityRows += r.entityRows;
    report.dailyRows += r.dailyRows;
    if (r.outcome === "committed")
      report.commits.push({
        at: Date.now(),
        rows: r.entityRows + r.dailyRows,
        ms: r.durationMs,
        transactions: r.transactions,
      });
    if (r.error !== undefined && report.errors.length < 20) report.errors.push(r.error);
  },
});
const control = new Redis(TEST_REDIS_URL);
await control.incr(barrierKeys(prefix).workerReady);
control.disconnect();

let stopping = false;
process.on("SIGTERM", () => {
  if (stopping) return;
  stopping = true;
  void (async () => {
    await worker.close();
    await db.$disconnect();
    if (profiler !== undefined && profileTo !== undefined) {
      if (process.env.HEAP_SAMPLE === "1") {
        const hp = await profiler.post("HeapProfiler.stopSampling");
        writeFileSync(`${profileTo}.heap`, JSON.stringify(hp.profile));
      }
      const { profile } = await profiler.post("Profiler.stop");
      writeFileSync(profileTo, JSON.stringify(profile));
    }
    const cpu = process.cpuUsage();
    report.cpuSeconds = (cpu.user + cpu.system) / 1e6;
    report.maxRssMb = process.resourceUsage().maxRSS / 1024;
    process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
  })();
});

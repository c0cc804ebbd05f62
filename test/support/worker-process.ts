/**
 * A flush worker replica for fault tests, in its own process. It runs the
 * real FlushWorker (job scheduler, concurrency-1 worker, Redis lock) and can
 * be told to hurt itself at one named step of its first flush that gets
 * there: FAULT_STEP=<step> FAULT_ACTION=kill|stop (SIGKILL or SIGSTOP to
 * itself, so the fault lands exactly there). Every flush is reported on
 * stdout as one JSON line.
 */
import type { FlushStep } from "../../src/flush/flusher.js";
import { silentLogger } from "../../src/observe/logger.js";
import { startFlushWorker } from "../../src/wiring/start-flush-worker.js";
import { createDb } from "../../src/persist/prisma.js";
import { testConfig } from "./redis.js";

const env = process.env;
const holder = env.HOLDER ?? `worker-${process.pid}`;
const faultStep = env.FAULT_STEP as FlushStep | undefined;
const faultAction = env.FAULT_ACTION ?? "kill";
const config = testConfig(env.PREFIX ?? "t", env.DATABASE_URL ?? "", {
  lock_lease_seconds: Number(env.LEASE_S ?? "1"),
  leader_lease_seconds: Number(env.LEADER_LEASE_S ?? "3"),
  worker_flush_every_seconds: Number(env.EVERY_S ?? "0.2"),
  max_jobs_per_flush: Number(env.MAX_JOBS ?? "1000"),
});
const db = createDb(config.databaseUrl, { max: 3 });

const print = (o: Record<string, unknown>): void =>
  void process.stdout.write(`${JSON.stringify({ holder, at: Date.now(), ...o })}\n`);
let faulted = false;
let lockedAt = 0;
let ackedAt = 0;

const { worker } = await startFlushWorker(config, {
  db,
  port: false,
  logger: silentLogger,
  holderId: holder,
  ...(env.IDLE_TX_TIMEOUT_MS !== undefined
    ? { idleInTransactionTimeoutMs: Number(env.IDLE_TX_TIMEOUT_MS) }
    : {}),
  onStep: (step) => {
    // Both inside the lock's hold: [lockedAt, ackedAt] is a window this replica surely held it.
    if (step === "locked") lockedAt = Date.now();
    if (step === "acked") ackedAt = Date.now();
    if (faulted || step !== faultStep) return;
    faulted = true;
    print({ event: "fault", step, action: faultAction });
    // Synchronous on purpose: nothing else of this flush runs before the signal lands.
    process.kill(process.pid, faultAction === "stop" ? "SIGSTOP" : "SIGKILL");
  },
  onFlush: (r) => {
    if (r.outcome === "lock_busy" || r.outcome === "empty") return;
    print({
      event: "flush",
      outcome: r.outcome,
      fence: r.fence?.toString(),
      batches: r.batches,
      duplicates: r.duplicates,
      retries: r.retries,
      lockedAt,
      ackedAt,
      error: r.error,
    });
  },
});
print({ event: "ready" });

process.on("SIGTERM", () => {
  void worker
    .close()
    .then(() => db.$disconnect())
    .then(() => process.exit(0));
});

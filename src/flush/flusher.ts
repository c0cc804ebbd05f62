import type { Job } from "bullmq";
import { FlushLock, type Lease } from "../lock/flush-lock.js";
import { LeaseKeeper, LeaseLostError } from "../lock/lease-keeper.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import { persistMetrics, type PersistMetrics } from "../persist/persist-metrics.js";
import { flushMetrics, type FlushMetrics } from "./flush-metrics.js";
import {
  applyBatches,
  FencedOffError,
  type ApplyResult,
  type BatchToApply,
} from "../persist/apply-batches.js";
import type { Db } from "../persist/prisma.js";
import { storable } from "../persist/dead-letters.js";
import { retryReason, storageRefusal } from "../persist/retryable.js";
import type { SpendDrain, Taken } from "./spend-drain.js";

export interface FlusherOptions {
  /** Most spend jobs one transaction applies. Default 1 000. */
  maxJobsPerFlush?: number;
  /** Jobs are taken until their rows reach this (at least one job). Default: max_rows_per_transaction's. */
  maxRowsPerTransaction?: number;
  /** A flush keeps draining (transaction after transaction) for at most this long. Default 60 000 ms. */
  maxFlushMs?: number;
  transactionTimeoutMs?: number;
  appliedBatchRetentionDays?: number;
  /** Attempts per transaction for retryable failures (deadlock, connection). Default 3. */
  maxAttempts?: number;
  /** Fence partition in spend_flush_fence. */
  fencePartition: string;
  /**
   * PostgreSQL ends this flush's session if it sits idle inside its
   * transaction this long: a writer paused (GC, SIGSTOP, a stalled VM) while
   * holding row locks must not block the next lock holder for longer than
   * that. Default: twice the lock lease.
   */
  idleInTransactionTimeoutMs?: number;
  /**
   * Test hook: called at named points of a flush (e.g. "before-commit"), so a
   * fault test can pause or kill the process exactly there.
   */
  onStep?: (step: FlushStep) => Promise<void> | void;
  /**
   * Called after a transaction of at least a quarter of
   * maxRowsPerTransaction rows (as sealed), with the rows per second it took
   * from taking its jobs to acking them: what this flush can do, which producers
   * weigh their held rows against. Smaller transactions measure overheads.
   */
  onRate?: (rowsPerSec: number) => void;
}

/**
 * Points of a flush a test can stop at: "in-transaction" is just after BEGIN
 * (before the fence check), "before-commit" after every write and the last
 * lease check, "committed" after COMMIT and before the jobs are acked.
 */
export type FlushStep =
  "locked" | "drained" | "in-transaction" | "before-commit" | "committed" | "acked";

export type FlushOutcome =
  "committed" | "empty" | "lock_busy" | "fenced_off" | "lease_lost" | "failed";

export interface FlushReport {
  outcome: FlushOutcome;
  transactions: number;
  batches: number;
  duplicates: number;
  entityRows: number;
  dailyRows: number;
  poisonJobs: number;
  /** Dead letters written (spend_dead_letter), and the rows they hold. */
  deadLetters: number;
  deadLetteredRows: number;
  /** Transactions run again to isolate rows PostgreSQL refused. */
  isolations: number;
  /** Transactions retried after a transient error (connection, serialization, deadlock). */
  retries: number;
  /** Lock taken to lock released, ms (0 when the lock was busy). */
  durationMs: number;
  fence?: bigint;
  error?: string;
}

/**
 * One flush: take the lock, then drain → apply in one transaction → ack,
 * repeated while a backlog remains and time allows, then release the lock.
 * The flush never acks a job before its transaction commits, and never
 * commits without its fencing token being the newest.
 */
export class Flusher {
  private readonly maxJobs: number;
  private readonly maxRows: number;
  private readonly maxFlushMs: number;
  private readonly txTimeoutMs: number;
  private readonly maxAttempts: number;
  private readonly idleTxTimeoutMs: number;
  private readonly metrics: FlushMetrics;
  private readonly dbMetrics: PersistMetrics;

  constructor(
    private readonly db: Db,
    private readonly lock: FlushLock,
    private readonly drain: SpendDrain,
    registry: SpendMetrics,
    private readonly opts: FlusherOptions,
    private readonly log: Logger = silentLogger,
  ) {
    this.maxJobs = opts.maxJobsPerFlush ?? 1_000;
    this.maxRows = opts.maxRowsPerTransaction ?? 20_000;
    this.maxFlushMs = opts.maxFlushMs ?? 60_000;
    this.txTimeoutMs = opts.transactionTimeoutMs ?? 120_000;
    this.maxAttempts = opts.maxAttempts ?? 3;
    this.idleTxTimeoutMs = opts.idleInTransactionTimeoutMs ?? 2 * lock.leaseMs;
    this.metrics = flushMetrics(registry);
    this.dbMetrics = persistMetrics(registry, "flush");
  }

  async flushOnce(): Promise<FlushReport> {
    const report: FlushReport = {
      outcome: "empty",
      transactions: 0,
      batches: 0,
      duplicates: 0,
      entityRows: 0,
      dailyRows: 0,
      poisonJobs: 0,
      deadLetters: 0,
      deadLetteredRows: 0,
      isolations: 0,
      retries: 0,
      durationMs: 0,
    };
    const lease = await this.lock.acquire();
    if (lease === null) {
      report.outcome = "lock_busy";
      this.metrics.recordFlush(report.outcome);
      this.log.debug({ outcome: report.outcome }, "flush skipped: another writer holds the lock");
      return report;
    }
    report.fence = lease.fence;
    this.metrics.lockAcquired(this.lock.holderId);
    let held: Job[] = [];
    const keeper = new LeaseKeeper(this.lock, lease, () =>
      this.drain.extend(held, lease.token, this.lock.leaseMs),
    );
    const started = Date.now();
    try {
      await this.opts.onStep?.("locked");
      for (;;) {
        keeper.assertHeld();
        const txStarted = performance.now();
        const taken = await this.drain.take(this.maxJobs, this.maxRows, lease.token);
        held = [...taken.jobs.map((t) => t.job), ...taken.poison.map((p) => p.job)];
        if (held.length === 0) break;
        await this.opts.onStep?.("drained");

        const result = await this.applyWithRetry(taken, lease, keeper, report);
        report.transactions++;
        await this.opts.onStep?.("committed");
        await this.drain.complete(
          taken.jobs.map((t) => t.job),
          lease.token,
        );
        await this.drain.setAside(taken.poison, lease.token);
        held = [];
        await this.opts.onStep?.("acked");
        this.reportSetAside(taken, result, report);

        // In the producers' units: rows as sealed, before batches merge.
        if (taken.rows >= this.maxRows / 4)
          this.opts.onRate?.((1000 * taken.rows) / Math.max(1, performance.now() - txStarted));

        report.outcome = "committed";
        report.batches += result.applied.length;
        report.duplicates += result.duplicates.length;
        report.entityRows += result.entityRows;
        report.dailyRows += result.dailyRows;
        this.metrics.batchesCommitted.inc(result.applied.length);
        this.metrics.duplicateBatches.inc(result.duplicates.length);
        this.metrics.rowsCommitted.inc({ kind: "entity" }, result.entityRows);
        this.metrics.rowsCommitted.inc({ kind: "daily" }, result.dailyRows);
        this.metrics.lastSuccessfulFlush.set(Date.now() / 1000);

        if (!taken.more || Date.now() - started >= this.maxFlushMs) break;
      }
      if (report.outcome === "committed") {
        this.metrics.flushDuration.observe((Date.now() - started) / 1000);
        this.metrics.flushRows.observe({ kind: "entity" }, report.entityRows);
        this.metrics.flushRows.observe({ kind: "daily" }, report.dailyRows);
        this.metrics.flushBatches.observe(report.batches);
      }
    } catch (err) {
      report.outcome =
        err instanceof FencedOffError
          ? "fenced_off"
          : err instanceof LeaseLostError
            ? "lease_lost"
            : "failed";
      report.error = (err as Error).message;
      if (err instanceof FencedOffError) {
        this.metrics.fencingRejections.inc();
        // If PostgreSQL has seen a newer token than Redis hands out, Redis lost
        // its counter: raise it so the next holder can write again.
        if (err.committed >= lease.fence)
          await this.lock.raiseFence(err.committed).catch(() => undefined);
      }
      // Jobs go back to wait at once; if this fails (Redis away, lock lost),
      // BullMQ's stalled check returns them when their locks expire.
      await this.drain.giveBack(held, lease.token).catch(() => undefined);
    } finally {
      keeper.stop();
      const released = await this.lock.release(lease).catch(() => undefined);
      // Lost: the keeper saw it, or the lock was no longer ours to release.
      const lost = keeper.lossReason ?? (released === false ? "expired" : undefined);
      if (lost !== undefined) this.metrics.lockLosses.inc({ reason: lost });
    }
    this.metrics.recordFlush(report.outcome);
    if (report.outcome === "committed" || report.outcome === "empty")
      await this.drain.markSuccess().catch(() => undefined);
    // One line per flush that held the lock, with its figures, whatever the outcome.
    report.durationMs = Date.now() - started;
    const figures = {
      outcome: report.outcome,
      fence: lease.fence.toString(),
      ms: report.durationMs,
      transactions: report.transactions,
      batches: report.batches,
      duplicates: report.duplicates,
      entityRows: report.entityRows,
      dailyRows: report.dailyRows,
      poisonJobs: report.poisonJobs,
      deadLetters: report.deadLetters,
      deadLetteredRows: report.deadLetteredRows,
      isolations: report.isolations,
      retries: report.retries,
    };
    if (report.outcome === "committed") this.log.info(figures, "flush committed");
    else if (report.outcome === "empty") this.log.debug(figures, "flush found nothing to do");
    else
      this.log.warn(
        { ...figures, err: report.error },
        "flush did not commit; its jobs return to the queue",
      );
    return report;
  }

  /** Counts and logs, once committed, what a transaction set aside. */
  private reportSetAside(taken: Taken, result: ApplyResult, report: FlushReport): void {
    for (const p of taken.poison) {
      report.poisonJobs++;
      this.metrics.poisonJobs.inc({ queue: p.queue });
    }
    for (const d of result.deadLetters) {
      report.deadLetters++;
      report.deadLetteredRows += d.rows;
      const queue = d.kind === "job" ? "job" : d.kind;
      this.metrics.deadLetteredRows.inc({ queue, reason: d.reason }, d.rows);
      this.metrics.deadLetters.inc({ queue, reason: d.reason });
      this.log.error(
        {
          batchId: d.batchId,
          queue,
          reason: d.reason,
          sqlState: d.sqlState,
          rows: d.rows,
          detail: d.detail,
        },
        "spend set aside as a dead letter: replay it with `haimaker-spend dead-letter replay` once fixed",
      );
    }
  }

  private async applyWithRetry(
    taken: Taken,
    lease: Lease,
    keeper: LeaseKeeper,
    report: FlushReport,
  ): Promise<ApplyResult> {
    const batches: BatchToApply[] = taken.jobs.map((t): BatchToApply => {
      const refused =
        t.illFormed !== undefined
          ? {
              refused: {
                kind: t.kind,
                reason: "invalid_unicode" as const,
                detail: t.illFormed.detail,
                payload: t.illFormed.rows,
                rows: t.illFormed.rows.length,
              },
            }
          : {};
      return t.kind === "entity"
        ? { batchId: t.data.batchId, entity: t.data.rows, ...refused }
        : { batchId: t.data.batchId, daily: t.data.rows, ...refused };
    });
    for (const p of taken.poison)
      batches.push({
        batchId: storable(p.job.id ?? `${p.queue}:${p.job.timestamp}`),
        refused: {
          kind: "job",
          reason: "malformed",
          detail: `${p.queue} job: ${p.reason}`,
          payload: p.job.data,
          rows: 0,
        },
      });
    // Set once a refusal by PostgreSQL shows rows no retry can store: the
    // transaction is then run again finding and setting those rows aside.
    let isolate = false;
    for (let attempt = 1; ; attempt++) {
      keeper.assertHeld();
      try {
        return await this.db.$transaction(
          async (tx) => {
            await tx.$executeRawUnsafe(
              `SELECT set_config('idle_in_transaction_session_timeout', $1, true)`,
              `${this.idleTxTimeoutMs}ms`,
            );
            await this.opts.onStep?.("in-transaction");
            const r = await applyBatches(tx, batches, {
              fence: {
                partition: this.opts.fencePartition,
                token: lease.fence,
                holder: lease.token,
              },
              isolate,
              beforeStatement: () => keeper.assertHeld(),
              ...(this.opts.appliedBatchRetentionDays !== undefined
                ? { retentionDays: this.opts.appliedBatchRetentionDays }
                : {}),
            });
            // Last look before commit. A pause after this holds row locks only
            // until PostgreSQL's idle timeout ends the session; a writer that
            // resumes after another has committed is refused by the fence.
            keeper.assertHeld();
            await this.opts.onStep?.("before-commit");
            return r;
          },
          { timeout: this.txTimeoutMs, maxWait: this.txTimeoutMs },
        );
      } catch (err) {
        if (err instanceof FencedOffError || err instanceof LeaseLostError) throw err;
        const refusal = isolate ? undefined : storageRefusal(err);
        if (refusal !== undefined) {
          isolate = true;
          attempt--;
          report.isolations++;
          this.metrics.isolations.inc();
          this.log.warn(
            { sqlState: refusal.sqlState, err: refusal.message, jobs: batches.length },
            "PostgreSQL refused rows of this flush: isolating them, the rest commits",
          );
          continue;
        }
        const reason = retryReason(err);
        if (reason === undefined || attempt >= this.maxAttempts) throw err;
        report.retries++;
        this.dbMetrics.transactionRetries.inc({ reason, path: "flush" });
        this.log.warn(
          { attempt, reason, err: (err as Error).message },
          "flush transaction failed; retrying",
        );
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
  }
}

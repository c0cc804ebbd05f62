import { errorText } from "../observe/error-text.js";
import type { Job } from "bullmq";
import { InFlight } from "./in-flight.js";
import { prepareTransaction, type PreparedTransaction } from "./prepared-transaction.js";
import { FlushLock, type Lease } from "../lock/flush-lock.js";
import { LeaseKeeper, LeaseLostError } from "../lock/lease-keeper.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import { persistMetrics, type PersistMetrics } from "../persist/persist-metrics.js";
import { flushMetrics, reportRedisRepair, type FlushMetrics } from "./flush-metrics.js";
import { applyBatches, FencedOffError, type ApplyResult } from "../persist/apply-batches.js";
import type { Db } from "../persist/prisma.js";
import { retryReason, storageRefusal } from "../persist/retryable.js";
import type { SpendDrain, Taken } from "./spend-drain.js";

export interface FlusherOptions {
  /** Most spend jobs one transaction applies. Default 1 000. */
  maxJobsPerFlush?: number;
  /**
   * Jobs are taken until the rows they merge into (what the transaction
   * writes) reach this, at least one job. Default: max_rows_per_transaction's.
   */
  maxRowsPerTransaction?: number;
  /** A flush keeps draining (transaction after transaction) for at most this long. Default 60 000 ms. */
  maxFlushMs?: number;
  transactionTimeoutMs?: number;
  /**
   * PostgreSQL lock_timeout of the flush's statements (default 10 s): a row
   * another session holds fails the transaction, retried, instead of stalling it.
   */
  lockTimeoutMs?: number;
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
  onStep?: (step: FlushStep, at: StepInfo) => Promise<void> | void;
  /**
   * Called after a transaction of at least a quarter of
   * maxRowsPerTransaction rows (as sealed), with the rows per second it took
   * from taking its jobs to acking them: what this flush can do, which producers
   * weigh their held rows against. Smaller transactions measure overheads.
   */
  onRate?: (rowsPerSec: number) => void;
}

/**
 * A transaction writes at most max_rows_per_transaction rows (merged: one per
 * database row), and takes jobs holding at most this many times that as
 * sealed: in a backlog, gateways' batches repeat keys, and merging more of
 * them per transaction writes fewer rows for the same spend; the factor
 * bounds the jobs held in memory (at most three transactions' worth: one
 * being acknowledged, one open, one prepared).
 */
export const SEALED_ROWS_PER_ROW_WRITTEN = 4;

/** Longest a flush waits for a database connection before the attempt counts as failed. */
const CONNECTION_WAIT_MS = 15_000;

/** A prepared transaction's size, for the steps that report it. */
function sizeOf(t: PreparedTransaction, n: number): StepInfo {
  const m = t.premerged.merged;
  return {
    transaction: n,
    jobs: t.jobs.length,
    rows: t.taken.rows,
    writes: m.entityRowCount + m.dailyRowCount,
  };
}

/**
 * Points of a flush a test can stop at: "prepared" when a transaction's jobs
 * are taken and merged (the next one's, while the current transaction runs),
 * "drained" when a prepared transaction is about to open, "in-transaction"
 * just after BEGIN (before the fence check), "before-commit" after every
 * write and the last lease check, "committed" after COMMIT and before the
 * jobs are acked, "acked" once they are (while the next transaction runs).
 */
export type FlushStep =
  "locked" | "prepared" | "drained" | "in-transaction" | "before-commit" | "committed" | "acked";

/** Where a step is: `transaction` numbers the flush's transactions from 1 (0 for "locked"). */
export interface StepInfo {
  transaction: number;
  /** For "prepared" and "drained": the jobs (valid and poison) that transaction applies, */
  jobs?: number;
  /** their rows as sealed, */
  rows?: number;
  /** and the rows they merge into: what the transaction writes. */
  writes?: number;
}

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
  /** Jobs an earlier holder had left active, put back in the queue when this flush took the lock. */
  reclaimed: number;
  /** Lock taken to lock released, ms (0 when the lock was busy). */
  durationMs: number;
  fence?: bigint;
  error?: string;
}

/**
 * One flush: take the lock, give back what a lapsed holder left active, then
 * drain → apply in one transaction → ack, pipelined (the next transaction's
 * jobs are taken and merged, and the last one's acknowledged, while
 * PostgreSQL writes the current one), while a backlog remains and time
 * allows; then release the lock. The flush never acks a job before its
 * transaction commits, and never commits without its fencing token being the
 * newest.
 */
export class Flusher {
  private readonly maxJobs: number;
  private readonly maxRows: number;
  private readonly maxFlushMs: number;
  private readonly txTimeoutMs: number;
  private readonly maxAttempts: number;
  private readonly idleTxTimeoutMs: number;
  private readonly lockTimeoutMs: number;
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
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 10_000;
    this.metrics = flushMetrics(registry);
    this.dbMetrics = persistMetrics(registry, "flush");
  }

  /**
   * `takeOverFrom`: a lock token whose holder no longer leads the flush (it
   * died holding the lock): the lock is taken from it rather than waited for.
   */
  async flushOnce(opts: { takeOverFrom?: string } = {}): Promise<FlushReport> {
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
      reclaimed: 0,
      durationMs: 0,
    };
    const lease =
      opts.takeOverFrom !== undefined
        ? await this.lock.takeOver(opts.takeOverFrom)
        : await this.lock.acquire();
    if (lease === null) {
      report.outcome = "lock_busy";
      this.metrics.recordFlush(report.outcome);
      this.log.debug({ outcome: report.outcome }, "flush skipped: another writer holds the lock");
      return report;
    }
    report.fence = lease.fence;
    this.metrics.lockAcquired(this.lock.holderId);
    // Every job taken under this lease and not yet acknowledged: their BullMQ
    // locks are renewed with the lease, and a flush that fails gives them all back.
    const held = new Set<Job>();
    const keeper = new LeaseKeeper(this.lock, lease, () =>
      this.drain.extend([...held], lease.token, this.lock.leaseMs),
    );
    const started = Date.now();
    // The pipeline: while transaction N runs, N + 1's jobs are taken and
    // merged (`ahead`) and N - 1's are acknowledged (`acking`). Never more than
    // one transaction prepared ahead (bounded memory), one transaction open
    // (one fenced writer, sorted keys), one acknowledgement in flight, and no
    // job acknowledged before its own transaction commits.
    let ahead: InFlight<PreparedTransaction> | undefined;
    let acking: InFlight<void> | undefined;
    try {
      await this.opts.onStep?.("locked", { transaction: 0 });
      report.reclaimed = await this.drain.reclaim(lease.token);
      if (report.reclaimed > 0) {
        this.metrics.jobsReclaimed.inc(report.reclaimed);
        this.log.info(
          { reclaimed: report.reclaimed, fence: lease.fence.toString() },
          "spend jobs left active by an earlier lock holder whose lease lapsed: back in the queue for this flush",
        );
      }
      ahead = this.prepareAhead(lease, keeper, held, 1);
      let lastCommitAt = 0;
      for (let n = 1; ; n++) {
        const cur = await ahead.result();
        ahead = undefined;
        if (cur.jobs.length === 0) break;
        await this.opts.onStep?.("drained", sizeOf(cur, n));
        if (cur.taken.more && Date.now() - started < this.maxFlushMs)
          ahead = this.prepareAhead(lease, keeper, held, n + 1);

        const result = await this.applyWithRetry(cur, lease, keeper, report, n);
        const committedAt = performance.now();
        report.transactions++;
        await this.opts.onStep?.("committed", { transaction: n });
        this.reportSetAside(cur.taken, result, report);
        // N - 1's acknowledgement has had N's transaction to finish in.
        await acking?.result();
        acking = new InFlight(this.acknowledge(cur, lease.token, held, n));

        // In the producers' units (rows as sealed, before batches merge), over
        // the time this transaction added to the pipeline: from the later of
        // its jobs being taken and the previous commit, to its own commit.
        const from = Math.max(cur.startedAt, lastCommitAt);
        lastCommitAt = committedAt;
        if (cur.taken.rows >= this.maxRows / 4)
          this.opts.onRate?.((1000 * cur.taken.rows) / Math.max(1, committedAt - from));

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

        if (ahead === undefined) break;
      }
      await acking?.result();
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
      report.error = errorText(err);
      if (err instanceof FencedOffError) {
        this.metrics.fencingRejections.inc();
        // If PostgreSQL has seen a newer token than Redis hands out, Redis lost
        // its counter: raise it so the next holder can write.
        if (err.committed >= lease.fence) {
          const before = await this.lock.raiseFence(err.committed).catch(() => undefined);
          // Redis lost its counter if it is behind what committed, or handed
          // out a committed token again (an equal token passes only for its own
          // holder). A stale holder fenced off finds it ahead: nothing lost.
          // Counted as the worker's own repairs are (SpendRedisStateLost).
          if (before !== undefined && (before < err.committed || lease.fence === err.committed))
            reportRedisRepair(this.metrics, this.log, "fence", {
              token: lease.fence.toString(),
              committed: err.committed.toString(),
            });
        }
      }
      // Whatever is in flight ends first: then every job taken is in `held`,
      // and no acknowledgement can follow the give-back.
      await ahead?.settled;
      await acking?.settled;
      // Jobs go back to wait at once; any this fails for (Redis away, lock
      // lost) the next lock holder reclaims, or BullMQ's stalled check returns.
      // A job whose transaction committed but whose acknowledgement failed
      // goes back too: its batch id makes the next flush skip it.
      await this.drain.giveBack([...held], lease.token).catch(() => undefined);
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
      reclaimed: report.reclaimed,
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

  /** Starts taking and merging transaction `n`'s jobs, to be awaited later. */
  private prepareAhead(
    lease: Lease,
    keeper: LeaseKeeper,
    held: Set<Job>,
    n: number,
  ): InFlight<PreparedTransaction> {
    const work = async (): Promise<PreparedTransaction> => {
      // Taking jobs under a lease already lost would only strand them.
      keeper.assertHeld();
      const prepared = await prepareTransaction(this.drain, {
        limits: {
          maxJobs: this.maxJobs,
          maxRows: this.maxRows,
          maxSealedRows: SEALED_ROWS_PER_ROW_WRITTEN * this.maxRows,
        },
        token: lease.token,
        ...(this.opts.appliedBatchRetentionDays !== undefined
          ? { retentionDays: this.opts.appliedBatchRetentionDays }
          : {}),
        onTaken: (job) => held.add(job),
      });
      await this.opts.onStep?.("prepared", sizeOf(prepared, n));
      return prepared;
    };
    return new InFlight(work());
  }

  /** After its transaction committed: marks its jobs completed (poison ones failed). */
  private async acknowledge(
    cur: PreparedTransaction,
    token: string,
    held: Set<Job>,
    n: number,
  ): Promise<void> {
    await this.drain.complete(
      cur.taken.jobs.map((t) => t.job),
      token,
    );
    await this.drain.setAside(cur.taken.poison, token);
    for (const j of cur.jobs) held.delete(j);
    await this.opts.onStep?.("acked", { transaction: n });
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
    cur: PreparedTransaction,
    lease: Lease,
    keeper: LeaseKeeper,
    report: FlushReport,
    n: number,
  ): Promise<ApplyResult> {
    const { batches } = cur;
    const at: StepInfo = { transaction: n };
    // Set once a refusal by PostgreSQL shows rows no retry can store: the
    // transaction is then run again finding and setting those rows aside.
    let isolate = false;
    for (let attempt = 1; ; attempt++) {
      keeper.assertHeld();
      try {
        return await this.db.$transaction(
          async (tx) => {
            await this.opts.onStep?.("in-transaction", at);
            const r = await applyBatches(tx, batches, {
              fence: {
                partition: this.opts.fencePartition,
                token: lease.fence,
                holder: lease.token,
              },
              isolate,
              premerged: cur.premerged,
              // Set by its first statement: no round trip of its own.
              idleInTransactionTimeoutMs: this.idleTxTimeoutMs,
              lockTimeoutMs: this.lockTimeoutMs,
              // Prisma's timeout only refuses the commit of a transaction that
              // ran too long; PostgreSQL's cancels the statement that does.
              statementTimeoutMs: this.txTimeoutMs,
              beforeStatement: () => keeper.assertHeld(),
              ...(this.opts.appliedBatchRetentionDays !== undefined
                ? { retentionDays: this.opts.appliedBatchRetentionDays }
                : {}),
            });
            // Last look before commit. A pause after this holds row locks only
            // until PostgreSQL's idle timeout ends the session; a writer that
            // resumes after another has committed is refused by the fence.
            keeper.assertHeld();
            await this.opts.onStep?.("before-commit", at);
            return r;
          },
          // maxWait: getting a connection. PostgreSQL accepting connections and
          // answering nothing held the flush the whole transaction timeout.
          { timeout: this.txTimeoutMs, maxWait: Math.min(this.txTimeoutMs, CONNECTION_WAIT_MS) },
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
          { attempt, reason, err: errorText(err) },
          "flush transaction failed; retrying",
        );
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
  }
}

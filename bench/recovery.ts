/**
 * Section 8: recovery from a dead worker. The same backlog as section 7; a
 * flush worker (the product's defaults) drains it and is SIGKILLed once half
 * the jobs are acknowledged, whatever it is doing then (taking jobs, inside a
 * transaction, between COMMIT and acknowledging). A new worker process starts
 * at once. Measured: from its spawn until every job is committed and
 * acknowledged, the time a deployment restarting a crashed pod waits for the
 * ledger to catch up; then PostgreSQL is reconciled exactly.
 */
import type { TrafficShape } from "../src/demo/traffic.js";
import { readTotals } from "../test/support/db-totals.js";
import {
  pendingSpendJobs,
  setUpBacklog,
  startWorker,
  stopWorker,
  summarize,
  waitDrained,
  type BacklogSummary,
  type DrainPlan,
} from "./drain.js";
import { reconcile, type Reconciliation } from "./pipeline.js";
import type { Resources } from "./resources.js";
import { progress, sleep, spread, type Spread } from "./util.js";

/** One SIGKILL and recovery, on a fresh backlog. */
export interface RecoveryRun {
  backlog: BacklogSummary;
  /** First worker ready to its SIGKILL. */
  killedAfterMs: number;
  /** Jobs not yet acknowledged when it was killed. */
  pendingAtKill: number;
  /** Second worker spawned (right after the kill) to ready. */
  startMs: number;
  /** Second worker spawned to its first committing flush taking the lock: the wait for leases. */
  resumedMs: number;
  /** Second worker spawned to every job committed and acknowledged: the figure. */
  recoveredMs: number;
  /** Batches the second worker found already applied (the dead one committed them, never acked). */
  duplicates: number;
  outcomes: Record<string, number>;
  errors: string[];
  reconciliation: Reconciliation;
}

export interface RecoveryResult {
  backlog: BacklogSummary;
  runs: RecoveryRun[];
  /** Spawn of the new worker to everything committed, over the runs. */
  recoveredMs: Spread;
  reconciled: boolean;
}

export async function measureRecovery(
  plan: DrainPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<RecoveryResult> {
  const runs: RecoveryRun[] = [];
  for (let rep = 1; rep <= plan.reps; rep++) runs.push(await recoverOnce(plan, shape, res, rep));
  const first = runs[0];
  if (first === undefined) throw new Error("no repetition ran");
  return {
    backlog: first.backlog,
    runs,
    recoveredMs: spread(runs.map((r) => r.recoveredMs)),
    reconciled: runs.every((r) => r.reconciliation.ok),
  };
}

async function recoverOnce(
  plan: DrainPlan,
  shape: TrafficShape,
  res: Resources,
  rep: number,
): Promise<RecoveryRun> {
  const S = `recovery ${rep}/${plan.reps}`;
  const s = await setUpBacklog("recovery", plan, shape, res);
  try {
    const first = await startWorker(s, plan, res, "recovery-victim");
    const half = Math.floor(s.backlog.jobs / 2);
    let pendingAtKill = 0;
    for (const deadline = Date.now() + plan.timeoutMs; ;) {
      pendingAtKill = await pendingSpendJobs(s.queues);
      if (pendingAtKill <= half) break;
      if (Date.now() > deadline) throw new Error(`${pendingAtKill} jobs still pending`);
      await sleep(10);
    }
    first.child.kill("SIGKILL");
    const killedAt = Date.now();
    const second = await startWorker(s, plan, res, "recovery-successor");
    progress(
      S,
      `killed the worker ${((killedAt - first.readyAt) / 1000).toFixed(1)} s into the drain with ${pendingAtKill} of ${s.backlog.jobs} jobs pending; a new one was ready ${((second.readyAt - second.spawnedAt) / 1000).toFixed(1)} s after its spawn`,
    );
    await first.child.done;
    const recoveredAt = await waitDrained(s, plan.timeoutMs);
    const report = await stopWorker(second.child);
    const reconciliation = reconcile(s.backlog.ledger.totals, await readTotals(s.url));
    const result: RecoveryRun = {
      backlog: summarize(plan, s.backlog),
      killedAfterMs: killedAt - first.readyAt,
      pendingAtKill,
      startMs: second.readyAt - second.spawnedAt,
      resumedMs:
        report.commits.length > 0
          ? Math.min(...report.commits.map((c) => c.at - c.ms)) - second.spawnedAt
          : Number.NaN,
      recoveredMs: recoveredAt - second.spawnedAt,
      duplicates: report.duplicates,
      outcomes: report.outcomes,
      errors: report.errors,
      reconciliation,
    };
    progress(
      S,
      `everything committed ${(result.recoveredMs / 1000).toFixed(2)} s after the new worker was spawned (its first flush took the lock after ${(result.resumedMs / 1000).toFixed(2)} s; ${result.duplicates} batches it found already applied); ${reconciliation.ok ? "reconciled exactly" : `RECONCILIATION FAILED: ${reconciliation.mismatchedRows} rows differ`}`,
    );
    return result;
  } finally {
    await s.close();
  }
}

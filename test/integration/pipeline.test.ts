import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import type { FlushStep, StepInfo } from "../../src/flush/flusher.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * The pipelined drain: while transaction N is open, N + 1's jobs are taken
 * and merged and N - 1's acknowledged, and nothing of that weakens what a
 * flush promises. Each test stops a flush inside one step (onStep) and waits
 * there for another step to happen: a drain that ran the steps one after the
 * other would never get there, and the wait would time out.
 */
let t: TestDatabase;
let h: Harness;
let prefix: string;

async function assertTotals(ledger: Ledger): Promise<void> {
  const diff = diffTotals(ledger.totals, await readTotals(t.url));
  assert.deepEqual(diff, [], `PostgreSQL differs from what was recorded:\n${diff.join("\n")}`);
}

/** Every step a flush passed, in order, with its transaction. */
class Steps {
  readonly seen: { step: FlushStep; transaction: number; jobs?: number }[] = [];
  record(step: FlushStep, at: StepInfo): void {
    this.seen.push({ step, ...at });
  }
  has(step: FlushStep, transaction: number): boolean {
    return this.seen.some((s) => s.step === step && s.transaction === transaction);
  }
  jobs(step: FlushStep, transaction: number): number {
    return this.seen.find((s) => s.step === step && s.transaction === transaction)?.jobs ?? 0;
  }
}

async function count(state: "active" | "completed" | "wait"): Promise<number> {
  const [e, d] = await Promise.all([
    h.queues.entity.getJobCountByTypes(state),
    h.queues.daily.getJobCountByTypes(state),
  ]);
  return e + d;
}

describe("the pipelined drain", () => {
  before(async () => {
    t = await createTestDatabase("pipeline");
  });
  beforeEach(async () => {
    if (h !== undefined) await h.close();
    if (prefix !== undefined) await cleanRedis(prefix);
    prefix = uniquePrefix("pipeline");
    h = new Harness(testConfig(prefix, t.url, { lock_lease_seconds: 5 }), t.db);
    await truncateAll(t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("takes and merges the next transaction's jobs while the current one is open, one ahead", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(400, 51, ledger, { maxRowsPerJob: 40 });
    const steps = new Steps();
    let activeInTx1 = 0;
    const r = await h
      .flusher({
        maxRowsPerTransaction: 100,
        onStep: async (step, at) => {
          steps.record(step, at);
          if (step !== "in-transaction" || at.transaction !== 1) return;
          await waitFor("transaction 2 prepared while 1 is open", () => steps.has("prepared", 2));
          activeInTx1 = await count("active");
          // Bounded: nothing beyond the next transaction is taken meanwhile.
          await new Promise((r) => setTimeout(r, 300));
          assert.equal(steps.has("prepared", 3), false, "only one transaction prepared ahead");
        },
      })
      .flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    assert.ok(r.transactions >= 3, `${r.transactions} transactions`);
    assert.equal(
      activeInTx1,
      steps.jobs("prepared", 1) + steps.jobs("prepared", 2),
      "while transaction 1 was open, its jobs and the next's were active, and no others",
    );
    assert.ok(await h.settled(), await h.describe());
    await assertTotals(ledger);
  });

  it("acknowledges transaction N while N + 1 runs, and only after N committed", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(300, 52, ledger, { maxRowsPerJob: 40 });
    const steps = new Steps();
    const r = await h
      .flusher({
        maxRowsPerTransaction: 100,
        onStep: async (step, at) => {
          steps.record(step, at);
          if (step === "acked" && at.transaction === 1)
            await waitFor("transaction 2 to open while 1 is acknowledged", () =>
              steps.has("in-transaction", 2),
            );
        },
      })
      .flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    const order = steps.seen.map((s) => `${s.step}:${s.transaction}`);
    for (let n = 1; n <= r.transactions; n++)
      assert.ok(
        order.indexOf(`committed:${n}`) < order.indexOf(`acked:${n}`),
        `transaction ${n} was acknowledged after its commit: ${order.join(" ")}`,
      );
    assert.ok(await h.settled(), await h.describe());
    await assertTotals(ledger);
  });

  it("a failure in transaction N acknowledges nothing of N + 1 and gives every job back", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(400, 53, ledger, { maxRowsPerJob: 40 });
    const jobs = await h.waitingJobs();
    const steps = new Steps();
    const failing = await h
      .flusher({
        maxRowsPerTransaction: 100,
        onStep: async (step, at) => {
          steps.record(step, at);
          if (step !== "before-commit" || at.transaction !== 2) return;
          // Transaction 3's jobs are surely taken (active under this flush) when 2 fails.
          await waitFor("transaction 3 prepared", () => steps.has("prepared", 3));
          throw new Error("injected failure inside transaction 2");
        },
      })
      .flushOnce();
    assert.equal(failing.outcome, "failed");
    assert.match(failing.error ?? "", /injected failure/);
    assert.equal(failing.transactions, 1, "only transaction 1 committed");
    // Transaction 1's jobs are acknowledged; 2's (rolled back) and 3's (taken) are waiting again.
    assert.equal(await count("completed"), steps.jobs("prepared", 1));
    assert.equal(await count("active"), 0, "nothing stays active under the failed flush's token");
    assert.equal(await count("wait"), jobs - steps.jobs("prepared", 1));

    const next = await h.flusher().flushOnce();
    assert.equal(next.outcome, "committed", next.error ?? "");
    assert.equal(next.duplicates, 0, "transaction 1's jobs were not given back to be seen again");
    assert.ok(await h.settled(), await h.describe());
    await assertTotals(ledger);
  });
});

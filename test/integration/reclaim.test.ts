import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import { applyBatches, type BatchToApply } from "../../src/persist/apply-batches.js";
import type { Taken } from "../../src/flush/spend-drain.js";
import type { Lease } from "../../src/lock/flush-lock.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * A new holder of a partition's flush lock gives back at once every job an
 * earlier holder left active (SpendDrain.reclaim), rather than waiting for
 * BullMQ's stalled check (up to two job lock durations). The earlier holder
 * here is this process acting as one that died: it takes the lock with a
 * short lease and the jobs under it, and never acknowledges them. The
 * harness's drain runs no stalled check, so only the reclaim can return them.
 */
let t: TestDatabase;
let h: Harness;
let prefix: string;

async function assertTotals(ledger: Ledger): Promise<void> {
  const diff = diffTotals(ledger.totals, await readTotals(t.url));
  assert.deepEqual(diff, [], `PostgreSQL differs from what was recorded:\n${diff.join("\n")}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The old holder: the lock with a 300 ms lease, and every waiting job taken under it. */
async function lapsedHolder(): Promise<{ lease: Lease; taken: Taken }> {
  const lease = await h.lock("old-holder", 300).acquire();
  assert.ok(lease !== null);
  const taken = await h.drain.take(
    { maxJobs: 1_000, maxRows: 1_000_000, maxSealedRows: 1_000_000 },
    lease.token,
  );
  assert.equal(taken.more, false, "it took every job");
  return { lease, taken };
}

const batchesOf = (taken: Taken): BatchToApply[] =>
  taken.jobs.map((j) =>
    j.kind === "entity"
      ? { batchId: j.data.batchId, entity: j.data.rows }
      : { batchId: j.data.batchId, daily: j.data.rows },
  );

describe("reclaiming jobs a lapsed lock holder left active", () => {
  before(async () => {
    t = await createTestDatabase("reclaim");
  });
  beforeEach(async () => {
    if (h !== undefined) await h.close();
    if (prefix !== undefined) await cleanRedis(prefix);
    prefix = uniquePrefix("reclaim");
    // Job locks last the lock lease, 5 s: they are still there when the next holder comes.
    h = new Harness(testConfig(prefix, t.url, { lock_lease_seconds: 5 }), t.db);
    await truncateAll(t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("the next holder flushes them at once, not once their job locks expire", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(400, 41, ledger, { maxRowsPerJob: 60 });
    const jobs = await h.waitingJobs();
    const { taken } = await lapsedHolder();
    assert.equal(taken.jobs.length, jobs);
    assert.equal(await h.waitingJobs(), 0, "every job is active under the old holder's token");
    await sleep(400); // its flush lock's lease lapses; its jobs' locks (5 s) do not

    const started = Date.now();
    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    assert.equal(r.reclaimed, jobs, "every job the old holder had was given back");
    assert.equal(r.batches, jobs);
    assert.ok(Date.now() - started < 4_000, "well before the old job locks would have expired");
    assert.ok(await h.settled(), await h.describe());
    assert.equal(
      (await h.metrics.registry.getSingleMetricAsString("spend_jobs_reclaimed_total")).match(
        /^spend_jobs_reclaimed_total (\d+)$/m,
      )?.[1],
      String(jobs),
    );
    await assertTotals(ledger);
  });

  it("applies them once even though the old holder had committed them before it died", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(400, 42, ledger, { maxRowsPerJob: 60 });
    const { lease, taken } = await lapsedHolder();
    // It commits the jobs, fenced, as a flush does, and dies before acknowledging them.
    await t.db.$transaction((tx) =>
      applyBatches(tx, batchesOf(taken), {
        fence: { partition: h.keys.fencePartition, token: lease.fence, holder: lease.token },
      }),
    );
    await sleep(400);

    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    assert.equal(r.reclaimed, taken.jobs.length);
    assert.equal(r.duplicates, taken.jobs.length, "every batch was recognised as applied");
    assert.equal(r.batches, 0, "and none applied again");
    assert.ok(await h.settled(), await h.describe());
    await assertTotals(ledger);

    // The old holder, resumed, can no longer acknowledge (or give back) what it took.
    await assert.rejects(
      h.drain.complete(
        taken.jobs.map((j) => j.job),
        lease.token,
      ),
    );
    await assertTotals(ledger);
  });

  it("leaves alone jobs that are not active: nothing to reclaim, nothing counted", async () => {
    const ledger = new Ledger();
    await h.recordTraffic(200, 43, ledger, { maxRowsPerJob: 60 });
    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed");
    assert.equal(r.reclaimed, 0);
    await assertTotals(ledger);
  });
});

describe("jobs whose locks expired, returned by BullMQ's stalled check", () => {
  it("are each reported to the drain's owner (counted as reclaimed by a worker), and flushed once", async () => {
    const db = await createTestDatabase("reclaim_stalled");
    const pfx = uniquePrefix("reclaim-stalled");
    // Job locks last the lock lease: 1 s, so they expire within the test.
    const hs = new Harness(testConfig(pfx, db.url, { lock_lease_seconds: 1 }), db.db);
    try {
      const ledger = new Ledger();
      await hs.recordTraffic(300, 43, ledger, { maxRowsPerJob: 60 });
      const jobs = await hs.waitingJobs();
      const lease = await hs.lock("dead-holder", 300).acquire();
      assert.ok(lease !== null);
      const taken = await hs.drain.take(
        { maxJobs: 1_000, maxRows: 1_000_000, maxSealedRows: 1_000_000 },
        lease.token,
      );
      assert.equal(taken.jobs.length, jobs);
      // The holder dies: nobody renews its job locks, and no flush reclaims them.
      const returned: string[] = [];
      await hs.drain.start((id) => returned.push(id));
      await waitFor("the stalled check returns every job", () => returned.length >= jobs, 15_000);
      assert.equal(new Set(returned).size, jobs, "each job reported once");
      assert.equal(await hs.waitingJobs(), jobs, "every job waits again");
      const r = await hs.flusher().flushOnce();
      assert.equal(r.outcome, "committed", r.error ?? "");
      const diff = diffTotals(ledger.totals, await readTotals(db.url));
      assert.deepEqual(diff, [], diff.join("\n"));
    } finally {
      await hs.close();
      await cleanRedis(pfx);
      await db.drop();
    }
  });
});

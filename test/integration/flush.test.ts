import { startFlushWorker } from "../../src/index.js";
import assert from "node:assert/strict";
import pg from "pg";
import { after, before, beforeEach, describe, it } from "node:test";
import { silentLogger } from "../../src/observe/logger.js";
import { applyBatches, FencedOffError } from "../../src/persist/apply-batches.js";
import type { FlusherOptions } from "../../src/flush/flusher.js";
import { DAILY_JOB, ENTITY_JOB } from "../../src/queue/spend-queues.js";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { readTotals, diffTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

let t: TestDatabase;
let h: Harness;
let prefix: string;

async function assertTotals(ledger: Ledger): Promise<void> {
  const diff = diffTotals(ledger.totals, await readTotals(t.url));
  assert.deepEqual(diff, [], `PostgreSQL differs from what was recorded:\n${diff.join("\n")}`);
}

const produce = (n: number, seed: number, ledger: Ledger, opts = {}): Promise<void> =>
  h.recordTraffic(n, seed, ledger, opts);

describe("flush", () => {
  before(async () => {
    t = await createTestDatabase("flush");
  });
  beforeEach(async () => {
    if (h !== undefined) await h.close();
    if (prefix !== undefined) await cleanRedis(prefix);
    prefix = uniquePrefix("flush");
    h = new Harness(testConfig(prefix, t.url, { max_jobs_per_flush: 50 }), t.db);
    await truncateAll(t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("commits every recorded event's spend exactly", async () => {
    const ledger = new Ledger();
    await produce(3_000, 1, ledger);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(await h.waitingJobs(), 0);
    await assertTotals(ledger);
  });

  it("applies a batch delivered twice only once", async () => {
    const ledger = new Ledger();
    await produce(500, 2, ledger, { maxRowsPerJob: 100 });
    const jobs = await h.queues.entity.getWaiting();
    assert.ok(jobs.length > 0);
    const first = jobs[0];
    assert.ok(first !== undefined);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");

    // The producer's retry after an ambiguous timeout: the same batch id again,
    // after the first copy was flushed and its job removed.
    await h.queues.entity.remove(first.id ?? "");
    await h.queues.entity.add(ENTITY_JOB, first.data, { jobId: first.id ?? "" });
    const report = await h.flusher().flushOnce();
    assert.equal(report.duplicates, 1);
    assert.equal(report.batches, 0);
    await assertTotals(ledger);
  });

  it("a flush that dies after commit but before ack is applied once on redelivery", async () => {
    const ledger = new Ledger();
    await produce(800, 3, ledger);
    const crashing = h.flusher({
      onStep: (step) => {
        if (step === "committed") throw new Error("simulated crash after commit");
      },
    });
    const r1 = await crashing.flushOnce();
    assert.equal(r1.outcome, "failed");
    assert.ok((await h.waitingJobs()) > 0, "unacknowledged jobs are back in the queue");

    const r2 = await h.flusher().flushOnce();
    assert.equal(r2.outcome, "committed");
    assert.equal(r2.batches, 0);
    assert.ok(r2.duplicates > 0);
    await assertTotals(ledger);
  });

  it("a flush whose transaction fails leaves its jobs pending and a later flush applies them", async () => {
    const ledger = new Ledger();
    await produce(800, 4, ledger);
    const waiting = await h.waitingJobs();
    const failing = h.flusher({
      onStep: (step) => {
        if (step === "before-commit") throw new Error("simulated failure inside the transaction");
      },
    });
    assert.equal((await failing.flushOnce()).outcome, "failed");
    assert.equal(await h.waitingJobs(), waiting, "every job is pending again");
    const rows = await t.db.$queryRawUnsafe<{ n: bigint }[]>(
      `SELECT count(*) AS n FROM "LiteLLM_UserTable"`,
    );
    assert.equal(Number(rows[0]?.n), 0, "nothing was written");

    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed");
    assert.equal(r.batches, waiting);
    await assertTotals(ledger);
  });

  it("a row another session holds locked fails the flush after lock_timeout (retried, counted), not for as long as it is held", async () => {
    const ledger = new Ledger();
    await produce(400, 11, ledger);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    // Same traffic again: it updates the rows the first flush wrote.
    await produce(400, 11, ledger);
    const waiting = await h.waitingJobs();
    const holder = new pg.Client({ connectionString: t.url });
    await holder.connect();
    try {
      await holder.query("BEGIN");
      await holder.query(`SELECT 1 FROM "LiteLLM_UserTable" FOR UPDATE`);
      const started = Date.now();
      const r = await h.flusher({ lockTimeoutMs: 200, maxAttempts: 2 }).flushOnce();
      assert.equal(r.outcome, "failed");
      assert.ok(Date.now() - started < 10_000, `failed after ${Date.now() - started} ms`);
      assert.equal(await h.waitingJobs(), waiting, "every job is pending again");
      const retries = await h.metrics.registry
        .getSingleMetric("spend_transaction_retries_total")
        ?.get();
      const lock = retries?.values.find(
        (v) => v.labels.reason === "lock" && v.labels.path === "flush",
      );
      assert.equal(lock?.value, 1, "the first attempt's lock timeout was retried once");
    } finally {
      await holder.query("ROLLBACK").catch(() => undefined);
      await holder.end();
    }
    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed");
    assert.equal(r.batches, waiting);
    await assertTotals(ledger);
  });

  it("drains a backlog larger than one transaction in one flush", async () => {
    const ledger = new Ledger();
    // Many small batches: 12 producers closing 12 times each.
    for (let i = 0; i < 12; i++) await produce(40, 100 + i, ledger, { maxRowsPerJob: 7 });
    const before = await h.waitingJobs();
    assert.ok(before > 50 * 2, `backlog of ${before} jobs exceeds max_jobs_per_flush`);
    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed");
    assert.ok(r.transactions >= 3, `took ${r.transactions} transactions`);
    assert.equal(await h.waitingJobs(), 0);
    await assertTotals(ledger);
  });

  it("keeps each transaction near max_rows_per_transaction, whatever the job count allows", async () => {
    const ledger = new Ledger();
    await produce(400, 300, ledger, { maxRowsPerJob: 40 });
    const jobs = await h.waitingJobs();
    assert.ok(jobs >= 10, `${jobs} jobs`);
    const held: number[] = [];
    const r = await h
      .flusher({
        maxJobsPerFlush: 1_000,
        maxRowsPerTransaction: 100,
        onStep: (step, at) => {
          if (step === "drained") held.push(at.jobs ?? 0);
        },
      })
      .flushOnce();
    assert.equal(r.outcome, "committed");
    assert.equal(await h.waitingJobs(), 0);
    // Budget: 50 rows of entity jobs (two 40-row jobs reach it), then what is left for daily
    // ones (at least one job): never the 1 000 jobs max_jobs_per_flush would allow.
    assert.ok(Math.max(...held) <= 4, `transactions held ${held.join(", ")} jobs`);
    assert.ok(r.transactions >= Math.ceil(jobs / 4), `took ${r.transactions} transactions`);
    await assertTotals(ledger);
  });

  /** Each "drained" transaction's jobs, rows as sealed and rows it writes. */
  const sizesOf = (
    sizes: { jobs: number; rows: number; writes: number }[],
  ): Partial<FlusherOptions> => ({
    onStep: (step, at) => {
      if (step === "drained")
        sizes.push({ jobs: at.jobs ?? 0, rows: at.rows ?? 0, writes: at.writes ?? 0 });
    },
  });

  it("bounds a transaction by the rows it writes: gateways' repeated keys merge into one transaction", async () => {
    const ledger = new Ledger();
    // Four gateways with the same traffic: every row repeats in four jobs.
    for (let i = 0; i < 4; i++) await produce(40, 310, ledger, { maxRowsPerJob: 40 });
    const sizes: { jobs: number; rows: number; writes: number }[] = [];
    const r = await h
      .flusher({ maxJobsPerFlush: 1_000, maxRowsPerTransaction: 1_000, ...sizesOf(sizes) })
      .flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    assert.ok(await h.settled(), await h.describe());
    const first = sizes[0];
    assert.ok(first !== undefined);
    assert.ok(
      first.rows >= 3 * first.writes,
      `the first transaction took every gateway's copy and wrote each row once: ${JSON.stringify(sizes)}`,
    );
    await assertTotals(ledger);
  });

  it("bounds the rows a transaction holds as sealed too, however well they merge", async () => {
    const ledger = new Ledger();
    for (let i = 0; i < 12; i++) await produce(5, 311, ledger, { maxRowsPerJob: 40 });
    const sizes: { jobs: number; rows: number; writes: number }[] = [];
    const r = await h
      .flusher({ maxJobsPerFlush: 1_000, maxRowsPerTransaction: 100, ...sizesOf(sizes) })
      .flushOnce();
    assert.equal(r.outcome, "committed", r.error ?? "");
    assert.ok(await h.settled(), await h.describe());
    const seen = JSON.stringify(sizes);
    // Four times the rows it writes, and the last job fetched (at most 40 rows) past it.
    for (const x of sizes) assert.ok(x.rows <= 4 * 100 + 40, `held too many rows: ${seen}`);
    assert.ok(
      sizes.length >= 2 && (sizes[0]?.rows ?? 0) >= 4 * 100,
      `the cap split the backlog: ${seen}`,
    );
    assert.ok((sizes[0]?.writes ?? 0) < 100, `though it wrote far less than its bound: ${seen}`);
    await assertTotals(ledger);
  });

  const malformed = [
    {
      what: "an entity job with a spend that is not a number",
      queue: "entity",
      job: {
        v: 1,
        batchId: "poison",
        producerId: "x",
        sealedAt: 0,
        rows: [["user", "u", "", "NaN"]],
      },
      reason: /malformed spend job: rows\.0\.3/,
    },
    {
      what: "a format-2 daily job whose context lacks its endpoint",
      queue: "daily",
      job: {
        v: 2,
        batchId: "poison-v2",
        producerId: "x",
        sealedAt: 0,
        groups: [
          [["2026-11-26", "k", "m", "m", "p", ""], [["user", "u", 1, 1, 0, 0, 1, 1, 0, "5"]]],
        ],
      },
      reason: /malformed spend job: groups\.0\.0/,
    },
    {
      what: "a format-4 daily job whose fact counts more successes than requests",
      queue: "daily",
      job: {
        v: 4,
        kind: "daily",
        batchId: "poison-v4",
        producerId: "x",
        sealedAt: 0,
        rowCount: 1,
        // One context, then a fact naming user u: 1 request, 2 successful.
        rowText: "10:2026-11-261:k1:m1:m1:p0:1:e0,1:u0:0:0:1,1,0,0,1,2,5,",
      },
      reason: /malformed spend job: rowText: row text, at character \d+: more successful requests/,
    },
  ] as const;
  for (const [i, m] of malformed.entries()) {
    it(`sets ${m.what} aside as failed and flushes everything else`, async () => {
      const ledger = new Ledger();
      await produce(300, 5 + i, ledger);
      const queue = m.queue === "entity" ? h.queues.entity : h.queues.daily;
      const name = m.queue === "entity" ? ENTITY_JOB : DAILY_JOB;
      await queue.add(name, m.job as never, { jobId: m.job.batchId });
      const r = await h.flusher().flushOnce();
      assert.equal(r.outcome, "committed");
      assert.equal(r.poisonJobs, 1);
      const failed = await queue.getFailed();
      assert.equal(failed.length, 1);
      assert.match(failed[0]?.failedReason ?? "", m.reason);
      await assertTotals(ledger);
      const metrics = await h.metrics.registry.getSingleMetricAsString("spend_poison_jobs_total");
      assert.match(metrics, new RegExp(`spend_poison_jobs_total\\{queue="${m.queue}"\\} 1`));
    });
  }

  it("flushes jobs of all four formats exactly; format 2 groups rows by context, 3 is row text, 4 facts", async () => {
    const ledger = new Ledger();
    const formats = [1, 2, 3, 4] as const;
    for (const [i, jobFormat] of formats.entries()) {
      const p = await h.producer(
        {},
        { ...h.config, producer: { ...h.config.producer, jobFormat } },
      );
      const gen = trafficGenerator(20 + i);
      for (let n = 0; n < 800; n++) {
        const e = gen();
        p.record(e);
        ledger.record(e);
      }
      await p.close();
    }
    const jobs = await h.queues.daily.getWaiting();
    const v1 = jobs.filter((j) => j.data.v === 1);
    const v2 = jobs.flatMap((j) => (j.data.v === 2 ? [j.data] : []));
    const v3 = jobs.flatMap((j) => (j.data.v === 3 ? [j.data] : []));
    const v4 = jobs.flatMap((j) => (j.data.v === 4 ? [j.data] : []));
    assert.ok(
      v1.length > 0 && v2.length > 0 && v3.length > 0 && v4.length > 0,
      "all four formats queued",
    );
    const entity = await h.queues.entity.getWaiting();
    assert.deepEqual(
      [...new Set(entity.map((j) => j.data.v))].sort(),
      [1, 3],
      "entity jobs: format 1 (for formats 1 and 2) and 3 (for 3 and 4)",
    );
    // Format 4 carries fewer facts than format 3 carries rows for the same traffic, in fewer bytes.
    const v4Facts = v4.reduce((n, d) => n + d.rowCount, 0);
    const v3Rows = v3.reduce((n, d) => n + d.rowCount, 0);
    const v4Bytes = v4.reduce((n, d) => n + JSON.stringify(d).length, 0);
    assert.ok(v4Facts < v3Rows, `${v4Facts} facts, ${v3Rows} rows`);
    assert.ok(
      v4Bytes < v3.reduce((n, d) => n + JSON.stringify(d).length, 0),
      `format 4 ${v4Bytes} bytes`,
    );
    // Format 3 is smaller than format 2 for the same traffic shape, per row.
    const perRow = (ds: { rowCount?: number }[], bytes: number): number =>
      bytes / ds.reduce((n, d) => n + (d.rowCount ?? 0), 0);
    const v3Bytes = v3.reduce((n, d) => n + JSON.stringify(d).length, 0);
    const v2Rows = v2.reduce((n, d) => n + d.groups.reduce((m, g) => m + g[1].length, 0), 0);
    const v2Bytes = v2.reduce((n, d) => n + JSON.stringify(d).length, 0);
    assert.ok(
      perRow(v3, v3Bytes) < v2Bytes / v2Rows,
      `format 3 ${perRow(v3, v3Bytes).toFixed(1)} B/row, format 2 ${(v2Bytes / v2Rows).toFixed(1)}`,
    );
    // Grouping that failed (one group per row) would be larger than format 1, not smaller.
    const rows = v2.reduce((n, d) => n + d.groups.reduce((m, g) => m + g[1].length, 0), 0);
    const groups = v2.reduce((n, d) => n + d.groups.length, 0);
    assert.ok(groups < rows / 2, `${groups} groups for ${rows} rows`);
    const r = await h.flusher().flushOnce();
    assert.equal(r.outcome, "committed");
    assert.equal(r.poisonJobs, 0);
    await assertTotals(ledger);
  });

  it("reports its rate after sizeable transactions only, and the worker publishes it for producers", async () => {
    const ledger = new Ledger();
    await produce(2_000, 8, ledger, { maxRowsPerJob: 50 });
    const small: number[] = [];
    await h.flusher({ maxRowsPerTransaction: 1_000_000, onRate: (r) => small.push(r) }).flushOnce();
    assert.deepEqual(
      small,
      [],
      "a transaction far below the bound measures overheads, not capacity",
    );
    await produce(2_000, 9, ledger, { maxRowsPerJob: 50 });
    const rates: number[] = [];
    const r = await h
      .flusher({ maxRowsPerTransaction: 400, onRate: (x) => rates.push(x) })
      .flushOnce();
    assert.ok(r.transactions > 1);
    assert.ok(
      rates.length > 0 && rates.every((x) => Number.isFinite(x) && x > 0),
      rates.join(", "),
    );
    await assertTotals(ledger);

    // The worker service wires it to Redis, where producers read it.
    await h.redis.del(h.keys.flushRate);
    await produce(2_000, 10, ledger, { maxRowsPerJob: 50 });
    const fw = await startFlushWorker(
      testConfig(prefix, t.url, { max_rows_per_transaction: 400 }),
      {
        port: false,
        db: t.db,
        logger: silentLogger,
      },
    );
    try {
      await waitFor(
        "a published flush rate",
        async () => Number(await h.redis.get(h.keys.flushRate)) > 0,
      );
      assert.ok((await h.redis.pttl(h.keys.flushRate)) > 0, "it expires if the worker goes quiet");
    } finally {
      await fw.close();
    }
  });

  it("rejects a write from a lock holder whose fencing token is stale", async () => {
    const ledger = new Ledger();
    await produce(200, 6, ledger);
    const stale = await h.lock("stale", 200).acquire();
    assert.ok(stale !== null);
    await new Promise((r) => setTimeout(r, 300)); // its lease lapses
    const r = await h.flusher().flushOnce(); // a newer holder flushes
    assert.equal(r.outcome, "committed");
    assert.ok((r.fence ?? 0n) > stale.fence);

    await assert.rejects(
      t.db.$transaction((tx) =>
        applyBatches(tx, [{ batchId: "late", entity: [["user", "late-user", "", "1000"]] }], {
          fence: { partition: h.keys.fencePartition, token: stale.fence, holder: stale.token },
        }),
      ),
      (err: unknown) => err instanceof FencedOffError && err.committed === r.fence,
    );
    const late = await t.db.userTable.findUnique({ where: { userId: "late-user" } });
    assert.equal(late, null, "the stale holder wrote nothing");
    await assertTotals(ledger);
  });

  it("a holder that loses its lease mid-flush does not commit, and its jobs are applied once", async () => {
    const ledger = new Ledger();
    await produce(400, 7, ledger);
    const slowLock = h.lock("slow", 300);
    const slow = h.flusher(
      {
        onStep: async (step) => {
          if (step === "in-transaction") {
            // Lose the lock while inside the transaction: someone deletes it, as an expiry would.
            await h.redis.del(h.keys.flushLock);
            // Two leases: whether the renewal notices or the local clock does, the lease is gone.
            await new Promise((r) => setTimeout(r, 700));
          }
        },
      },
      slowLock,
    );
    const r1 = await slow.flushOnce();
    assert.equal(r1.outcome, "lease_lost");
    const r2 = await h.flusher().flushOnce();
    assert.equal(r2.outcome, "committed");
    await assertTotals(ledger);
  });

  it("raises Redis's fence counter when PostgreSQL has seen a newer token (Redis lost its data)", async () => {
    const ledger = new Ledger();
    await produce(100, 8, ledger);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    // Redis restarted without persistence: its counter starts again from zero.
    await h.redis.del(h.keys.flushFence);
    await produce(100, 9, ledger);
    const repairs = async (): Promise<number | undefined> =>
      (await h.metrics.registry.getSingleMetric("spend_redis_repairs_total")?.get())?.values.find(
        (v) => v.labels.what === "fence",
      )?.value;
    const before = (await repairs()) ?? 0;
    assert.equal((await h.flusher().flushOnce()).outcome, "fenced_off");
    // Counted as a repair, so SpendRedisStateLost fires as for the worker's own repairs.
    assert.equal(await repairs(), before + 1);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    await assertTotals(ledger);
  });
});

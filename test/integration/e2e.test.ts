import { startFlushWorker } from "../../src/index.js";
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { silentLogger } from "../../src/observe/logger.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, deadlockCount, type TestDatabase } from "../support/db.js";
import { Ledger } from "../support/ledger.js";
import { runProducers } from "../support/processes.js";
import { cleanRedis, TEST_REDIS_URL, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

const PRODUCERS = 12;
const EVENTS_EACH = 2_500;

describe("end to end, many gateway processes", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("e2e");
  before(async () => {
    t = await createTestDatabase("e2e");
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
  });

  it(`${PRODUCERS} producer processes x ${EVENTS_EACH} events, two flush worker replicas: PostgreSQL equals what was recorded, with no deadlock`, async () => {
    // A 5 s lease, not the tests' usual 2 s: twelve producer processes share two cores with
    // both workers here, and a starved event loop that misses a renewal is a timing
    // question (tested in faults.test.ts), not what this test asks.
    const config = testConfig(prefix, t.url, { max_jobs_per_flush: 200, lock_lease_seconds: 5 });
    const metricsA = new SpendMetrics();
    const metricsB = new SpendMetrics();
    const reports: string[] = [];
    const workers = await Promise.all([
      startFlushWorker(config, {
        port: false,
        db: t.db,
        metrics: metricsA,
        logger: silentLogger,
        holderId: "replica-a",
        onFlush: (r) => reports.push(r.outcome),
      }),
      startFlushWorker(config, {
        port: false,
        db: t.db,
        metrics: metricsB,
        logger: silentLogger,
        holderId: "replica-b",
        onFlush: (r) => reports.push(r.outcome),
      }),
    ]);
    try {
      const deadlocksBefore = await deadlockCount(t.name);
      const ledger = new Ledger();
      await runProducers(
        PRODUCERS,
        { REDIS_URL: TEST_REDIS_URL, PREFIX: prefix, EVENTS: String(EVENTS_EACH) },
        ledger,
      );
      assert.equal(ledger.events, PRODUCERS * EVENTS_EACH);

      const fw = workers[0]?.worker;
      assert.ok(fw !== undefined);
      await waitFor(
        "the backlog to drain",
        async () => {
          const counts = await Promise.all([
            fw.queues.entity.getJobCounts("wait", "active"),
            fw.queues.daily.getJobCounts("wait", "active"),
          ]);
          return counts.every((c) => (c.wait ?? 0) + (c.active ?? 0) === 0);
        },
        60_000,
      );
      // A flush may still be committing the last jobs it took.
      const redis = new Redis(TEST_REDIS_URL);
      try {
        await waitFor(
          "no flush in progress",
          async () => (await redis.get(fw.keys.flushLock)) === null,
          10_000,
        );
      } finally {
        redis.disconnect();
      }

      const diff = diffTotals(ledger.totals, await readTotals(t.url));
      assert.deepEqual(diff, [], `PostgreSQL differs from what was recorded:\n${diff.join("\n")}`);
      assert.equal(await deadlockCount(t.name), deadlocksBefore, "no deadlock");
      assert.ok(reports.includes("committed"));
      const fenced = reports.filter(
        (r) => r === "fenced_off" || r === "lease_lost" || r === "failed",
      );
      assert.deepEqual(fenced, [], "no flush failed");
    } finally {
      await Promise.all(workers.map((w) => w.close()));
    }
  });
});

import { createSpendProducer, startFlushWorker, type FlushWorkerService } from "../../src/index.js";
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { collectStatus, formatStatus } from "../../src/cli/status.js";
import { silentLogger } from "../../src/observe/logger.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { partitionOf } from "../../src/produce/partition.js";
import { startGateway } from "../../src/gateway/gateway.js";
import { createRedis } from "../../src/redis/connection.js";
import { redisKeys } from "../../src/redis/keys.js";
import { ensurePartitionCount, PartitionMismatchError } from "../../src/queue/partitions.js";
import { dailyJobPayloadSchema, entityJobSchema } from "../../src/contract/spend-batch.js";
import { openSpendQueues } from "../../src/queue/spend-queues.js";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, deadlockCount, type TestDatabase } from "../support/db.js";
import { Ledger } from "../support/ledger.js";
import { runProducers } from "../support/processes.js";
import { cleanRedis, TEST_REDIS_URL, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

const P = 3;
const SEP = "\u001f";

describe("partitioned flush", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("parts");
  const config = (): ReturnType<typeof testConfig> =>
    testConfig(prefix, t?.url ?? "", { max_jobs_per_flush: 100 });
  /** A worker replica as deployed (startFlushWorker), with `partitions` flush partitions. */
  const startWorker = (
    partitions: number,
    opts: { holderId?: string; concurrency?: number; metrics?: SpendMetrics } = {},
  ): Promise<FlushWorkerService> =>
    startFlushWorker(
      testConfig(prefix, t.url, {
        max_jobs_per_flush: 100,
        flush_partitions: partitions,
        worker_concurrency: opts.concurrency ?? 1,
      }),
      {
        port: false,
        db: t.db,
        logger: silentLogger,
        ...(opts.metrics !== undefined ? { metrics: opts.metrics } : {}),
        ...(opts.holderId !== undefined ? { holderId: opts.holderId } : {}),
      },
    );
  before(async () => {
    t = await createTestDatabase("partitions");
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
  });

  it("routes every row to the one partition that owns it", async () => {
    // What a gateway does: agree on the partition count, then one queue pair per partition.
    const producer = await createSpendProducer(testConfig(prefix, t.url, { flush_partitions: P }), {
      logger: silentLogger,
      options: { flushIntervalMs: 3_600_000 },
    });
    const inspect = createRedis(config().redis, "worker");
    const queues = Array.from({ length: P }, (_, p) =>
      openSpendQueues(inspect, redisKeys(prefix, p)),
    );
    const gen = trafficGenerator(41);
    for (let i = 0; i < 2_000; i++) producer.record(gen());
    await producer.close();
    const seen = new Map<string, number>();
    for (let p = 0; p < P; p++) {
      const q = queues[p];
      assert.ok(q !== undefined);
      const entityJobs = await q.entity.getWaiting(0, -1);
      const dailyJobs = await q.daily.getWaiting(0, -1);
      assert.ok(entityJobs.length > 0 && dailyJobs.length > 0, `partition ${p} got work`);
      for (const j of entityJobs) {
        assert.equal(j.data.partitions, P);
        for (const r of entityJobSchema.parse(j.data).rows) {
          const id = r[0] + SEP + r[1] + SEP + r[2];
          assert.equal(partitionOf(id, P), p);
          assert.equal(seen.get(id) ?? p, p, "a row never appears in two partitions");
          seen.set(id, p);
        }
      }
      // A daily row goes with its request context (the facts it comes from fan out there).
      for (const j of dailyJobs)
        for (const r of dailyJobPayloadSchema.parse(j.data).rows) {
          assert.equal(partitionOf(r.slice(2, 9).join(SEP), P), p);
          const id = r.slice(0, 9).join(SEP);
          assert.equal(seen.get(id) ?? p, p, "a daily row never appears in two partitions");
          seen.set(id, p);
        }
    }
    for (const q of queues) await q.close();
    inspect.disconnect();
  });

  it("refuses to start with a different partition count while spend is pending, and switches once drained", async () => {
    const metrics = new SpendMetrics();
    await assert.rejects(
      startWorker(2, { metrics }),
      (err: unknown) =>
        err instanceof PartitionMismatchError && err.recorded === P && err.pendingJobs > 0,
    );
    // Drain under the recorded count.
    const fw = await startWorker(P, { metrics });
    await waitFor("drain", async () => {
      const counts = await Promise.all(
        fw.worker.partitions.map((p) =>
          Promise.all([p.queues.entity.getWaitingCount(), p.queues.daily.getWaitingCount()]),
        ),
      );
      return counts.flat().every((n) => n === 0);
    });
    await fw.close();
    const switched = await startWorker(2, { metrics });
    assert.equal(switched.worker.partitions.length, 2);
    await switched.close();
    // Back to P for the next test: drained, so allowed.
    const back = await startWorker(P, { metrics });
    await back.close();
  });

  it("a gateway never changes the recorded count, and a worker does not while another worker runs the old one", async () => {
    const redis = createRedis(config().redis, "worker");
    const start = (partitions: number, holderId?: string): Promise<FlushWorkerService> =>
      startWorker(partitions, holderId !== undefined ? { holderId } : {});
    const running = await start(P, "old-count");
    try {
      // Drained (nothing pending), yet neither may switch while a worker runs with P.
      await assert.rejects(
        ensurePartitionCount(redis, prefix, P + 1, { role: "gateway" }),
        (err: unknown) =>
          err instanceof PartitionMismatchError && /a gateway never changes/.test(err.message),
      );
      await assert.rejects(
        start(P + 1),
        (err: unknown) => err instanceof PartitionMismatchError && /live worker/.test(err.message),
      );
      assert.equal(await redis.get(redisKeys(prefix).partitionCount), String(P));

      // A gateway started with P serves; once the workers switch the count, it stops.
      const gw = await startGateway(
        {
          ...testConfig(prefix, t.url, { flush_partitions: P }),
          masterKey: "sk-partitions-master",
        },
        { port: 0, host: "127.0.0.1", partitionCheckEveryMs: 100 },
      );
      const ingest = (): Promise<Response> =>
        fetch(`http://127.0.0.1:${gw.port}/spend/events`, {
          method: "POST",
          headers: {
            authorization: "Bearer sk-partitions-master",
            "content-type": "application/json",
          },
          body: JSON.stringify({ events: [{ spend: "0", userId: "partition-probe" }] }),
        });
      const ready = async (): Promise<number> =>
        (await fetch(`http://127.0.0.1:${gw.port}/health/readiness`)).status;
      try {
        await waitFor("the gateway to be ready", async () => (await ready()) === 200);
        assert.equal((await ingest()).status, 200);
        await gw.producer.flush();
        await waitFor(
          "the probe to be flushed",
          async () => (await running.worker.flushNow()).outcome === "empty",
        );
        await running.close();
        const switched = await start(P + 1);
        await waitFor("the gateway to see the switch", async () => (await ready()) === 503);
        const refused = await ingest();
        assert.equal(refused.status, 503);
        assert.ok(refused.headers.get("retry-after"));
        assert.match(
          ((await refused.json()) as { error: { message: string } }).error.message,
          /records 4 flush partition\(s\) but this process is configured for 3/,
        );
        await switched.close();
        // Back to P for the next test: drained and no worker left on P + 1.
        await (await start(P)).close();
        await waitFor("the gateway to agree again", async () => (await ready()) === 200);
      } finally {
        await gw.close();
      }
    } finally {
      await running.close();
      redis.disconnect();
    }
  });

  it(`${P} partitions over two worker replicas: exact totals, no deadlock, every partition flushed`, async () => {
    await t.db.$executeRawUnsafe(
      `TRUNCATE "LiteLLM_VerificationToken", "LiteLLM_UserTable", "LiteLLM_TeamTable", "LiteLLM_TeamMembership", "LiteLLM_OrganizationTable", "LiteLLM_EndUserTable", "LiteLLM_TagTable", "LiteLLM_DailyUserSpend", "LiteLLM_DailyTeamSpend", "LiteLLM_DailyOrganizationSpend", "LiteLLM_DailyEndUserSpend", "LiteLLM_DailyTagSpend"`,
    );
    const deadlocks = await deadlockCount(t.name);
    const workers = await Promise.all(
      ["a", "b"].map((holderId) => startWorker(P, { holderId, concurrency: 2 })),
    );
    try {
      const ledger = new Ledger();
      await runProducers(
        6,
        { REDIS_URL: TEST_REDIS_URL, PREFIX: prefix, EVENTS: "2000", PARTITIONS: String(P) },
        ledger,
        4000,
      );
      const fw = workers[0]?.worker;
      assert.ok(fw !== undefined);
      await waitFor(
        "every partition to drain",
        async () => {
          const states = ["wait", "active"] as const;
          const counts = await Promise.all(
            fw.partitions.flatMap((p) => [
              p.queues.entity.getJobCounts(...states),
              p.queues.daily.getJobCounts(...states),
            ]),
          );
          return counts.every((c) => (c.wait ?? 0) + (c.active ?? 0) === 0);
        },
        60_000,
      );
      await waitFor("locks released", async () => {
        const redis = createRedis(config().redis, "worker");
        try {
          const held = await Promise.all(fw.partitions.map((p) => redis.exists(p.keys.flushLock)));
          return held.every((n) => n === 0);
        } finally {
          redis.disconnect();
        }
      });
      const diff = diffTotals(ledger.totals, await readTotals(t.url));
      assert.deepEqual(diff, [], diff.join("\n"));
      assert.equal(await deadlockCount(t.name), deadlocks);
      const fences = await t.db.flushFence.findMany({
        where: { partition: { startsWith: `${prefix}:` } },
      });
      assert.equal(fences.length, P, "each partition committed under its own fence");

      // The operator's view names every partition's writer, not only partition 0's.
      const status = await collectStatus(testConfig(prefix, t.url, { flush_partitions: P }));
      assert.deepEqual(
        status.partitions.map((p) => [p.partition, p.fence.postgres !== undefined]),
        Array.from({ length: P }, (_, p) => [p, true]),
      );
      assert.equal(status.queues.filter((q) => q.role !== "flush").length, 2 * P);
      const text = formatStatus(status);
      for (let p = 0; p < P; p++)
        assert.match(
          text,
          new RegExp(`partition ${p} fence: redis \\d+, postgres \\d+ \\(last holder [ab]`),
        );
    } finally {
      await Promise.all(workers.map((w) => w.close()));
    }
  });
});

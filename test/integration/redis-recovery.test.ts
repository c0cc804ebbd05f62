import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import pg from "pg";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { SpendProducer } from "../../src/produce/producer.js";
import { createRedis } from "../../src/redis/connection.js";
import { redisKeys } from "../../src/redis/keys.js";
import { QueueSink } from "../../src/queue/queue-sink.js";
import { openSpendQueues } from "../../src/queue/spend-queues.js";
import { startFlushWorker, type FlushWorkerService } from "../../src/index.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Ledger } from "../support/ledger.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * Redis losing its state (restarted without persistence, keys deleted or
 * evicted) while a worker and a gateway's producer run: the worker puts its
 * schedule and counters back by itself, readiness says so meanwhile, and
 * spend sent afterwards reaches PostgreSQL with no process restarted. Also
 * the schedule left with no next tick (a leader killed as it took one).
 */
describe("Redis losing its state under live processes", () => {
  let t: TestDatabase;
  let server: TestRedisServer;
  let svc: FlushWorkerService;
  let producer: SpendProducer;
  let producerRedis: Redis;
  let admin: Redis;
  const prefix = uniquePrefix("recover");
  const ledger = new Ledger();
  const gen = trafficGenerator(77);

  const base = (): ReturnType<typeof testConfig> => {
    const c = testConfig(prefix, t.url);
    return { ...c, redis: { ...c.redis, port: server.port } };
  };

  const record = (n: number): void => {
    for (let i = 0; i < n; i++) {
      const e = gen();
      producer.record(e);
      ledger.record(e);
    }
  };

  const readiness = async (): Promise<{ status: number; body: { failed?: string[] } }> => {
    const res = await fetch(`http://127.0.0.1:${svc.port}/health/readiness`);
    return { status: res.status, body: (await res.json()) as { failed?: string[] } };
  };

  /** Nothing waiting or being flushed, and PostgreSQL equals everything recorded. */
  const settledAndReconciled = async (what: string): Promise<void> => {
    const keys = redisKeys(prefix);
    const queues = openSpendQueues(admin, keys);
    try {
      await waitFor(
        what,
        async () => {
          const counts = await Promise.all([
            queues.entity.getJobCounts("wait", "active"),
            queues.daily.getJobCounts("wait", "active"),
          ]);
          if (counts.some((c) => (c.wait ?? 0) + (c.active ?? 0) > 0)) return false;
          return diffTotals(ledger.totals, await readTotals(t.url)).length === 0;
        },
        30_000,
      );
    } finally {
      await queues.close();
    }
  };

  before(async () => {
    t = await createTestDatabase("redis_recovery");
    server = new TestRedisServer(await freePort());
    await server.start();
    admin = new Redis(server.port, "127.0.0.1", { maxRetriesPerRequest: null });
    admin.on("error", () => undefined);
    const config = base();
    svc = await startFlushWorker(config, { port: 0, host: "127.0.0.1", maintainEveryMs: 1_000 });
    producerRedis = createRedis(config.redis, "producer");
    producer = new SpendProducer({
      sink: new QueueSink(openSpendQueues(producerRedis, redisKeys(prefix))),
      // The test seals by hand, so it knows what is in Redis at each step.
      flushIntervalMs: 3_600_000,
      flushJitterMs: 0,
      metrics: new SpendMetrics(),
    });
  });
  after(async () => {
    await producer.close().catch(() => undefined);
    producerRedis.disconnect();
    await svc.close();
    admin.disconnect();
    await server.destroy();
    await t.drop();
  });

  it("the prefix's keys deleted: readiness turns unready, the schedule comes back, new spend arrives", async () => {
    record(500);
    await producer.flush();
    await settledAndReconciled("the first spend to commit");
    assert.equal((await readiness()).status, 200);

    // Everything committed, so nothing is lost: only the worker's own state goes.
    await admin.flushall();
    const unready = await readiness();
    assert.equal(unready.status, 503);
    assert.deepEqual(unready.body.failed, ["flush"]);

    await waitFor(
      "the worker to put its schedule back",
      async () => (await readiness()).status === 200,
    );
    record(500);
    await producer.flush();
    await settledAndReconciled("spend sent after the wipe to commit, with no restart");
    const repairs = await (await fetch(`http://127.0.0.1:${svc.port}/metrics`)).text();
    assert.match(repairs, /what="scheduler"} [1-9]/);
    // The fencing counter comes back one of three ways: the maintenance pass
    // raises it from PostgreSQL's newest token; or the first flush after the
    // wipe is fenced off and raises it itself; or a flush tick taken before
    // the wipe acquires after it, finds the wiped queues empty and so spends
    // the repeated token without writing. What matters in every case: Redis
    // now hands out tokens above the newest one PostgreSQL committed, so the
    // next holder can write. (flush.test pins the fenced-off repair.)
    const keys = redisKeys(prefix);
    const counter = BigInt((await admin.get(keys.flushFence)) ?? "0");
    const db = new pg.Client({ connectionString: t.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ token: string }>(
        "SELECT token::text FROM spend_flush_fence WHERE partition = $1",
        [keys.fencePartition],
      );
      const committed = rows[0]?.token;
      assert.ok(committed !== undefined && counter >= BigInt(committed), "the fence was put back");
    } finally {
      await db.end();
    }
    assert.match(repairs, /what="partition_count"} [1-9]/);
  });

  it("Redis restarted empty while the gateway holds spend: it is delivered and flushed, nobody restarted", async () => {
    record(300);
    await producer.flush();
    await settledAndReconciled("spend before the restart to commit");
    record(300); // held by the producer, not sealed yet

    await server.stop("SIGKILL");
    await server.start();
    record(300);
    // Sends fail until the producer's connection is back, then deliver.
    await waitFor("the producer to deliver", async () => {
      try {
        await producer.flush();
        return true;
      } catch {
        return false;
      }
    });
    await settledAndReconciled("spend held across the restart to commit");
    // Ready again with no restart. Not necessarily at the commit's instant:
    // the worker's other connections may still be reconnecting (it failed
    // once reading 503 there in a fresh clone's CI).
    let last: unknown;
    await waitFor(
      "readiness back",
      async () => {
        const r = await readiness();
        last = r.body;
        return r.status === 200;
      },
      10_000,
      50,
      () => JSON.stringify(last),
    );
  });

  it("the schedule left with no next tick (a leader killed as it took one): the leader schedules it again", async () => {
    record(300);
    await producer.flush();
    await settledAndReconciled("spend before to commit");
    // What a leader SIGKILLed between taking a tick and scheduling the next
    // leaves: the scheduler, and no job of it pending. (The tick it took
    // would sit in active until BullMQ's stall check; here it is gone.)
    const keys = redisKeys(prefix);
    const flushQueue = new Queue(keys.flushQueue, { connection: admin, prefix: keys.bullPrefix });
    try {
      await waitFor(
        "the pending tick to be removed",
        async () => {
          const next = (await flushQueue.getJobScheduler(keys.flushSchedulerId))?.next;
          const jobId = `repeat:${keys.flushSchedulerId}:${String(next)}`;
          // By hand: BullMQ refuses to remove a scheduler's job. Only from
          // delayed, so a tick the worker took meanwhile is left alone.
          const queueKey = `${keys.bullPrefix}:${keys.flushQueue}`;
          if ((await admin.zrem(`${queueKey}:delayed`, jobId)) === 0) return false;
          await admin.del(`${queueKey}:${jobId}`);
          return true;
        },
        10_000,
        20,
      );
      // The tick before it may still be running (active): it scheduled the one
      // removed. Wait for it to end, so it cannot take the spend sent next
      // (which only the schedule, put back, may flush).
      await waitFor(
        "the tick before it to end",
        async () => (await flushQueue.getJobCounts("active")).active === 0,
        10_000,
        20,
      );
      const counts = await flushQueue.getJobCounts("delayed", "waiting");
      assert.deepEqual(counts, { delayed: 0, waiting: 0 }, "no tick pending");
    } finally {
      await flushQueue.close();
    }
    record(300);
    await producer.flush();
    await settledAndReconciled("spend sent after the tick was lost to commit, with no restart");
    // The restart is counted as the schedule is put back, before its first tick.
    const metrics = await (await fetch(`http://127.0.0.1:${svc.port}/metrics`)).text();
    assert.match(metrics, /^spend_flush_schedule_restarts_total [1-9]/m);
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { collectStatus, formatStatus } from "../../src/cli/status.js";
import { silentLogger, startFlushWorker, type FlushWorkerService } from "../../src/index.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { spawnTs, type Spawned } from "../support/processes.js";
import { cleanRedis, TEST_REDIS_URL, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";
import { FlushLeadership } from "../../src/lock/leadership.js";
import { createRedis } from "../../src/redis/connection.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";

/** What one worker's /metrics says of the leadership, and how many flushes it ran. */
async function leaderGauge(
  svc: FlushWorkerService,
): Promise<{ size: number; holders: string[]; flushes: number }> {
  const text = await (await fetch(`http://127.0.0.1:${svc.port}/metrics`)).text();
  const size = /^litellm_pod_lock_manager_size (\S+)$/m.exec(text)?.[1];
  const holders = [...text.matchAll(/^spend_lock_holder_info\{holder="([^"]+)"\} 1$/gm)].map(
    (m) => m[1] ?? "",
  );
  const flushes = [...text.matchAll(/^spend_flushes_total\{outcome="[a-z_]+"\} (\d+)$/gm)]
    .map((m) => Number(m[1]))
    .reduce((x, y) => x + y, 0);
  return { size: Number(size), holders, flushes };
}

/**
 * The flush leadership: one worker replica leads (takes the flush jobs) and
 * says so in litellm_pod_lock_manager_size; the others stand by and take
 * over when it stops, gracefully at once, killed within a lease.
 */
describe("flush leadership", () => {
  let t: TestDatabase;
  let h: Harness;
  const prefix = uniquePrefix("leader");
  // A 1 s leadership lease: a standby takes over a dead leader's flush within about 1.3 s.
  const config = (): ReturnType<typeof testConfig> =>
    testConfig(prefix, t.url, { leader_lease_seconds: 1 });
  const services: FlushWorkerService[] = [];
  const procs: Spawned[] = [];
  const start = async (id: string): Promise<FlushWorkerService> => {
    const svc = await startFlushWorker(config(), {
      port: 0,
      host: "127.0.0.1",
      holderId: id,
      logger: silentLogger,
    });
    services.push(svc);
    return svc;
  };

  before(async () => {
    t = await createTestDatabase("leadership");
    h = new Harness(config(), t.db);
  });
  after(async () => {
    for (const p of procs) p.kill("SIGKILL");
    for (const s of services) await s.close().catch(() => undefined);
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("exactly one worker leads, says so at every scrape, and alone takes the flush jobs", async () => {
    const a = await start("replica-a");
    const b = await start("replica-b");
    assert.equal(a.worker.leads, true, "the first replica up leads");
    assert.equal(b.worker.leads, false, "the second stands by");
    const status = await collectStatus(config());
    assert.equal(status.leader?.worker, "replica-a");
    assert.match(formatStatus(status), /^flush leader: replica-a, lease expires in \d\.\d s$/m);
    const ledger = new Ledger();
    // Two seconds of traffic and scrapes: the leader never changes, and the
    // sum over replicas (what a dashboard shows) is always exactly 1.
    for (let i = 0; i < 8; i++) {
      await h.recordTraffic(20, 100 + i, ledger);
      const [ga, gb] = await Promise.all([leaderGauge(a), leaderGauge(b)]);
      assert.deepEqual([ga.size, gb.size], [1, 0], `scrape ${i}: only replica-a reads 1`);
      assert.deepEqual([ga.holders, gb.holders], [["replica-a"], []]);
      await new Promise((r) => setTimeout(r, 250));
    }
    await waitFor(
      "the backlog to drain",
      () => h.settled(),
      20_000,
      50,
      () => h.describe(),
    );
    const [ga, gb] = await Promise.all([leaderGauge(a), leaderGauge(b)]);
    assert.ok(ga.flushes > 0, "the leader flushed");
    assert.equal(gb.flushes, 0, "the standby ran no flush job");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);

    // A graceful stop hands the leadership over at the standby's next tick.
    const stopped = Date.now();
    await a.close();
    services.splice(services.indexOf(a), 1);
    await waitFor("replica-b to lead", () => b.worker.leads, 5_000, 20);
    assert.ok(Date.now() - stopped < 1_500, `took over ${Date.now() - stopped} ms after a close`);
    assert.deepEqual((await leaderGauge(b)).holders, ["replica-b"]);
    await b.close();
    services.splice(services.indexOf(b), 1);
  });

  it("a killed leader is replaced within its lease, and nothing is lost or counted twice", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    // The leader in its own process, so it can die without a word.
    const leader = spawnTs("./worker-process.ts", {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: t.url,
      PREFIX: prefix,
      HOLDER: "doomed",
      LEADER_LEASE_S: "1",
    });
    procs.push(leader);
    await leader.waitForEvent((e) => e.event === "ready", 20_000);
    await waitFor(
      "the child to lead",
      async () => (await h.redis.get(h.keys.flushLeader)) === "doomed",
      5_000,
      20,
    );
    const standby = await start("standby");
    assert.equal(standby.worker.leads, false);
    await h.recordTraffic(50, 7, ledger);
    leader.kill("SIGKILL");
    const killed = Date.now();
    await leader.done;
    // leader_lease_seconds is 1 in tests: the lease runs out, then the standby's next tick.
    await waitFor("the standby to lead", () => standby.worker.leads, 10_000, 20);
    const took = Date.now() - killed;
    assert.ok(took < 2_500, `took over ${took} ms after the leader died (lease 1 s)`);
    await h.recordTraffic(50, 8, ledger);
    await waitFor(
      "the backlog to drain",
      () => h.settled(),
      30_000,
      50,
      () => h.describe(),
    );
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  it("a leader killed between COMMIT and acknowledging is replaced by one that flushes at once", async () => {
    for (const s of services.splice(0)) await s.close();
    await truncateAll(t.db);
    const ledger = new Ledger();
    await h.recordTraffic(300, 9, ledger);
    // A schedule far longer than the test: only a takeover flush can explain a quick commit.
    const every = { EVERY_S: "60" };
    const leader = spawnTs("./worker-process.ts", {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: t.url,
      PREFIX: prefix,
      HOLDER: "dies-after-commit",
      FAULT_STEP: "committed",
      FAULT_ACTION: "kill",
      ...every,
    });
    procs.push(leader);
    await leader.waitForEvent((e) => e.event === "fault", 20_000);
    const killed = Date.now();
    await leader.done;
    assert.equal(
      await h.settled(),
      false,
      "the dead leader left its committed jobs unacknowledged",
    );
    const standby = await startFlushWorker(
      testConfig(prefix, t.url, { worker_flush_every_seconds: 60 }),
      {
        port: false,
        holderId: "successor",
        logger: silentLogger,
      },
    );
    services.push(standby);
    await waitFor(
      "the successor to commit everything",
      () => h.settled(),
      15_000,
      20,
      () => h.describe(),
    );
    const took = Date.now() - killed;
    // Lease 2 s and leadership 1 s (testConfig), then one flush: not the 60 s schedule.
    assert.ok(took < 6_000, `everything committed ${took} ms after the leader died`);
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  it("a leader killed inside its transaction holding a long lock lease is taken over at once", async () => {
    for (const s of services.splice(0)) await s.close();
    await truncateAll(t.db);
    const ledger = new Ledger();
    await h.recordTraffic(300, 10, ledger);
    // Its flush lock and its jobs' locks last 30 s: only a takeover (of the
    // lock, and of the jobs) lets the next leader flush before then.
    const leader = spawnTs("./worker-process.ts", {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: t.url,
      PREFIX: prefix,
      HOLDER: "dies-in-transaction",
      FAULT_STEP: "in-transaction",
      FAULT_ACTION: "kill",
      LEASE_S: "30",
      EVERY_S: "60",
    });
    procs.push(leader);
    await leader.waitForEvent((e) => e.event === "fault", 20_000);
    const killed = Date.now();
    await leader.done;
    assert.match(String(await h.redis.get(h.keys.flushLock)), /^dies-in-transaction:/);
    const next = await startFlushWorker(
      testConfig(prefix, t.url, { worker_flush_every_seconds: 60, lock_lease_seconds: 30 }),
      { port: 0, host: "127.0.0.1", holderId: "next-leader", logger: silentLogger },
    );
    services.push(next);
    await waitFor(
      "the next leader to commit everything",
      () => h.settled(),
      15_000,
      20,
      () => h.describe(),
    );
    const took = Date.now() - killed;
    // Leadership lapses within 1 s (testConfig), the standby's tick adds at most one.
    assert.ok(took < 5_000, `everything committed ${took} ms after the leader died`);
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    const text = await (await fetch(`http://127.0.0.1:${next.port}/metrics`)).text();
    const reclaimed = Number(/^spend_jobs_reclaimed_total (\d+)$/m.exec(text)?.[1]);
    assert.ok(reclaimed > 0, "the jobs the dead leader had taken were reclaimed");
  });
});

describe("flush leadership while Redis is away", () => {
  let server: TestRedisServer;
  before(async () => {
    server = new TestRedisServer(await freePort());
    await server.start();
  });
  after(async () => {
    await server.destroy();
  });

  // A tick that waits for Redis hangs until it is back: the timeout makes that a failure.
  it(
    "steps down once its lease lapses, without waiting for Redis to answer",
    { timeout: 30_000 },
    async () => {
      // The worker's own client options: commands queue while Redis is away (maxRetriesPerRequest null).
      const redis = createRedis(
        { host: "127.0.0.1", port: server.port, db: 0, tls: false },
        "worker",
      );
      redis.on("error", () => undefined);
      try {
        const leaseMs = 600;
        const lead = new FlushLeadership(redis, "lead-outage:leader", "w1", leaseMs);
        assert.equal(await lead.tick(), true);
        await server.stop();
        const stopped = Date.now();
        let leads = true;
        while (leads && Date.now() - stopped < 10 * leaseMs) {
          const t0 = Date.now();
          leads = await lead.tick();
          assert.ok(Date.now() - t0 <= leaseMs, `a tick took ${Date.now() - t0} ms`);
        }
        assert.equal(leads, false, "still leading long after its lease lapsed");
        assert.ok(
          Date.now() - stopped < 2 * leaseMs,
          `stepped down after ${Date.now() - stopped} ms`,
        );
        await server.start();
        await waitFor("leads again once Redis is back", () => lead.tick(), 10_000);
      } finally {
        redis.disconnect();
      }
    },
  );
});

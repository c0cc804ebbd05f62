import { createSpendProducer, startFlushWorker } from "../../src/index.js";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { silentLogger } from "../../src/observe/logger.js";
import { createCluster, waitUntilReady, type ClusterNode } from "../../src/redis/connection.js";
import { redisKeys } from "../../src/redis/keys.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Ledger } from "../support/ledger.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

const P = 3;

/** A real three-master Redis Cluster on loopback ports, owned by this test. */
async function startCluster(): Promise<TestRedisServer[]> {
  const ports: [number, number][] = [];
  for (let i = 0; i < 3; i++) ports.push([await freePort(), await freePort()]);
  const servers = ports.map(
    ([port, bus]) =>
      new TestRedisServer(port, [
        "--cluster-enabled",
        "yes",
        // The bus port defaults to port + 10000, inside Linux's ephemeral range, where an
        // outgoing connection can hold it: the OS picks it too.
        "--cluster-port",
        String(bus),
        "--cluster-config-file",
        "nodes.conf",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
      ]),
  );
  try {
    await Promise.all(servers.map((s) => s.start()));
  } catch (err) {
    // Servers that did start would keep this test process alive.
    await Promise.all(servers.map((s) => s.destroy()));
    throw err;
  }
  execFileSync(
    "redis-cli",
    [
      "--cluster",
      "create",
      ...servers.map((s) => `127.0.0.1:${s.port}`),
      "--cluster-replicas",
      "0",
      "--cluster-yes",
    ],
    { stdio: "ignore" },
  );
  await waitForClusterOk(servers);
  return servers;
}

async function waitForClusterOk(servers: TestRedisServer[]): Promise<void> {
  await waitFor(
    "cluster_state:ok on every node",
    async () => {
      const states = await Promise.all(
        servers.map(async (s) => {
          const r = new Redis(s.port, "127.0.0.1", {
            lazyConnect: true,
            maxRetriesPerRequest: 0,
            retryStrategy: () => null,
          });
          r.on("error", () => undefined);
          try {
            await r.connect();
            return String(await r.call("CLUSTER", "INFO")).includes("cluster_state:ok");
          } catch {
            return false;
          } finally {
            r.disconnect();
          }
        }),
      );
      return states.every(Boolean);
    },
    30_000,
    200,
  );
}

describe("Redis Cluster", () => {
  let t: TestDatabase;
  let servers: TestRedisServer[] = [];
  let nodes: ClusterNode[] = [];
  before(async () => {
    t = await createTestDatabase("cluster");
    servers = await startCluster();
    nodes = servers.map((s) => ({ host: "127.0.0.1", port: s.port }));
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.destroy()));
    await t.drop();
  });

  it("spreads the partitions' queues and locks over the masters", () => {
    const slots = new Set<number>();
    for (let p = 0; p < P; p++) {
      const k = redisKeys("haimaker", p);
      for (const key of [
        `${k.bullPrefix}:${k.spendQueue}:wait`,
        `${k.bullPrefix}:${k.dailySpendQueue}:wait`,
        k.flushLock,
      ]) {
        slots.add(
          Number(
            execFileSync("redis-cli", [
              "-p",
              String(servers[0]?.port ?? 0),
              "CLUSTER",
              "KEYSLOT",
              key,
            ])
              .toString()
              .trim(),
          ),
        );
      }
      // The lock and its fence counter share a slot: one Lua script touches both.
      const [lock, fence] = [k.flushLock, k.flushFence].map((key) =>
        execFileSync("redis-cli", ["-p", String(servers[0]?.port ?? 0), "CLUSTER", "KEYSLOT", key])
          .toString()
          .trim(),
      );
      assert.equal(lock, fence);
    }
    assert.ok(slots.size >= 6, `queues and locks in ${slots.size} different slots`);
  });

  it("producers and workers on the cluster reconcile exactly, across a master restarted mid-run", async () => {
    const prefix = uniquePrefix("cluster");
    const config = testConfig(prefix, t.url, {
      max_jobs_per_flush: 100,
      flush_partitions: P,
      worker_concurrency: P,
    });
    const workerConn = createCluster(nodes, config.redis, "worker");
    const producerConn = createCluster(nodes, config.redis, "producer");
    await waitUntilReady(workerConn, 10_000);
    await waitUntilReady(producerConn, 10_000);
    // Both sides as deployed, on connections the test owns (the factories leave them open).
    const { worker } = await startFlushWorker(config, {
      port: false,
      db: t.db,
      logger: silentLogger,
      redis: workerConn,
    });
    const producer = await createSpendProducer(config, {
      redis: producerConn,
      logger: silentLogger,
      options: {
        flushIntervalMs: 200,
        flushJitterMs: 50,
        closeTimeoutMs: 60_000,
        sendTimeoutMs: 2_000,
      },
    });
    const ledger = new Ledger();
    const gen = trafficGenerator(51);
    const traffic = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const e = gen();
        producer.record(e);
        ledger.record(e);
        if (i % 100 === 0) await new Promise((r) => setTimeout(r, 5));
      }
    };
    try {
      await traffic(3_000);
      // A master dies and comes back (its AOF and nodes.conf intact) while traffic goes on.
      const victim = servers[1];
      assert.ok(victim !== undefined);
      await victim.stop("SIGKILL");
      await traffic(1_500);
      await victim.start();
      await waitForClusterOk(servers);
      await traffic(1_500);
      await producer.close();

      await waitFor(
        "every partition to drain",
        async () => {
          const counts = await Promise.all(
            worker.partitions.flatMap((p) => [
              p.queues.entity.getJobCounts("wait", "active"),
              p.queues.daily.getJobCounts("wait", "active"),
            ]),
          );
          const locks = await Promise.all(
            worker.partitions.map((p) => workerConn.exists(p.keys.flushLock)),
          );
          return (
            counts.every((c) => (c.wait ?? 0) + (c.active ?? 0) === 0) &&
            locks.every((n) => n === 0)
          );
        },
        60_000,
        200,
      );
      const diff = diffTotals(ledger.totals, await readTotals(t.url));
      assert.deepEqual(diff, [], diff.join("\n"));
    } finally {
      await worker.close();
      workerConn.disconnect();
      producerConn.disconnect();
    }
  });
});

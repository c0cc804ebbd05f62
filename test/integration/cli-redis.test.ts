import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { checkRedis } from "../../src/cli/preflight.js";
import { loadConfig } from "../../src/config/config.js";
import { redisKeys } from "../../src/redis/keys.js";
import { assertRefused, configFile, goodConfig, pool, redisUrl, runAsync } from "../support/cli.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * Start-up checks against the real Redis: cluster nodes that are no cluster, a
 * cluster not ready yet, a flush partition count that disagrees.
 */
describe("haimaker-spend CLI: what it checks of Redis before it starts", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("cli-redis");
  let config: string;
  before(async () => {
    t = await createTestDatabase("cli_redis");
    config = goodConfig(prefix, t.url);
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
  });

  it("refuses REDIS_CLUSTER_NODES naming a standalone Redis (the real one), with exit 2", async () => {
    const node = `${redisUrl.hostname}:${redisUrl.port || "6379"}`;
    const fileNodes = configFile(
      `general_settings:\n  use_redis_transaction_buffer: true\n  database_url: ${t.url}\nlitellm_settings:\n  cache_params: { type: redis, cluster_nodes: ['${node}'] }\n`,
    );
    const runs: [string, string[], Record<string, string>, RegExp][] = [
      ...["gateway", "status"].map((cmd): [string, string[], Record<string, string>, RegExp] => [
        `REDIS_CLUSTER_NODES ${cmd}`,
        [cmd, "--config", config],
        { REDIS_CLUSTER_NODES: node },
        new RegExp(
          `^error: REDIS_CLUSTER_NODES names ${node.replaceAll(".", "\\.")}, which is a standalone Redis \\(cluster support disabled\\)$`,
          "m",
        ),
      ]),
      [
        "cache_params.cluster_nodes status",
        ["status", "--config", fileNodes],
        {},
        /^error: litellm_settings\.cache_params\.cluster_nodes names .*, which is a standalone Redis \(cluster support disabled\)$/m,
      ],
      [
        "no seed answers",
        ["status", "--config", config],
        { REDIS_CLUSTER_NODES: "127.0.0.1:1,127.0.0.1:2" },
        /^error: Redis Cluster seed nodes \(REDIS_CLUSTER_NODES\) are all unreachable: 127\.0\.0\.1:1 \(connect ECONNREFUSED[^)]*\), 127\.0\.0\.1:2 \(/m,
      ],
    ];
    const results = await pool(runs, 2, ([, args, env]) => runAsync(args, env));
    runs.forEach(([what, , , message], i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assertRefused(r, message, what);
    });
  });

  it("preflight accepts a Redis Cluster only once its state is ok", async () => {
    // A one-node cluster of this test's own: cluster mode on, no slots yet (state fail).
    const server = new TestRedisServer(await freePort(), [
      "--cluster-enabled",
      "yes",
      "--cluster-port",
      String(await freePort()),
      "--cluster-config-file",
      "nodes.conf",
      "--save",
      "",
      "--appendonly",
      "no",
    ]);
    await server.start();
    const admin = new Redis(server.url);
    try {
      const cfg = loadConfig(undefined, { REDIS_CLUSTER_NODES: `127.0.0.1:${server.port}` }).redis;
      await assert.rejects(
        checkRedis(cfg),
        new RegExp(
          `^StartupError: Redis Cluster node 127\\.0\\.0\\.1:${server.port} \\(REDIS_CLUSTER_NODES\\) reports cluster_state:fail$`,
        ),
      );
      await admin.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
      await waitFor(
        "cluster_state:ok",
        async () => String(await admin.call("CLUSTER", "INFO")).includes("cluster_state:ok"),
        10_000,
      );
      await checkRedis(cfg);
    } finally {
      admin.disconnect();
      await server.destroy();
    }
  });

  it("refuses to start on a flush partition mismatch with exit 2 and one line", async () => {
    const prefix = uniquePrefix("cli-parts");
    const keys = redisKeys(prefix);
    const redis = new Redis(TEST_REDIS_URL);
    const entity = new Queue(keys.spendQueue, { connection: redis, prefix: keys.bullPrefix });
    try {
      await redis.set(keys.partitionCount, "1");
      await entity.add("spend", { pending: true });
      const two = configFile(`general_settings:
  use_redis_transaction_buffer: true
  database_url: ${t.url}
litellm_settings:
  cache_params: { type: redis, host: ${redisUrl.hostname}, port: ${redisUrl.port || "6379"} }
spend_buffer_settings:
  key_prefix: ${prefix}
  flush_partitions: 2
`);
      const [r, gw] = await Promise.all([
        runAsync(["worker", "--config", two, "--port", "0"]),
        runAsync(["gateway", "--config", two, "--port", "0"]),
      ]);
      assertRefused(
        r,
        /^error: Redis records 1 flush partition\(s\).* configured for 2\b.*Drain first/m,
        "worker",
      );
      // A gateway never switches the count, drained or not.
      await entity.obliterate({ force: true });
      const drained = await runAsync(["gateway", "--config", two, "--port", "0"]);
      for (const [res, what] of [
        [gw, "gateway"],
        [drained, "gateway, drained"],
      ] as const)
        assertRefused(res, /a gateway never changes the count/, what);
      assert.equal(await redis.get(keys.partitionCount), "1");
    } finally {
      await entity.close();
      redis.disconnect();
      await cleanRedis(prefix);
    }
  });
});

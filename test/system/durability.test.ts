import assert from "node:assert/strict";
import { fork } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { trafficGenerator } from "../../src/demo/traffic.js";
import type { GatewayReport } from "../../src/demo/demo-gateway.js";
import { decimalToPico } from "../../src/contract/money.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { nodeArgs } from "../support/paths.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { cleanRedis, TEST_REDIS_URL, testConfig, uniquePrefix } from "../support/redis.js";

describe("durability", () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase("durability");
  });
  after(async () => {
    await t.drop();
  });

  it("spend queued in Redis survives a Redis crash when Redis keeps an AOF (appendfsync always)", async () => {
    const server = new TestRedisServer(await freePort(), [
      "--save",
      "",
      "--appendonly",
      "yes",
      "--appendfsync",
      "always",
    ]);
    await server.start();
    const prefix = uniquePrefix("aof");
    const base = testConfig(prefix, t.url);
    const config = { ...base, redis: { ...base.redis, port: server.port } };
    const ledger = new Ledger();
    try {
      let h = new Harness(config, t.db);
      const p = await h.producer({ maxRowsPerJob: 100 });
      const gen = trafficGenerator(31);
      for (let i = 0; i < 1_000; i++) {
        const e = gen();
        p.record(e);
        ledger.record(e);
      }
      await p.close();
      const queued = await h.waitingJobs();
      assert.ok(queued > 2);
      await h.close();

      await server.stop("SIGKILL"); // no clean shutdown: only the AOF has the jobs
      await server.start();

      h = new Harness(config, t.db);
      try {
        assert.equal(await h.waitingJobs(), queued, "every queued job survived the crash");
        assert.equal((await h.flusher().flushOnce()).outcome, "committed");
      } finally {
        await h.close();
      }
      assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    } finally {
      await server.destroy();
    }
  });

  it("a gateway sent SIGTERM mid-traffic drains its buffer before it exits", async () => {
    const prefix = uniquePrefix("sigterm");
    const dir = mkdtempSync(join(tmpdir(), "spend-gw-"));
    const cfg = join(dir, "proxy_config.yaml");
    // A long interval: whatever it recorded is still in memory when SIGTERM arrives.
    writeFileSync(
      cfg,
      `general_settings: { use_redis_transaction_buffer: true, proxy_batch_write_at: 60 }
litellm_settings: { cache: true, cache_params: { type: redis } }
spend_buffer_settings: { key_prefix: ${prefix} }
`,
    );
    const before = await keySpend(t.url);
    const [demo = "", ...loader] = nodeArgs("src/demo/demo-gateway.ts").reverse();
    const child = fork(demo, [], {
      env: {
        ...process.env,
        SPEND_CONFIG: cfg,
        REDIS_URL: TEST_REDIS_URL,
        DATABASE_URL: t.url,
        RATE: "2000",
        LOG_LEVEL: "silent",
      },
      execArgv: loader.reverse(),
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    });
    let final: GatewayReport | undefined;
    child.on("message", (m: GatewayReport) => {
      if (m.final) final = m;
    });
    await new Promise((r) => setTimeout(r, 2_500));
    const h = new Harness(testConfig(prefix, t.url), t.db);
    try {
      assert.equal(await h.waitingJobs(), 0, "nothing was sent before SIGTERM");
      const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
      child.kill("SIGTERM");
      assert.equal(await exited, 0);
      assert.ok(final !== undefined && final.events > 0, "the gateway reported what it recorded");
      assert.ok((await h.waitingJobs()) > 0, "its buffer went to Redis on the way out");
      assert.equal((await h.flusher().flushOnce()).outcome, "committed");
      const gained = (await keySpend(t.url)) - before;
      assert.equal(gained, BigInt(final.spendPico), "every recorded picodollar arrived");
    } finally {
      await h.close();
      await cleanRedis(prefix);
    }
  });
});

async function keySpend(url: string): Promise<bigint> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ s: string }>(
      `SELECT COALESCE(sum(spend), 0)::text AS s FROM "LiteLLM_VerificationToken"`,
    );
    return decimalToPico(r.rows[0]?.s ?? "0");
  } finally {
    await c.end();
  }
}

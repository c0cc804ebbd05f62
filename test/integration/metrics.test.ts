import assert from "node:assert/strict";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createApp, listen } from "../../src/serve/http.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";

/** Scrapes /metrics over HTTP and returns the value of each unlabelled series. */
async function scrape(server: Server): Promise<Map<string, number>> {
  const { port } = server.address() as AddressInfo;
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    const m = /^([a-z_]+) (\S+)$/.exec(line);
    if (m !== null) out.set(m[1] ?? "", Number(m[2]));
  }
  return out;
}

describe("metrics endpoint", () => {
  let t: TestDatabase;
  let h: Harness;
  let server: Server;
  const prefix = uniquePrefix("metrics");
  before(async () => {
    t = await createTestDatabase("metrics");
    h = new Harness(testConfig(prefix, t.url), t.db);
    server = await listen(createApp(h.metrics), 0, "127.0.0.1");
  });
  after(async () => {
    server.close();
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("reports the seed's five gauges with the pipeline's real state", async () => {
    const p = await h.producer({ maxRowsPerJob: 3 });
    p.record({ spend: 1, apiKey: "k1", userId: "u1", teamId: "t1", tags: ["a"] });
    p.record({ spend: 2, apiKey: "k2", userId: "u1", model: "m" });

    let m = await scrape(server);
    // Entity rows: k1, k2, u1, t1, member(u1,t1), tag a. Daily facts: one per key's context
    // (the worker fans them out to u1 x2, t1 and tag a).
    assert.equal(m.get("litellm_in_memory_spend_update_queue_size"), 6);
    assert.equal(m.get("litellm_in_memory_daily_spend_update_queue_size"), 2);
    assert.equal(m.get("litellm_redis_spend_update_queue_size"), 0);

    await p.flush();
    m = await scrape(server);
    assert.equal(m.get("litellm_in_memory_spend_update_queue_size"), 0);
    assert.equal(m.get("litellm_in_memory_daily_spend_update_queue_size"), 0);
    assert.equal(m.get("litellm_redis_spend_update_queue_size"), 2, "6 entity rows in jobs of 3");
    assert.equal(
      m.get("litellm_redis_daily_spend_update_queue_size"),
      1,
      "2 daily facts in a job of at most 3",
    );
    assert.equal(m.get("litellm_pod_lock_manager_size"), 0);

    let whileHolding: Map<string, number> | undefined;
    const report = await h
      .flusher({
        onStep: async (step) => {
          if (step === "drained") whileHolding = await scrape(server);
        },
      })
      .flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(
      whileHolding?.get("litellm_pod_lock_manager_size"),
      0,
      "a flush lock alone is not the leadership (see leadership.test.ts)",
    );

    m = await scrape(server);
    assert.equal(m.get("litellm_pod_lock_manager_size"), 0);
    assert.equal(m.get("litellm_redis_spend_update_queue_size"), 0);
    assert.equal(m.get("litellm_redis_daily_spend_update_queue_size"), 0);
    assert.equal(m.get("spend_batches_committed_total"), 3);
    assert.ok(
      (m.get("spend_last_successful_flush_timestamp_seconds") ?? 0) > Date.now() / 1000 - 60,
    );
    await p.close();
  });
});

import assert from "node:assert/strict";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { startGateway } from "../../src/gateway/gateway.js";
import { createApp, listen } from "../../src/serve/http.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";

interface Scrape {
  types: Map<string, string>;
  /** Sample line without its value ("name{labels}") → value. */
  samples: Map<string, number>;
}

async function scrape(server: Server): Promise<Scrape> {
  const { port } = server.address() as AddressInfo;
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  const types = new Map<string, string>();
  const samples = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t !== null) types.set(t[1] ?? "", t[2] ?? "");
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m !== null) samples.set(m[1] ?? "", Number(m[2]));
  }
  return { types, samples };
}

const EXPECTED_TYPES: Record<string, string> = {
  litellm_pod_lock_manager_size: "gauge",
  litellm_in_memory_spend_update_queue_size: "gauge",
  litellm_in_memory_daily_spend_update_queue_size: "gauge",
  litellm_redis_spend_update_queue_size: "gauge",
  litellm_redis_daily_spend_update_queue_size: "gauge",
  spend_events_recorded_total: "counter",
  spend_events_rejected_total: "counter",
  spend_producer_enqueue_failures_total: "counter",
  spend_producer_undelivered_rows: "gauge",
  spend_producer_undelivered_batches: "gauge",
  spend_flushes_total: "counter",
  spend_flush_duration_seconds: "histogram",
  spend_flush_rows: "histogram",
  spend_flush_batches: "histogram",
  spend_rows_committed_total: "counter",
  spend_batches_committed_total: "counter",
  spend_duplicate_batches_total: "counter",
  spend_poison_jobs_total: "counter",
  spend_fencing_rejections_total: "counter",
  spend_last_successful_flush_timestamp_seconds: "gauge",
  spend_seconds_since_last_successful_flush: "gauge",
  spend_lock_acquisitions_total: "counter",
  spend_lock_losses_total: "counter",
  spend_lock_holder_info: "gauge",
  spend_lock_last_acquired_timestamp_seconds: "gauge",
  spend_transaction_retries_total: "counter",
  spend_queue_jobs: "gauge",
  spend_backlog_age_seconds: "gauge",
};

describe("observability: /metrics", () => {
  let t: TestDatabase;
  let h: Harness;
  let server: Server;
  const prefix = uniquePrefix("obs");
  before(async () => {
    t = await createTestDatabase("observability");
    h = new Harness(testConfig(prefix, t.url), t.db);
    server = await listen(createApp(h.metrics), 0, "127.0.0.1");
  });
  after(async () => {
    server.close();
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("serves every metric with its type, and the values move with a real flush", async () => {
    const flusher = h.flusher({ onStep: (s) => (s === "drained" ? check() : undefined) });
    let whileHolding: Scrape | undefined;
    const check = async (): Promise<void> => {
      whileHolding = await scrape(server);
    };

    const p = await h.producer({ maxRowsPerJob: 2 });
    p.record({ spend: 1, apiKey: "k1", userId: "u1", teamId: "t1" });
    assert.throws(() => p.record({ spend: -1, userId: "u1" }));

    let m = await scrape(server);
    for (const [name, type] of Object.entries(EXPECTED_TYPES))
      assert.equal(m.types.get(name), type, `# TYPE ${name} ${type}`);
    assert.equal(m.samples.get('spend_events_rejected_total{reason="invalid_spend"}'), 1);
    assert.equal(m.samples.get("spend_events_recorded_total"), 1);
    assert.equal(m.samples.get("spend_producer_undelivered_rows"), 0);
    assert.equal(m.samples.get('spend_backlog_age_seconds{queue="entity"}'), 0);

    await p.flush();
    await new Promise((r) => setTimeout(r, 30));
    m = await scrape(server);
    assert.equal(m.samples.get('spend_queue_jobs{queue="entity",state="waiting"}'), 2);
    assert.ok((m.samples.get('spend_backlog_age_seconds{queue="entity"}') ?? 0) > 0);
    assert.equal(m.samples.get("spend_lock_acquisitions_total"), 0);
    const sinceBefore = m.samples.get("spend_seconds_since_last_successful_flush") ?? -1;
    assert.ok(sinceBefore >= 0);

    const report = await flusher.flushOnce();
    assert.equal(report.outcome, "committed");
    assert.ok(whileHolding !== undefined);
    const holders = [...whileHolding.samples.keys()].filter((k) =>
      k.startsWith("spend_lock_holder_info{"),
    );
    assert.equal(
      holders.length,
      0,
      "a flush outside a worker leads nothing: the leader gauges are the leadership's, not the lock's",
    );

    m = await scrape(server);
    const s = m.samples;
    assert.equal(
      [...s.keys()].filter((k) => k.startsWith("spend_lock_holder_info{")).length,
      0,
      "absent once released",
    );
    assert.equal(s.get("spend_lock_acquisitions_total"), 1);
    assert.equal(s.get('spend_flushes_total{outcome="committed"}'), 1);
    assert.equal(s.get("spend_flush_duration_seconds_count"), 1);
    assert.equal(s.get("spend_flush_batches_count"), 1);
    assert.equal(s.get("spend_flush_batches_sum"), report.batches);
    assert.equal(s.get('spend_flush_rows_sum{kind="entity"}'), report.entityRows);
    assert.equal(s.get('spend_rows_committed_total{kind="entity"}'), report.entityRows);
    assert.equal(s.get('spend_queue_jobs{queue="entity",state="waiting"}'), 0);
    assert.equal(s.get('spend_queue_jobs{queue="entity",state="completed"}'), 2);
    assert.equal(s.get('spend_backlog_age_seconds{queue="entity"}'), 0);
    assert.ok((s.get("spend_seconds_since_last_successful_flush") ?? 99) < 5);
    assert.ok(
      [...s.keys()].some((k) => k.startsWith("spend_lock_last_acquired_timestamp_seconds{")),
    );

    // An empty flush also counts as a success, and logs nothing above debug.
    assert.equal((await flusher.flushOnce()).outcome, "empty");
    m = await scrape(server);
    assert.equal(m.samples.get('spend_flushes_total{outcome="empty"}'), 1);
    assert.equal(m.samples.get("spend_lock_acquisitions_total"), 2);
    await p.close();
  });

  it("counts a lock lost to a takeover", async () => {
    const lock = h.lock("holder-a", 300);
    const other = h.lock("holder-b", 300);
    const p = await h.producer();
    p.record({ spend: 1, userId: "u-lost" });
    await p.flush();
    const before = (await scrape(server)).samples;
    const report = await h
      .flusher(
        {
          onStep: async (step) => {
            if (step !== "drained") return;
            // Let the lease run out and another holder take it.
            await h.redis.del(h.keys.flushLock);
            await other.acquire();
            await new Promise((r) => setTimeout(r, 350));
          },
        },
        lock,
      )
      .flushOnce();
    assert.notEqual(report.outcome, "committed");
    const after = (await scrape(server)).samples;
    const lost = (k: Map<string, number>): number =>
      [...k]
        .filter(([n]) => n.startsWith("spend_lock_losses_total{"))
        .reduce((a, [, v]) => a + v, 0);
    assert.equal(lost(after) - lost(before), 1);
    await p.close();
  });
  it("a gateway exports what it measures: its producer and the queues it reads, never a worker's lock or flushes", async () => {
    const gw = await startGateway(testConfig(prefix, t.url), { port: 0, host: "127.0.0.1" });
    try {
      // Jobs waiting with no worker running: the gateway's scrape shows them.
      const p = await h.producer();
      p.record({ spend: 1, userId: "obs-gateway", tags: ["g"] });
      await p.flush();
      const res = await fetch(`http://127.0.0.1:${gw.port}/metrics`);
      const text = await res.text();
      assert.match(text, /^litellm_redis_spend_update_queue_size [1-9]/m);
      assert.match(text, /^litellm_redis_daily_spend_update_queue_size [1-9]/m);
      assert.match(text, /^spend_backlog_age_seconds\{queue="entity"\} /m);
      assert.match(text, /^litellm_in_memory_spend_update_queue_size 0/m);
      // Freshness is read from Redis: gateways report it too, so it is there with every worker down.
      assert.match(text, /^spend_seconds_since_last_successful_flush \d/m);
      for (const workerOnly of ["litellm_pod_lock_manager_size", "spend_flushes_total"])
        assert.doesNotMatch(text, new RegExp(`^${workerOnly}`, "m"), workerOnly);
      await p.close();
      while ((await h.flusher().flushOnce()).outcome === "committed");
    } finally {
      await gw.close();
    }
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import type { SpendEvent } from "../../src/produce/spend-event.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * POST /spend/events, the batch ingest for gateways in other languages: the
 * master key, per-event results naming each rejected event's reason, bounds
 * on batch and body size, and exact totals in PostgreSQL for what was accepted.
 */

const MASTER = "sk-ingest-master-key";

describe("batch ingest (POST /spend/events)", () => {
  let t: TestDatabase;
  let gw: GatewayService;
  let config: AppConfig;
  let url: string;
  const prefix = uniquePrefix("ingest");
  const ledger = new Ledger();

  before(async () => {
    t = await createTestDatabase("ingest");
    config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 3_600,
          master_key: "os.environ/INGEST_MASTER_KEY",
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: {
          key_prefix: prefix,
          flush_jitter_seconds: 0,
          ingest_max_events: 10,
          max_request_body_bytes: 4_096,
        },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url, INGEST_MASTER_KEY: MASTER },
    );
    gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
    url = `http://127.0.0.1:${gw.port}/spend/events`;
  });
  after(async () => {
    await gw.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  const post = (body: unknown, auth: string | null = MASTER): Promise<Response> =>
    fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(auth !== null ? { authorization: `Bearer ${auth}` } : {}),
      },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  it("needs the master key (resolved from os.environ/)", async () => {
    const events = [{ spend: "1", userId: "nobody" }];
    assert.equal((await post({ events }, null)).status, 401);
    assert.equal((await post({ events }, "sk-ingest-master-kez")).status, 401);
  });

  it("all or nothing: a batch with refused events records none of them and names each one's index and reason", async () => {
    const now = Date.now();
    const good: SpendEvent[] = [
      {
        spend: "0.000123456789",
        apiKey: "hashed-k1",
        userId: "u1",
        teamId: "t1",
        model: "gpt-4o",
        provider: "openai",
        promptTokens: 10,
        completionTokens: 5,
        startTime: now,
      },
      {
        spend: 0.1,
        userId: "u2",
        endUserId: "e1",
        tags: ["go", "prod"],
        model: "claude",
        success: false,
        startTime: new Date(now).toISOString(),
      },
      {
        spend: "2.5",
        organizationId: "o1",
        teamId: "t1",
        endpoint: "/v1/embeddings",
        startTime: now,
      },
    ];
    const bad: [unknown, string][] = [
      [{ spend: -1, userId: "u1" }, "invalid_spend"],
      [{ spend: "1.0000000000001", userId: "u1" }, "invalid_spend"],
      [{ spend: "1" }, "no_entity"],
      [{ spend: "1", userId: "u1", colour: "blue" }, "unknown_field"],
      [{ spend: "1", userId: "u1", promptTokens: 1.5 }, "invalid_tokens"],
      ["not an object", "not_object"],
      [{ spend: "1", userId: "u1", startTime: "2001-01-01T00:00:00Z" }, "start_time_out_of_range"],
    ];
    // Interleaved, so indexes are checked, not just counts.
    const events: unknown[] = [];
    const expectedRejected: { index: number; reason: string }[] = [];
    for (let i = 0; i < Math.max(good.length, bad.length); i++) {
      if (good[i] !== undefined) events.push(good[i]);
      const b = bad[i];
      if (b !== undefined) {
        expectedRejected.push({ index: events.length, reason: b[1] });
        events.push(b[0]);
      }
    }
    assert.equal(events.length, 10, "exactly the batch bound");
    const res = await post({ events });
    assert.equal(res.status, 400);
    const body = (await res.json()) as {
      error: { message: string };
      accepted: number;
      rejected: { index: number; reason: string; field: string; message: string }[];
    };
    assert.equal(body.accepted, 0);
    assert.match(body.error.message, /7 of 10 events refused: nothing was recorded/);
    assert.deepEqual(
      body.rejected.map(({ index, reason }) => ({ index, reason })),
      expectedRejected,
    );
    for (const r of body.rejected)
      assert.ok(r.message.length > 0 && r.field.length > 0, JSON.stringify(r));
    // The client drops what was refused and sends the rest: recorded once (the final test).
    const retry = await post({ events: good });
    assert.equal(retry.status, 200);
    assert.deepEqual(await retry.json(), { accepted: good.length, rejected: [] });
    for (const e of good) ledger.record(e);
  });

  it("refuses a malformed body (400), a batch over the bound and a body over the size limit (413)", async () => {
    assert.equal((await post({ events: "nope" })).status, 400);
    assert.equal((await post({})).status, 400);
    assert.equal((await post("{oops")).status, 400);
    const tooMany = await post({
      events: Array.from({ length: 11 }, () => ({ spend: "1", userId: "x" })),
    });
    assert.equal(tooMany.status, 413);
    assert.match(
      ((await tooMany.json()) as { error: { message: string } }).error.message,
      /at most 10/,
    );
    const tooBig = await post({ events: [{ spend: "1", userId: "x".repeat(5_000) }] });
    assert.equal(tooBig.status, 413);
    assert.match(
      ((await tooBig.json()) as { error: { message: string } }).error.message,
      /4096 bytes/,
    );
  });

  it("flushes to PostgreSQL: totals equal the accepted events exactly", async () => {
    await gw.close();
    const h = new Harness(config, t.db);
    try {
      for (let i = 0; i < 20 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
      assert.equal(await h.waitingJobs(), 0);
    } finally {
      await h.close();
    }
    const diff = diffTotals(ledger.totals, await readTotals(t.url));
    assert.deepEqual(diff, [], diff.join("\n"));
    assert.equal(ledger.events, 3);
  });
});

import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { after, before, describe, it } from "node:test";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import {
  IdempotencyStore,
  idempotentProducerId,
  sha256Hex,
} from "../../src/gateway/idempotency.js";
import { sealStandalone } from "../../src/produce/standalone.js";
import type { SpendEvent } from "../../src/produce/spend-event.js";
import { QueueSink } from "../../src/queue/queue-sink.js";
import { redisKeys } from "../../src/redis/keys.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * POST /spend/events with an Idempotency-Key, end to end against real Redis
 * and PostgreSQL with two gateways sharing them: a batch sent again under the
 * same key (one after the other, all at once, to either gateway, after a
 * gateway died holding the claim, after its first copy was already flushed)
 * is applied once; the ledger kept here, one entry per batch the client
 * meant, must equal PostgreSQL to the picodollar.
 */

const MASTER = "sk-idempotent-master";

interface Answer {
  status: number;
  headers: Headers;
  json: Record<string, unknown>;
}

describe("idempotent ingest (POST /spend/events with Idempotency-Key, two gateways)", () => {
  let t: TestDatabase;
  let config: AppConfig;
  const gws: GatewayService[] = [];
  const bases: string[] = [];
  const prefix = uniquePrefix("idem");
  const ledger = new Ledger();
  let h: Harness;

  before(async () => {
    t = await createTestDatabase("idempotent_ingest");
    config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 3_600,
          master_key: MASTER,
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: { key_prefix: prefix, flush_jitter_seconds: 0, max_rows_per_job: 7 },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    for (let i = 0; i < 2; i++) {
      const gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
      gws.push(gw);
      bases.push(`http://127.0.0.1:${gw.port}`);
    }
    h = new Harness(config, t.db);
  });
  after(async () => {
    await Promise.all(gws.map((g) => g.close()));
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  const post = async (body: unknown, key: string | undefined, gw = 0): Promise<Answer> => {
    const res = await fetch(`${bases[gw] ?? ""}/spend/events`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${MASTER}`,
        "content-type": "application/json",
        ...(key !== undefined ? { "idempotency-key": key } : {}),
      },
      body: JSON.stringify(body),
    });
    return {
      status: res.status,
      headers: res.headers,
      json: (await res.json()) as Record<string, unknown>,
    };
  };
  const errorCode = (a: Answer): string | undefined =>
    (a.json.error as { code?: string } | undefined)?.code;

  /** A batch of `n` events touching several entities and tags, `label` keeping batches apart. */
  const batch = (label: string, n: number): SpendEvent[] =>
    Array.from({ length: n }, (_, i) => ({
      spend: `0.00${i + 1}${label.length}`,
      apiKey: `key-${label}`,
      userId: `user-${label}-${i % 3}`,
      teamId: `team-${i % 2}`,
      endUserId: `end-${label}`,
      tags: [`tag-${i % 4}`, "idem"],
      model: "gpt-4o",
      provider: "openai",
      promptTokens: i,
      completionTokens: 2 * i,
    }));

  async function flushAll(): Promise<void> {
    for (let i = 0; i < 100 && (await h.waitingJobs()) > 0; i++) {
      const r = await h.flusher().flushOnce();
      assert.ok(["committed", "empty"].includes(r.outcome), `flush outcome ${r.outcome}`);
    }
    assert.equal(await h.waitingJobs(), 0, "every job flushed");
  }

  it("refuses a malformed key with a clear 400, before doing anything", async () => {
    const events = batch("bad-key", 1);
    for (const [key, message] of [
      ["", /must not be empty/],
      ["k".repeat(256), /256 characters, at most 255/],
      ["caf\u00e9", /printable ASCII/],
      ['"a"b"', /quoted key/],
      ['"unterminated', /must begin and end with "/],
    ] as const) {
      const r = await post({ events }, key);
      assert.equal(r.status, 400, `${key.slice(0, 10)}: ${JSON.stringify(r.json)}`);
      assert.equal(errorCode(r), "invalid_idempotency_key");
      assert.match((r.json.error as { message: string }).message, message);
    }
  });

  it("refuses the header sent twice (Node would join the two into one key) and a body nested past the limit", async () => {
    const events = batch("twice", 1);
    const url = new URL(`${bases[0] ?? ""}/spend/events`);
    const twice = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: "POST",
          headers: {
            authorization: `Bearer ${MASTER}`,
            "content-type": "application/json",
            "idempotency-key": ["a1", "a2"],
          },
        },
        (res) => {
          let body = "";
          res.on("data", (c: Buffer) => (body += c.toString()));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify({ events }));
    });
    assert.equal(twice.status, 400, twice.body);
    assert.match(twice.body, /send the header once/);
    // JSON.stringify (the body's fingerprint) recursed past the stack at 100,000 levels: a 500.
    const text = `{"events":${JSON.stringify(events)},"extra":${"[".repeat(100_000)}${"]".repeat(100_000)}}`;
    const res = await fetch(`${bases[0] ?? ""}/spend/events`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${MASTER}`,
        "content-type": "application/json",
        "idempotency-key": "deep-1",
      },
      body: text,
    });
    const answer = (await res.json()) as { error?: { code?: string; message?: string } };
    assert.equal(res.status, 400, JSON.stringify(answer));
    assert.equal(answer.error?.code, "invalid_body");
    assert.match(answer.error?.message ?? "", /deeper than 128 levels/);
  });

  it("applies a batch sent again with the same key once, on either gateway, and says the second answer is a replay", async () => {
    const events = batch("sequential", 5);
    const first = await post({ events }, "seq-1", 0);
    assert.equal(first.status, 200, JSON.stringify(first.json));
    assert.deepEqual(first.json, { accepted: 5, rejected: [], replayed: false });
    assert.equal(first.headers.get("idempotent-replayed"), null);
    for (const e of events) ledger.record(e);
    for (const gw of [1, 0, 1]) {
      const again = await post({ events }, "seq-1", gw);
      assert.equal(again.status, 200);
      assert.deepEqual(again.json, { accepted: 5, rejected: [], replayed: true });
      assert.equal(again.headers.get("idempotent-replayed"), "true");
    }
    // The IETF draft's structured-field form of the same key is the same key.
    const quoted = await post({ events }, '"seq-1"', 1);
    assert.equal(quoted.json.replayed, true);
    // The same key with another body: 422, on any gateway.
    for (const gw of [0, 1]) {
      const other = await post({ events: batch("sequential", 4) }, "seq-1", gw);
      assert.equal(other.status, 422);
      assert.equal(errorCode(other), "idempotency_key_reused");
    }
  });

  it("applies a batch once when twenty copies race across both gateways: one records, the rest replay or are told 409 with Retry-After", async () => {
    const events = batch("concurrent", 12);
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => post({ events }, "race-1", i % 2)),
    );
    const recorded = answers.filter((a) => a.status === 200 && a.json.replayed === false);
    assert.equal(recorded.length, 1, JSON.stringify(answers.map((a) => [a.status, a.json])));
    for (const a of answers) {
      if (a.status === 200) assert.equal(a.json.accepted, 12);
      else {
        assert.equal(a.status, 409, JSON.stringify(a.json));
        assert.equal(errorCode(a), "idempotency_key_in_use");
        assert.ok(Number(a.headers.get("retry-after")) >= 1);
      }
    }
    // Those told 409 retry and get the answer.
    const again = await post({ events }, "race-1", 1);
    assert.deepEqual(again.json, { accepted: 12, rejected: [], replayed: true });
    for (const e of events) ledger.record(e);
  });

  it("leaves the key free when the batch is refused, so the corrected batch can use it", async () => {
    const good = batch("corrected", 3);
    const bad = [...good, { spend: -1, userId: "x" }];
    const refused = await post({ events: bad }, "fix-1");
    assert.equal(refused.status, 400);
    assert.equal(errorCode(refused), "events_refused");
    assert.deepEqual(refused.json.rejected, [
      {
        index: 3,
        reason: "invalid_spend",
        field: "spend",
        message: "spend: must be a finite USD amount from 0 to 1000, got -1",
      },
    ]);
    const fixed = await post({ events: good }, "fix-1", 1);
    assert.deepEqual(fixed.json, { accepted: 3, rejected: [], replayed: false });
    for (const e of good) ledger.record(e);
  });

  /** What a gateway that dies after claiming would have left: a claim whose lease runs out at once. */
  async function abandonedClaim(
    key: string,
    events: readonly SpendEvent[],
    receivedAt: number,
  ): Promise<{ keyHash: string; fingerprint: string }> {
    const store = new IdempotencyStore(h.redis, redisKeys(prefix), 3_600_000, 1);
    const keyHash = sha256Hex(key);
    const fingerprint = sha256Hex(JSON.stringify({ events }));
    const c = await store.claim(keyHash, fingerprint, "a-gateway-that-died", {
      receivedAt,
      rowsPerJob: config.producer.maxRowsPerJob,
      partitions: config.partitions,
    });
    assert.equal(c.outcome, "claimed");
    await new Promise((r) => setTimeout(r, 20));
    return { keyHash, fingerprint };
  }

  it("resumes a claim whose gateway died before sending anything: recorded once, dated as first received", async () => {
    const events = batch("died-before-send", 6);
    const receivedAt = Date.now() - 5_000;
    await abandonedClaim("crash-1", events, receivedAt);
    const r = await post({ events }, "crash-1", 1);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.deepEqual(r.json, { accepted: 6, rejected: [], replayed: false });
    for (const e of events) ledger.record(e, receivedAt);
    assert.equal((await post({ events }, "crash-1", 0)).json.replayed, true);
    const metrics = await gws[1]?.producer.metrics.registry.getSingleMetricAsString(
      "gateway_idempotent_ingest_total",
    );
    assert.match(metrics ?? "", /outcome="resumed"} 1/);
  });

  it("applies a batch once when the dead gateway's copy reached Redis, and even after that copy was flushed and its jobs removed", async () => {
    const events = batch("died-after-send", 9);
    const receivedAt = Date.now() - 2_000;
    const { keyHash } = await abandonedClaim("crash-2", events, receivedAt);
    // The dead gateway had sealed and sent its batches (the same function, the same inputs).
    const sealed = sealStandalone(events, {
      limits: config.limits,
      now: receivedAt,
      partitions: config.partitions,
      maxRowsPerJob: config.producer.maxRowsPerJob,
      producerId: idempotentProducerId(keyHash),
      sealedAt: receivedAt,
    });
    assert.ok(sealed.ok);
    assert.ok(sealed.batches.length >= 4, `${sealed.batches.length} batches (max_rows_per_job 7)`);
    const sink = new QueueSink(h.queues, { ownsQueues: false });
    // All but the last got through before it died.
    for (const b of sealed.batches.slice(0, -1)) await sink.write(b);
    // A flush applies them, and BullMQ forgets the completed jobs: only
    // PostgreSQL still knows those batch ids.
    await flushAll();
    await h.queues.entity.clean(0, 10_000, "completed");
    await h.queues.daily.clean(0, 10_000, "completed");
    const applied = await t.db.appliedBatch.count({
      where: { batchId: { startsWith: `${idempotentProducerId(keyHash)}.` } },
    });
    assert.equal(applied, sealed.batches.length - 1);

    const r = await post({ events }, "crash-2", 0);
    assert.deepEqual(r.json, { accepted: 9, rejected: [], replayed: false });
    for (const e of events) ledger.record(e, receivedAt);
    await flushAll();
    assert.equal(
      await t.db.appliedBatch.count({
        where: { batchId: { startsWith: `${idempotentProducerId(keyHash)}.` } },
      }),
      sealed.batches.length,
      "every batch applied, each once",
    );
  });

  it("PostgreSQL equals the ledger exactly: every batch the client meant, once", async () => {
    await Promise.all(gws.map((g) => g.close()));
    await flushAll();
    const diff = diffTotals(ledger.totals, await readTotals(t.url));
    assert.deepEqual(diff, [], diff.join("\n"));
  });
});

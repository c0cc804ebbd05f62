import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { MAX_DAILY_KEY_BYTES, utf8Bytes } from "../../src/contract/ids.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { createKey, hashKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { listDeadLetters } from "../../src/persist/dead-letters.js";
import type { EntityRow } from "../../src/contract/spend-batch.js";
import { ENTITY_JOB } from "../../src/queue/spend-queues.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { addTotals, deadLetterTotals, rowTotals } from "../support/row-totals.js";

/**
 * The hostile-input catalogue: every class of input that once stopped the
 * flush, changed what was stored, recorded part of a batch or answered 500,
 * sent through the public HTTP surface of a real gateway (Redis, PostgreSQL).
 * Each is refused with a specific reason, or stored exactly; at the end the
 * flush still commits and PostgreSQL reconciles to the picodollar with what
 * the gateway accepted. Other classes are in their own files: Redis losing
 * its state (redis-recovery.test.ts), the partition count
 * (partitions.test.ts), rows PostgreSQL refuses and their replay
 * (dead-letter.test.ts), start-up checks and secrets (cli.test.ts,
 * redact.test.ts), rounding (money.test.ts), key floods and concurrent key
 * creation (virtual-keys.test.ts), arbitrary strings end to end
 * (unicode-property.test.ts).
 */

const MASTER = "sk-hostile-master-key";
const MODEL = "mock-small";

function config(prefix: string, databaseUrl: string): AppConfig {
  return buildConfig(
    {
      general_settings: {
        use_redis_transaction_buffer: true,
        proxy_batch_write_at: 3_600,
        master_key: MASTER,
      },
      litellm_settings: { cache: true, cache_params: { type: "redis" } },
      spend_buffer_settings: {
        key_prefix: prefix,
        flush_jitter_seconds: 0,
        model_prices: {
          [MODEL]: { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" },
        },
      },
    },
    { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: databaseUrl },
  );
}

/** Random CJK: three UTF-8 bytes a character, and no compression helps PostgreSQL store it. */
function cjk(n: number): string {
  return Array.from({ length: n }, () => String.fromCharCode(0x4e00 + randomInt(20_000))).join("");
}

interface ApiError {
  error: { message: string; type: string };
  accepted?: number;
  rejected?: { index: number; reason: string; field: string; message: string }[];
}

describe("hostile-input catalogue (HTTP → Redis → flush → PostgreSQL)", () => {
  let t: TestDatabase;
  let gw: GatewayService;
  let cfg: AppConfig;
  let base: string;
  let key: CreatedKey;
  const prefix = uniquePrefix("hostile");
  const ledger = new Ledger();
  /** Hand-written jobs (as an older producer could send): PostgreSQL + dead letters must hold them. */
  const handWritten: EntityRow[] = [];

  before(async () => {
    t = await createTestDatabase("hostile");
    cfg = config(prefix, t.url);
    key = await createKey(t.db, { userId: "alice", teamId: "red", organizationId: "acme" });
    gw = await startGateway(cfg, { port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${gw.port}`;
  });
  after(async () => {
    await gw.close().catch(() => undefined);
    await cleanRedis(prefix);
    await t.drop();
  });

  const post = (path: string, body: unknown, auth: string | null = MASTER): Promise<Response> =>
    fetch(`${base}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(auth !== null ? { authorization: `Bearer ${auth}` } : {}),
      },
      // Raw text where the test needs bytes JSON.stringify would not make.
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  const chat = (extra: Record<string, unknown>, k = key.key): Promise<Response> =>
    post(
      "/v1/chat/completions",
      { model: MODEL, messages: [{ role: "user", content: "hello there" }], ...extra },
      k,
    );

  /** A served chat request, recorded in the ledger as the gateway charges it. */
  const served = async (extra: { user?: string; tags?: string[] } = {}): Promise<void> => {
    const started = Date.now();
    const res = await chat({
      ...(extra.user !== undefined ? { user: extra.user } : {}),
      ...(extra.tags !== undefined ? { metadata: { tags: extra.tags } } : {}),
    });
    assert.equal(res.status, 200, await res.clone().text());
    const body = (await res.json()) as {
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    ledger.record(
      {
        spend: res.headers.get("x-litellm-response-cost") ?? "",
        apiKey: key.token,
        userId: "alice",
        teamId: "red",
        organizationId: "acme",
        endUserId: extra.user ?? null,
        tags: extra.tags ?? null,
        model: MODEL,
        modelGroup: MODEL,
        provider: "mock",
        endpoint: "/v1/chat/completions",
        promptTokens: body.usage.prompt_tokens,
        completionTokens: body.usage.completion_tokens,
        startTime: started,
      },
      started,
    );
  };

  /** An ingest that must be refused whole, for `reason`. */
  const refusedIngest = async (events: unknown[], reason: string): Promise<ApiError> => {
    const res = await post("/spend/events", { events });
    assert.equal(res.status, 400, await res.clone().text());
    const body = (await res.json()) as ApiError;
    assert.equal(body.accepted, 0);
    assert.ok(
      body.rejected?.some((r) => r.reason === reason),
      `expected a ${reason} refusal: ${JSON.stringify(body.rejected)}`,
    );
    return body;
  };

  it("lone surrogates: refused on chat (user, tags) and ingest, never stored as U+FFFD", async () => {
    for (const extra of [{ user: "evil\ud800" }, { metadata: { tags: ["ok", "t\udfff"] } }]) {
      const res = await chat(extra);
      assert.equal(res.status, 400);
      assert.match(((await res.json()) as ApiError).error.message, /lone surrogate/);
    }
    await refusedIngest([{ spend: "1", tags: ["t\ud800"] }], "invalid_unicode");
    // The real U+FFFD is a character like any other: stored exactly as sent.
    await served({ tags: ["t\ufffd"] });
  });

  it("one normalisation form: NFD is refused with a reason, NFC is stored as sent", async () => {
    await refusedIngest([{ spend: "1", endUserId: "cafe\u0301" }], "invalid_unicode");
    await served({ user: "caf\u00e9" });
  });

  it("controls everywhere: NUL, C1, U+2028 and bidi overrides are refused on every path", async () => {
    for (const bad of ["a\u0000b", "a\u0085b", "line\u2028sep", "rtl\u202eabc"]) {
      assert.equal((await chat({ user: bad })).status, 400, JSON.stringify(bad));
      await refusedIngest([{ spend: "1", userId: bad }], "invalid_id");
    }
    // /spend/live with a NUL: a 400, where PostgreSQL would have refused the query (500).
    const live = await fetch(`${base}/spend/live?kind=user&id=a%00b`, {
      headers: { authorization: `Bearer ${MASTER}` },
    });
    assert.equal(live.status, 400);
  });

  it("daily keys PostgreSQL cannot index: one byte over the bound is refused, the bound itself flushes", async () => {
    // Exactly at the bound, through ingest with the widest context there is.
    const event = {
      spend: "0.000000000001",
      userId: "u-bound",
      apiKey: cjk(250),
      model: cjk(250),
      modelGroup: cjk(250),
    };
    const ctx = 10 + 3 * 750; // date, api key, model, model group
    const fill = MAX_DAILY_KEY_BYTES - ctx;
    const atBound = { ...event, userId: `${"x".repeat(fill - 3 * 80)}${cjk(80)}` };
    assert.equal(utf8Bytes(atBound.userId) + ctx, MAX_DAILY_KEY_BYTES);
    const ok = await post("/spend/events", { events: [atBound] });
    assert.equal(ok.status, 200, await ok.clone().text());
    ledger.record(atBound);
    await refusedIngest([{ ...atBound, userId: `${atBound.userId}y` }], "key_too_large");
  });

  it("a batch is all or nothing: a time past the Date range (1e20) is a 400 naming it, nothing recorded", async () => {
    const before = gw.producer.bufferedRows;
    const body = await refusedIngest(
      [
        { spend: "1", userId: "batch-ok" },
        { spend: "1", userId: "batch-ok", startTime: 1e20 },
      ],
      "start_time_out_of_range",
    );
    assert.equal(body.rejected?.[0]?.index, 1);
    assert.equal(gw.producer.bufferedRows, before, "the valid event was not recorded either");
  });

  it("a key whose owners PostgreSQL holds but no row can store is not served", async () => {
    // Rows written by other tooling: an owner id too long, another with a control character.
    for (const userId of ["u".repeat(300), "tab\there"]) {
      const plaintext = `sk-foreign-${userId.length}`;
      await t.db.verificationToken.create({ data: { token: hashKey(plaintext), userId } });
      const res = await chat({}, plaintext);
      assert.equal(res.status, 403, await res.clone().text());
      assert.match(((await res.json()) as ApiError).error.message, /cannot be charged/);
    }
  });

  it("spend ingested for sha256(X) does not make X a key", async () => {
    const x = "sk-never-issued";
    const res = await post("/spend/events", { events: [{ spend: "2", apiKey: hashKey(x) }] });
    assert.equal(res.status, 200);
    ledger.record({ spend: "2", apiKey: hashKey(x) });
    await gw.producer.flush();
    const h = new Harness(cfg, t.db);
    try {
      assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    } finally {
      await h.close();
    }
    assert.ok(await t.db.verificationToken.findUnique({ where: { token: hashKey(x) } }));
    gw.keys.clear();
    assert.equal((await chat({}, x)).status, 401);
  });

  it("authenticates before reading a body: no key, a bad key or a huge invalid body is a 401", async () => {
    const huge = `{"model": "${"a".repeat(2_000_000)}`;
    assert.equal((await post("/v1/chat/completions", huge, null)).status, 401);
    assert.equal((await post("/v1/chat/completions", huge, "sk-nope")).status, 401);
    assert.equal((await post("/spend/events", huge, "sk-nope")).status, 401);
  });

  it("every 503 says when to come back (Retry-After)", async () => {
    // PostgreSQL away: the key cannot be verified.
    const noDb = await startGateway(
      config(uniquePrefix("hostile503"), "postgresql://postgres@127.0.0.1:1/none"),
      { port: 0, host: "127.0.0.1" },
    );
    try {
      const res = await fetch(`http://127.0.0.1:${noDb.port}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(res.status, 503);
      assert.ok(Number(res.headers.get("retry-after")) >= 1);
    } finally {
      await noDb.close();
    }
    // Redis away and the buffer full: ingest is refused whole.
    const tiny = await startGateway(
      buildConfig(
        {
          general_settings: {
            use_redis_transaction_buffer: true,
            proxy_batch_write_at: 3_600,
            master_key: MASTER,
          },
          litellm_settings: { cache: true, cache_params: { type: "redis" } },
          spend_buffer_settings: { key_prefix: uniquePrefix("tiny"), max_buffered_rows: 100 },
        },
        { REDIS_URL: "redis://127.0.0.1:1", DATABASE_URL: t.url },
      ),
      { port: 0, host: "127.0.0.1", closeTimeoutMs: 100 },
    );
    try {
      let full: Response | undefined;
      for (let i = 0; i < 20 && full === undefined; i++) {
        const res = await fetch(`http://127.0.0.1:${tiny.port}/spend/events`, {
          method: "POST",
          headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
          body: JSON.stringify({
            events: Array.from({ length: 5 }, (_, j) => ({ spend: "1", userId: `fill-${i}-${j}` })),
          }),
        });
        if (res.status === 503) full = res;
        else await res.arrayBuffer();
      }
      assert.ok(full !== undefined, "the buffer filled");
      assert.ok(Number(full.headers.get("retry-after")) >= 1);
      assert.match(((await full.json()) as ApiError).error.message, /nothing was recorded/);
    } finally {
      // Nothing of this gateway's can be delivered (no Redis): close() gives up quickly.
      await tiny.close().catch(() => undefined);
    }
  });

  it("hand-written jobs PostgreSQL refuses are set aside; the flush still commits; PostgreSQL reconciles to the picodollar", async () => {
    const h = new Harness(cfg, t.db);
    try {
      const rows: EntityRow[] = [
        ["tag", "nul\u0000tag", "", "77"],
        ["tag", "lone\ud800", "", "88"],
        ["tag", "fine-hand-written", "", "99"],
      ];
      handWritten.push(...rows);
      await h.queues.entity.add(
        ENTITY_JOB,
        { v: 1, batchId: "hand.1", producerId: "hand", sealedAt: Date.now(), rows },
        { jobId: "hand.1" },
      );
      await gw.producer.flush();
      for (let i = 0; i < 20 && (await h.waitingJobs()) > 0; i++)
        assert.equal((await h.flusher().flushOnce()).outcome, "committed");
      assert.equal(await h.waitingJobs(), 0);
    } finally {
      await h.close();
    }
    // One dead letter for the job: its ill-formed row, joined by the row PostgreSQL refused.
    const letters = await listDeadLetters(t.db);
    assert.equal(letters.length, 1);
    assert.deepEqual([letters[0]?.rows, letters[0]?.sqlState], [2, "22021"]);
    const expected = addTotals(ledger.totals, rowTotals(handWritten, []));
    const held = addTotals(await readTotals(t.url), await deadLetterTotals(t.url));
    // Key creation made owner rows with no spend: not part of the comparison.
    for (const [k, v] of [...held])
      if (v.every((x) => x === 0n) && !expected.has(k)) held.delete(k);
    const diff = diffTotals(expected, held);
    assert.deepEqual(diff, [], diff.join("\n"));
    assert.ok(ledger.events >= 4, `${ledger.events} events accepted`);
  });
});

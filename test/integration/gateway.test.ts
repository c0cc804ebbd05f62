import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { countWords } from "../../src/gateway/mock-model.js";
import { createKey, hashKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { picoToDecimal, usdStringToPico } from "../../src/contract/money.js";
import type { SpendEvent } from "../../src/produce/spend-event.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger, type Totals } from "../support/ledger.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";
import { Redis } from "ioredis";
import { redisKeys } from "../../src/redis/keys.js";
import { PartitionMismatchError } from "../../src/index.js";

/**
 * The gateway over real HTTP, against real Redis and PostgreSQL: several
 * virtual keys, refusals, a failing model, key generation; then a flush, and
 * PostgreSQL must equal the costs computed here from the price table, exactly.
 */

const MASTER = "sk-master-gateway-test";
const PRICES = {
  // Prices whose float products would drift: exactness is the point.
  "mock-small": { input: "0.0000001", output: "0.0000003" },
  "mock-large": { input: "0.000003", output: "0.000015" },
  "mock-fail": { input: "0.0000025", output: "0.00001" },
};

function gatewayConfig(
  prefix: string,
  databaseUrl: string,
  redisUrl = TEST_REDIS_URL,
  extra: Record<string, unknown> = {},
): AppConfig {
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
        lock_lease_seconds: 5,
        model_prices: Object.fromEntries(
          Object.entries(PRICES).map(([m, p]) => [
            m,
            { input_cost_per_token: p.input, output_cost_per_token: p.output },
          ]),
        ),
        ...extra,
      },
    },
    { REDIS_URL: redisUrl, DATABASE_URL: databaseUrl },
  );
}

/** The cost the test expects, from its own copy of the prices. */
function expectedCost(model: keyof typeof PRICES, prompt: number, completion: number): string {
  const p = PRICES[model];
  return picoToDecimal(
    BigInt(prompt) * usdStringToPico(p.input) + BigInt(completion) * usdStringToPico(p.output),
  );
}

/** Drains every spend job into PostgreSQL with a hand-wired flusher. */
async function flushAll(config: AppConfig, t: TestDatabase): Promise<void> {
  const h = new Harness(config, t.db);
  try {
    for (let i = 0; i < 50 && (await h.waitingJobs()) > 0; i++) {
      const r = await h.flusher().flushOnce();
      assert.ok(["committed", "empty"].includes(r.outcome), `flush outcome ${r.outcome}`);
    }
    assert.equal(await h.waitingJobs(), 0, "every job flushed");
  } finally {
    await h.close();
  }
}

/** A gateway with a database, key prefix and key of its own, for a test that changes its settings. */
async function ownGateway(
  label: string,
  settings: Record<string, unknown>,
): Promise<{
  t: TestDatabase;
  prefix: string;
  config: AppConfig;
  key: CreatedKey;
  gw: GatewayService;
  base: string;
}> {
  const t = await createTestDatabase(`gateway_${label}`);
  const prefix = uniquePrefix(`gw${label}`);
  const config = gatewayConfig(prefix, t.url, TEST_REDIS_URL, settings);
  const key = await createKey(t.db, { userId: `${label}-alice` });
  const gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
  return { t, prefix, config, key, gw, base: `http://127.0.0.1:${gw.port}` };
}

/** Rows a key creation made with no spend yet are not part of the comparison. */
function withoutZeroRows(t: Totals): Totals {
  return new Map([...t].filter(([, v]) => v.some((x) => x !== 0n)));
}

describe("gateway service (HTTP, virtual keys, mock model, spend)", () => {
  let t: TestDatabase;
  let gw: GatewayService;
  let config: AppConfig;
  let base: string;
  const prefix = uniquePrefix("gateway");
  const ledger = new Ledger();
  const keys: CreatedKey[] = [];

  before(async () => {
    t = await createTestDatabase("gateway");
    config = gatewayConfig(prefix, t.url);
    keys.push(
      await createKey(t.db, {
        userId: "alice",
        teamId: "red",
        organizationId: "acme",
        keyAlias: "a",
      }),
      await createKey(t.db, { userId: "bob" }),
      await createKey(t.db, { teamId: "blue", organizationId: "globex" }),
    );
    gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${gw.port}`;
  });
  after(async () => {
    await gw.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  const chat = (key: string | undefined, body: unknown): Promise<Response> =>
    fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}),
      },
      body: JSON.stringify(body),
    });

  it("stores keys hashed (sha256 hex) with their owners, and upserts the owners' rows", async () => {
    const k = keys[0];
    assert.ok(k !== undefined);
    assert.match(k.key, /^sk-[A-Za-z0-9_-]{43}$/);
    assert.equal(k.token, hashKey(k.key));
    const row = await t.db.verificationToken.findUnique({ where: { token: k.token } });
    assert.equal(row?.userId, "alice");
    assert.equal(row?.teamId, "red");
    assert.equal(row?.organizationId, "acme");
    assert.equal(row?.keyAlias, "a");
    assert.equal(await t.db.verificationToken.count({ where: { token: k.key } }), 0);
    assert.equal(
      (await t.db.teamTable.findUnique({ where: { teamId: "red" } }))?.organizationId,
      "acme",
    );
    assert.ok(await t.db.organizationTable.findUnique({ where: { organizationId: "acme" } }));
    assert.ok(
      await t.db.teamMembership.findUnique({
        where: { userId_teamId: { userId: "alice", teamId: "red" } },
      }),
    );
  });

  it("answers chat completions for several keys and charges each exactly", async () => {
    const prompts = [
      "What is the capital of France",
      "one",
      "Tell me a long story about a dragon who learned to count picodollars exactly",
      "  spaced   out   words  ",
    ];
    let n = 0;
    for (const [ki, k] of keys.entries()) {
      for (const [pi, prompt] of prompts.entries()) {
        const model = (pi + ki) % 2 === 0 ? "mock-small" : "mock-large";
        const endUser = pi % 2 === 0 ? `end-${pi}` : undefined;
        const tags = pi === 2 ? ["prod", "batch"] : undefined;
        const res = await chat(k.key, {
          model,
          messages: [
            { role: "system", content: "You are terse." },
            { role: "user", content: prompt },
          ],
          ...(endUser !== undefined ? { user: endUser } : {}),
          ...(tags !== undefined ? { metadata: { tags } } : {}),
        });
        assert.equal(res.status, 200, await res.clone().text());
        const body = (await res.json()) as {
          object: string;
          choices: { message: { role: string; content: string } }[];
          usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
        };
        const promptTokens = countWords("You are terse.") + countWords(prompt);
        const completion = prompt.trim().split(/\s+/).reverse().join(" ");
        assert.equal(body.object, "chat.completion");
        assert.equal(body.choices[0]?.message.content, completion, "deterministic mock");
        assert.equal(body.usage.prompt_tokens, promptTokens);
        assert.equal(body.usage.completion_tokens, countWords(completion));
        const cost = expectedCost(model, promptTokens, countWords(completion));
        assert.equal(res.headers.get("x-litellm-response-cost"), cost);
        const event: SpendEvent = {
          spend: cost,
          apiKey: k.token,
          ...(k.userId !== undefined ? { userId: k.userId } : {}),
          ...(k.teamId !== undefined ? { teamId: k.teamId } : {}),
          ...(k.organizationId !== undefined ? { organizationId: k.organizationId } : {}),
          ...(endUser !== undefined ? { endUserId: endUser } : {}),
          ...(tags !== undefined ? { tags } : {}),
          model,
          modelGroup: model,
          provider: "mock",
          endpoint: "/v1/chat/completions",
          promptTokens,
          completionTokens: countWords(completion),
          success: true,
        };
        ledger.record(event);
        n++;
      }
    }
    assert.equal(n, 12);
  });

  it("records a failed request with its prompt tokens, success false, at the cost a provider bills an error: zero", async () => {
    const k = keys[1];
    assert.ok(k !== undefined);
    const res = await chat(k.key, {
      model: "mock-fail",
      messages: [{ role: "user", content: "this request will fail" }],
    });
    assert.equal(res.status, 500);
    const body = (await res.json()) as { error: { type: string; message: string } };
    assert.equal(body.error.type, "api_error");
    // Retried by a client (the OpenAI SDK retries a 500 twice), it still costs nothing.
    assert.equal(res.headers.get("x-litellm-response-cost"), null);
    ledger.record({
      spend: "0",
      apiKey: k.token,
      userId: "bob",
      model: "mock-fail",
      modelGroup: "mock-fail",
      provider: "mock",
      endpoint: "/v1/chat/completions",
      promptTokens: 4,
      completionTokens: 0,
      success: false,
    });
  });

  it("refuses a bad or missing key (401), an unknown model and a malformed body (400), charging nothing", async () => {
    const msg = { model: "mock-small", messages: [{ role: "user", content: "hi" }] };
    for (const key of ["sk-not-a-real-key", undefined]) {
      const res = await chat(key, msg);
      assert.equal(res.status, 401);
      const body = (await res.json()) as { error: { type: string; code: string } };
      assert.equal(body.error.type, "authentication_error");
      assert.equal(body.error.code, key === undefined ? "missing_api_key" : "invalid_api_key");
    }
    const k = keys[0]?.key;
    const unknown = await chat(k, { ...msg, model: "gpt-imaginary" });
    assert.equal(unknown.status, 404, "OpenAI's status for a model that does not exist");
    const ub = (await unknown.json()) as { error: { message: string; code: string } };
    assert.equal(ub.error.code, "model_not_found");
    assert.match(ub.error.message, /The model `gpt-imaginary` does not exist/);
    for (const bad of [
      { model: "mock-small" },
      { model: "mock-small", messages: [] },
      { ...msg, metadata: { tags: [1] } },
      { ...msg, stream: "yes" },
    ]) {
      assert.equal((await chat(k, bad)).status, 400, JSON.stringify(bad));
    }
    // Ids the spend rows could not hold: refused, nothing charged (no cost header). That the
    // check runs before the model is not observable with the in-process mock.
    for (const bad of [
      { ...msg, user: "end\u0007user" },
      { ...msg, metadata: { tags: ["ok", "x".repeat(300)] } },
    ]) {
      const res = await chat(k, bad);
      assert.equal(res.status, 400, JSON.stringify(bad));
      assert.equal(res.headers.get("x-litellm-response-cost"), null);
      assert.match(
        ((await res.json()) as { error: { message: string } }).error.message,
        /cannot account/,
      );
    }
    const notJson = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${k ?? ""}` },
      body: "{not json",
    });
    assert.equal(notJson.status, 400);
  });

  it("creates keys through POST /key/generate with the master key only", async () => {
    const gen = (auth: string, body: unknown): Promise<Response> =>
      fetch(`${base}/key/generate`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${auth}` },
        body: JSON.stringify(body),
      });
    assert.equal((await gen("sk-wrong", { user_id: "carol" })).status, 401);
    assert.equal(
      (await gen(keys[0]?.key ?? "", { user_id: "carol" })).status,
      401,
      "a virtual key is not the master key",
    );
    assert.equal((await gen(MASTER, {})).status, 400, "a key needs an owner");
    const res = await gen(MASTER, { user_id: "carol", team_id: "red", key_alias: "carol-1" });
    assert.equal(res.status, 200);
    const k = (await res.json()) as {
      key: string;
      token: string;
      user_id: string;
      team_id: string;
    };
    assert.equal(k.token, hashKey(k.key));
    assert.equal(k.user_id, "carol");
    const use = await chat(k.key, {
      model: "mock-large",
      messages: [{ role: "user", content: "new key works" }],
    });
    assert.equal(use.status, 200);
    ledger.record({
      spend: expectedCost("mock-large", 3, 3),
      apiKey: k.token,
      userId: "carol",
      teamId: "red",
      model: "mock-large",
      modelGroup: "mock-large",
      provider: "mock",
      endpoint: "/v1/chat/completions",
      promptTokens: 3,
      completionTokens: 3,
    });
  });

  it("serves readiness, liveliness and metrics", async () => {
    const ready = await fetch(`${base}/health/readiness`);
    assert.equal(ready.status, 200);
    assert.deepEqual(((await ready.json()) as { checks: unknown }).checks, {
      postgres: "ok",
      redis: "ok",
      partitions: "ok",
    });
    assert.equal((await fetch(`${base}/health/liveliness`)).status, 200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /litellm_in_memory_spend_update_queue_size \d+/);
    assert.match(
      metrics,
      /gateway_requests_total\{route="\/v1\/chat\/completions",status="200"\} 13/,
    );
  });

  it("drains on close, and PostgreSQL then equals the expected costs exactly", async () => {
    await gw.close();
    await flushAll(config, t);
    const actual = withoutZeroRows(await readTotals(t.url));
    const diff = diffTotals(ledger.totals, actual);
    assert.deepEqual(diff, [], `PostgreSQL differs from the expected costs:\n${diff.join("\n")}`);
    assert.equal(ledger.events, 14);
  });
});

describe("gateway readiness", () => {
  it("answers 503 naming Redis when Redis is unreachable", async () => {
    const t = await createTestDatabase("gateway_ready");
    const gw = await startGateway(
      gatewayConfig(uniquePrefix("gwready"), t.url, "redis://127.0.0.1:1"),
      {
        port: 0,
        host: "127.0.0.1",
      },
    );
    try {
      const res = await fetch(`http://127.0.0.1:${gw.port}/health/readiness`);
      assert.equal(res.status, 503);
      const body = (await res.json()) as { failed: string[]; checks: Record<string, string> };
      assert.deepEqual(body.failed, ["redis"]);
      assert.equal(body.checks.postgres, "ok");
      assert.equal((await fetch(`http://127.0.0.1:${gw.port}/health/liveliness`)).status, 200);
    } finally {
      await gw.close();
      await t.drop();
    }
  });
});

describe("gateway partitions and live spend", () => {
  it("refuses to start when its partition count disagrees with the one Redis records", async () => {
    const t = await createTestDatabase("gateway_parts");
    const prefix = uniquePrefix("gwparts");
    const redis = new Redis(TEST_REDIS_URL);
    // Workers run 3 partitions and spend is pending under them.
    await redis.set(redisKeys(prefix).partitionCount, "3");
    await redis.rpush(
      `${redisKeys(prefix, 1).bullPrefix}:${redisKeys(prefix, 1).spendQueue}:wait`,
      "pending-job",
    );
    try {
      await assert.rejects(
        startGateway(gatewayConfig(prefix, t.url, TEST_REDIS_URL), { port: 0, host: "127.0.0.1" }),
        (err: unknown) =>
          err instanceof PartitionMismatchError && err.recorded === 3 && err.configured === 1,
      );
      assert.equal(await redis.get(redisKeys(prefix).partitionCount), "3", "left as it was");
    } finally {
      await cleanRedis(prefix);
      redis.disconnect();
      await t.drop();
    }
  });
});

describe("gateway live spend", () => {
  it("GET /spend/live counts a key's spend once: local, then in Redis, then committed", async () => {
    const t = await createTestDatabase("gateway_live");
    const prefix = uniquePrefix("gwlive");
    const config = gatewayConfig(prefix, t.url);
    const gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
    const h = new Harness(config, t.db);
    const base = `http://127.0.0.1:${gw.port}`;
    const live = async (id: string): Promise<Record<string, string>> => {
      const res = await fetch(`${base}/spend/live?kind=key&id=${encodeURIComponent(id)}`, {
        headers: { authorization: `Bearer ${MASTER}` },
      });
      assert.equal(res.status, 200);
      return (await res.json()) as Record<string, string>;
    };
    try {
      const key = await createKey(t.db, { userId: "live-user" });
      const res = await fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: Object.keys(PRICES)[0],
          messages: [{ role: "user", content: "one two three" }],
        }),
      });
      assert.equal(res.status, 200);
      const cost = res.headers.get("x-litellm-response-cost") ?? "";
      const hash = hashKey(key.key);

      let s = await live(hash);
      assert.equal(s.total, cost);
      assert.equal(s.pending_local, cost);
      await gw.producer.flush();
      s = await live(hash);
      assert.equal(s.pending_redis, cost);
      assert.equal(s.total, cost);
      assert.equal((await h.flusher().flushOnce()).outcome, "committed");
      s = await live(hash);
      assert.equal(s.committed, cost);
      assert.equal(s.total, cost);
      const bad = await fetch(`${base}/spend/live?kind=planet&id=x`, {
        headers: { authorization: `Bearer ${MASTER}` },
      });
      assert.equal(bad.status, 400);
      assert.equal((await fetch(`${base}/spend/live?kind=key&id=${hash}`)).status, 401);
    } finally {
      await h.close();
      await gw.close();
      await cleanRedis(prefix);
      await t.drop();
    }
  });
});

describe("gateway limits", () => {
  it("answers a request whose cost passes max_spend_usd_per_event as unaccountable, and records nothing of it", async () => {
    // mock-large's prompt price alone: a request of a few words costs more than this.
    const { t, prefix, config, key, gw, base } = await ownGateway("max", {
      max_spend_usd_per_event: 0.00001,
    });
    const ask = (model: string): Promise<Response> =>
      fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${key.key}` },
        body: JSON.stringify({
          model,
          messages: [{ role: "user", content: "what does this cost, and is it too much?" }],
        }),
      });
    try {
      const ok = await ask("mock-small");
      assert.equal(ok.status, 200);
      const cost = ok.headers.get("x-litellm-response-cost") ?? "";
      const tooDear = await ask("mock-large");
      assert.equal(tooDear.status, 400);
      assert.equal(tooDear.headers.get("x-litellm-response-cost"), null);
      assert.match(
        ((await tooDear.json()) as { error: { message: string } }).error.message,
        /cannot account this request: .*more than 0.00001 USD/,
      );
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /spend_events_rejected_total\{reason="invalid_spend"\} 1/);
      await gw.close();
      await flushAll(config, t);
      // Only the cheap request was charged.
      const user = await t.db.userTable.findUnique({ where: { userId: "max-alice" } });
      assert.equal(user?.spend.toFixed(12), cost);
    } finally {
      await gw.close();
      await cleanRedis(prefix);
      await t.drop();
    }
  });
});

describe("gateway back-pressure", () => {
  it("answers 503 with Retry-After while the flush backlog is past its limit, charging nothing", async () => {
    const { t, prefix, config, key, gw, base } = await ownGateway("bp", {
      backpressure_backlog_age_seconds: 0.2,
    });
    const h = new Harness(config, t.db);
    const post = (path: string, auth: string, body: unknown): Promise<Response> =>
      fetch(`${base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${auth}` },
        body: JSON.stringify(body),
      });
    const ask = (): Promise<Response> =>
      post("/v1/chat/completions", key.key, {
        model: "mock-small",
        messages: [{ role: "user", content: "how far behind is the flush?" }],
      });
    const charged: string[] = [];
    const ingested: string[] = [];
    let refusedIngest: string | undefined;
    // One outer try: the harness, Redis keys and database go whatever fails
    // first (left open, they kept the test file from exiting).
    try {
      try {
        const first = await ask();
        assert.equal(first.status, 200);
        charged.push(first.headers.get("x-litellm-response-cost") ?? "");
        // Another gateway's job waits in Redis and nothing flushes it: a backlog.
        const other = await h.producer();
        other.record({ spend: "1", userId: "bp-other" });
        await other.close();
        let refused: Response | undefined;
        await waitFor(
          "the gateway to see the backlog",
          async () => {
            const r = await ask();
            if (r.status === 200) charged.push(r.headers.get("x-litellm-response-cost") ?? "");
            else refused = r;
            return r.status === 503;
          },
          10_000,
        );
        assert.ok(refused !== undefined);
        assert.equal(refused.headers.get("retry-after"), "1");
        assert.match(
          ((await refused.json()) as { error: { message: string } }).error.message,
          /backpressure_backlog_age_seconds/,
        );
        // Ingest is admitted by the same rule: some batches may pass at the
        // floor rate before one is refused, and whatever is refused records nothing.
        await waitFor(
          "an ingest batch to be refused too",
          async () => {
            const user = `bp-ingest-${ingested.length}`;
            const r = await post("/spend/events", MASTER, {
              events: [{ spend: "5", userId: user }],
            });
            if (r.status === 503) refusedIngest = user;
            else {
              assert.equal(r.status, 200);
              ingested.push(user);
            }
            return r.status === 503;
          },
          10_000,
        );
        const metrics = await (await fetch(`${base}/metrics`)).text();
        assert.match(metrics, /spend_producer_backpressure 1/);

        assert.equal((await h.flusher().flushOnce()).outcome, "committed");
        await waitFor(
          "the gateway to take requests again",
          async () => {
            const r = await ask();
            if (r.status === 200) charged.push(r.headers.get("x-litellm-response-cost") ?? "");
            return r.status === 200;
          },
          10_000,
        );
      } finally {
        await gw.close();
      }
      await flushAll(config, t);
      const totals = await readTotals(t.url);
      const expected = charged.reduce((a, c) => a + usdStringToPico(c), 0n);
      assert.deepEqual(totals.get(["entity", "key", key.token, ""].join("|")), [expected]);
      const ingestedUsers = [...totals.keys()].filter((k) => k.startsWith("entity|user|bp-ingest"));
      assert.deepEqual(
        ingestedUsers.sort(),
        ingested.map((u) => ["entity", "user", u, ""].join("|")).sort(),
        "exactly the admitted ingest batches are recorded; a refused one records nothing",
      );
      assert.ok(refusedIngest !== undefined && !ingested.includes(refusedIngest));
    } finally {
      await h.close();
      await cleanRedis(prefix);
      await t.drop();
    }
  });
});

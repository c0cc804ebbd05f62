import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { hashKey } from "../../src/gateway/virtual-keys.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * LiteLLM's key lifecycle over real HTTP, against real Redis and PostgreSQL,
 * with three gateways sharing them: /key/generate's fields (models,
 * duration, metadata, key_alias; unknown fields refused), /key/info,
 * /key/list, /key/update, /key/block, /key/unblock, /key/delete, each key's
 * models and expiry enforced, and a change made through one gateway acted on
 * by every gateway within key_sync_seconds.
 */

const MASTER = "sk-master-key-lifecycle";
const GATEWAYS = 3;
const SYNC_SECONDS = 1;

interface ErrorBody {
  error: { message: string; type: string; param: unknown; code: string };
}

describe("key lifecycle (LiteLLM's /key routes, several gateways)", () => {
  let t: TestDatabase;
  let config: AppConfig;
  const gws: GatewayService[] = [];
  const bases: string[] = [];
  const prefix = uniquePrefix("keys");

  before(async () => {
    t = await createTestDatabase("key_lifecycle");
    config = buildConfig(
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
          key_sync_seconds: SYNC_SECONDS,
          key_metadata_max_bytes: 1_024,
          model_prices: {
            "mock-small": { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" },
            "mock-large": { input_cost_per_token: "0.000003", output_cost_per_token: "0.000015" },
          },
        },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    for (let i = 0; i < GATEWAYS; i++) {
      const gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
      gws.push(gw);
      bases.push(`http://127.0.0.1:${gw.port}`);
    }
  });
  after(async () => {
    await Promise.all(gws.map((g) => g.close()));
    await cleanRedis(prefix);
    await t.drop();
  });

  const admin = async (
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    gw = 0,
  ): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await fetch(`${bases[gw] ?? ""}${path}`, {
      method,
      headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  const chat = async (
    key: string,
    model = "mock-small",
    gw = 0,
  ): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await fetch(`${bases[gw] ?? ""}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hello there" }] }),
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  const code = (j: Record<string, unknown>): string | undefined =>
    (j as Partial<ErrorBody>).error?.code;
  const generate = async (body: Record<string, unknown>): Promise<string> => {
    const r = await admin("POST", "/key/generate", body);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json.key as string;
  };

  it("generates a key with models, duration, metadata and alias, and shows them in /key/info", async () => {
    const before = Date.now();
    const r = await admin("POST", "/key/generate", {
      user_id: "ann",
      team_id: "red",
      key_alias: "ann-laptop",
      models: ["mock-small", "mock-small"],
      duration: "30d",
      metadata: { team: "core-infra", n: 1, nested: { ok: [true, null] } },
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    const key = r.json.key as string;
    assert.match(key, /^sk-/);
    assert.equal(r.json.token, hashKey(key));
    assert.equal(r.json.key_name, `sk-...${key.slice(-4)}`);
    assert.deepEqual(r.json.models, ["mock-small"], "duplicates go");
    const expires = Date.parse(r.json.expires as string);
    assert.ok(Math.abs(expires - (before + 30 * 86_400_000)) < 60_000, String(r.json.expires));
    assert.equal(r.json.blocked, false);

    for (const k of [key, hashKey(key)]) {
      const info = await admin("GET", `/key/info?key=${encodeURIComponent(k)}`, undefined, 1);
      assert.equal(info.status, 200, JSON.stringify(info.json));
      const i = info.json.info as Record<string, unknown>;
      assert.equal(i.token, undefined, "info leaves the token out, as LiteLLM does");
      assert.equal(info.json.key, k === key ? `sk-...${key.slice(-4)}` : k, "never the plaintext");
      assert.deepEqual(
        {
          key_alias: i.key_alias,
          user_id: i.user_id,
          team_id: i.team_id,
          models: i.models,
          blocked: i.blocked,
          metadata: i.metadata,
          spend: i.spend,
          expires: i.expires,
        },
        {
          key_alias: "ann-laptop",
          user_id: "ann",
          team_id: "red",
          models: ["mock-small"],
          blocked: false,
          metadata: { team: "core-infra", n: 1, nested: { ok: [true, null] } },
          spend: "0.000000000000",
          expires: r.json.expires,
        },
      );
    }
    const missing = await admin("GET", `/key/info?key=${"0".repeat(64)}`);
    assert.equal(missing.status, 404);
    assert.equal(code(missing.json), "key_not_found");
  });

  it("refuses what it cannot store, each with a clear 400 in OpenAI's shape, never a 500", async () => {
    const cases: [unknown, RegExp][] = [
      [{ user_id: "u", colour: "blue", size: 3 }, /unknown fields "colour", "size"/],
      [{ user_id: "u", duration: "forever" }, /duration "forever" is not a whole number/],
      [{ user_id: "u", duration: "0s" }, /duration/],
      [{ user_id: "u", duration: "99999999d" }, /duration/],
      [{ user_id: "u", models: "mock-small" }, /models/],
      [{ user_id: "u", models: ["ok", "bad\u0000"] }, /models\[1\]/],
      [{ user_id: "u", metadata: [1, 2] }, /metadata must be a JSON object/],
      [{ user_id: "u", metadata: "x" }, /metadata must be a JSON object/],
      [{ user_id: "u", metadata: { a: "x".repeat(2_000) } }, /at most 1024/],
      [{ user_id: "u", metadata: { a: "nul\u0000" } }, /NUL/],
      [{ user_id: "u", metadata: { "k\u0000": 1 } }, /NUL/],
      [{ user_id: "u", metadata: { a: "\ud800" } }, /lone surrogate/],
      [
        {
          user_id: "u",
          metadata: JSON.parse(
            `${"[".repeat(40)}${"]".repeat(40)}`.replace(/^\[/, '{"a":[').replace(/\]$/, "]}"),
          ) as unknown,
        },
        /nested deeper/,
      ],
      [{ models: ["mock-small"] }, /needs a user_id, team_id or organization_id/],
      [{ user_id: "u", key_alias: "a\u202eb" }, /key_alias/],
    ];
    for (const [body, message] of cases) {
      const r = await admin("POST", "/key/generate", body);
      assert.equal(
        r.status,
        400,
        `${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(r.json)}`,
      );
      const e = (r.json as unknown as ErrorBody).error;
      assert.equal(e.type, "invalid_request_error");
      assert.match(e.message, message, JSON.stringify(body).slice(0, 80));
    }
    // A deep body is refused without recursing over it.
    const deep = await fetch(`${bases[0] ?? ""}/key/generate`, {
      method: "POST",
      headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
      body: `{"user_id":"u","metadata":{"a":${"[".repeat(100_000)}${"]".repeat(100_000)}}}`,
    });
    assert.ok([400, 413].includes(deep.status), String(deep.status));
    // Admin routes need the master key.
    const anon = await fetch(`${bases[0] ?? ""}/key/list`);
    assert.equal(anon.status, 401);
  });

  it("enforces a key's models on chat completions: 401 in LiteLLM's words for any other model", async () => {
    const only = await generate({ user_id: "mia", models: ["mock-small"] });
    assert.equal((await chat(only, "mock-small")).status, 200);
    const denied = await chat(only, "mock-large");
    assert.equal(denied.status, 401);
    const e = (denied.json as unknown as ErrorBody).error;
    assert.equal(e.code, "key_model_access_denied");
    assert.equal(e.type, "authentication_error");
    assert.equal(
      e.message,
      'key not allowed to access model. This key can only access models=["mock-small"]. Tried to access mock-large',
    );
    const wildcard = await generate({ user_id: "mia", models: ["mock-*"] });
    assert.equal((await chat(wildcard, "mock-large")).status, 200);
    const any = await generate({ user_id: "mia" });
    assert.equal((await chat(any, "mock-large")).status, 200);
    // An unpriced model the key may not call is refused for the key first.
    assert.equal(code((await chat(only, "gpt-x")).json), "key_model_access_denied");
    // And the model routes show a key only what it may call, as LiteLLM does.
    const get = async (key: string, path: string): Promise<[number, Record<string, unknown>]> => {
      const res = await fetch(`${bases[0] ?? ""}${path}`, {
        headers: { authorization: `Bearer ${key}` },
      });
      return [res.status, (await res.json()) as Record<string, unknown>];
    };
    const listed = async (key: string): Promise<string[]> =>
      ((await get(key, "/v1/models"))[1].data as { id: string }[]).map((m) => m.id);
    assert.deepEqual(await listed(only), ["mock-small"]);
    const all = await listed(any);
    assert.ok(all.includes("mock-small") && all.includes("mock-large"), all.join(","));
    assert.deepEqual(
      (await listed(wildcard)).sort(),
      all.filter((m) => m.startsWith("mock-")).sort(),
    );
    assert.equal((await get(only, "/v1/models/mock-small"))[0], 200);
    const hidden = await get(only, "/v1/models/mock-large");
    assert.deepEqual([hidden[0], code(hidden[1])], [404, "model_not_found"]);
    assert.equal((await get(any, "/v1/models/mock-large"))[0], 200);
  });

  it("enforces expiry: a key past its duration is 401 expired_key until /key/update gives it more time", async () => {
    const key = await generate({ user_id: "eve", duration: "1s" });
    assert.equal((await chat(key)).status, 200);
    await new Promise((r) => setTimeout(r, 1_100));
    for (let gw = 0; gw < GATEWAYS; gw++) {
      const r = await chat(key, "mock-small", gw);
      assert.equal(r.status, 401);
      const e = (r.json as unknown as ErrorBody).error;
      assert.equal(e.code, "expired_key");
      assert.match(
        e.message,
        /^Authentication Error - Expired Key\. Key Expiry time \S+ and current time \S+$/,
      );
    }
    const upd = await admin("POST", "/key/update", { key, duration: null });
    assert.equal(upd.status, 200, JSON.stringify(upd.json));
    assert.equal(upd.json.expires, null);
    await waitAll(async (gw) => (await chat(key, "mock-small", gw)).status === 200);
  });

  it("lists keys a page at a time, newest first, with filters; bookkeeping rows are no keys", async () => {
    const made: string[] = [];
    for (let i = 0; i < 23; i++)
      made.push(hashKey(await generate({ user_id: "lister", key_alias: `l${i}` })));
    // A row the flush made for spend charged to a hash nobody issued.
    await t.db.verificationToken.create({ data: { token: hashKey("sk-nobody"), keyAlias: "x" } });
    const seen: string[] = [];
    for (let page = 1; page <= 3; page++) {
      const r = await admin("GET", `/key/list?user_id=lister&size=10&page=${page}`);
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.total_count, 23);
      assert.equal(r.json.total_pages, 3);
      assert.equal(r.json.current_page, page);
      seen.push(...(r.json.keys as string[]));
    }
    assert.deepEqual(seen, [...made].reverse(), "newest first, every key once");
    const full = await admin("GET", "/key/list?key_alias=l3&return_full_object=true");
    const keys = full.json.keys as Record<string, unknown>[];
    assert.equal(keys.length, 1);
    assert.equal(keys[0]?.token, made[3]);
    assert.equal(keys[0]?.user_id, "lister");
    const all = await admin("GET", "/key/list?size=100");
    assert.ok(!(all.json.keys as string[]).includes(hashKey("sk-nobody")));
    assert.equal(
      (await admin("GET", `/key/info?key=${hashKey("sk-nobody")}`)).status,
      404,
      "not a key",
    );
    for (const q of [
      "page=0",
      "size=101",
      "size=x",
      "colour=blue",
      "user_id=a%00b",
      "page=1&page=2",
    ]) {
      const r = await admin("GET", `/key/list?${q}`);
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.json)}`);
    }
  });

  it("refuses updates it cannot make and keys it does not know", async () => {
    const key = await generate({ user_id: "ivy" });
    const cases: [unknown, number, RegExp][] = [
      [{ key, user_id: "other" }, 400, /owners cannot be changed/],
      [{ key, colour: "blue" }, 400, /unknown field "colour"/],
      [{ key, duration: "1 day" }, 400, /duration/],
      [{ key: "not-a-key" }, 400, /virtual key \(sk-/],
      [{ key: `sk-${"x".repeat(10)}`, blocked: true }, 404, /no such key: sk-\.\.\.xxxx/],
      [{}, 400, /key/],
    ];
    for (const [body, status, message] of cases) {
      const r = await admin("POST", "/key/update", body);
      assert.equal(r.status, status, JSON.stringify(r.json));
      assert.match((r.json as unknown as ErrorBody).error.message, message);
    }
    const del = await admin("POST", "/key/delete", { keys: [key, `sk-${"y".repeat(10)}`] });
    assert.equal(del.status, 404, "all or none");
    assert.equal((await chat(key)).status, 200, "nothing was deleted");
    assert.equal((await admin("POST", "/key/delete", { keys: [] })).status, 400);
    assert.equal((await admin("POST", "/key/block", { key: 42 })).status, 400);
  });

  it("answers no input to a key route, or to an idempotent ingest, with a 500: each is a 4xx in OpenAI's shape or a success", async () => {
    const key = await generate({ user_id: "fuzz" });
    const value = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }),
      fc.string({ unit: "binary", maxLength: 40 }),
      fc.constantFrom(key, hashKey(key), "sk-", "", null, "30d", "0s", ["mock-small"], {}),
    );
    const fields = fc.constantFrom(
      "key",
      "keys",
      "user_id",
      "team_id",
      "models",
      "duration",
      "metadata",
      "key_alias",
      "blocked",
      "__proto__",
      "events",
    );
    const body = fc.oneof(fc.dictionary(fields, value, { maxKeys: 4 }), value);
    const problems: string[] = [];
    const check = async (what: string, res: Response): Promise<void> => {
      const text = await res.text();
      if (res.status >= 500 && res.status !== 503) problems.push(`${what}: ${res.status} ${text}`);
      if (res.status >= 400) {
        const e = (JSON.parse(text) as Partial<ErrorBody>).error;
        if (typeof e?.message !== "string" || typeof e.code !== "string")
          problems.push(`${what}: not OpenAI's shape: ${text}`);
      }
    };
    const paths = ["/key/generate", "/key/update", "/key/block", "/key/unblock", "/key/delete"];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...paths), body, async (path, b) => {
        const res = await fetch(`${bases[0] ?? ""}${path}`, {
          method: "POST",
          headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
          body: JSON.stringify(b) ?? "null",
        });
        await check(`${path} ${JSON.stringify(b)}`, res);
      }),
      { numRuns: 150 },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("/key/info", "/key/list"),
        fc.dictionary(fields, fc.string({ unit: "binary", maxLength: 30 }), { maxKeys: 3 }),
        async (path, q) => {
          const qs = new URLSearchParams(q).toString();
          const res = await fetch(`${bases[1] ?? ""}${path}?${qs}`, {
            headers: { authorization: `Bearer ${MASTER}` },
          });
          await check(`${path}?${qs}`, res);
        },
      ),
      { numRuns: 100 },
    );
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: "binary-ascii", maxLength: 300 }), value, async (k, b) => {
        let res: Response;
        try {
          res = await fetch(`${bases[2] ?? ""}/spend/events`, {
            method: "POST",
            headers: {
              authorization: `Bearer ${MASTER}`,
              "content-type": "application/json",
              "idempotency-key": k,
            },
            body: JSON.stringify({ events: Array.isArray(b) ? b : [b] }),
          });
        } catch {
          return; // a header value fetch itself will not send
        }
        await check(`/spend/events ${JSON.stringify(k)}`, res);
      }),
      { numRuns: 100 },
    );
    assert.deepEqual(problems, []);
  });

  /** Polls `ok` on every gateway until each has said yes; the ms each took. */
  async function waitAll(ok: (gw: number) => Promise<boolean>, limitMs = 5_000): Promise<number[]> {
    const t0 = performance.now();
    return Promise.all(
      Array.from({ length: GATEWAYS }, async (_, gw) => {
        for (;;) {
          if (await ok(gw)) return performance.now() - t0;
          if (performance.now() - t0 > limitMs)
            throw new Error(`gateway ${gw} not within ${limitMs} ms`);
          await new Promise((r) => setTimeout(r, 5));
        }
      }),
    );
  }

  it("a key blocked, unblocked, updated or deleted through one gateway is acted on by every gateway within key_sync_seconds", async () => {
    const key = await generate({ user_id: "zed", team_id: "blue" });
    const boundMs = SYNC_SECONDS * 1_000;
    const report: Record<string, number> = {};
    const step = async (
      label: string,
      via: number,
      path: string,
      body: unknown,
      ok: (r: { status: number; json: Record<string, unknown> }) => boolean,
      model = "mock-small",
    ): Promise<void> => {
      // Every gateway has the key cached in its current state.
      for (let gw = 0; gw < GATEWAYS; gw++) await chat(key, model, gw);
      const r = await admin("POST", path, body, via);
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const times = await waitAll(async (gw) => ok(await chat(key, model, gw)));
      report[label] = Math.round(Math.max(...times));
      assert.ok(Math.max(...times) <= boundMs, `${label}: ${times.map(Math.round).join(", ")} ms`);
    };
    await step(
      "block",
      0,
      "/key/block",
      { key },
      (r) => code(r.json) === "key_blocked" && r.status === 401,
    );
    const blocked = await chat(key, "mock-small", 2);
    assert.equal(
      (blocked.json as unknown as ErrorBody).error.message,
      "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
    );
    await step("unblock", 1, "/key/unblock", { key: hashKey(key) }, (r) => r.status === 200);
    await step(
      "update models",
      2,
      "/key/update",
      { key, models: ["mock-large"] },
      (r) => code(r.json) === "key_model_access_denied",
    );
    await step(
      "delete",
      0,
      "/key/delete",
      { keys: [key] },
      (r) => code(r.json) === "invalid_api_key",
    );
    process.stdout.write(
      `# key changes acted on by all ${GATEWAYS} gateways within (ms): ${JSON.stringify(report)}\n`,
    );
    // Deleted: no key any more, its spend kept on the row.
    const row = await t.db.verificationToken.findUnique({ where: { token: hashKey(key) } });
    assert.equal(row?.userId, null);
    assert.equal((await admin("GET", `/key/info?key=${key}`)).status, 404);
  });
});

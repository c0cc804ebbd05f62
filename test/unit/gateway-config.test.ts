import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildConfig, ConfigError } from "../../src/config/config.js";
import { runMockModel } from "../../src/gateway/mock-model.js";
import { costOf } from "../../src/gateway/pricing.js";
import { hashKey, KeyCache } from "../../src/gateway/virtual-keys.js";
import type { Db } from "../../src/persist/prisma.js";
import { secretEquals } from "../../src/serve/admin-auth.js";

/** The gateway's configuration and its pure parts: prices, the mock model, the key cache. */

const base = {
  general_settings: { use_redis_transaction_buffer: false },
};

describe("gateway configuration", () => {
  it("has defaults: port 4000, no master key, no prices, admin auth on and read-only", () => {
    const c = buildConfig(base, {});
    assert.equal(c.gateway.port, 4000);
    assert.equal(c.masterKey, undefined);
    assert.equal(c.gateway.modelPrices.size, 0);
    assert.equal(c.gateway.ingestMaxEvents, 1_000);
    assert.equal(c.gateway.maxRequestBodyBytes, 1024 * 1024);
    assert.deepEqual(c.admin, { auth: true, readOnly: true });
  });

  it("reads the master key, admin credentials and prices, resolving os.environ/", () => {
    const c = buildConfig(
      {
        general_settings: { master_key: "os.environ/MK" },
        spend_buffer_settings: {
          gateway_port: 8080,
          admin_username: "ops",
          admin_password: "os.environ/ADMIN_PW",
          admin_token: "os.environ/ADMIN_TOKEN",
          bull_board_read_only: false,
          model_prices: {
            "gpt-4o": { input_cost_per_token: "0.0000025", output_cost_per_token: "0.00001" },
            free: { input_cost_per_token: "0", output_cost_per_token: "0.000000000001" },
          },
        },
      },
      { MK: "sk-master-123", ADMIN_PW: "pw", ADMIN_TOKEN: "tok-0123456789abcdef" },
    );
    assert.equal(c.masterKey, "sk-master-123");
    assert.equal(c.gateway.port, 8080);
    assert.deepEqual(c.admin, {
      auth: true,
      username: "ops",
      password: "pw",
      token: "tok-0123456789abcdef",
      readOnly: false,
    });
    assert.deepEqual(c.gateway.modelPrices.get("gpt-4o"), {
      inputPicoPerToken: 2_500_000n,
      outputPicoPerToken: 10_000_000n,
    });
    assert.deepEqual(c.gateway.modelPrices.get("free"), {
      inputPicoPerToken: 0n,
      outputPicoPerToken: 1n,
    });
  });

  it("refuses bad gateway settings with the key named", () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [
        {
          spend_buffer_settings: {
            model_prices: { m: { input_cost_per_token: 0.0000025, output_cost_per_token: "1" } },
          },
        },
        /model_prices\.m\.input_cost_per_token: must be a quoted decimal string/,
      ],
      [
        {
          spend_buffer_settings: {
            model_prices: {
              m: { input_cost_per_token: "0.0000000000001", output_cost_per_token: "1" },
            },
          },
        },
        /input_cost_per_token: must be a decimal string with at most 12 decimals/,
      ],
      [
        {
          spend_buffer_settings: {
            model_prices: {
              m: { input_cost_per_token: "1", output_cost_per_token: "1", cache: "1" },
            },
          },
        },
        /model_prices\.m: Unrecognized key: "cache"/,
      ],
      [
        { spend_buffer_settings: { model_prices: { m: { input_cost_per_token: "1" } } } },
        /model_prices\.m\.output_cost_per_token/,
      ],
      [
        { spend_buffer_settings: { admin_username: "ops" } },
        /admin_username and admin_password must be set together/,
      ],
      [
        { spend_buffer_settings: { admin_token: "short" } },
        /admin_token: must be at least 16 characters/,
      ],
      [{ spend_buffer_settings: { admin_auth: "no" } }, /admin_auth/],
      [{ spend_buffer_settings: { gateway_port: 70_000 } }, /gateway_port/],
      [{ general_settings: { master_key: "x" } }, /master_key: must be at least 8 characters/],
      [{ spend_buffer_settings: { ingest_max_events: 0 } }, /ingest_max_events/],
    ];
    for (const [doc, message] of cases) {
      assert.throws(
        () =>
          buildConfig(
            {
              ...base,
              ...doc,
              general_settings: { ...base.general_settings, ...(doc.general_settings as object) },
            },
            {},
          ),
        (err: unknown) => err instanceof ConfigError && message.test(err.message),
        JSON.stringify(doc),
      );
    }
  });
});

describe("prices and the mock model", () => {
  const config = buildConfig(
    {
      ...base,
      spend_buffer_settings: {
        model_prices: {
          m: { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" },
        },
      },
    },
    {},
  );
  const price = config.gateway.models.get("m")?.[0]?.price;

  it("computes costs exactly, where float arithmetic would drift", () => {
    assert.ok(price !== undefined);
    // 0.1 + 0.2 style: 3 x 1e-7 + 7 x 3e-7 in floats is 2.4000000000000003e-6.
    assert.deepEqual(costOf(price, 3, 7), { pico: 2_400_000n, usd: "0.000002400000" });
    let sum = 0n;
    for (let i = 0; i < 1_000; i++) sum += costOf(price, 1, 1).pico;
    assert.equal(sum, 400_000_000n);
    assert.equal(config.gateway.models.get("other"), undefined);
  });

  it("answers deterministically, counting words as tokens", () => {
    const r = runMockModel("m", [
      { role: "system", content: "be brief" },
      { role: "user", content: "one two  three" },
    ]);
    assert.deepEqual(r, { ok: true, text: "three two one", promptTokens: 5, completionTokens: 3 });
    assert.deepEqual(runMockModel("m", [{ role: "user", content: "a b c d" }], 2).text, "d c");
    assert.deepEqual(runMockModel("mock-fail", [{ role: "user", content: "a b" }]), {
      ok: false,
      text: "",
      promptTokens: 2,
      completionTokens: 0,
    });
  });
});

describe("model_list: upstream models in LiteLLM's shape", () => {
  const withList = (
    list: unknown[],
    env: Record<string, string> = {},
  ): ReturnType<typeof buildConfig> => buildConfig({ ...base, model_list: list }, env);
  const priced = { input_cost_per_token: "0.000001", output_cost_per_token: "0.000002" };

  it("reads provider, upstream model, base URL, key, timeout and prices", () => {
    const c = withList(
      [
        {
          model_name: "fast",
          litellm_params: {
            model: "openai/gpt-4o-mini",
            api_base: "http://127.0.0.1:9/v1/",
            api_key: "os.environ/UPSTREAM_KEY",
            timeout: 30,
            rpm: 100,
          },
          model_info: { ...priced, max_input_tokens: 1000 },
        },
        { model_name: "default-openai", litellm_params: { model: "gpt-4o", ...priced } },
      ],
      { UPSTREAM_KEY: "sk-upstream-secret" },
    );
    assert.deepEqual(c.gateway.models.get("fast"), [
      {
        name: "fast",
        kind: "upstream",
        provider: "openai",
        model: "gpt-4o-mini",
        apiBase: "http://127.0.0.1:9/v1",
        apiKey: "sk-upstream-secret",
        timeoutMs: 30_000,
        price: { inputPicoPerToken: 1_000_000n, outputPicoPerToken: 2_000_000n },
        maxInputTokens: 1000,
      },
    ]);
    assert.equal(c.gateway.models.get("default-openai")?.[0]?.apiBase, "https://api.openai.com/v1");
  });

  it("refuses a model without a price, a numeric price, a provider without api_base, and a name taken by a mock model", () => {
    assert.throws(
      () => withList([{ model_name: "x", litellm_params: { model: "openai/x" } }]),
      /model_list\[0\] \("x"\): no price/,
    );
    assert.throws(
      () =>
        withList([
          {
            model_name: "x",
            litellm_params: { model: "openai/x" },
            model_info: { input_cost_per_token: 0.000001, output_cost_per_token: "1" },
          },
        ]),
      /must be a quoted decimal string/,
    );
    assert.throws(
      () => withList([{ model_name: "x", litellm_params: { model: "vllm/x", ...priced } }]),
      /api_base is required for provider "vllm"/,
    );
    assert.throws(
      () =>
        buildConfig(
          {
            ...base,
            model_list: [{ model_name: "m", litellm_params: { model: "openai/m", ...priced } }],
            spend_buffer_settings: { model_prices: { m: priced } },
          },
          {},
        ),
      /also in spend_buffer_settings.model_prices/,
    );
  });
});

describe("virtual key cache", () => {
  function fakeDb(rows: Map<string, { userId: string }>): { db: Db; queries: () => number } {
    let queries = 0;
    const db = {
      verificationToken: {
        findUnique: async ({ where }: { where: { token: string } }) => {
          queries++;
          await new Promise((r) => setTimeout(r, 5));
          const row = rows.get(where.token);
          return row === undefined
            ? null
            : {
                token: where.token,
                keyAlias: null,
                userId: row.userId,
                teamId: null,
                organizationId: null,
                models: [],
                expires: null,
                blocked: false,
              };
        },
      },
    } as unknown as Db;
    return { db, queries: () => queries };
  }

  it("looks keys up by their hash, caches hits for the TTL and misses briefly, and stays bounded", async () => {
    const rows = new Map([
      [hashKey("sk-a"), { userId: "a" }],
      [hashKey("sk-b"), { userId: "b" }],
    ]);
    const { db, queries } = fakeDb(rows);
    let now = 0;
    const cache = new KeyCache(db, 60_000, 2, () => now);
    const [a1, a2] = await Promise.all([cache.lookup("sk-a"), cache.lookup("sk-a")]);
    assert.equal(a1?.userId, "a");
    assert.equal(a1?.token, hashKey("sk-a"));
    assert.equal(a2, a1);
    assert.equal(queries(), 1, "concurrent lookups share one query");
    await cache.lookup("sk-a");
    assert.equal(queries(), 1, "a hit is cached");
    assert.equal(await cache.lookup("sk-nope"), null);
    assert.equal(await cache.lookup("sk-nope"), null);
    assert.equal(queries(), 2, "a miss is cached too");
    now += 1_001;
    await cache.lookup("sk-nope");
    assert.equal(queries(), 3, "but for at most a second");
    await cache.lookup("sk-b");
    assert.ok(cache.size <= 2, "bounded");
    now += 60_000;
    await cache.lookup("sk-b");
    assert.equal(queries(), 5, "a hit expires after the TTL");
  });

  it("compares secrets in constant time, whatever their lengths", () => {
    assert.equal(secretEquals("abc", "abc"), true);
    assert.equal(secretEquals("abc", "abd"), false);
    assert.equal(secretEquals("abc", "abcd"), false);
    assert.equal(secretEquals("", "x"), false);
  });
});

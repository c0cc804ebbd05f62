import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { countTokens } from "gpt-tokenizer";
import OpenAI from "openai";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { picoToDecimal, usdStringToPico } from "../../src/contract/money.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { mockEmbedding } from "../../src/gateway/mock-model.js";
import { MAX_MOCK_EMBEDDING_VALUES } from "../../src/gateway/routes/embeddings.js";
import { createKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { echoUsage, startFakeUpstream, type FakeUpstream } from "../support/fake-upstream.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * The gateway as real clients use it: the official OpenAI SDK, streaming and
 * not, against the mock model and a fake OpenAI-compatible upstream on
 * loopback (slow, failing, rate limited, hanging, broken mid-stream). Every
 * case charges a key of its own, and after a flush each key's spend in
 * PostgreSQL must be exactly what its case says, to the picodollar, once.
 */

const MOCK = { input: "0.0000001", output: "0.0000003" };
const UP = { input: "0.000001", output: "0.000002" };
const price = (p: { input: string; output: string }, prompt: number, completion: number): string =>
  picoToDecimal(
    BigInt(prompt) * usdStringToPico(p.input) + BigInt(completion) * usdStringToPico(p.output),
  );
/** The gateway's own count of a chat prompt: OpenAI's framing of 3 per message and 3. */
const promptTokens = (messages: { content: string }[]): number =>
  messages.reduce((n, m) => n + 3 + countTokens(m.content), 3);

interface Expect {
  spend: string;
  prompt?: number;
  completion?: number;
  requests: number;
  failed: number;
  /** A range instead of an exact completion count (a client that left mid-stream). */
  completionBetween?: [number, number];
  check?: (row: { promptTokens: bigint; completionTokens: bigint; spend: string }) => void;
}

describe("the gateway through the official OpenAI SDK: mock and upstream models, streaming, failures", () => {
  let t: TestDatabase;
  let fake: FakeUpstream;
  let gw: GatewayService;
  let config: AppConfig;
  let base: string;
  const prefix = uniquePrefix("openai-sdk");
  const expected = new Map<string, { key: CreatedKey; e: Expect }>();
  const sdk = (key: CreatedKey, maxRetries = 0): OpenAI =>
    new OpenAI({ apiKey: key.key, baseURL: `${base}/v1`, maxRetries });
  const newKey = (label: string): Promise<CreatedKey> => createKey(t.db, { userId: label });
  const expect = (label: string, key: CreatedKey, e: Expect): void =>
    void expected.set(label, { key, e });

  before(async () => {
    t = await createTestDatabase("openai_sdk");
    fake = await startFakeUpstream();
    const up = (name: string, model: string, extra: Record<string, unknown> = {}): unknown => ({
      model_name: name,
      litellm_params: {
        model: `openai/${model}`,
        api_base: fake.url,
        api_key: "os.environ/FAKE_UPSTREAM_KEY",
        ...extra,
      },
      model_info: { input_cost_per_token: UP.input, output_cost_per_token: UP.output },
    });
    config = buildConfig(
      {
        general_settings: { use_redis_transaction_buffer: true, proxy_batch_write_at: 3_600 },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        model_list: [
          up("up-echo", "echo"),
          up("up-slow", "slow"),
          up("up-nousage", "nousage"),
          up("up-broken", "broken"),
          up("up-fail", "fail"),
          up("up-ratelimit", "ratelimit"),
          up("up-hang", "hang", { timeout: 1 }),
          up("up-embed", "embed"),
          up("up-nullbody", "nullbody"),
          up("up-badchoices", "badchoices"),
          up("up-leakkey", "leakkey"),
          {
            ...(up("up-small-context", "echo") as Record<string, unknown>),
            model_info: {
              input_cost_per_token: UP.input,
              output_cost_per_token: UP.output,
              max_input_tokens: 20,
            },
          },
        ],
        spend_buffer_settings: {
          key_prefix: prefix,
          flush_jitter_seconds: 0,
          model_prices: Object.fromEntries(
            ["mock-small", "mock-slow", "mock-fail"].map((m) => [
              m,
              { input_cost_per_token: MOCK.input, output_cost_per_token: MOCK.output },
            ]),
          ),
        },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url, FAKE_UPSTREAM_KEY: "sk-upstream-secret" },
    );
    gw = await startGateway(config, { port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${gw.port}`;
  });
  after(async () => {
    await gw.close().catch(() => undefined);
    await fake.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("lists the configured models, and answers 404 model_not_found and 401 invalid_api_key as OpenAI does", async () => {
    const key = await newKey("models");
    const ids = [];
    for await (const m of sdk(key).models.list()) ids.push(m.id);
    assert.deepEqual(ids.sort(), [...config.gateway.models.keys()].sort());
    assert.equal((await sdk(key).models.retrieve("up-echo")).owned_by, "openai");
    await assert.rejects(sdk(key).models.retrieve("gpt-nope"), OpenAI.NotFoundError);
    await assert.rejects(
      sdk(key).chat.completions.create({
        model: "gpt-nope",
        messages: [{ role: "user", content: "hi" }],
      }),
      (err: unknown) =>
        err instanceof OpenAI.NotFoundError && (err.code ?? "") === "model_not_found",
    );
    const stranger = new OpenAI({ apiKey: "sk-nope", baseURL: `${base}/v1`, maxRetries: 0 });
    await assert.rejects(
      stranger.models.list(),
      (err: unknown) =>
        err instanceof OpenAI.AuthenticationError && (err.code ?? "") === "invalid_api_key",
    );
    expect("models", key, { spend: "0", requests: 0, failed: 0 });
  });

  it("mock model: a completion, and a stream with and without the usage chunk", async () => {
    const plain = await newKey("mock-plain");
    const r = await sdk(plain)
      .chat.completions.create({
        model: "mock-small",
        messages: [{ role: "user", content: "hello there general kenobi" }],
      })
      .withResponse();
    assert.equal(r.data.choices[0]?.message.content, "kenobi general there hello");
    assert.equal(r.response.headers.get("x-litellm-response-cost"), price(MOCK, 4, 4));
    expect("mock-plain", plain, {
      spend: price(MOCK, 4, 4),
      prompt: 4,
      completion: 4,
      requests: 1,
      failed: 0,
    });

    const streamed = await newKey("mock-stream");
    const stream = await sdk(streamed).chat.completions.create({
      model: "mock-small",
      messages: [{ role: "user", content: "one two three four five" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, "five four three two one");
    assert.deepEqual(usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });

    const quiet = await sdk(streamed).chat.completions.create({
      model: "mock-small",
      messages: [{ role: "user", content: "a b" }],
      stream: true,
    });
    for await (const chunk of quiet)
      assert.ok(!("usage" in chunk), "no usage field unless the client asked for it");
    expect("mock-stream", streamed, {
      spend: price(MOCK, 5 + 2, 5 + 2),
      prompt: 7,
      completion: 7,
      requests: 2,
      failed: 0,
    });
  });

  it("upstream: a completion and streams are relayed and charged the upstream's reported usage", async () => {
    const key = await newKey("up");
    const messages = [{ role: "user" as const, content: "alpha beta gamma" }];
    const { prompt, reply } = echoUsage(messages);
    const before = fake.requests.length;
    // metadata.tags must be a list of strings: refused before the upstream sees the request.
    await assert.rejects(
      sdk(key).chat.completions.create({ model: "up-echo", messages, metadata: { tags: "x" } }),
      OpenAI.BadRequestError,
    );
    assert.equal(fake.requests.length, before);

    const answered = await sdk(key)
      .chat.completions.create({ model: "up-echo", messages, temperature: 0.2 })
      .withResponse();
    assert.equal(answered.data.choices[0]?.message.content, reply.join(" "));
    assert.equal(answered.data.model, "echo-2024", "the upstream's answer, as it sent it");
    assert.equal(
      answered.response.headers.get("x-litellm-response-cost"),
      price(UP, prompt, reply.length),
    );
    const seen = fake.requests.at(-1);
    assert.equal(seen?.auth, "Bearer sk-upstream-secret");
    assert.equal(seen?.body.model, "echo");
    assert.equal(seen?.body.temperature, 0.2, "fields the gateway does not read go upstream");

    const plainStream = await sdk(key).chat.completions.create({
      model: "up-echo",
      messages,
      stream: true,
    });
    let text = "";
    for await (const chunk of plainStream) {
      assert.ok(!("usage" in chunk), "the usage the gateway asked for is not the client's");
      text += chunk.choices[0]?.delta.content ?? "";
    }
    assert.equal(text, reply.join(" "));
    assert.deepEqual(fake.requests.at(-1)?.body.stream_options, { include_usage: true });

    const usageStream = await sdk(key).chat.completions.create({
      model: "up-echo",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of usageStream) if (chunk.usage) usage = chunk.usage;
    assert.equal(usage?.prompt_tokens, prompt);
    expect("up", key, {
      spend: price(UP, 3 * prompt, 3 * reply.length),
      prompt: 3 * prompt,
      completion: 3 * reply.length,
      requests: 3,
      failed: 0,
    });
  });

  it("upstream without usage: prompt and completion counted with OpenAI's tokenizer", async () => {
    const key = await newKey("nousage");
    const messages = [{ role: "user" as const, content: "count these words please" }];
    const r = await sdk(key).chat.completions.create({ model: "up-nousage", messages });
    const content = r.choices[0]?.message.content ?? "";
    const p = promptTokens(messages);
    const c = countTokens(content);
    expect("nousage", key, {
      spend: price(UP, p, c),
      prompt: p,
      completion: c,
      requests: 1,
      failed: 0,
    });
  });

  it("embeddings: mock (base64, as the SDK asks by default) and upstream, charged for input tokens", async () => {
    const key = await newKey("embed");
    const e = await sdk(key).embeddings.create({ model: "mock-small", input: ["a b c", "d e"] });
    assert.equal(e.data.length, 2);
    assert.deepEqual(e.data[0]?.embedding, mockEmbedding("a b c"));
    assert.equal(e.usage.prompt_tokens, 5);
    const u = await sdk(key).embeddings.create({
      model: "up-embed",
      input: "one two three",
      encoding_format: "float",
    });
    assert.deepEqual(u.data[0]?.embedding, [0.5, -0.25, 1]);
    assert.equal(fake.requests.at(-1)?.path, "/v1/embeddings");
    // Embeddings are charged at the input price: the mock's 5 words, the upstream's reported 4.
    const spend = picoToDecimal(
      usdStringToPico(price(MOCK, 5, 0)) + usdStringToPico(price(UP, 4, 0)),
    );
    expect("embed", key, { spend, prompt: 9, completion: 0, requests: 2, failed: 0 });
  });

  it("embeddings: the mock answers up to its cap of inputs × dimensions", async () => {
    const key = await newKey("embed-cap");
    const input = Array.from({ length: 64 }, () => "x y");
    const e = await sdk(key).embeddings.create({
      model: "mock-small",
      input,
      dimensions: 4096,
      encoding_format: "float",
    });
    assert.equal(e.data.length * (e.data[0]?.embedding.length ?? 0), MAX_MOCK_EMBEDDING_VALUES);
    expect("embed-cap", key, {
      spend: price(MOCK, 128, 0),
      prompt: 128,
      completion: 0,
      requests: 1,
      failed: 0,
    });
  });

  it("failures: counted as failed requests at the cost a provider bills an error (zero), however often retried", async () => {
    const key = await newKey("fail");
    const messages = [{ role: "user" as const, content: "doomed request" }];
    await assert.rejects(
      sdk(key, 2).chat.completions.create({ model: "mock-fail", messages }),
      OpenAI.InternalServerError,
    );
    await assert.rejects(
      sdk(key).chat.completions.create({ model: "up-fail", messages }),
      (err: unknown) =>
        err instanceof OpenAI.InternalServerError && /upstream exploded/.test(err.message),
    );
    await assert.rejects(
      sdk(key).chat.completions.create({ model: "up-ratelimit", messages }),
      (err: unknown) =>
        err instanceof OpenAI.RateLimitError && err.headers?.get("retry-after") === "7",
    );
    await assert.rejects(
      sdk(key).chat.completions.create({ model: "up-hang", messages }),
      (err: unknown) =>
        err instanceof OpenAI.APIError && err.status === 504 && err.code === "upstream_timeout",
    );
    // The SDK sent mock-fail three times (two retries): three failed requests, none charged.
    expect("fail", key, { spend: "0", requests: 6, failed: 6 });
  });

  it("a broken upstream: a success not in the API's shape is a 502, recorded as failed; an error quoting the key is relayed masked", async () => {
    const key = await newKey("broken-shape");
    const post = async (path: string, body: unknown): Promise<[number, string, string]> => {
      const res = await fetch(`${base}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      return [res.status, (JSON.parse(text) as { error: { code: string } }).error.code, text];
    };
    const messages = [{ role: "user", content: "a b" }];
    for (const model of ["up-nullbody", "up-badchoices"]) {
      for (const [path, body] of [
        ["/v1/chat/completions", { model, messages }],
        ["/v1/embeddings", { model, input: "a b" }],
      ] as const) {
        const [status, code, text] = await post(path, body);
        assert.deepEqual([status, code], [502, "upstream_invalid"], `${model} ${path}: ${text}`);
      }
    }
    for (const [path, body] of [
      ["/v1/chat/completions", { model: "up-leakkey", messages }],
      ["/v1/embeddings", { model: "up-leakkey", input: "a b" }],
    ] as const) {
      const [status, code, text] = await post(path, body);
      assert.deepEqual([status, code], [401, "invalid_api_key"], text);
      assert.ok(
        !text.includes("sk-upstream-secret"),
        `the upstream's key reached the client: ${text}`,
      );
      assert.match(text, /Incorrect API key provided: Bearer \*\*\*/);
    }
    expect("broken-shape", key, { spend: "0", requests: 6, failed: 6 });
  });

  it("a client that leaves mid-stream is charged once for what was generated, never zero", async () => {
    const mockKey = await newKey("leave-mock");
    const words = Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ");
    const ms = await sdk(mockKey).chat.completions.create({
      model: "mock-slow",
      messages: [{ role: "user", content: words }],
      stream: true,
    });
    let got = 0;
    for await (const chunk of ms) {
      if (chunk.choices[0]?.delta.content) got++;
      if (got === 5) break; // the SDK closes the connection
    }
    expect("leave-mock", mockKey, {
      spend: "",
      prompt: 40,
      requests: 1,
      failed: 1,
      completionBetween: [5, 39],
      check: (row) => assert.equal(row.spend, price(MOCK, 40, Number(row.completionTokens))),
    });

    const upKey = await newKey("leave-up");
    const messages = [{ role: "user" as const, content: words }];
    const us = await sdk(upKey).chat.completions.create({
      model: "up-slow",
      messages,
      stream: true,
    });
    let text = "";
    for await (const chunk of us) {
      text += chunk.choices[0]?.delta.content ?? "";
      if (text.split(" ").length >= 5) break;
    }
    const p = promptTokens(messages);
    expect("leave-up", upKey, {
      spend: "",
      prompt: p,
      requests: 1,
      failed: 1,
      completionBetween: [countTokens(text), countTokens(echoUsage(messages).reply.join(" ")) - 1],
      check: (row) => assert.equal(row.spend, price(UP, p, Number(row.completionTokens))),
    });

    const brokenKey = await newKey("broken");
    const bs = await sdk(brokenKey).chat.completions.create({
      model: "up-broken",
      messages,
      stream: true,
    });
    let broken = "";
    await assert.rejects(async () => {
      for await (const chunk of bs) broken += chunk.choices[0]?.delta.content ?? "";
    });
    expect("broken", brokenKey, {
      spend: price(UP, p, countTokens(broken)),
      prompt: p,
      completion: countTokens(broken),
      requests: 1,
      failed: 1,
    });
  });

  it("hostile requests on the new routes get a specific 4xx in OpenAI's shape, never a 500", async () => {
    const key = await newKey("hostile");
    const call = async (
      method: string,
      path: string,
      body?: unknown,
    ): Promise<[number, string]> => {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const json = (await res.json()) as { error?: { code?: string } };
      return [res.status, json.error?.code ?? ""];
    };
    assert.deepEqual(await call("GET", "/v1/models/%E0%A4%A"), [400, "invalid_body"]);
    assert.deepEqual(await call("GET", `/v1/models/${"x".repeat(5000)}`), [404, "model_not_found"]);
    const many = Array.from({ length: 2049 }, () => "a");
    assert.deepEqual(await call("POST", "/v1/embeddings", { model: "mock-small", input: many }), [
      400,
      "invalid_body",
    ]);
    // Past the mock's answer cap (inputs × dimensions): refused before anything is built or charged.
    for (const n of [2048, 65])
      assert.deepEqual(
        await call("POST", "/v1/embeddings", {
          model: "mock-small",
          input: Array.from({ length: n }, () => "x y"),
          dimensions: 4096,
        }),
        [400, "too_many_values"],
      );
    for (const bad of [
      { model: "mock-small", input: "" },
      { model: "mock-small", input: [] },
      { model: "mock-small", input: "a", dimensions: 1e9 },
      { model: "mock-small", input: "a", encoding_format: "hex" },
      { model: "mock-small", input: [[-1]] },
    ])
      assert.deepEqual(
        await call("POST", "/v1/embeddings", bad),
        [400, "invalid_body"],
        JSON.stringify(bad),
      );
    const chat = { model: "mock-small", messages: [{ role: "user", content: "hi" }] };
    // Forwarded upstream, a body 100,000 levels deep overflowed JSON.stringify: reported as a 502.
    const deep = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
      body: `{"model":"up-echo","messages":[{"role":"user","content":"hi"}],"x":${"[".repeat(100_000)}${"]".repeat(100_000)}}`,
    });
    assert.equal(deep.status, 400);
    assert.equal(((await deep.json()) as { error: { code: string } }).error.code, "invalid_body");
    for (const bad of [
      { ...chat, stream: "yes" },
      { ...chat, stream: true, stream_options: "x" },
      { ...chat, stream: true, stream_options: { include_usage: "yes" } },
    ])
      assert.deepEqual(
        await call("POST", "/v1/chat/completions", bad),
        [400, "invalid_body"],
        JSON.stringify(bad),
      );
    expect("hostile", key, { spend: "0", requests: 0, failed: 0 });
  });

  it("refuses a prompt past the model's max_input_tokens before calling the upstream", async () => {
    const key = await newKey("context");
    const before = fake.requests.length;
    await assert.rejects(
      sdk(key).chat.completions.create({
        model: "up-small-context",
        messages: [{ role: "user", content: "word ".repeat(50) }],
      }),
      (err: unknown) =>
        err instanceof OpenAI.BadRequestError && err.code === "context_length_exceeded",
    );
    assert.equal(fake.requests.length, before);
    expect("context", key, { spend: "0", requests: 0, failed: 0 });
  });

  it("PostgreSQL holds exactly each case's charge, once", async () => {
    await new Promise((r) => setTimeout(r, 300));
    // How each call ended, as an operator sees it.
    const text = await (await fetch(`${base}/metrics`)).text();
    const calls = (kind: string, outcome: string): number =>
      Number(
        new RegExp(
          `^gateway_model_calls_total\\{kind="${kind}",outcome="${outcome}"\\} (\\d+)$`,
          "m",
        ).exec(text)?.[1] ?? -1,
      );
    assert.equal(calls("mock", "model_failed"), 3, "mock-fail, sent three times by the SDK");
    assert.equal(calls("mock", "client_left"), 1);
    assert.equal(calls("upstream", "client_left"), 1);
    assert.equal(calls("upstream", "upstream_broke"), 1);
    assert.equal(calls("upstream", "upstream_error"), 4, "a 500, a 429 and two 401s relayed");
    assert.equal(calls("upstream", "upstream_invalid"), 4);
    assert.equal(calls("upstream", "upstream_timeout"), 1);
    assert.equal(calls("upstream", "upstream_unreachable"), 0);
    // Closing drains the gateway's producer to Redis; then everything is flushed.
    await gw.close();
    const h = new Harness(config, t.db);
    try {
      for (let i = 0; i < 20 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
    } finally {
      await h.close();
    }
    for (const [label, { key, e }] of expected) {
      const rows = await t.db.dailyUserSpend.findMany({ where: { apiKey: key.token } });
      const sum = (f: (r: (typeof rows)[number]) => bigint): bigint =>
        rows.reduce((n, r) => n + f(r), 0n);
      const spend = picoToDecimal(
        rows.reduce((n, r) => n + usdStringToPico(r.spend.toFixed(12)), 0n),
      );
      const stored = await t.db.verificationToken.findUnique({ where: { token: key.token } });
      assert.equal(stored?.spend.toFixed(12), spend, `${label}: key spend equals its daily rows`);
      assert.equal(
        sum((r) => r.apiRequests),
        BigInt(e.requests),
        `${label}: requests`,
      );
      assert.equal(
        sum((r) => r.failedRequests),
        BigInt(e.failed),
        `${label}: failed requests`,
      );
      if (e.prompt !== undefined)
        assert.equal(
          sum((r) => r.promptTokens),
          BigInt(e.prompt),
          `${label}: prompt tokens`,
        );
      if (e.completion !== undefined)
        assert.equal(
          sum((r) => r.completionTokens),
          BigInt(e.completion),
          `${label}: completion tokens`,
        );
      if (e.completionBetween !== undefined) {
        const c = Number(sum((r) => r.completionTokens));
        assert.ok(
          c >= e.completionBetween[0] && c <= e.completionBetween[1],
          `${label}: ${c} completion tokens, expected within ${e.completionBetween.join("..")}`,
        );
      }
      if (e.check !== undefined) {
        assert.equal(rows.length, 1, `${label}: one daily row`);
        const row = rows[0];
        assert.ok(row !== undefined);
        e.check({ promptTokens: row.promptTokens, completionTokens: row.completionTokens, spend });
      } else assert.equal(spend, picoToDecimal(usdStringToPico(e.spend)), `${label}: spend`);
      if (e.requests > 0 && e.failed === e.requests && e.spend !== "0")
        assert.notEqual(spend, picoToDecimal(0n), `${label}: never zero`);
    }
  });
});

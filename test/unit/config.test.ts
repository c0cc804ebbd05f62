import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  buildConfig,
  ConfigError,
  DEFAULT_CONFIG,
  ignoredKeysWarning,
  LOG_LEVELS,
  loadConfig,
} from "../../src/config/config.js";

function file(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "spend-config-"));
  const p = join(dir, "proxy_config.yaml");
  writeFileSync(p, text);
  return p;
}

// The seed's proxy_config.yaml, as written there.
const SEED = `
general_settings:
  use_redis_transaction_buffer: true

litellm_settings:
  cache: True
  cache_params:
    type: redis
    supported_call_types: [] # Optional: Set cache for proxy, but not on the actual llm api call
    max_connections: 100
`;

describe("configuration", () => {
  it("accepts the seed's proxy_config.yaml as written", () => {
    const c = loadConfig(file(SEED), {});
    assert.equal(c.useRedisBuffer, true);
    assert.equal(c.redis.host, "127.0.0.1");
    assert.equal(c.redis.port, 6379);
    assert.equal(c.producer.flushIntervalMs, 1_000);
  });

  it("needs no file: buffer on, local Redis and PostgreSQL", () => {
    const c = loadConfig(undefined, {});
    assert.equal(c.useRedisBuffer, true);
    assert.equal(c.databaseUrl, "postgresql://postgres@127.0.0.1:5432/test");
    assert.equal(c.keyPrefix, "haimaker");
  });

  it("lets REDIS_URL and DATABASE_URL override the file, and resolves os.environ/ references", () => {
    const p = file(`
general_settings:
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 2
litellm_settings:
  cache: true
  cache_params: { type: redis, host: redis.internal, port: 6380, password: os.environ/REDIS_PASSWORD }
`);
    const fromFile = loadConfig(p, { REDIS_PASSWORD: "s3cret" });
    assert.equal(fromFile.redis.host, "redis.internal");
    assert.equal(fromFile.redis.password, "s3cret");
    assert.equal(fromFile.producer.flushIntervalMs, 2_000);
    const overridden = loadConfig(p, {
      REDIS_PASSWORD: "x",
      REDIS_URL: "rediss://:pw@cache:7000/2",
      DATABASE_URL: "postgresql://db/spend",
    });
    assert.deepEqual(overridden.redis, {
      host: "cache",
      port: 7000,
      password: "pw",
      db: 2,
      tls: true,
    });
    assert.equal(overridden.databaseUrl, "postgresql://db/spend");
  });

  it("fails fast and specifically on bad configuration", () => {
    const cases: [string, RegExp][] = [
      [
        "general_settings:\n  use_redis_transaction_buffer: yes please\n",
        /general_settings\.use_redis_transaction_buffer/,
      ],
      ["general_settings:\n  proxy_batch_write_at: -1\n", /proxy_batch_write_at/],
      ["general_settings:\n  bogus_key: 1\n", /bogus_key/],
      ["spend_buffer_settings:\n  key_prefix: 'has space'\n", /key_prefix/],
      ["litellm_settings:\n  cache_params: { type: memcached }\n", /cache_params\.type/],
      ["general_settings:\n  use_redis_transaction_buffer: true\n", /no Redis is configured/],
      [
        "litellm_settings:\n  cache_params: { type: redis, password: os.environ/MISSING_SECRET }\n",
        /MISSING_SECRET is not set/,
      ],
      ["general_settings: [unclosed\n", /not valid YAML/],
    ];
    for (const [yaml, message] of cases) {
      assert.throws(
        () => loadConfig(file(yaml), {}),
        (err: unknown) => err instanceof ConfigError && message.test(err.message),
        yaml,
      );
    }
    assert.throws(
      () => loadConfig("/nonexistent/proxy_config.yaml", {}),
      /cannot read config file/,
    );
  });

  it("takes REDIS_URL's database index as written, and refuses one that is not a non-negative integer", () => {
    const db = (url: string): number => loadConfig(undefined, { REDIS_URL: url }).redis.db;
    assert.equal(db("redis://cache:6379"), 0);
    assert.equal(db("redis://cache:6379/"), 0);
    assert.equal(db("redis://cache:6379/3"), 3);
    // Above the server's `databases` is for the server to say: preflight asks it.
    assert.equal(db("redis://cache:6379/20"), 20);
    for (const bad of ["x", "-1", "1.5", "1e1", "0x1", "2/3", "%31"]) {
      assert.throws(
        () => db(`redis://cache:6379/${bad}`),
        (err: unknown) =>
          err instanceof ConfigError &&
          /^REDIS_URL database index must be a non-negative integer, got /.test(err.message),
        bad,
      );
    }
    assert.throws(
      () =>
        buildConfig(
          { litellm_settings: { cache_params: { type: "redis", url: "redis://cache/db" } } },
          {},
        ),
      /litellm_settings\.cache_params\.url database index must be a non-negative integer/,
    );
  });

  it("writes jobs in format 4 unless job_format (or the deprecated daily_job_format) says otherwise", () => {
    const format = (settings: Record<string, unknown>): number =>
      buildConfig({ spend_buffer_settings: settings }, {}).producer.jobFormat;
    assert.equal(format({}), 4);
    assert.equal(format({ job_format: 3 }), 3);
    assert.equal(format({ job_format: 2 }), 2);
    assert.equal(format({ daily_job_format: 1 }), 1);
    assert.equal(format({ job_format: 3, daily_job_format: 1 }), 3);
    for (const bad of [{ job_format: 5 }, { daily_job_format: 3 }, { job_format: "4" }])
      assert.throws(() => format(bad), ConfigError, JSON.stringify(bad));
  });

  it("reads LOG_LEVEL and METRICS_PORT here, typed and validated, over the file", () => {
    const p = file("spend_buffer_settings:\n  log_level: warn\n  metrics_port: 9500\n");
    const c = loadConfig(p, {});
    assert.equal(c.logLevel, "warn");
    assert.equal(c.metricsPort, 9500);
    const env = loadConfig(p, { LOG_LEVEL: "debug", METRICS_PORT: "9600" });
    assert.equal(env.logLevel, "debug");
    assert.equal(env.metricsPort, 9600);
    // Empty is unset, as for REDIS_URL and DATABASE_URL.
    const empty = loadConfig(p, { LOG_LEVEL: "", METRICS_PORT: "" });
    assert.equal(empty.logLevel, "warn");
    assert.equal(empty.metricsPort, 9500);
    assert.equal(loadConfig(p, { METRICS_PORT: "0" }).metricsPort, 0);
    for (const level of LOG_LEVELS)
      assert.equal(loadConfig(p, { LOG_LEVEL: level }).logLevel, level);

    for (const bad of ["verbose", "INFO", "warning", " info"]) {
      assert.throws(
        () => loadConfig(p, { LOG_LEVEL: bad }),
        (err: unknown) =>
          err instanceof ConfigError &&
          err.message ===
            `LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got ${JSON.stringify(bad)}`,
        bad,
      );
    }
    for (const bad of ["abc", "99999", "65536", "-1", "1e3", "0x10", " 80", "80.0"]) {
      assert.throws(
        () => loadConfig(p, { METRICS_PORT: bad }),
        (err: unknown) =>
          err instanceof ConfigError &&
          err.message ===
            `METRICS_PORT must be a port number from 0 to 65535, got ${JSON.stringify(bad)}`,
        bad,
      );
    }
  });

  it("records where the cluster nodes came from, for preflight's messages", () => {
    const p = file(
      "litellm_settings:\n  cache_params: { type: redis, cluster_nodes: ['n1:7000', 'n2:7001'] }\n",
    );
    const fromFile = loadConfig(p, {}).redis;
    assert.deepEqual(fromFile.cluster, [
      { host: "n1", port: 7000 },
      { host: "n2", port: 7001 },
    ]);
    assert.equal(fromFile.clusterSetting, "litellm_settings.cache_params.cluster_nodes");
    const fromEnv = loadConfig(p, { REDIS_CLUSTER_NODES: "a:1, b:2" }).redis;
    assert.deepEqual(fromEnv.cluster, [
      { host: "a", port: 1 },
      { host: "b", port: 2 },
    ]);
    assert.equal(fromEnv.clusterSetting, "REDIS_CLUSTER_NODES");
    assert.throws(
      () => loadConfig(p, { REDIS_CLUSTER_NODES: "a:1,b" }),
      /ConfigError: REDIS_CLUSTER_NODES: a node must be host:port, got "b"$/,
    );
    assert.equal(loadConfig(undefined, {}).redis.cluster, undefined);
  });

  it("reads passwords that hold @, and refuses, without echoing them, URLs a parser would misread", () => {
    assert.equal(
      loadConfig(undefined, { REDIS_URL: "redis://:p@ss@cache:6379/1" }).redis.password,
      "p@ss",
    );
    assert.equal(
      loadConfig(undefined, { REDIS_URL: "redis://:p%2Fss@cache:6379/1" }).redis.password,
      "p/ss",
    );
    const cases: [Record<string, string>, string, RegExp][] = [
      // A parser takes "p" for the host's port (or "ss@cache" for a path): refused, not misread.
      [
        { REDIS_URL: "redis://:p/ss@cache:6379" },
        "p/ss",
        /^REDIS_URL: the part before the last "@"/,
      ],
      [
        { REDIS_URL: "redis://u:12?x@cache:6379" },
        "12?x",
        /^REDIS_URL: the part before the last "@"/,
      ],
      [
        { REDIS_URL: "redis://u:a#b@cache:6379" },
        "a#b",
        /^REDIS_URL: the part before the last "@"/,
      ],
      [
        { DATABASE_URL: "postgresql://u:pa/ss@db:5432/spend" },
        "pa/ss",
        /^DATABASE_URL: the part before the last "@"/,
      ],
      // pg would take it for a database name on localhost and repeat it, password included.
      [
        { DATABASE_URL: "host=db user=u password='s3c ret' dbname=spend" },
        "s3c ret",
        /^DATABASE_URL is a key=value connection string \(host=db user=u password=\*\*\* dbname=spend\); use a postgresql:\/\/ URL$/,
      ],
      [{ REDIS_URL: "redis://:pa ss%zz@cache:6379" }, "pa ss", /not validly percent-encoded/],
    ];
    for (const [env, secret, message] of cases) {
      assert.throws(
        () => loadConfig(undefined, env),
        (err: unknown) =>
          err instanceof ConfigError && message.test(err.message) && !err.message.includes(secret),
        JSON.stringify(env),
      );
    }
  });
  it("refuses a model name no spend row could store (the id rules)", () => {
    for (const model of ["gpt\u0000x", "cafe\u0301", "rtl\u202e"])
      assert.throws(
        () =>
          buildConfig(
            {
              spend_buffer_settings: {
                model_prices: {
                  [model]: { input_cost_per_token: "0.1", output_cost_per_token: "0.1" },
                },
              },
            },
            {},
          ),
        (err: unknown) =>
          err instanceof ConfigError && /model_prices: model name/.test(err.message),
        JSON.stringify(model),
      );
  });
});

// An operator's existing LiteLLM proxy config.yaml, with settings of LiteLLM's
// that this project does not read in every section.
const LITELLM_FILE = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      timeout: 120
      rpm: 600
      tpm: 100000
      max_retries: 2
      stream_timeout: 60
    model_info:
      id: gpt-4o-primary
      base_model: gpt-4o
      input_cost_per_token: "0.0000025"
      output_cost_per_token: "0.00001"
  - model_name: azure-gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://example-eu.openai.azure.com/openai
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-06-01"
      input_cost_per_token: "0.0000025"
      output_cost_per_token: "0.00001"

litellm_settings:
  drop_params: true
  num_retries: 3
  request_timeout: 600
  set_verbose: false
  json_logs: true
  success_callback: ["langfuse"]
  cache: true
  cache_params:
    type: redis
    host: redis.internal
    port: 6380
    password: os.environ/REDIS_PASSWORD
    ttl: 600
    namespace: litellm.caching.caching
    supported_call_types: ["acompletion"]

general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 5
  alerting: ["slack"]
  database_connection_pool_limit: 20
  disable_spend_logs: false
  store_model_in_db: true

router_settings:
  routing_strategy: simple-shuffle
  redis_host: os.environ/ROUTER_REDIS_HOST
  num_retries: 2

environment_variables:
  LANGFUSE_PUBLIC_KEY: pk-lf-0000

guardrails:
  - guardrail_name: pii
    litellm_params: { guardrail: presidio, mode: pre_call }
`;

const LITELLM_ENV = {
  OPENAI_API_KEY: "sk-openai",
  AZURE_API_KEY: "azure-key",
  REDIS_PASSWORD: "s3cret",
  LITELLM_MASTER_KEY: "sk-master-key",
};

function refusal(yaml: string): string {
  try {
    loadConfig(file(yaml), LITELLM_ENV);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail(`accepted:\n${yaml}`);
}

describe("a LiteLLM proxy config.yaml", () => {
  it("loads, LiteLLM's settings this project does not read set aside and listed exactly", () => {
    const c = loadConfig(file(LITELLM_FILE), LITELLM_ENV);
    assert.deepEqual(c.ignoredLiteLLMKeys, [
      "router_settings",
      "environment_variables",
      "guardrails",
      "general_settings.alerting",
      "general_settings.database_connection_pool_limit",
      "general_settings.disable_spend_logs",
      "general_settings.store_model_in_db",
      "litellm_settings.drop_params",
      "litellm_settings.num_retries",
      "litellm_settings.request_timeout",
      "litellm_settings.set_verbose",
      "litellm_settings.json_logs",
      "litellm_settings.success_callback",
      "litellm_settings.cache_params.ttl",
      "litellm_settings.cache_params.namespace",
      "model_list[0].litellm_params.rpm",
      "model_list[0].litellm_params.tpm",
      "model_list[0].litellm_params.max_retries",
      "model_list[0].litellm_params.stream_timeout",
      "model_list[0].model_info.id",
      "model_list[0].model_info.base_model",
      "model_list[1].litellm_params.api_version",
    ]);
    // Ours, read as before (ROUTER_REDIS_HOST is unset: a set-aside value is not resolved).
    assert.equal(c.useRedisBuffer, true);
    assert.equal(c.producer.flushIntervalMs, 5_000);
    assert.equal(c.masterKey, "sk-master-key");
    assert.deepEqual(
      [c.redis.host, c.redis.port, c.redis.password],
      ["redis.internal", 6380, "s3cret"],
    );
    const [gpt] = c.gateway.models.get("gpt-4o") ?? [];
    assert.equal(gpt?.timeoutMs, 120_000);
    assert.equal(gpt?.apiKey, "sk-openai");
    assert.equal(gpt?.price.inputPicoPerToken, 2_500_000n);
    const [azure] = c.gateway.models.get("azure-gpt-4o") ?? [];
    assert.equal(azure?.apiBase, "https://example-eu.openai.azure.com/openai");
    assert.equal(azure?.provider, "azure");
  });

  it("names them in one start-up warning, and none without them", () => {
    const c = loadConfig(file(LITELLM_FILE), LITELLM_ENV);
    const warning = ignoredKeysWarning(c.ignoredLiteLLMKeys) ?? "";
    assert.match(
      warning,
      /^ignored: LiteLLM settings this gateway does not use: router_settings, environment_variables, guardrails, general_settings\.alerting, .*model_list\[1\]\.litellm_params\.api_version$/,
    );
    assert.doesNotMatch(warning, /\n/);
    assert.deepEqual(loadConfig(file(SEED), {}).ignoredLiteLLMKeys, []);
    assert.deepEqual(DEFAULT_CONFIG.ignoredLiteLLMKeys, []);
    assert.equal(ignoredKeysWarning([]), undefined);
  });

  it("does not validate what it sets aside, nor change the document it was given", () => {
    const doc = {
      router_settings: "not even a map",
      environment_variables: [1, 2, 3],
      litellm_settings: { drop_params: "yes please", num_retries: { a: "b" } },
      general_settings: { alerting: 42, store_model_in_db: "os.environ/NOT_SET_ANYWHERE" },
    };
    const copy = structuredClone(doc);
    const c = buildConfig(doc, {});
    assert.equal(c.ignoredLiteLLMKeys.length, 6);
    assert.deepEqual(doc, copy);
  });

  it("still refuses a typo of one of ours, naming the key meant", () => {
    const cases: [string, string][] = [
      [
        "general_settings:\n  use_redis_transaction_bufer: true\n",
        'invalid configuration: general_settings: Unrecognized key: "use_redis_transaction_bufer" (did you mean "use_redis_transaction_buffer"?)',
      ],
      [
        "general_settings:\n  alerting: [slack]\n  proxy_batch_write_att: 1\n",
        'invalid configuration: general_settings: Unrecognized key: "proxy_batch_write_att" (did you mean "proxy_batch_write_at"?)',
      ],
      [
        "genral_settings:\n  master_key: sk-12345678\n",
        'invalid configuration: (root): Unrecognized key: "genral_settings" (did you mean "general_settings"?)',
      ],
      [
        "litellm_settings:\n  drop_params: true\n  cache_params: { type: redis, ttl: 60, hots: redis.internal }\n",
        'invalid configuration: litellm_settings.cache_params: Unrecognized key: "hots" (did you mean "host"?)',
      ],
      [
        "spend_buffer_settings:\n  key_prefx: a\n",
        'invalid configuration: spend_buffer_settings: Unrecognized key: "key_prefx" (did you mean "key_prefix"?)',
      ],
      // LiteLLM passes unknown litellm_params on to the provider, so they are
      // set aside; one a letter from ours is the typo it looks like.
      [
        'model_list:\n  - model_name: m\n    litellm_params: { model: openai/m, rpm: 5, api_bse: "https://up.example/v1" }\n    model_info: { input_cost_per_token: "0.1", output_cost_per_token: "0.1" }\n',
        'invalid configuration: model_list.0.litellm_params: Unrecognized key: "api_bse" (did you mean "api_base"?)',
      ],
      [
        'model_list:\n  - model_name: m\n    litellm_params: { model: mock/m }\n    model_info: { id: x, input_cost_per_tokens: "0.1", output_cost_per_token: "0.1" }\n',
        'invalid configuration: model_list.0.model_info: Unrecognized key: "input_cost_per_tokens" (did you mean "input_cost_per_token"?)',
      ],
    ];
    for (const [yaml, message] of cases) assert.equal(refusal(yaml), message, yaml);
  });

  it("still refuses a key on neither list, as before", () => {
    const cases: [string, string][] = [
      [
        "general_settings:\n  alerting: [slack]\n  bogus_key: 1\n",
        'invalid configuration: general_settings: Unrecognized key: "bogus_key"',
      ],
      [
        "router_settings: {}\nnot_a_litellm_section: {}\n",
        'invalid configuration: (root): Unrecognized key: "not_a_litellm_section"',
      ],
      [
        "litellm_settings:\n  drop_params: true\n  made_up_setting: 1\n",
        'invalid configuration: litellm_settings: Unrecognized key: "made_up_setting"',
      ],
      [
        "litellm_settings:\n  cache_params: { type: redis, made_up: 1 }\n",
        'invalid configuration: litellm_settings.cache_params: Unrecognized key: "made_up"',
      ],
    ];
    for (const [yaml, message] of cases) assert.equal(refusal(yaml), message, yaml);
  });

  it("refuses, saying why, LiteLLM's settings that would change where spend goes or who is served", () => {
    const cases: [string, RegExp][] = [
      [
        "include: [models.yaml]\n",
        /\(root\): Unrecognized key: "include" \(LiteLLM's include is not read here/,
      ],
      [
        "general_settings:\n  allowed_ips: [10.0.0.1]\n",
        /general_settings: Unrecognized key: "allowed_ips" \(LiteLLM's IP allow-list is not applied here/,
      ],
      [
        "litellm_settings:\n  cache_params: { type: redis, redis_startup_nodes: [{ host: a, port: 7001 }] }\n",
        /cache_params: Unrecognized key: "redis_startup_nodes" \(.*write them as cluster_nodes/,
      ],
    ];
    for (const [yaml, message] of cases) assert.match(refusal(yaml), message, yaml);
  });

  it("still validates our keys beside the ones set aside", () => {
    const cases: [string, RegExp][] = [
      [
        "general_settings:\n  alerting: [slack]\n  proxy_batch_write_at: -1\n",
        /general_settings\.proxy_batch_write_at/,
      ],
      [
        "litellm_settings:\n  drop_params: true\n  cache_params: { type: redis, ttl: 600, port: 99999 }\n",
        /litellm_settings\.cache_params\.port/,
      ],
      [
        'model_list:\n  - model_name: m\n    litellm_params: { model: openai/m, rpm: 5, timeout: -5 }\n    model_info: { id: x, input_cost_per_token: "0.1", output_cost_per_token: "0.1" }\n',
        /model_list\.0\.litellm_params\.timeout/,
      ],
      [
        'model_list:\n  - model_name: m\n    litellm_params: { model: openai/m, tpm: 5 }\n    model_info: { base_model: m, input_cost_per_token: 0.1, output_cost_per_token: "0.1" }\n',
        /model_info\.input_cost_per_token: must be a quoted decimal string/,
      ],
      [
        "router_settings: { num_retries: 2 }\ngeneral_settings:\n  master_key: short\n",
        /general_settings\.master_key: must be at least 8 characters/,
      ],
    ];
    for (const [yaml, message] of cases) assert.match(refusal(yaml), message, yaml);
  });
});

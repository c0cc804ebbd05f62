import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { idProblem } from "../contract/ids.js";
import { MAX_EVENT_USD, usdStringToPico } from "../contract/money.js";
import { MAX_ID_LENGTH } from "../contract/ids.js";
import { redact } from "./redact.js";
import {
  ignoredKeysWarning,
  reportIgnoredKeys,
  setAsideLiteLLMKeys,
  unrecognizedKeyHint,
} from "./litellm-ignored.js";

export { redact, ignoredKeysWarning, reportIgnoredKeys };

/**
 * The one place configuration is read, typed and validated. The seed's
 * proxy_config.yaml works as written; everything this project adds lives in
 * `spend_buffer_settings`. Strings of the form `os.environ/NAME` are replaced
 * by that environment variable (LiteLLM's convention, so secrets stay out of
 * the file), and REDIS_URL / DATABASE_URL / REDIS_CLUSTER_NODES / LOG_LEVEL /
 * METRICS_PORT override the file. LiteLLM's own settings this project does
 * not read are set aside unread and named (litellm-ignored.ts); any other
 * unknown key is refused.
 */

export class ConfigError extends Error {
  readonly code = "CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const positiveSeconds = z.number().positive().max(86_400);

/** pino's levels: spend_buffer_settings.log_level and LOG_LEVEL take the same. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(v: string): v is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(v);
}

/**
 * A price per token in USD, as an exact decimal string (LiteLLM's names). A
 * YAML number would already be a binary float, so prices must be quoted; at
 * most 12 decimals (the picodollar is the unit of account).
 */
const PRICE = /^\d{1,16}(\.\d{1,12})?$/;
const pricePerToken = z.unknown().transform((v, ctx): string => {
  if (typeof v === "string" && PRICE.test(v)) return v;
  ctx.addIssue({
    code: "custom",
    message:
      typeof v === "number"
        ? `must be a quoted decimal string (e.g. "0.0000025"), not the YAML number ${v}: prices are exact`
        : 'must be a decimal string with at most 12 decimals, e.g. "0.0000025"',
  });
  return z.NEVER;
});

const modelPriceSchema = z
  .object({
    input_cost_per_token: pricePerToken.describe("USD per prompt token, a quoted decimal string."),
    output_cost_per_token: pricePerToken.describe(
      "USD per completion token, a quoted decimal string.",
    ),
  })
  .strict();

/** Per-token prices where LiteLLM puts them: litellm_params or model_info. */
const priceFields = {
  input_cost_per_token: pricePerToken
    .optional()
    .describe("USD per prompt token, a quoted decimal string."),
  output_cost_per_token: pricePerToken
    .optional()
    .describe("USD per completion token, a quoted decimal string."),
};

/**
 * One deployment of LiteLLM's model_list. Only what the gateway uses is
 * typed. LiteLLM's other parameters (rpm, tpm, max_retries, ...) are set
 * aside before this schema sees them (litellm-ignored.ts), so a LiteLLM
 * configuration loads as it is; what is left and not ours is a typo of one
 * of ours, refused here.
 */
const deploymentSchema = z
  .object({
    model_name: z
      .string()
      .min(1)
      .max(256)
      .describe("The name clients ask for (`model` in their requests)."),
    litellm_params: z
      .object({
        model: z
          .string()
          .min(1)
          .max(256)
          .describe(
            "`<provider>/<model>`: the provider recorded with the spend, and the model sent upstream. Provider `mock`: the built-in mock model, no network.",
          ),
        api_base: z
          .url({ protocol: /^https?$/ })
          .optional()
          .describe(
            "The OpenAI-compatible upstream's base URL (its `/chat/completions` and `/embeddings` are called). Default for provider `openai`: `https://api.openai.com/v1`; required for any other.",
          ),
        api_key: z
          .string()
          .optional()
          .describe("Sent upstream as a bearer token. Use `os.environ/NAME`."),
        timeout: positiveSeconds
          .optional()
          .describe("Seconds before an upstream request is abandoned (default 600)."),
        ...priceFields,
      })
      .strict()
      .describe("How to reach the model."),
    model_info: z
      .object({
        ...priceFields,
        max_input_tokens: z
          .number()
          .int()
          .positive()
          .optional()
          .describe("Longest prompt accepted (tokens); longer ones are refused before the call."),
      })
      .strict()
      .optional()
      .describe("Prices and limits (LiteLLM's names)."),
  })
  .strict();

// Every setting's description is its documentation: docs/configuration.md is
// generated from these schemas (config-reference.ts), and a test keeps it so.
const cacheParamsSchema = z
  .object({
    type: z.literal("redis").describe("Must be `redis`."),
    host: z
      .string()
      .min(1)
      .optional()
      .describe("Redis host. Default `127.0.0.1`; `REDIS_URL` wins."),
    port: z.coerce
      .number()
      .int()
      .min(1)
      .max(65_535)
      .optional()
      .describe("Redis port. Default `6379`."),
    password: z.string().optional().describe("Redis password; use `os.environ/NAME`."),
    username: z.string().optional().describe("Redis ACL user name."),
    db: z.coerce
      .number()
      .int()
      .min(0)
      .max(15)
      .optional()
      .describe(
        "Redis database index. Default `0`. Start-up checks that the server has it (a `REDIS_URL` may name a higher one, if the server's `databases` allows).",
      ),
    ssl: z.boolean().optional().describe("TLS to Redis (as a `rediss://` URL does)."),
    url: z
      .string()
      .optional()
      .describe("A `redis://` or `rediss://` URL instead of host and port."),
    max_connections: z
      .number()
      .int()
      .positive()
      .optional()
      .describe(
        "Accepted for LiteLLM compatibility and ignored: ioredis multiplexes every command of a client over one connection, and a process opens a fixed few (a gateway one, a worker three), so there is no pool to size.",
      ),
    supported_call_types: z
      .array(z.string())
      .optional()
      .describe("LiteLLM's response-cache setting; no effect on spend."),
    cluster_nodes: z
      .array(z.string().regex(/^[^\s:]+:\d{1,5}$/, "must be host:port"))
      .min(1)
      .optional()
      .describe(
        "Redis Cluster seed nodes, `host:port` (the rest are discovered); `REDIS_CLUSTER_NODES` (comma-separated) wins. Start-up checks each answering seed is a cluster node with `cluster_state:ok`.",
      ),
  })
  .strict();

const spendBufferSchema = z
  .object({
    key_prefix: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,64}$/)
      .default("haimaker")
      .describe(
        "Prefix of every Redis key and BullMQ queue: deployments sharing one Redis never mix their buffers.",
      ),
    flush_jitter_seconds: z
      .number()
      .min(0)
      .max(3_600)
      .default(0.25)
      .describe(
        "Each seal interval is shortened by up to this much at random (at most half of it), so gateways started together do not seal in lockstep; never lengthened, so `proxy_batch_write_at` stays the bound on what a crash loses.",
      ),
    max_buffered_rows: z
      .number()
      .int()
      .min(100)
      .default(200_000)
      .describe(
        "A gateway's memory bound, in distinct rows held: entity rows and daily facts (one per distinct user, team, org, end user and tags of a request context), aggregated, or sealed and not yet delivered. At the bound, events that would add rows are refused (`BufferFullError`, 503) instead of growing the heap. It is also what one seal may drain; a seal drains in slices of a few hundred rows across turns of the event loop, so requests are served meanwhile (`spend_producer_seal_duration_seconds`).",
      ),
    max_rows_per_job: z
      .number()
      .int()
      .min(1)
      .max(100_000)
      .default(2_000)
      .describe(
        "Most rows in one BullMQ job, so one job stays small in Redis. A job also closes at 100,000 bytes of text, whichever comes first, so its text (and BullMQ's JSON of it) stays under V8's 128 KB large-object threshold whatever the ids' length: such strings take fresh pages, and a 200,000-row seal cost the gateway's main thread 41-43 ms of CPU at 2,000 rows against 62 ms at 5,000.",
      ),
    job_format: z
      .union([z.literal(1), z.literal(2), z.literal(3), z.literal(4)])
      .optional()
      .describe(
        "How producers write spend jobs (default `4`): `4` sends daily spend as facts, one per distinct user, team, org, end user and tags of a request context, which the worker fans out to the daily rows they add to (a gateway aggregates, seals and sends one fact where it handled 3-5 daily rows), written as one length-prefixed string per job like `3`. `3` sends daily rows that way; `2` writes daily jobs as JSON grouped by context and entity jobs as JSON rows, `1` both as JSON rows. Entity jobs are the same in `3` and `4`. Workers of this version read all four; upgrade workers first, or set `3` while gateways are upgraded before workers that predate format 4.",
      ),
    daily_job_format: z
      .union([z.literal(1), z.literal(2)])
      .optional()
      .describe(
        "Deprecated: the name `job_format` had before format 3. Read only when `job_format` is not set.",
      ),
    backpressure_backlog_age_seconds: z
      .number()
      .min(0)
      .max(86_400)
      .default(0)
      .describe(
        "Back-pressure: while the oldest spend job not yet committed is older than this, or the rows all gateways hold would take the flush longer than half a seal interval, gateways admit requests at their share of the flush rate, falling in proportion as the flush falls further behind to a floor of a quarter of it, and answer the others 503 (with `Retry-After`); at five times these limits, with no worker having committed a sizeable transaction in the last 10 s, they admit none. `0`: off, and the backlog may grow without bound.",
      ),
    worker_flush_every_seconds: positiveSeconds
      .default(5)
      .describe("How often each partition's flush job is scheduled."),
    lock_lease_seconds: positiveSeconds
      // Renewed every third of it: under a second, a scheduling hiccup loses
      // it (0.01 s was accepted, and no flush ever committed).
      .min(1)
      .default(5)
      .describe(
        "The flush lock's lease (renewed every third of it while a flush runs) and the BullMQ job lock of taken jobs. When a worker dies mid-flush, the next flush of its partition can start once this has run out, and gives back at once the jobs the dead one had taken. Shorter: faster recovery; longer: a worker may stall (GC, CPU starvation, Redis unreachable) that long without losing the lock. Safe either way: a holder that resumes after its lease lapsed is fenced off by PostgreSQL.",
      ),
    leader_lease_seconds: positiveSeconds
      .min(1)
      .default(3)
      .describe(
        "The flush leadership lease: one worker replica leads (takes the flush jobs, `litellm_pod_lock_manager_size` 1) and renews it every second; when it dies, another takes over once this has run out, and flushes at once. Shorter: faster takeover; longer: a leader may stall that long without losing it.",
      ),
    max_jobs_per_flush: z
      .number()
      .int()
      .min(1)
      .max(100_000)
      .default(1_000)
      .describe("Most spend jobs one flush transaction applies."),
    max_rows_per_transaction: z
      .number()
      .int()
      .min(1)
      .max(10_000_000)
      .default(20_000)
      .describe(
        "Most rows one flush transaction writes, merged (one per database row): jobs are taken, and merged as they arrive, until their rows reach this (at least one job), so a transaction's size, duration and row locks stay bounded whatever the job sizes, while the same keys sent by many gateways merge into one write. The jobs of one transaction hold at most four times this many rows as sealed. Also what gateways may hold before any flush rate is known (back-pressure).",
      ),
    max_flush_seconds: positiveSeconds
      .default(60)
      .describe(
        "How long one flush keeps draining, transaction after transaction, before leaving the rest to the next tick.",
      ),
    applied_batch_retention_days: z
      .number()
      .int()
      .min(1)
      .max(3_650)
      .default(14)
      .describe(
        "How long applied batch ids are kept (`spend_applied_batch`) to recognise a batch delivered again.",
      ),
    transaction_timeout_seconds: positiveSeconds
      .default(120)
      .describe(
        "Longest one flush transaction may take before PostgreSQL work is abandoned; also each of its statements' `statement_timeout`.",
      ),
    lock_timeout_seconds: positiveSeconds
      .max(3_600)
      .default(10)
      .describe(
        'Longest a flush statement waits for a row lock another session holds (PostgreSQL\'s `lock_timeout`): past it the transaction rolls back and is retried, and the flush warns and counts it (`spend_transaction_retries_total{reason="lock"}`), so a row held elsewhere (an open transaction in psql, another writer) shows instead of stalling the flush silently for as long as it is held.',
      ),
    metrics_port: z
      .number()
      .int()
      .min(0)
      .max(65_535)
      .default(9464)
      .describe(
        "The worker's HTTP port: `/metrics`, `/health/*`, Bull Board (`/admin/queues`). `METRICS_PORT` wins.",
      ),
    flush_partitions: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(1)
      .describe(
        "Flush partitions, each with its own queues, lock and fence: rows are routed by a stable hash (entity rows by their identity, daily rows by their request context), so a producer's partitions write disjoint rows. Gateways and workers must agree: the count is recorded in Redis and only a worker may switch it (drained, no other worker on the old count).",
      ),
    worker_concurrency: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(1)
      .describe(
        "Flushes the leading worker replica runs at once (of different partitions). With `flush_partitions` above 1, set it to the partition count to flush them in parallel.",
      ),
    log_level: z
      .enum(LOG_LEVELS)
      .optional()
      .describe("pino log level. Default `info`; `LOG_LEVEL` wins."),
    gateway_port: z
      .number()
      .int()
      .min(0)
      .max(65_535)
      .default(4000)
      .describe("The gateway's HTTP port (chat completions, ingest, keys, health, metrics)."),
    model_prices: z
      .record(z.string().min(1).max(256), modelPriceSchema)
      .default({})
      .describe(
        'Per model, USD per input and output token as quoted decimal strings with at most 12 decimals: `{ "<model>": { input_cost_per_token: "0.0000025", output_cost_per_token: "0.00001" } }`. A YAML number is refused (already a binary float); model names follow the id rules.',
      ),
    budget_refresh_seconds: z
      .number()
      .min(0.05)
      .max(60)
      .default(0.25)
      .describe(
        "How often a gateway reloads changed budgets from PostgreSQL, notices a period's end, and renews half-spent budget leases.",
      ),
    budget_alert_thresholds: z
      .array(z.number().positive().max(10))
      .max(10)
      .default([0.8, 1])
      .describe(
        "Shares of max_budget whose crossing raises an alert (logged, counted, and sent to budget_webhook_url), once per entity and period across all gateways; soft_budget, where set, is one more.",
      ),
    budget_webhook_url: z
      .url({ protocol: /^https?$/ })
      .optional()
      .describe(
        "Where budget alerts are POSTed as JSON (retried with backoff; the payload's `id` is the same for every attempt). Use `os.environ/NAME` if it holds a token.",
      ),
    budget_lease_fraction: z
      .number()
      .positive()
      .max(1)
      .default(0.01)
      .describe(
        "Each budget lease a gateway takes from Redis is this fraction of the budget (at most what remains). Smaller: less held unspent by each gateway (a crashed gateway's lease is lost to the period), more Redis calls.",
      ),
    key_cache_ttl_seconds: z
      .number()
      .min(0)
      .max(86_400)
      .default(60)
      .describe("How long a gateway caches a virtual key it looked up in PostgreSQL."),
    key_cache_max_entries: z
      .number()
      .int()
      .min(1)
      .max(10_000_000)
      .default(10_000)
      .describe(
        "Most virtual keys cached in one gateway (unknown keys have a bounded cache of their own of the same size).",
      ),
    key_sync_seconds: z
      .number()
      .min(0.1)
      .max(60)
      .default(1)
      .describe(
        "Bound on how long a gateway keeps acting on a key changed through the admin routes (blocked, unblocked, updated, deleted): changes are announced on a Redis stream every gateway reads every quarter of this; a gateway that has not read it for this long re-reads a cached key from PostgreSQL when its entry is older than this.",
      ),
    key_metadata_max_bytes: z
      .number()
      .int()
      .min(2)
      .max(1024 * 1024)
      .default(16 * 1024)
      .describe(
        "Largest `metadata` object a virtual key may carry, in bytes of its JSON (400 beyond).",
      ),
    ingest_idempotency_ttl_hours: z
      .number()
      .positive()
      .max(24 * 14)
      .default(24)
      .describe(
        "How long `POST /spend/events` remembers an `Idempotency-Key`: a batch sent again with the same key within it is applied once. At most `applied_batch_retention_days`.",
      ),
    ingest_idempotency_lease_seconds: z
      .number()
      .min(0.1)
      .max(600)
      .default(10)
      .describe(
        "How long an attempt of `POST /spend/events` holds its `Idempotency-Key` before another attempt may resume it (a gateway that died mid-request): meanwhile retries are told 409 with `Retry-After`. Longer than a send to Redis may take.",
      ),
    ingest_max_events: z
      .number()
      .int()
      .min(1)
      .max(100_000)
      .default(1_000)
      .describe("Most events in one `POST /spend/events` (413 beyond)."),
    max_request_body_bytes: z
      .number()
      .int()
      .min(1_024)
      .max(64 * 1024 * 1024)
      .default(1024 * 1024)
      .describe("Largest JSON body the gateway reads, in bytes (413 beyond)."),
    admin_auth: z
      .boolean()
      .default(true)
      .describe("Bull Board needs credentials; only `false` opens it to anyone who reaches it."),
    admin_username: z
      .string()
      .min(1)
      .optional()
      .describe("Basic auth user for Bull Board (with `admin_password`)."),
    admin_password: z
      .string()
      .min(1)
      .optional()
      .describe("Basic auth password for Bull Board; use `os.environ/NAME`."),
    admin_token: z
      .string()
      .min(16, "must be at least 16 characters")
      .optional()
      .describe("A bearer token for Bull Board, at least 16 characters; use `os.environ/NAME`."),
    bull_board_read_only: z
      .boolean()
      .default(true)
      .describe("Bull Board shows queues without retry, clean or remove buttons unless `false`."),
    max_spend_usd_per_event: z
      .number()
      .positive()
      .max(MAX_EVENT_USD)
      .default(1_000)
      .describe(
        `Largest cost one event may carry, USD (at most ${MAX_EVENT_USD}); more is refused as \`invalid_spend\`.`,
      ),
    max_tokens_per_event: z
      .number()
      .int()
      .positive()
      .max(1_000_000_000)
      .default(100_000_000)
      .describe("Largest count in any one token field of an event."),
    max_event_age_hours: z
      .number()
      .positive()
      .max(24 * 366)
      .default(7 * 24)
      .describe("Oldest request start accepted: late events still land on their own day."),
    max_tags_per_event: z
      .number()
      .int()
      .min(0)
      .max(1_000)
      .default(32)
      .describe("Most tags one event may carry (each gets the request's full cost)."),
    max_event_future_minutes: z
      .number()
      .min(0)
      .max(24 * 60)
      .default(60)
      .describe(
        "How far ahead of the receiving host's clock a request start may be (clock skew between hosts).",
      ),
  })
  .strict();

export const CONFIG_FILE_SCHEMA = z
  .object({
    general_settings: z
      .object({
        use_redis_transaction_buffer: z
          .boolean()
          .default(false)
          .describe(
            "Buffer spend in Redis (BullMQ) and let flush workers write it; `false`: each gateway writes its aggregates to PostgreSQL itself. A file that sets `true` must configure Redis. Without any file, `true` against local Redis.",
          ),
        proxy_batch_write_at: positiveSeconds
          .default(1)
          .describe(
            "Most seconds between a gateway's writes of its aggregates (LiteLLM's name): what a gateway killed without warning (SIGKILL, OOM) loses, since its unsent aggregate is only in memory. LiteLLM defaults to 10.",
          ),
        database_url: z
          .string()
          .optional()
          .describe(
            "PostgreSQL, as a `postgresql://` URL (`DATABASE_URL` wins). Default `postgresql://postgres@127.0.0.1:5432/test`.",
          ),
        master_key: z
          .string()
          .min(8, "must be at least 8 characters")
          .optional()
          .describe(
            "The gateway's admin secret (LiteLLM's name): `/spend/events`, the `/key/...` routes, `/spend/live`, and Bull Board's bearer token. Use `os.environ/NAME`.",
          ),
      })
      .strict()
      .default({ use_redis_transaction_buffer: false, proxy_batch_write_at: 1 }),
    litellm_settings: z
      .object({
        cache: z
          .boolean()
          .default(false)
          .describe("LiteLLM's response cache switch; no effect on spend."),
        cache_params: cacheParamsSchema.optional().describe("Where Redis is (LiteLLM's names)."),
      })
      .strict()
      .optional(),
    model_list: z
      .array(deploymentSchema)
      .optional()
      .describe(
        "LiteLLM's model list: the models the gateway forwards to OpenAI-compatible upstreams, each priced (`model_info` or `litellm_params`: `input_cost_per_token`, `output_cost_per_token`, quoted decimals). Several entries with one `model_name` share its requests in turn.",
      ),
    spend_buffer_settings: spendBufferSchema.default(spendBufferSchema.parse({})),
  })
  .strict();

/** What one spend event may carry (spend_buffer_settings.max_*_per_event and friends). */
export interface ValidationLimits {
  /** Largest cost accepted for one request, in USD. */
  maxSpendUsd: number;
  /** Largest token count accepted in any one token field. */
  maxTokens: number;
  /** Longest id, tag or dimension, in UTF-16 code units (contract/ids.ts). */
  maxIdLength: number;
  maxTags: number;
  /** How old a request start may be: late events still land on their own day. */
  maxAgeMs: number;
  /** How far in the future a request start may be (clock skew between hosts). */
  maxFutureMs: number;
}

export interface RedisConfig {
  host: string;
  port: number;
  username?: string;
  password?: string;
  db: number;
  tls: boolean;
  /** Redis Cluster seed nodes; when set, host/port/db are not used. */
  cluster?: readonly { host: string; port: number }[];
  /** Where `cluster` came from, for messages: REDIS_CLUSTER_NODES or the file's key. */
  clusterSetting?: string;
}

export interface AppConfig {
  /** Buffer spend in Redis (true) or write each producer's aggregates straight to PostgreSQL. */
  useRedisBuffer: boolean;
  databaseUrl: string;
  redis: RedisConfig;
  keyPrefix: string;
  producer: {
    flushIntervalMs: number;
    flushJitterMs: number;
    maxBufferedRows: number;
    maxRowsPerJob: number;
    /** How QueueSink writes jobs: 3 row text, 2 daily rows grouped by context, 1 the first format. */
    jobFormat: 1 | 2 | 3 | 4;
    /** 0: off. */
    backpressureBacklogAgeMs: number;
  };
  worker: {
    flushEveryMs: number;
    lockLeaseMs: number;
    /** The flush leadership lease (FlushLeadership). */
    leaderLeaseMs: number;
    maxJobsPerFlush: number;
    maxRowsPerTransaction: number;
    maxFlushMs: number;
    appliedBatchRetentionDays: number;
    transactionTimeoutMs: number;
    /** A flush statement's PostgreSQL lock_timeout. */
    lockTimeoutMs: number;
    /** Flushes one replica runs at once (of different partitions). */
    concurrency: number;
  };
  /** Flush partitions: producers and workers must agree (recorded in Redis). */
  partitions: number;
  /** pino level; LOG_LEVEL wins. */
  logLevel: LogLevel;
  limits: ValidationLimits;
  /** The worker's HTTP port: METRICS_PORT, else spend_buffer_settings.metrics_port. */
  metricsPort: number;
  /** general_settings.master_key, resolved; undefined when not set. */
  masterKey?: string;
  /**
   * LiteLLM's settings in the file that this project does not read, set
   * aside unvalidated, as dotted paths (`litellm_settings.drop_params`,
   * `model_list[0].litellm_params.rpm`): each process names them once at start.
   */
  ignoredLiteLLMKeys: readonly string[];
  gateway: GatewayConfig;
  admin: AdminConfig;
}

/** Exact per-token prices, in picodollars. */
export interface ModelPrice {
  inputPicoPerToken: bigint;
  outputPicoPerToken: bigint;
}

/**
 * One way to answer a model name: the built-in mock, or an OpenAI-compatible
 * upstream (model_list). The mock models of model_prices are deployments too.
 */
export interface ModelDeployment {
  /** What clients ask for; the spend's model group. */
  name: string;
  kind: "mock" | "upstream";
  /** Recorded with the spend (LiteLLM's custom_llm_provider). */
  provider: string;
  /** Sent upstream, and recorded as the spend's model. */
  model: string;
  apiBase?: string;
  apiKey?: string;
  timeoutMs: number;
  price: ModelPrice;
  maxInputTokens?: number;
}

export interface GatewayConfig {
  port: number;
  budgetRefreshMs: number;
  budgetLeaseFraction: number;
  budgetAlertThresholds: readonly number[];
  budgetWebhookUrl?: string;
  modelPrices: ReadonlyMap<string, ModelPrice>;
  /** Every model name clients may ask for, with its deployments (one or more, used in turn). */
  models: ReadonlyMap<string, readonly ModelDeployment[]>;
  keyCacheTtlMs: number;
  keyCacheMaxEntries: number;
  /** Bound on acting on a changed key (key_sync_seconds), ms. */
  keySyncMs: number;
  keyMetadataMaxBytes: number;
  ingestIdempotencyTtlMs: number;
  ingestIdempotencyLeaseMs: number;
  ingestMaxEvents: number;
  maxRequestBodyBytes: number;
}

export interface AdminConfig {
  /** False only when the file says admin_auth: false. */
  auth: boolean;
  username?: string;
  password?: string;
  token?: string;
  readOnly: boolean;
}

export const DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test";
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";

const ENV_REF = /^os\.environ\/([A-Za-z_][A-Za-z0-9_]*)$/;

function resolveEnvRefs(value: unknown, env: NodeJS.ProcessEnv, path: string): unknown {
  if (typeof value === "string") {
    const m = ENV_REF.exec(value);
    if (m === null) return value;
    const name = m[1] ?? "";
    const resolved = env[name];
    if (resolved === undefined)
      throw new ConfigError(`${path}: environment variable ${name} is not set`);
    return resolved;
  }
  if (Array.isArray(value)) return value.map((v, i) => resolveEnvRefs(v, env, `${path}[${i}]`));
  if (typeof value === "object" && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = resolveEnvRefs(v, env, path === "" ? k : `${path}.${k}`);
    return out;
  }
  return value;
}

/**
 * A URL whose credentials hold `/`, `?` or `#` unencoded is read by every URL
 * parser with a host taken from inside the password (and part of the password
 * shown as a port or path in later messages): refuse it, saying what to encode.
 */
function checkUnencodedCredentials(name: string, url: string): void {
  const scheme = url.indexOf("://");
  if (scheme === -1) return;
  const rest = url.slice(scheme + 3);
  const at = rest.lastIndexOf("@");
  const authorityEnd = rest.search(/[/?#]/);
  if (at !== -1 && authorityEnd !== -1 && authorityEnd < at)
    throw new ConfigError(
      `${name}: the part before the last "@" holds "/", "?" or "#" (in ${redact(url)}): percent-encode them in the user name and password (%2F, %3F, %23)`,
    );
}

function parseRedisUrl(name: string, url: string): RedisConfig {
  checkUnencodedCredentials(name, url);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ConfigError(`${name} is not a URL: ${redact(url)}`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
    throw new ConfigError(`${name} must start with redis:// or rediss://, got ${u.protocol}//`);
  }
  // The server's `databases` bounds it, checked at start (preflight): here only its form.
  const path = u.pathname === "/" ? "" : u.pathname;
  if (path !== "" && !/^\/\d{1,9}$/.test(path))
    throw new ConfigError(
      `${name} database index must be a non-negative integer, got ${JSON.stringify(path.slice(1))}`,
    );
  let username: string;
  let password: string;
  try {
    username = decodeURIComponent(u.username);
    password = decodeURIComponent(u.password);
  } catch {
    throw new ConfigError(`${name}: the user name or password is not validly percent-encoded`);
  }
  return {
    host: u.hostname,
    port: u.port === "" ? 6379 : Number(u.port),
    ...(username !== "" ? { username } : {}),
    ...(password !== "" ? { password } : {}),
    db: path === "" ? 0 : Number(path.slice(1)),
    tls: u.protocol === "rediss:",
  };
}

/** Digits only: Number() would also take "", " 1", "0x10" and "1e3". */
const PORT_TEXT = /^\d{1,5}$/;

function parsePort(name: string, text: string): number {
  const n = Number(text);
  if (!PORT_TEXT.test(text) || n > 65_535)
    throw new ConfigError(
      `${name} must be a port number from 0 to 65535, got ${JSON.stringify(text)}`,
    );
  return n;
}

function parseDatabaseUrl(name: string, url: string): string {
  // pg reads a libpq key=value string as the name of a database on localhost, then
  // repeats it, password and all, in "database … does not exist".
  if (/^\s*[A-Za-z_]+\s*=/.test(url))
    throw new ConfigError(
      `${name} is a key=value connection string (${redact(url)}); use a postgresql:// URL`,
    );
  // pg takes anything else for a path or a host name ("notaurl" became host "base").
  if (!/^postgres(?:ql)?:\/\//i.test(url.trim()))
    throw new ConfigError(
      // No "scheme://" of its own in the sentence: redact() would read it as the start of a URL.
      `${name} must be a PostgreSQL URL (scheme postgresql or postgres), got ${JSON.stringify(redact(url))}`,
    );
  checkUnencodedCredentials(name, url);
  return url;
}

function formatIssues(err: z.ZodError): string {
  return err.issues
    .map(
      (i) =>
        `${i.path.length > 0 ? i.path.join(".") : "(root)"}: ${i.message}${
          i.code === "unrecognized_keys"
            ? unrecognizedKeyHint(CONFIG_FILE_SCHEMA, i.path, i.keys)
            : ""
        }`,
    )
    .join("; ");
}

/** Builds the configuration from a parsed YAML document (or nothing) and the environment. */
export function buildConfig(doc: unknown, env: NodeJS.ProcessEnv = process.env): AppConfig {
  // Before env references are resolved: a LiteLLM setting this project does
  // not read must not fail the start for a variable only LiteLLM needed.
  const { doc: ours, ignored } = setAsideLiteLLMKeys(doc ?? {}, CONFIG_FILE_SCHEMA);
  const parsed = CONFIG_FILE_SCHEMA.safeParse(resolveEnvRefs(ours, env, ""));
  if (!parsed.success)
    throw new ConfigError(`invalid configuration: ${formatIssues(parsed.error)}`);
  const f = parsed.data;
  const g = f.general_settings;
  const s = f.spend_buffer_settings;
  const cp = f.litellm_settings?.cache_params;

  let redis: RedisConfig;
  if (env.REDIS_URL !== undefined && env.REDIS_URL !== "")
    redis = parseRedisUrl("REDIS_URL", env.REDIS_URL);
  else if (cp?.url !== undefined)
    redis = parseRedisUrl("litellm_settings.cache_params.url", cp.url);
  else {
    redis = {
      host: cp?.host ?? "127.0.0.1",
      port: cp?.port ?? 6379,
      ...(cp?.username !== undefined ? { username: cp.username } : {}),
      ...(cp?.password !== undefined ? { password: cp.password } : {}),
      db: cp?.db ?? 0,
      tls: cp?.ssl ?? false,
    };
  }

  const fromEnv = env.REDIS_CLUSTER_NODES !== undefined && env.REDIS_CLUSTER_NODES !== "";
  const clusterNodes = fromEnv
    ? (env.REDIS_CLUSTER_NODES ?? "").split(",").map((n) => n.trim())
    : cp?.cluster_nodes;
  if (clusterNodes !== undefined) {
    const setting = fromEnv ? "REDIS_CLUSTER_NODES" : "litellm_settings.cache_params.cluster_nodes";
    redis.cluster = clusterNodes.map((n) => {
      const m = /^([^\s:]+):(\d{1,5})$/.exec(n);
      if (m === null || Number(m[2]) > 65_535)
        throw new ConfigError(`${setting}: a node must be host:port, got ${JSON.stringify(n)}`);
      return { host: m[1] ?? "", port: Number(m[2]) };
    });
    redis.clusterSetting = setting;
  }

  let logLevel: LogLevel = s.log_level ?? "info";
  if (env.LOG_LEVEL !== undefined && env.LOG_LEVEL !== "") {
    if (!isLogLevel(env.LOG_LEVEL))
      throw new ConfigError(
        `LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(env.LOG_LEVEL)}`,
      );
    logLevel = env.LOG_LEVEL;
  }
  const metricsPort =
    env.METRICS_PORT !== undefined && env.METRICS_PORT !== ""
      ? parsePort("METRICS_PORT", env.METRICS_PORT)
      : s.metrics_port;
  const databaseUrl =
    env.DATABASE_URL !== undefined && env.DATABASE_URL !== ""
      ? parseDatabaseUrl("DATABASE_URL", env.DATABASE_URL)
      : g.database_url !== undefined && g.database_url !== ""
        ? parseDatabaseUrl("general_settings.database_url", g.database_url)
        : DEFAULT_DATABASE_URL;

  // The reference once accepted the buffer switch with no Redis configured and
  // then silently wrote nothing: a file that asks for the buffer must say where Redis is.
  if (g.use_redis_transaction_buffer && doc !== undefined && cp === undefined && !env.REDIS_URL) {
    throw new ConfigError(
      "general_settings.use_redis_transaction_buffer is true but no Redis is configured: set litellm_settings.cache_params (type: redis) or REDIS_URL",
    );
  }

  if ((s.admin_username === undefined) !== (s.admin_password === undefined)) {
    throw new ConfigError(
      "spend_buffer_settings.admin_username and admin_password must be set together",
    );
  }
  // A takeover re-sends an idempotent batch's ids up to the key's lifetime
  // after the first attempt: PostgreSQL must still know them by then.
  if (s.ingest_idempotency_ttl_hours > s.applied_batch_retention_days * 24) {
    throw new ConfigError(
      `spend_buffer_settings.ingest_idempotency_ttl_hours (${s.ingest_idempotency_ttl_hours}) must not exceed applied_batch_retention_days (${s.applied_batch_retention_days}) in hours`,
    );
  }
  const modelPrices = new Map<string, ModelPrice>();
  for (const [model, p] of Object.entries(s.model_prices)) {
    // A model name is charged to (the daily rows' model and model group): the id rules hold.
    const problem = idProblem(model);
    if (problem !== undefined)
      throw new ConfigError(
        `spend_buffer_settings.model_prices: model name ${JSON.stringify(model)} ${problem.detail}`,
      );
    modelPrices.set(model, {
      inputPicoPerToken: usdStringToPico(p.input_cost_per_token),
      outputPicoPerToken: usdStringToPico(p.output_cost_per_token),
    });
  }

  const models = new Map<string, ModelDeployment[]>();
  for (const [model, price] of modelPrices)
    models.set(model, [
      { name: model, kind: "mock", provider: "mock", model, timeoutMs: 600_000, price },
    ]);
  for (const [i, d] of (f.model_list ?? []).entries()) {
    const where = `model_list[${i}] (${JSON.stringify(d.model_name.slice(0, 100))})`;
    const p = d.litellm_params;
    const info = d.model_info;
    for (const [what, value] of [
      ["model_name", d.model_name],
      ["litellm_params.model", p.model],
    ] as const) {
      const problem = idProblem(value);
      if (problem !== undefined) throw new ConfigError(`${where}: ${what} ${problem.detail}`);
    }
    if (modelPrices.has(d.model_name))
      throw new ConfigError(
        `${where}: model_name is also in spend_buffer_settings.model_prices (a mock model): one name, one model`,
      );
    const input = info?.input_cost_per_token ?? p.input_cost_per_token;
    const output = info?.output_cost_per_token ?? p.output_cost_per_token;
    if (input === undefined || output === undefined)
      throw new ConfigError(
        `${where}: no price: set model_info.input_cost_per_token and output_cost_per_token (quoted decimals): every request is charged exactly`,
      );
    const slash = p.model.indexOf("/");
    const provider = slash > 0 ? p.model.slice(0, slash) : "openai";
    const upstreamModel = slash > 0 ? p.model.slice(slash + 1) : p.model;
    const kind = provider === "mock" ? "mock" : "upstream";
    const apiBase = p.api_base ?? (provider === "openai" ? "https://api.openai.com/v1" : undefined);
    if (kind === "upstream" && apiBase === undefined)
      throw new ConfigError(
        `${where}: litellm_params.api_base is required for provider ${JSON.stringify(provider)} (only openai has a default)`,
      );
    const deployment: ModelDeployment = {
      name: d.model_name,
      kind,
      provider,
      model: upstreamModel,
      ...(kind === "upstream" && apiBase !== undefined
        ? { apiBase: apiBase.replace(/\/+$/, "") }
        : {}),
      ...(p.api_key !== undefined ? { apiKey: p.api_key } : {}),
      timeoutMs: (p.timeout ?? 600) * 1000,
      price: {
        inputPicoPerToken: usdStringToPico(input),
        outputPicoPerToken: usdStringToPico(output),
      },
      ...(info?.max_input_tokens !== undefined ? { maxInputTokens: info.max_input_tokens } : {}),
    };
    const list = models.get(d.model_name) ?? [];
    list.push(deployment);
    models.set(d.model_name, list);
  }

  return {
    useRedisBuffer: g.use_redis_transaction_buffer,
    databaseUrl,
    redis,
    keyPrefix: s.key_prefix,
    producer: {
      flushIntervalMs: g.proxy_batch_write_at * 1000,
      flushJitterMs: s.flush_jitter_seconds * 1000,
      maxBufferedRows: s.max_buffered_rows,
      maxRowsPerJob: s.max_rows_per_job,
      jobFormat: s.job_format ?? s.daily_job_format ?? 4,
      backpressureBacklogAgeMs: s.backpressure_backlog_age_seconds * 1000,
    },
    worker: {
      flushEveryMs: s.worker_flush_every_seconds * 1000,
      lockLeaseMs: s.lock_lease_seconds * 1000,
      leaderLeaseMs: s.leader_lease_seconds * 1000,
      maxJobsPerFlush: s.max_jobs_per_flush,
      maxRowsPerTransaction: s.max_rows_per_transaction,
      maxFlushMs: s.max_flush_seconds * 1000,
      appliedBatchRetentionDays: s.applied_batch_retention_days,
      transactionTimeoutMs: s.transaction_timeout_seconds * 1000,
      lockTimeoutMs: s.lock_timeout_seconds * 1000,
      concurrency: s.worker_concurrency,
    },
    partitions: s.flush_partitions,
    logLevel,
    limits: {
      maxIdLength: MAX_ID_LENGTH,
      maxTags: s.max_tags_per_event,
      maxFutureMs: s.max_event_future_minutes * 60_000,
      maxSpendUsd: s.max_spend_usd_per_event,
      maxTokens: s.max_tokens_per_event,
      maxAgeMs: s.max_event_age_hours * 3_600_000,
    },
    metricsPort,
    ...(g.master_key !== undefined ? { masterKey: g.master_key } : {}),
    ignoredLiteLLMKeys: ignored,
    gateway: {
      port: s.gateway_port,
      budgetRefreshMs: s.budget_refresh_seconds * 1000,
      budgetLeaseFraction: s.budget_lease_fraction,
      budgetAlertThresholds: s.budget_alert_thresholds,
      ...(s.budget_webhook_url !== undefined ? { budgetWebhookUrl: s.budget_webhook_url } : {}),
      modelPrices,
      models,
      keyCacheTtlMs: s.key_cache_ttl_seconds * 1000,
      keyCacheMaxEntries: s.key_cache_max_entries,
      keySyncMs: Math.round(s.key_sync_seconds * 1000),
      keyMetadataMaxBytes: s.key_metadata_max_bytes,
      ingestIdempotencyTtlMs: Math.round(s.ingest_idempotency_ttl_hours * 3_600_000),
      ingestIdempotencyLeaseMs: Math.round(s.ingest_idempotency_lease_seconds * 1000),
      ingestMaxEvents: s.ingest_max_events,
      maxRequestBodyBytes: s.max_request_body_bytes,
    },
    admin: {
      auth: s.admin_auth,
      ...(s.admin_username !== undefined ? { username: s.admin_username } : {}),
      ...(s.admin_password !== undefined ? { password: s.admin_password } : {}),
      ...(s.admin_token !== undefined ? { token: s.admin_token } : {}),
      readOnly: s.bull_board_read_only,
    },
  };
}

/**
 * Loads `path` (YAML) or, with no path, a configuration that needs no file:
 * the buffer on, local Redis and PostgreSQL on their standard ports.
 */
export function loadConfig(path?: string, env: NodeJS.ProcessEnv = process.env): AppConfig {
  if (path === undefined) {
    return buildConfig(
      {
        general_settings: { use_redis_transaction_buffer: true },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
      },
      env,
    );
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  return buildConfig(doc ?? {}, env);
}

/**
 * Every setting at its default: the one source of defaults. Library classes
 * that take an option fall back to these, so a default is written once, in
 * the schema above.
 */
export const DEFAULT_CONFIG: AppConfig = buildConfig({}, {});

/** The defaults' limits on one spend event. */
export const DEFAULT_LIMITS: ValidationLimits = DEFAULT_CONFIG.limits;

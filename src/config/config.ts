import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { idProblem } from "../contract/ids.js";
import { MAX_EVENT_USD, usdStringToPico } from "../contract/money.js";
import { MAX_ID_LENGTH } from "../contract/ids.js";
import { redact } from "./redact.js";

export { redact };

/**
 * The one place configuration is read, typed and validated. The seed's
 * proxy_config.yaml works as written; everything this project adds lives in
 * `spend_buffer_settings`. Strings of the form `os.environ/NAME` are replaced
 * by that environment variable (LiteLLM's convention, so secrets stay out of
 * the file), and REDIS_URL / DATABASE_URL / REDIS_CLUSTER_NODES / LOG_LEVEL /
 * METRICS_PORT override the file.
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
    input_cost_per_token: pricePerToken,
    output_cost_per_token: pricePerToken,
  })
  .strict();

const cacheParamsSchema = z
  .object({
    type: z.literal("redis"),
    host: z.string().min(1).optional(),
    port: z.coerce.number().int().min(1).max(65_535).optional(),
    password: z.string().optional(),
    username: z.string().optional(),
    db: z.coerce.number().int().min(0).max(15).optional(),
    ssl: z.boolean().optional(),
    url: z.string().optional(),
    /** Accepted for LiteLLM compatibility: ioredis multiplexes one connection per client, see README. */
    max_connections: z.number().int().positive().optional(),
    /** LiteLLM's response-cache setting; irrelevant to the spend buffer. */
    supported_call_types: z.array(z.string()).optional(),
    /** Redis Cluster: seed nodes as "host:port" (the rest are discovered). */
    cluster_nodes: z
      .array(z.string().regex(/^[^\s:]+:\d{1,5}$/, "must be host:port"))
      .min(1)
      .optional(),
  })
  .strict();

const spendBufferSchema = z
  .object({
    key_prefix: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,64}$/)
      .default("haimaker"),
    // Each seal interval is shortened by up to this much at random (at most half of it), so
    // gateways started together do not seal in lockstep; never lengthened (see proxy_batch_write_at).
    flush_jitter_seconds: z.number().min(0).max(3_600).default(0.25),
    max_buffered_rows: z.number().int().min(100).default(200_000),
    max_rows_per_job: z.number().int().min(1).max(100_000).default(5_000),
    // 2: daily rows grouped by context (~half the bytes in Redis). 1: the first format, for
    // gateways upgraded before their flush workers (workers read both).
    daily_job_format: z.union([z.literal(1), z.literal(2)]).default(2),
    // Back-pressure: gateways answer 503 while the oldest spend job not yet committed is older
    // than this (the flush is that far behind). 0: off, the backlog may grow without bound.
    backpressure_backlog_age_seconds: z.number().min(0).max(86_400).default(0),
    worker_flush_every_seconds: positiveSeconds.default(5),
    lock_lease_seconds: positiveSeconds.default(30),
    max_jobs_per_flush: z.number().int().min(1).max(100_000).default(1_000),
    // Jobs are taken until their rows reach this (at least one job): a transaction's size,
    // and so its duration and the row locks it holds, stays bounded whatever the job sizes.
    max_rows_per_transaction: z.number().int().min(1).max(10_000_000).default(20_000),
    max_flush_seconds: positiveSeconds.default(60),
    applied_batch_retention_days: z.number().int().min(1).max(3_650).default(14),
    transaction_timeout_seconds: positiveSeconds.default(120),
    metrics_port: z.number().int().min(0).max(65_535).default(9464),
    flush_partitions: z.number().int().min(1).max(64).default(1),
    worker_concurrency: z.number().int().min(1).max(64).default(1),
    log_level: z.enum(LOG_LEVELS).optional(),
    /** The gateway's HTTP port (chat completions, ingest, health, metrics). */
    gateway_port: z.number().int().min(0).max(65_535).default(4000),
    /** Per model: USD per input and output token, exact decimal strings. */
    model_prices: z.record(z.string().min(1).max(256), modelPriceSchema).default({}),
    /** How long a virtual key looked up in PostgreSQL stays cached in a gateway. */
    key_cache_ttl_seconds: z.number().min(0).max(86_400).default(60),
    /** Most virtual keys cached in one gateway. */
    key_cache_max_entries: z.number().int().min(1).max(10_000_000).default(10_000),
    /** Most events in one POST /spend/events; more is refused with 413. */
    ingest_max_events: z.number().int().min(1).max(100_000).default(1_000),
    /** Largest JSON body the gateway reads, in bytes; more is refused with 413. */
    max_request_body_bytes: z
      .number()
      .int()
      .min(1_024)
      .max(64 * 1024 * 1024)
      .default(1024 * 1024),
    /** Bull Board (/admin/queues on the worker) and other admin pages need credentials unless false. */
    admin_auth: z.boolean().default(true),
    admin_username: z.string().min(1).optional(),
    admin_password: z.string().min(1).optional(),
    admin_token: z.string().min(16, "must be at least 16 characters").optional(),
    /** Bull Board shows queues without retry/clean/remove buttons unless false. */
    bull_board_read_only: z.boolean().default(true),
    max_spend_usd_per_event: z.number().positive().max(MAX_EVENT_USD).default(1_000),
    max_tokens_per_event: z.number().int().positive().max(1_000_000_000).default(100_000_000),
    max_event_age_hours: z
      .number()
      .positive()
      .max(24 * 366)
      .default(7 * 24),
    /** Most tags one event may carry (each gets the request's full cost). */
    max_tags_per_event: z.number().int().min(0).max(1_000).default(32),
    /** How far ahead of this host's clock an event's start may be (clock skew between hosts). */
    max_event_future_minutes: z
      .number()
      .min(0)
      .max(24 * 60)
      .default(60),
  })
  .strict();

const fileSchema = z
  .object({
    general_settings: z
      .object({
        use_redis_transaction_buffer: z.boolean().default(false),
        /** Seconds between a producer's writes of its aggregates (LiteLLM's name). */
        /**
         * Most seconds between a producer's writes of its aggregates (LiteLLM's name). What a
         * gateway killed without warning (SIGKILL, OOM) loses: its unsent aggregate is only in
         * memory. LiteLLM defaults to 10; 1 bounds that loss to a second of traffic.
         */
        proxy_batch_write_at: positiveSeconds.default(1),
        database_url: z.string().optional(),
        /** Admin secret of the gateway (LiteLLM's name): key management and batch ingest. */
        master_key: z.string().min(8, "must be at least 8 characters").optional(),
      })
      .strict()
      .default({ use_redis_transaction_buffer: false, proxy_batch_write_at: 1 }),
    litellm_settings: z
      .object({
        cache: z.boolean().default(false),
        cache_params: cacheParamsSchema.optional(),
      })
      .strict()
      .optional(),
    // A LiteLLM config carries its model list; this project does not read it.
    model_list: z.array(z.unknown()).optional(),
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
    /** How QueueSink writes daily jobs: 2 grouped by context, 1 the first format. */
    dailyJobFormat: 1 | 2;
    /** 0: off. */
    backpressureBacklogAgeMs: number;
  };
  worker: {
    flushEveryMs: number;
    lockLeaseMs: number;
    maxJobsPerFlush: number;
    maxRowsPerTransaction: number;
    maxFlushMs: number;
    appliedBatchRetentionDays: number;
    transactionTimeoutMs: number;
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
  gateway: GatewayConfig;
  admin: AdminConfig;
}

/** Exact per-token prices, in picodollars. */
export interface ModelPrice {
  inputPicoPerToken: bigint;
  outputPicoPerToken: bigint;
}

export interface GatewayConfig {
  port: number;
  modelPrices: ReadonlyMap<string, ModelPrice>;
  keyCacheTtlMs: number;
  keyCacheMaxEntries: number;
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
  checkUnencodedCredentials(name, url);
  return url;
}

function formatIssues(err: z.ZodError): string {
  return err.issues
    .map((i) => `${i.path.length > 0 ? i.path.join(".") : "(root)"}: ${i.message}`)
    .join("; ");
}

/** Builds the configuration from a parsed YAML document (or nothing) and the environment. */
export function buildConfig(doc: unknown, env: NodeJS.ProcessEnv = process.env): AppConfig {
  const parsed = fileSchema.safeParse(resolveEnvRefs(doc ?? {}, env, ""));
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
      dailyJobFormat: s.daily_job_format,
      backpressureBacklogAgeMs: s.backpressure_backlog_age_seconds * 1000,
    },
    worker: {
      flushEveryMs: s.worker_flush_every_seconds * 1000,
      lockLeaseMs: s.lock_lease_seconds * 1000,
      maxJobsPerFlush: s.max_jobs_per_flush,
      maxRowsPerTransaction: s.max_rows_per_transaction,
      maxFlushMs: s.max_flush_seconds * 1000,
      appliedBatchRetentionDays: s.applied_batch_retention_days,
      transactionTimeoutMs: s.transaction_timeout_seconds * 1000,
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
    gateway: {
      port: s.gateway_port,
      modelPrices,
      keyCacheTtlMs: s.key_cache_ttl_seconds * 1000,
      keyCacheMaxEntries: s.key_cache_max_entries,
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

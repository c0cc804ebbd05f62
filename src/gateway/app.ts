import { randomUUID } from "node:crypto";
import express, {
  type ErrorRequestHandler,
  type Express,
  type Request,
  type RequestHandler,
  type Response,
} from "express";
import type { AppConfig } from "../config/config.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import { producerMetrics } from "../produce/producer-metrics.js";
import { gatewayMetrics } from "./gateway-metrics.js";
import { idProblem } from "../contract/ids.js";
import { BatchRefusedError, BufferFullError, type SpendProducer } from "../produce/producer.js";
import {
  SpendEventError,
  checkEndUserAndTags,
  dailyContextBytes,
  maxSpendPico,
  validateSpendEvent,
  type ChargedContext,
  type SpendEvent,
} from "../produce/spend-event.js";
import type { Db } from "../persist/prisma.js";
import { liveSpend } from "./live-spend.js";
import { picoToDecimal } from "../contract/money.js";
import { ENTITY_KINDS, type EntityKind } from "../contract/spend-batch.js";
import type { SpendQueues } from "../queue/spend-queues.js";
import { bearerToken, secretEquals } from "../serve/admin-auth.js";
import { createApp } from "../serve/http.js";
import { readinessHandler, type Check } from "../serve/readiness.js";
import { runMockModel, type ChatMessage } from "./mock-model.js";
import { PriceTable } from "./pricing.js";
import {
  createKey,
  KeyInputError,
  KeyLookupThrottledError,
  keyResponse,
  type KeyCache,
  type KeyInfo,
} from "./virtual-keys.js";

export interface GatewayDeps {
  config: AppConfig;
  producer: SpendProducer;
  keys: KeyCache;
  db: Db;
  metrics: SpendMetrics;
  logger: Logger;
  /** Dependencies /health/readiness checks (PostgreSQL always, Redis with the buffer on). */
  checks: Record<string, Check>;
  /** True once shutdown began: readiness answers 503. */
  draining: () => boolean;

  /** The spend queues (one set per partition), for live spend; empty with the buffer off. */
  queues?: readonly SpendQueues[];
}

export const CHAT_ENDPOINT = "/v1/chat/completions";
export const MOCK_PROVIDER = "mock";

/**
 * An error in the OpenAI shape every OpenAI client can read. Every 503 says
 * when to come back (Retry-After): each is a state that passes (back-pressure,
 * a full buffer, a dependency away), and a client without the header retries
 * at once or gives up.
 */
function sendError(
  res: Response,
  status: number,
  type: string,
  message: string,
  extra: Record<string, unknown> = {},
): void {
  if (status === 503 && !res.hasHeader("retry-after")) res.set("retry-after", "1");
  res
    .status(status)
    .json({ error: { message, type, param: null, code: String(status) }, ...extra });
}

/** Back-pressure (backpressure_backlog_age_seconds): a 503 every OpenAI client retries. */
function sendBacklogged(res: Response): void {
  sendError(
    res,
    503,
    "service_unavailable",
    "spend accounting is behind (flush backlog past backpressure_backlog_age_seconds): retry shortly",
  );
}

/** A request whose spend could not be recorded as sent (an id the rows cannot hold, ...). */
function sendUnaccountable(res: Response, err: SpendEventError): void {
  sendError(res, 400, "invalid_request_error", `cannot account this request: ${err.message}`);
}

class BadRequest extends Error {}

function str(v: unknown, name: string, opts: { optional?: boolean } = {}): string | undefined {
  if (v === undefined || v === null) {
    if (opts.optional === true) return undefined;
    throw new BadRequest(`${name} is required`);
  }
  if (typeof v !== "string") throw new BadRequest(`${name} must be a string`);
  return v;
}

/** OpenAI message content: a string, or an array of parts of which text parts count. */
function contentText(v: unknown, i: number): string {
  if (typeof v === "string") return v;
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) {
    const parts: string[] = [];
    for (const p of v as unknown[]) {
      if (typeof p === "object" && p !== null && (p as { type?: unknown }).type === "text") {
        const text = (p as { text?: unknown }).text;
        if (typeof text !== "string")
          throw new BadRequest(`messages[${i}].content: a text part needs a string "text"`);
        parts.push(text);
      }
    }
    return parts.join(" ");
  }
  throw new BadRequest(`messages[${i}].content must be a string or an array of parts`);
}

interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  user?: string;
  tags?: string[];
  maxTokens?: number;
}

function parseChatRequest(body: unknown): ChatRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new BadRequest("the body must be a JSON object");
  const b = body as Record<string, unknown>;
  const model = str(b.model, "model") ?? "";
  if (model === "") throw new BadRequest("model must not be empty");
  if (!Array.isArray(b.messages) || b.messages.length === 0)
    throw new BadRequest("messages must be a non-empty array");
  const messages = (b.messages as unknown[]).map((m, i): ChatMessage => {
    if (typeof m !== "object" || m === null)
      throw new BadRequest(`messages[${i}] must be an object`);
    const role = str((m as { role?: unknown }).role, `messages[${i}].role`) ?? "";
    return { role, content: contentText((m as { content?: unknown }).content, i) };
  });
  if (b.stream === true)
    throw new BadRequest("stream: true is not supported by the built-in mock model");
  const user = str(b.user, "user", { optional: true });
  let tags: string[] | undefined;
  if (b.metadata !== undefined && b.metadata !== null) {
    if (typeof b.metadata !== "object" || Array.isArray(b.metadata))
      throw new BadRequest("metadata must be an object");
    const t = (b.metadata as { tags?: unknown }).tags;
    if (t !== undefined && t !== null) {
      if (!Array.isArray(t) || !t.every((x) => typeof x === "string"))
        throw new BadRequest("metadata.tags must be an array of strings");
      tags = t;
    }
  }
  let maxTokens: number | undefined;
  const mt = b.max_tokens ?? b.max_completion_tokens;
  if (mt !== undefined && mt !== null) {
    if (typeof mt !== "number" || !Number.isInteger(mt) || mt < 1)
      throw new BadRequest("max_tokens must be a positive integer");
    maxTokens = mt;
  }
  return {
    model,
    messages,
    ...(user !== undefined && user !== "" ? { user } : {}),
    ...(tags !== undefined ? { tags } : {}),
    ...(maxTokens !== undefined ? { maxTokens } : {}),
  };
}

/**
 * The gateway's HTTP surface: OpenAI-compatible chat completions answered by
 * the mock model and charged to the caller's virtual key, batch ingest for
 * gateways written in other languages, key management, health and metrics.
 * Every request that reaches the model is recorded through the producer,
 * successful or failed.
 */
export function createGatewayApp(deps: GatewayDeps): Express {
  const { config, producer, keys, db, metrics, logger } = deps;
  const prices = new PriceTable(config.gateway.modelPrices);
  // The producer's limits on what the model and the price table make (see chat).
  const spendLimitPico = BigInt(maxSpendPico(config.limits));
  const maxTokens = config.limits.maxTokens;
  // Per priced model: the UTF-8 bytes its requests' daily rows share in their
  // key besides the api key (model, model group, provider, endpoint, date).
  const modelContextBytes = new Map<string, number>();
  for (const model of config.gateway.modelPrices.keys())
    modelContextBytes.set(
      model,
      dailyContextBytes("", model, model, MOCK_PROVIDER, "", CHAT_ENDPOINT),
    );
  /** A validation's error, counted: why the producer would refuse the spend. */
  const refusal = (err: unknown): SpendEventError => {
    if (!(err instanceof SpendEventError)) throw err;
    eventsRejected.inc({ reason: err.reason });
    return err;
  };
  // Whether a key's owners (rows PostgreSQL holds, possibly written by other
  // tooling) can be charged, decided once per key looked up: a request is
  // served only if everything it will be charged to can be recorded.
  const owners = new WeakMap<KeyInfo, { charged: ChargedContext; problem?: SpendEventError }>();
  const ownersOf = (key: KeyInfo): { charged: ChargedContext; problem?: SpendEventError } => {
    let o = owners.get(key);
    if (o === undefined) {
      const charged: ChargedContext = {
        contextBytes: dailyContextBytes(key.token, "", "", "", "", ""),
        userId: key.userId ?? "",
        teamId: key.teamId ?? "",
        organizationId: key.organizationId ?? "",
      };
      o = { charged };
      try {
        validateSpendEvent(
          {
            spend: 0,
            apiKey: key.token,
            userId: key.userId ?? null,
            teamId: key.teamId ?? null,
            organizationId: key.organizationId ?? null,
          },
          config.limits,
        );
      } catch (err) {
        if (!(err instanceof SpendEventError)) throw err;
        o.problem = err;
      }
      owners.set(key, o);
    }
    return o;
  };
  const app = createApp(metrics);
  const { requests, lookupsThrottled: throttled } = gatewayMetrics(metrics);
  const { eventsRejected } = producerMetrics(metrics);
  app.use((req, res, next) => {
    res.on("finish", () => {
      const route = (req.route as { path?: string } | undefined)?.path ?? "other";
      requests.inc({ route, status: String(res.statusCode) });
    });
    next();
  });
  const json = express.json({ limit: config.gateway.maxRequestBodyBytes });

  app.get("/health/readiness", readinessHandler(deps.checks, { draining: deps.draining }));

  /**
   * The caller's virtual key, before the body is read: an unauthenticated
   * request costs a hash and a map lookup, never a parse of up to
   * max_request_body_bytes. Answers 401 / 503 itself otherwise.
   */
  const authenticate: RequestHandler = (req, res, next) => {
    const key = bearerToken(req) ?? headerKey(req);
    if (key === undefined)
      return sendError(
        res,
        401,
        "auth_error",
        "missing API key: send Authorization: Bearer sk-...",
      );
    keys.lookup(key).then(
      (info) => {
        if (info === null) return sendError(res, 401, "auth_error", "invalid API key");
        (res.locals as Locals).key = info;
        next();
      },
      (err: unknown) => {
        // A flood of unknown keys: counted, not logged (thousands a second).
        if (err instanceof KeyLookupThrottledError) {
          throttled.inc();
          res.set("retry-after", String(err.retryAfterSeconds));
          return sendError(
            res,
            503,
            "service_unavailable",
            "too many unknown API keys: retry later",
          );
        }
        logger.error({ err: (err as Error).message }, "virtual key lookup failed");
        sendError(res, 503, "service_unavailable", "cannot verify the API key right now");
      },
    );
  };

  /** Admin routes: the master key, checked before the body is read. */
  const masterOnly: RequestHandler = (req, res, next) => {
    if (config.masterKey === undefined)
      return sendError(
        res,
        401,
        "auth_error",
        "general_settings.master_key is not configured: admin routes are off",
      );
    const given = bearerToken(req) ?? headerKey(req);
    if (given === undefined || !secretEquals(given, config.masterKey))
      return sendError(res, 401, "auth_error", "this route needs the master key");
    next();
  };

  const chat = (req: Request, res: Response): void => {
    const startTime = Date.now();
    const key = (res.locals as Locals).key;
    const halted = producer.halted;
    if (halted !== undefined) return sendError(res, 503, "service_unavailable", halted);
    // Refused before the model runs: a request answered is a cost incurred, and
    // the spend pipeline is already further behind than the operator allows.
    if (producer.backlogged) return sendBacklogged(res);
    let chatReq: ChatRequest;
    try {
      chatReq = parseChatRequest(req.body);
    } catch (err) {
      if (err instanceof BadRequest)
        return sendError(res, 400, "invalid_request_error", err.message);
      throw err;
    }
    const modelBytes = modelContextBytes.get(chatReq.model);
    if (modelBytes === undefined || !prices.has(chatReq.model)) {
      const known = [...config.gateway.modelPrices.keys()];
      return sendError(
        res,
        400,
        "invalid_request_error",
        `unknown model ${JSON.stringify(chatReq.model.slice(0, 100))}: priced models are ${known.length > 0 ? known.join(", ") : "none (configure spend_buffer_settings.model_prices)"}`,
      );
    }
    // Everything that could stop the spend from being recorded is checked before the
    // model runs: once it has answered, the cost is incurred and must be recorded.
    if (producer.full) {
      eventsRejected.inc({ reason: "buffer_full" });
      return sendError(res, 503, "service_unavailable", "spend buffer full: retry later");
    }
    const owner = ownersOf(key);
    if (owner.problem !== undefined) {
      eventsRejected.inc({ reason: owner.problem.reason });
      return sendError(
        res,
        403,
        "permission_error",
        `this key cannot be charged: its ${owner.problem.message}; an administrator must fix the key's owner ids`,
      );
    }
    try {
      checkEndUserAndTags(chatReq.user, chatReq.tags, config.limits, {
        ...owner.charged,
        contextBytes: owner.charged.contextBytes + modelBytes,
      });
    } catch (err) {
      return sendUnaccountable(res, refusal(err));
    }
    const result = runMockModel(chatReq.model, chatReq.messages, chatReq.maxTokens);
    const cost = prices.cost(chatReq.model, result.promptTokens, result.completionTokens);
    const event: SpendEvent = {
      spend: cost.usd,
      apiKey: key.token,
      // null, not spread-in optional fields: one object shape, and ~1.4 µs less per request.
      userId: key.userId ?? null,
      teamId: key.teamId ?? null,
      organizationId: key.organizationId ?? null,
      endUserId: chatReq.user ?? null,
      tags: chatReq.tags ?? null,
      model: chatReq.model,
      modelGroup: chatReq.model,
      provider: MOCK_PROVIDER,
      endpoint: CHAT_ENDPOINT,
      promptTokens: result.promptTokens,
      completionTokens: result.completionTokens,
      success: result.ok,
      startTime,
    };
    // recordServed() validates in its batch, after this request is answered. What
    // the check before the model could not see (a cost past max_spend_usd_per_event,
    // a token count past the limit) is checked here, so a request whose spend the
    // producer would refuse is answered as unaccountable, not charged silently.
    if (
      cost.pico > spendLimitPico ||
      result.promptTokens > maxTokens ||
      result.completionTokens > maxTokens
    ) {
      try {
        validateSpendEvent(event, config.limits);
      } catch (err) {
        const refused = refusal(err);
        logger.error(
          { reason: refused.reason, field: refused.field, model: chatReq.model },
          "served request's spend refused by validation: not recorded",
        );
        return sendUnaccountable(res, refused);
      }
    }
    producer.recordServed(event);
    res.set("x-litellm-response-cost", cost.usd);
    if (!result.ok) {
      return sendError(res, 500, "api_error", `mock model ${chatReq.model} failed (by design)`);
    }
    const finish =
      chatReq.maxTokens !== undefined && result.completionTokens >= chatReq.maxTokens
        ? "length"
        : "stop";
    res.json({
      id: `chatcmpl-${randomUUID()}`,
      object: "chat.completion",
      created: Math.floor(startTime / 1000),
      model: chatReq.model,
      choices: [
        { index: 0, message: { role: "assistant", content: result.text }, finish_reason: finish },
      ],
      usage: {
        prompt_tokens: result.promptTokens,
        completion_tokens: result.completionTokens,
        total_tokens: result.promptTokens + result.completionTokens,
      },
    });
  };
  app.post(CHAT_ENDPOINT, authenticate, json, chat);
  app.post("/chat/completions", authenticate, json, chat);

  // All or nothing: a batch with one refused event records none of its events,
  // so a client can fix and resend it whole without counting any event twice.
  app.post("/spend/events", masterOnly, json, (req, res) => {
    const body = req.body as { events?: unknown } | undefined;
    if (typeof body !== "object" || body === null || !Array.isArray(body.events))
      return sendError(res, 400, "invalid_request_error", 'the body must be { "events": [...] }');
    const events = body.events as unknown[];
    const halted = producer.halted;
    if (halted !== undefined) return sendError(res, 503, "service_unavailable", halted);
    if (producer.backlogged) return sendBacklogged(res);
    if (events.length > config.gateway.ingestMaxEvents)
      return sendError(
        res,
        413,
        "request_too_large",
        `${events.length} events in one batch: at most ${config.gateway.ingestMaxEvents} (spend_buffer_settings.ingest_max_events)`,
      );
    try {
      producer.recordAll(events);
    } catch (err) {
      if (err instanceof BatchRefusedError)
        return sendError(res, 400, "invalid_request_error", err.message, {
          accepted: 0,
          rejected: err.refused.map(({ index, error }) => ({
            index,
            reason: error.reason,
            field: error.field,
            message: error.message,
          })),
        });
      if (err instanceof BufferFullError)
        return sendError(res, 503, "service_unavailable", `${err.message}: nothing was recorded`);
      throw err;
    }
    res.json({ accepted: events.length, rejected: [] });
  });

  app.post("/key/generate", masterOnly, json, async (req, res) => {
    const b = (req.body ?? {}) as Record<string, unknown>;
    try {
      const input = {
        userId: str(b.user_id, "user_id", { optional: true }),
        teamId: str(b.team_id, "team_id", { optional: true }),
        organizationId: str(b.organization_id, "organization_id", { optional: true }),
        keyAlias: str(b.key_alias, "key_alias", { optional: true }),
      };
      const k = await createKey(db, {
        ...(input.userId !== undefined ? { userId: input.userId } : {}),
        ...(input.teamId !== undefined ? { teamId: input.teamId } : {}),
        ...(input.organizationId !== undefined ? { organizationId: input.organizationId } : {}),
        ...(input.keyAlias !== undefined ? { keyAlias: input.keyAlias } : {}),
      });
      logger.info({ keyAlias: k.keyAlias, userId: k.userId, teamId: k.teamId }, "key created");
      res.json(keyResponse(k));
    } catch (err) {
      if (err instanceof BadRequest || err instanceof KeyInputError)
        return sendError(res, 400, "invalid_request_error", err.message);
      throw err;
    }
  });

  // Budget checks: committed spend plus what is still pending in Redis and in
  // this process. Costs O(pending jobs' rows); see src/persist/live-spend.ts.
  app.get("/spend/live", masterOnly, async (req, res) => {
    const kind = typeof req.query.kind === "string" ? req.query.kind : "";
    const id = typeof req.query.id === "string" ? req.query.id : "";
    const id2 = typeof req.query.id2 === "string" ? req.query.id2 : undefined;
    if (!(ENTITY_KINDS as readonly string[]).includes(kind) || id === "") {
      return sendError(
        res,
        400,
        "invalid_request_error",
        `kind must be one of ${ENTITY_KINDS.join(", ")} and id must be given`,
      );
    }
    // An id no event could have been recorded under has no spend; PostgreSQL
    // would refuse some of them (NUL) rather than answer.
    for (const [field, v] of [
      ["id", id],
      ["id2", id2],
    ] as const) {
      if (v === undefined) continue;
      const problem =
        v.length > config.limits.maxIdLength
          ? { detail: `is longer than ${config.limits.maxIdLength} characters` }
          : idProblem(v);
      if (problem !== undefined)
        return sendError(res, 400, "invalid_request_error", `${field} ${problem.detail}`);
    }
    const live = await liveSpend(
      { db, queues: deps.queues ?? [], producer: deps.producer },
      kind as EntityKind,
      id,
      id2,
    );
    res.json({
      kind,
      id,
      ...(id2 !== undefined ? { id2 } : {}),
      committed: picoToDecimal(live.committedPico),
      pending_redis: picoToDecimal(live.pendingRedisPico),
      pending_local: picoToDecimal(live.pendingLocalPico),
      total: picoToDecimal(live.totalPico),
      as_of: live.asOf.toISOString(),
    });
  });

  app.use((_req, res) => sendError(res, 404, "not_found", "no such route"));
  // express tells an error handler by its four parameters.
  const onError: ErrorRequestHandler = (err: unknown, _req, res, _next) => {
    const e = err as { type?: string; status?: number; message?: string };
    if (e.type === "entity.too.large")
      return sendError(
        res,
        413,
        "request_too_large",
        `body larger than ${config.gateway.maxRequestBodyBytes} bytes (spend_buffer_settings.max_request_body_bytes)`,
      );
    if (e.type === "entity.parse.failed")
      return sendError(res, 400, "invalid_request_error", "the body is not valid JSON");
    if (typeof e.status === "number" && e.status >= 400 && e.status < 500)
      return sendError(res, e.status, "invalid_request_error", e.message ?? "bad request");
    logger.error({ err: e.message }, "request failed");
    sendError(res, 500, "internal_error", "internal error");
  };
  app.use(onError);
  return app;
}

/** What the middleware before a handler left for it. */
interface Locals {
  key: KeyInfo;
}

/** LiteLLM also reads the key from x-litellm-api-key / api-key. */
function headerKey(req: Request): string | undefined {
  const h = req.headers["x-litellm-api-key"] ?? req.headers["api-key"];
  return typeof h === "string" && h !== "" ? h : undefined;
}

import type { ErrorRequestHandler, Express } from "express";
import type { AppConfig } from "../config/config.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import type { BudgetGuard } from "../budget/budget-guard.js";
import type { Db } from "../persist/prisma.js";
import { producerMetrics } from "../produce/producer-metrics.js";
import type { SpendProducer } from "../produce/producer.js";
import type { SpendQueues } from "../queue/spend-queues.js";
import { createApp } from "../serve/http.js";
import { readinessHandler, type Check } from "../serve/readiness.js";
import { authenticate, masterOnly } from "./auth.js";
import { CHAT_ENDPOINT, ChargeCheck, EMBEDDINGS_ENDPOINT } from "./charge-check.js";
import { gatewayMetrics } from "./gateway-metrics.js";
import type { IdempotencyStore } from "./idempotency.js";
import { modelAccess } from "./model-access.js";
import { sendError } from "./openai-error.js";
import { ModelCatalog } from "./models.js";
import { chatCompletions } from "./routes/chat-completions.js";
import type { RouteContext } from "./routes/context.js";
import { mountBudgetRoutes } from "./routes/budgets.js";
import { embeddings } from "./routes/embeddings.js";
import { getModel, listModels } from "./routes/models.js";
import { keyGenerate } from "./routes/key-generate.js";
import { keyBlock, keyDelete, keyInfo, keyList, keyUpdate } from "./routes/keys.js";
import { spendEvents } from "./routes/spend-events.js";
import { spendLive } from "./routes/spend-live.js";
import { jsonBody } from "./json-body.js";
import type { KeyCache } from "./virtual-keys.js";

export { CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, MOCK_PROVIDER } from "./charge-check.js";

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
  /** Budget enforcement; without it budgets are stored but not enforced. */
  budgets?: BudgetGuard;
  /** Tells every gateway that keys changed (key-sync.ts). Default: nobody to tell. */
  announceKeyChanges?: (tokens: readonly string[]) => Promise<void>;
  /** Idempotency-Key claims (with the buffer on). */
  idempotency?: IdempotencyStore;
}

/**
 * The gateway's HTTP surface, one handler per route (routes/): OpenAI-
 * compatible chat completions answered by the mock model and charged to the
 * caller's virtual key, batch ingest for gateways written in other languages,
 * key management, live spend, health and metrics. Callers are authenticated
 * before their bodies are read; every error is in OpenAI's shape.
 */
export function createGatewayApp(deps: GatewayDeps): Express {
  const { config, keys, metrics, logger } = deps;
  const gw = gatewayMetrics(metrics);
  const ctx: RouteContext = {
    config,
    producer: deps.producer,
    db: deps.db,
    logger,
    models: new ModelCatalog(config.gateway.models),
    charge: new ChargeCheck(config),
    producerStats: producerMetrics(metrics),
    queues: deps.queues ?? [],
    gatewayStats: gw,
    announceKeyChanges: deps.announceKeyChanges ?? (() => Promise.resolve()),
    ...(deps.idempotency !== undefined ? { idempotency: deps.idempotency } : {}),
    ...(deps.budgets !== undefined ? { budgets: deps.budgets } : {}),
  };
  const app = createApp(metrics);
  app.use((req, res, next) => {
    res.on("finish", () => {
      const route = (req.route as { path?: string } | undefined)?.path ?? "other";
      gw.requests.inc({ route, status: String(res.statusCode) });
    });
    next();
  });
  const json = jsonBody(config.gateway.maxRequestBodyBytes);
  const user = authenticate(keys, logger, gw);
  const admin = masterOnly(config);
  // A key's `models`, on every route that names a model (add it to new ones).
  const models = modelAccess(gw);

  const ready = readinessHandler(deps.checks, { draining: deps.draining });
  app.get("/health/readiness", ready);
  // LiteLLM's /health answers for the models; ours says whether spend can be recorded.
  app.get("/health", ready);
  const chat = chatCompletions(ctx);
  app.post(CHAT_ENDPOINT, user, json, models, chat);
  app.post("/chat/completions", user, json, models, chat);
  const embed = embeddings(ctx);
  app.post(EMBEDDINGS_ENDPOINT, user, json, models, embed);
  app.post("/embeddings", user, json, models, embed);
  app.get(["/v1/models", "/models"], user, listModels(ctx));
  app.get(["/v1/models/:model", "/models/:model"], user, getModel(ctx));
  app.post("/spend/events", admin, json, spendEvents(ctx));
  app.post("/key/generate", admin, json, keyGenerate(ctx));
  app.get("/key/info", admin, keyInfo(ctx));
  app.get("/key/list", admin, keyList(ctx));
  app.post("/key/update", admin, json, keyUpdate(ctx));
  app.post("/key/block", admin, json, keyBlock(ctx, true));
  app.post("/key/unblock", admin, json, keyBlock(ctx, false));
  app.post("/key/delete", admin, json, keyDelete(ctx));
  app.get("/spend/live", admin, spendLive(ctx));
  mountBudgetRoutes(app, ctx, admin, json);

  app.use((_req, res) => sendError(res, 404, "not_found_error", "not_found", "no such route"));
  // express tells an error handler by its four parameters.
  const onError: ErrorRequestHandler = (err: unknown, _req, res, _next) => {
    const e = err as { type?: string; status?: number; message?: string };
    if (e.type === "entity.too.large")
      return sendError(
        res,
        413,
        "invalid_request_error",
        "body_too_large",
        `body larger than ${config.gateway.maxRequestBodyBytes} bytes (spend_buffer_settings.max_request_body_bytes)`,
      );
    if (e.type === "entity.parse.failed")
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_json",
        "the body is not valid JSON",
      );
    if (typeof e.status === "number" && e.status >= 400 && e.status < 500)
      return sendError(
        res,
        e.status,
        "invalid_request_error",
        "invalid_body",
        e.message ?? "bad request",
      );
    // Never a stack, never the error's text: it may quote what it failed on.
    logger.error({ err: e.message }, "request failed");
    sendError(res, 500, "api_error", "internal_error", "internal error");
  };
  app.use(onError);
  return app;
}

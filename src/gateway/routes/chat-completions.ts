import { randomUUID } from "node:crypto";
import type { RequestHandler } from "express";
import {
  maxSpendPico,
  SpendEventError,
  validateSpendEvent,
  type SpendEvent,
} from "../../produce/spend-event.js";
import type { AuthLocals } from "../auth.js";
import { CHAT_ENDPOINT, MOCK_PROVIDER } from "../charge-check.js";
import { parseChatRequest } from "../chat-request.js";
import { runMockModel } from "../mock-model.js";
import { sendBacklogged, sendError, sendHalted } from "../openai-error.js";
import { counted, type RouteContext } from "./context.js";

/**
 * POST /v1/chat/completions: answered by the mock model and charged to the
 * caller's virtual key (authenticated before this runs). Every request that
 * reaches the model is recorded through the producer, successful or failed;
 * every reason it could not be recorded is checked before the model runs.
 */
export function chatCompletions(ctx: RouteContext): RequestHandler {
  const { config, producer, prices, charge, logger } = ctx;
  // The producer's limits on what the model and the price table make.
  const spendLimitPico = BigInt(maxSpendPico(config.limits));
  const maxTokens = config.limits.maxTokens;
  const unaccountable = (res: Parameters<RequestHandler>[1], err: SpendEventError): void =>
    sendError(
      res,
      400,
      "invalid_request_error",
      "unaccountable",
      `cannot account this request: ${err.message}`,
    );

  return (req, res) => {
    const startTime = Date.now();
    const key = (res.locals as AuthLocals).key;
    const halted = producer.halted;
    if (halted !== undefined) return sendHalted(res, halted);
    // Refused before the model runs: a request answered is a cost incurred, and
    // the spend pipeline is already further behind than the operator allows.
    if (producer.backlogged) return sendBacklogged(res);
    const parsed = parseChatRequest(req.body);
    if (!parsed.ok)
      return sendError(res, 400, "invalid_request_error", "invalid_body", parsed.message);
    const chatReq = parsed.request;
    if (!charge.priced(chatReq.model)) {
      const known = [...config.gateway.modelPrices.keys()];
      return sendError(
        res,
        400,
        "invalid_request_error",
        "model_not_found",
        `unknown model ${JSON.stringify(chatReq.model.slice(0, 100))}: priced models are ${known.length > 0 ? known.join(", ") : "none (configure spend_buffer_settings.model_prices)"}`,
      );
    }
    if (producer.full) {
      ctx.producerStats.eventsRejected.inc({ reason: "buffer_full" });
      return sendError(
        res,
        503,
        "service_unavailable",
        "buffer_full",
        "spend buffer full: retry later",
      );
    }
    const problem = charge.keyProblem(key);
    if (problem !== undefined) {
      counted(ctx, problem);
      return sendError(
        res,
        403,
        "permission_error",
        "key_not_chargeable",
        `this key cannot be charged: its ${problem.message}; an administrator must fix the key's owner ids`,
      );
    }
    try {
      charge.check(key, chatReq.model, chatReq.user, chatReq.tags);
    } catch (err) {
      if (!(err instanceof SpendEventError)) throw err;
      return unaccountable(res, counted(ctx, err));
    }
    const result = runMockModel(chatReq.model, chatReq.messages, chatReq.maxTokens);
    const cost = prices.cost(chatReq.model, result.promptTokens, result.completionTokens);
    const event: SpendEvent = {
      spend: cost.usd,
      apiKey: key.token,
      // null, not spread-in optional fields: one object shape for every request.
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
        if (!(err instanceof SpendEventError)) throw err;
        const refused = counted(ctx, err);
        logger.error(
          { reason: refused.reason, field: refused.field, model: chatReq.model },
          "served request's spend refused by validation: not recorded",
        );
        return unaccountable(res, refused);
      }
    }
    producer.recordServed(event);
    res.set("x-litellm-response-cost", cost.usd);
    if (!result.ok)
      return sendError(
        res,
        500,
        "api_error",
        "model_failed",
        `mock model ${chatReq.model} failed (by design)`,
      );
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
}

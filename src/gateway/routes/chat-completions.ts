import type { RequestHandler } from "express";
import { CHAT_ENDPOINT } from "../charge-check.js";
import { parseChatRequest } from "../chat-request.js";
import { answerWithMock } from "../mock-chat.js";
import { mockPromptTokens } from "../mock-model.js";
import { sendError } from "../openai-error.js";
import { ServedSpend } from "../served-spend.js";
import { countPromptTokens } from "../token-count.js";
import { answerFromUpstream } from "../upstream-chat.js";
import { admit } from "./admission.js";
import type { RouteContext } from "./context.js";

/**
 * POST /v1/chat/completions, streaming or not: answered by the mock model or
 * an OpenAI-compatible upstream (model_list), and charged to the caller's
 * virtual key (authenticated before this runs). Every request that reaches a
 * model is recorded through the producer once, successful or failed; every
 * reason it could not be recorded is checked before the model runs.
 */
export function chatCompletions(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const startTime = Date.now();
    const parsed = parseChatRequest(req.body);
    if (!parsed.ok)
      return sendError(res, 400, "invalid_request_error", "invalid_body", parsed.message);
    const chat = parsed.request;
    const admitted = admit(ctx, req, res, chat.model, CHAT_ENDPOINT, chat.user, chat.tags);
    if (admitted === undefined) return;
    const d = admitted.deployment;
    if (d.maxInputTokens !== undefined) {
      const tokens =
        d.kind === "mock"
          ? mockPromptTokens(chat.messages)
          : await countPromptTokens(chat.messages);
      if (tokens > d.maxInputTokens)
        return sendError(
          res,
          400,
          "invalid_request_error",
          "context_length_exceeded",
          `This model's maximum context length is ${d.maxInputTokens} tokens. However, your messages resulted in ${tokens} tokens.`,
        );
    }
    const spend = new ServedSpend(ctx, {
      key: admitted.key,
      entities: admitted.entities,
      deployment: d,
      endpoint: CHAT_ENDPOINT,
      ...(chat.user !== undefined ? { endUserId: chat.user } : {}),
      ...(chat.tags !== undefined ? { tags: chat.tags } : {}),
      startTime,
    });
    if (d.kind === "mock") return answerWithMock(res, chat, spend, startTime);
    return answerFromUpstream(req, res, chat, d, spend);
  };
}

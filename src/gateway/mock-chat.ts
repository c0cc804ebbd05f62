import { randomUUID } from "node:crypto";
import type { Response } from "express";
import type { ChatRequest } from "./chat-request.js";
import {
  isSlowModel,
  MOCK_SLOW_WORD_MS,
  mockPromptTokens,
  runMockModel,
  streamPieces,
} from "./mock-model.js";
import { sendError } from "./openai-error.js";
import { sendUnaccountable } from "./routes/admission.js";
import type { ServedSpend } from "./served-spend.js";
import { startEventStream, writeEvent } from "./sse.js";

/**
 * Answers a chat request with the mock model, as OpenAI would: one JSON
 * completion, or (stream: true) a chunk per word, the finish chunk, the usage
 * chunk if asked for, and [DONE]. The spend is settled once: when the answer
 * is complete, or with the words sent so far when the client goes away.
 */
export async function answerWithMock(
  res: Response,
  chat: ChatRequest,
  spend: ServedSpend,
  startTime: number,
): Promise<void> {
  const result = runMockModel(chat.model, chat.messages, chat.maxTokens);
  if (!result.ok) {
    // What a provider bills for an error: nothing; the request counts as failed.
    spend.failed("model_failed", result.promptTokens);
    return sendError(
      res,
      500,
      "api_error",
      "model_failed",
      `mock model ${chat.model} failed (by design)`,
    );
  }
  const usage = { promptTokens: result.promptTokens, completionTokens: result.completionTokens };
  const finish =
    chat.maxTokens !== undefined && result.completionTokens >= chat.maxTokens ? "length" : "stop";
  const id = `chatcmpl-${randomUUID()}`;
  const created = Math.floor(startTime / 1000);
  const openAiUsage = {
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
  };

  if (!chat.stream) {
    const settled = spend.settle(usage, "answered");
    if (settled.refused !== undefined) return sendUnaccountable(res, settled.refused);
    res.set("x-litellm-response-cost", settled.cost.usd);
    res.json({
      id,
      object: "chat.completion",
      created,
      model: chat.model,
      choices: [
        { index: 0, message: { role: "assistant", content: result.text }, finish_reason: finish },
      ],
      usage: openAiUsage,
    });
    return;
  }

  // Refused spend is known before the first byte: answer it as for a plain request.
  const refusal = spend.wouldRefuse(usage);
  if (refusal !== undefined) return sendUnaccountable(res, refusal);
  const pieces = streamPieces(result.text);
  let sent = 0;
  res.on("close", () => {
    // Gone before the end: charged for the words it was sent.
    if (!spend.done)
      spend.settle(
        { promptTokens: mockPromptTokens(chat.messages), completionTokens: sent },
        "client_left",
      );
  });
  startEventStream(res);
  const chunk = (delta: Record<string, unknown>, finishReason: string | null): unknown => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: chat.model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
    ...(chat.includeUsage ? { usage: null } : {}),
  });
  await writeEvent(res, chunk({ role: "assistant", content: "" }, null));
  for (const piece of pieces) {
    if (res.destroyed) return;
    if (isSlowModel(chat.model)) await new Promise((r) => setTimeout(r, MOCK_SLOW_WORD_MS));
    await writeEvent(res, chunk({ content: piece }, null));
    sent++;
  }
  if (res.destroyed) return;
  await writeEvent(res, chunk({}, finish));
  if (chat.includeUsage)
    await writeEvent(res, {
      id,
      object: "chat.completion.chunk",
      created,
      model: chat.model,
      choices: [],
      usage: openAiUsage,
    });
  // Settled before [DONE]: a client that has read [DONE] has been charged.
  spend.settle(usage, "answered");
  await writeEvent(res, "[DONE]");
  res.end();
}

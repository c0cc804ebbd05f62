import type { Request, Response } from "express";
import type { ModelDeployment } from "../config/config.js";
import type { ChatRequest } from "./chat-request.js";
import { sendUnaccountable } from "./routes/admission.js";
import type { ServedSpend, Usage } from "./served-spend.js";
import { readEvents, startEventStream, writeEvent } from "./sse.js";
import { countPromptTokens, countTextTokens } from "./token-count.js";
import {
  callUpstream,
  isJsonObject,
  relayUpstreamError,
  sendUpstreamInvalid,
  sendUpstreamUnavailable,
  UpstreamUnavailableError,
} from "./upstream.js";

interface OpenAiUsage {
  prompt_tokens?: unknown;
  completion_tokens?: unknown;
}

/** The upstream's reported usage, if it is one. */
function reported(u: OpenAiUsage | null | undefined): Usage | undefined {
  if (u === null || u === undefined) return undefined;
  const p = u.prompt_tokens;
  const c = u.completion_tokens ?? 0;
  if (
    !Number.isSafeInteger(p) ||
    !Number.isSafeInteger(c) ||
    (p as number) < 0 ||
    (c as number) < 0
  )
    return undefined;
  return { promptTokens: p as number, completionTokens: c as number };
}

/**
 * The body sent upstream: the client's, with the deployment's model, without
 * the gateway's own fields (metadata carries tags for the ledger), and, for a
 * stream, always asking for the usage chunk (the charge comes from it; the
 * client sees it only if it asked).
 */
function upstreamBody(chat: ChatRequest, d: ModelDeployment): Record<string, unknown> {
  const { metadata: _metadata, ...rest } = chat.body;
  const body: Record<string, unknown> = { ...rest, model: d.model };
  if (chat.stream) {
    const opts = typeof rest.stream_options === "object" ? rest.stream_options : {};
    body.stream_options = { ...opts, include_usage: true };
  }
  return body;
}

/**
 * Answers a chat request from an OpenAI-compatible upstream, streaming or not.
 * The charge is the upstream's reported usage; where it never came (the
 * client went away mid-stream, the upstream broke off or reported none), the
 * prompt and the completion received so far are counted with OpenAI's
 * tokenizer. Either way the spend is settled once.
 */
export async function answerFromUpstream(
  req: Request,
  res: Response,
  chat: ChatRequest,
  d: ModelDeployment,
  spend: ServedSpend,
): Promise<void> {
  const cancel = new AbortController();
  // The client hung up: stop the upstream (it stops generating, and billing).
  res.on("close", () => {
    if (!res.writableFinished) cancel.abort();
  });
  let upstream: globalThis.Response;
  try {
    upstream = await callUpstream(d, "/chat/completions", upstreamBody(chat, d), cancel.signal);
  } catch (err) {
    if (err instanceof UpstreamUnavailableError) {
      spend.failed(err.code);
      return sendUpstreamUnavailable(res, err);
    }
    // The client left while the upstream read its prompt: charged for the prompt.
    spend.settle(
      { promptTokens: await countPromptTokens(chat.messages), completionTokens: 0 },
      "client_left",
    );
    return;
  }
  if (!upstream.ok) {
    // A failed request, charged what the upstream bills for an error: nothing.
    spend.failed("upstream_error");
    return relayUpstreamError(res, upstream, d);
  }
  if (!chat.stream) return relayCompletion(res, chat, upstream, spend, cancel.signal);
  return relayStream(req, res, chat, upstream, spend);
}

async function relayCompletion(
  res: Response,
  chat: ChatRequest,
  upstream: globalThis.Response,
  spend: ServedSpend,
  cancel: AbortSignal,
): Promise<void> {
  let parsed: unknown;
  try {
    parsed = await upstream.json();
  } catch {
    if (cancel.aborted) {
      spend.settle(
        { promptTokens: await countPromptTokens(chat.messages), completionTokens: 0 },
        "client_left",
      );
      return;
    }
    spend.failed("upstream_broke");
    return sendUpstreamUnavailable(res, new UpstreamUnavailableError(false, spend.deployment));
  }
  if (!isJsonObject(parsed) || (parsed.choices !== undefined && !Array.isArray(parsed.choices))) {
    spend.failed("upstream_invalid");
    return sendUpstreamInvalid(res, spend.deployment);
  }
  const body = parsed as { usage?: OpenAiUsage; choices?: { message?: { content?: unknown } }[] };
  const usage = reported(body.usage) ?? {
    promptTokens: await countPromptTokens(chat.messages),
    completionTokens: await countTextTokens(
      (body.choices ?? [])
        .map((c) => (typeof c?.message?.content === "string" ? c.message.content : ""))
        .join(""),
    ),
  };
  const settled = spend.settle(usage, "answered");
  if (settled.refused !== undefined) return sendUnaccountable(res, settled.refused);
  res.set("x-litellm-response-cost", settled.cost.usd);
  res.json(body);
}

async function relayStream(
  _req: Request,
  res: Response,
  chat: ChatRequest,
  upstream: globalThis.Response,
  spend: ServedSpend,
): Promise<void> {
  let usage: Usage | undefined;
  let completion = "";
  let finished = false;
  const counted = async (): Promise<Usage> => ({
    promptTokens: await countPromptTokens(chat.messages),
    completionTokens: await countTextTokens(completion),
  });
  startEventStream(res);
  try {
    if (upstream.body === null) throw new Error("no body");
    for await (const data of readEvents(upstream.body)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        continue;
      }
      // Not a chunk (null, a list, a scalar): skipped, like text that is not JSON.
      if (!isJsonObject(parsed)) continue;
      const chunk = parsed as {
        usage?: OpenAiUsage | null;
        choices?: unknown;
        error?: unknown;
      };
      if (chunk.error !== undefined) throw new Error("the upstream sent an error mid-stream");
      const choices = Array.isArray(chunk.choices)
        ? (chunk.choices as ({ delta?: { content?: unknown } } | null)[])
        : [];
      for (const c of choices)
        if (typeof c?.delta?.content === "string") completion += c.delta.content;
      usage = reported(chunk.usage) ?? usage;
      if (!chat.includeUsage) {
        // Asked for by the gateway, not the client: the client sees OpenAI's stream without it.
        if (chunk.usage !== undefined && choices.length === 0) continue;
        delete chunk.usage;
      }
      if (res.destroyed) break;
      await writeEvent(res, chunk);
    }
  } catch {
    finished = false;
  }
  if (finished) {
    spend.settle(usage ?? (await counted()), "answered");
    await writeEvent(res, "[DONE]");
    res.end();
    return;
  }
  // Cut short (the client left, or the upstream broke off): charged what was generated.
  spend.settle(usage ?? (await counted()), res.destroyed ? "client_left" : "upstream_broke");
  if (!res.destroyed) {
    await writeEvent(res, {
      error: {
        message: "the upstream stream ended before it was complete",
        type: "api_error",
        param: null,
        code: "upstream_error",
      },
    });
    res.end();
  }
}

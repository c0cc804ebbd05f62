import type { RequestHandler } from "express";
import { z } from "zod";
import { EMBEDDINGS_ENDPOINT } from "../charge-check.js";
import { countWords, mockEmbedding } from "../mock-model.js";
import { sendError } from "../openai-error.js";
import { ServedSpend } from "../served-spend.js";
import { countTextTokens } from "../token-count.js";
import {
  callUpstream,
  isJsonObject,
  relayUpstreamError,
  sendUpstreamInvalid,
  sendUpstreamUnavailable,
  UpstreamUnavailableError,
} from "../upstream.js";
import { admit, sendUnaccountable } from "./admission.js";
import type { RouteContext } from "./context.js";

/** OpenAI's limit on inputs per request. */
const MAX_INPUTS = 2048;
/**
 * The most numbers the mock model answers with (inputs × dimensions): ~5 MB
 * of JSON. Both limits alone allow 8 million (2,048 inputs of 4,096), a
 * 147 MB answer built in memory for a 14 KB request charged a fraction of a
 * cent: ten at once held the gateway's event loop for 24 s.
 */
export const MAX_MOCK_EMBEDDING_VALUES = 262_144;

const tokenArray = z.array(z.number().int().min(0)).min(1);
const embeddingRequest = z.looseObject({
  model: z.string().min(1, "model must not be empty"),
  input: z.union([
    z.string().min(1, "input must not be empty"),
    z.array(z.string().min(1, "an input must not be empty")).min(1).max(MAX_INPUTS),
    tokenArray,
    z.array(tokenArray).min(1).max(MAX_INPUTS),
  ]),
  encoding_format: z.enum(["float", "base64"]).nullish(),
  dimensions: z.number().int().min(1).max(4096).nullish(),
  user: z.string().nullish(),
  metadata: z.looseObject({ tags: z.array(z.string()).nullish() }).nullish(),
});

/** Float32 little-endian, base64: what OpenAI sends for encoding_format "base64". */
function base64(v: readonly number[]): string {
  return Buffer.from(new Float32Array(v).buffer).toString("base64");
}

/**
 * POST /v1/embeddings: answered by the mock model (a deterministic vector per
 * input, its words as tokens) or forwarded to the deployment's upstream, and
 * charged for the prompt tokens at the model's input price.
 */
export function embeddings(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const startTime = Date.now();
    const r = embeddingRequest.safeParse(req.body);
    if (!r.success) {
      const issue = r.error.issues[0];
      const path = issue?.path.map(String).join(".") ?? "";
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        `${path !== "" ? `${path}: ` : ""}${issue?.message ?? "invalid"}`,
      );
    }
    const b = r.data;
    const user = b.user !== undefined && b.user !== null && b.user !== "" ? b.user : undefined;
    const tags = b.metadata?.tags ?? undefined;
    const admitted = admit(ctx, req, res, b.model, EMBEDDINGS_ENDPOINT, user, tags);
    if (admitted === undefined) return;
    const d = admitted.deployment;
    const inputs: (string | number[])[] =
      typeof b.input === "string"
        ? [b.input]
        : typeof b.input[0] === "number"
          ? [b.input as number[]]
          : (b.input as (string | number[])[]);
    const dimensions = b.dimensions ?? 16;
    if (d.kind === "mock" && inputs.length * dimensions > MAX_MOCK_EMBEDDING_VALUES) {
      return sendError(
        res,
        400,
        "invalid_request_error",
        "too_many_values",
        `the mock model answers at most ${MAX_MOCK_EMBEDDING_VALUES} numbers (inputs × dimensions), ` +
          `this request asks for ${inputs.length * dimensions}: send fewer inputs or dimensions`,
      );
    }
    const spend = new ServedSpend(ctx, {
      key: admitted.key,
      entities: admitted.entities,
      deployment: d,
      endpoint: EMBEDDINGS_ENDPOINT,
      ...(user !== undefined ? { endUserId: user } : {}),
      ...(tags !== undefined ? { tags } : {}),
      startTime,
    });

    if (d.kind === "mock") {
      let tokens = 0;
      for (const i of inputs) tokens += typeof i === "string" ? countWords(i) : i.length;
      const settled = spend.settle({ promptTokens: tokens, completionTokens: 0 }, "answered");
      if (settled.refused !== undefined) return sendUnaccountable(res, settled.refused);
      res.set("x-litellm-response-cost", settled.cost.usd);
      res.json({
        object: "list",
        data: inputs.map((i, index) => {
          const v = mockEmbedding(typeof i === "string" ? i : i.join(","), dimensions);
          return {
            object: "embedding",
            index,
            embedding: b.encoding_format === "base64" ? base64(v) : v,
          };
        }),
        model: b.model,
        usage: { prompt_tokens: tokens, total_tokens: tokens },
      });
      return;
    }

    const cancel = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) cancel.abort();
    });
    const { metadata: _metadata, ...body } = req.body as Record<string, unknown>;
    let upstream: globalThis.Response;
    try {
      upstream = await callUpstream(d, "/embeddings", { ...body, model: d.model }, cancel.signal);
    } catch (err) {
      if (err instanceof UpstreamUnavailableError) {
        spend.failed(err.code);
        return sendUpstreamUnavailable(res, err);
      }
      // The client left before the upstream answered: what it would have been charged is unknown.
      spend.failed("client_left");
      return;
    }
    if (!upstream.ok) {
      spend.failed("upstream_error");
      return relayUpstreamError(res, upstream, d);
    }
    let answer: unknown;
    try {
      answer = await upstream.json();
    } catch {
      spend.failed("upstream_broke");
      return sendUpstreamUnavailable(res, new UpstreamUnavailableError(false, d));
    }
    if (!isJsonObject(answer) || !Array.isArray(answer.data)) {
      spend.failed("upstream_invalid");
      return sendUpstreamInvalid(res, d);
    }
    const usage = answer.usage;
    const reported = isJsonObject(usage) ? usage.prompt_tokens : undefined;
    let tokens: number;
    if (Number.isSafeInteger(reported) && (reported as number) >= 0) tokens = reported as number;
    else {
      tokens = 0;
      for (const i of inputs) tokens += typeof i === "string" ? await countTextTokens(i) : i.length;
    }
    const settled = spend.settle({ promptTokens: tokens, completionTokens: 0 }, "answered");
    if (settled.refused !== undefined) return sendUnaccountable(res, settled.refused);
    res.set("x-litellm-response-cost", settled.cost.usd);
    res.json(answer);
  };
}

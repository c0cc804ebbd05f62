import type { Response } from "express";
import type { ModelDeployment } from "../config/config.js";
import { sendError } from "./openai-error.js";

/** Most bytes of an upstream's error body relayed to the client. */
const MAX_ERROR_BODY = 16_384;

/** Why an upstream call produced no answer to relay. */
export class UpstreamUnavailableError extends Error {
  readonly code: "upstream_timeout" | "upstream_unreachable";
  constructor(timedOut: boolean, deployment: ModelDeployment) {
    // The model's name only: never the key, nor the base URL (it may carry credentials).
    super(
      timedOut
        ? `the upstream for ${deployment.name} did not answer within ${deployment.timeoutMs / 1000} s`
        : `the upstream for ${deployment.name} could not be reached`,
    );
    this.name = "UpstreamUnavailableError";
    this.code = timedOut ? "upstream_timeout" : "upstream_unreachable";
  }
}

/**
 * Calls an OpenAI-compatible upstream: POST <api_base><path> with the
 * deployment's key. The call is abandoned when `cancel` fires (the client
 * went away) or after the deployment's timeout; either way the upstream sees
 * its connection closed, so it stops generating (and billing).
 */
export async function callUpstream(
  deployment: ModelDeployment,
  path: "/chat/completions" | "/embeddings",
  body: Record<string, unknown>,
  cancel: AbortSignal,
): Promise<globalThis.Response> {
  // Outside the try: a body that cannot be written is not the upstream's fault.
  const text = JSON.stringify(body);
  const timeout = AbortSignal.timeout(deployment.timeoutMs);
  const signal = AbortSignal.any([cancel, timeout]);
  try {
    return await fetch(`${deployment.apiBase ?? ""}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: body.stream === true ? "text/event-stream" : "application/json",
        ...(deployment.apiKey !== undefined
          ? { authorization: `Bearer ${deployment.apiKey}` }
          : {}),
      },
      body: text,
      signal,
    });
  } catch (err) {
    if (cancel.aborted) throw err;
    throw new UpstreamUnavailableError(timeout.aborted, deployment);
  }
}

/**
 * The upstream's error with the deployment's API key masked wherever it
 * appears: some OpenAI-compatible servers quote the Authorization header
 * they were sent ("Incorrect API key provided: Bearer sk-..."), and the
 * error goes to whoever holds a virtual key. Masked in the error's JSON
 * text, where the key is written as it is (a key is printable ASCII).
 */
function withoutKey(error: Record<string, unknown>, apiKey: string | undefined): unknown {
  if (apiKey === undefined || apiKey === "") return error;
  const text = JSON.stringify(error);
  const escaped = JSON.stringify(apiKey).slice(1, -1);
  return text.includes(escaped) ? (JSON.parse(text.split(escaped).join("***")) as unknown) : error;
}

/** A parsed JSON answer that is an object (not null, an array or a scalar). */
export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Answers an upstream's success whose body is not the API's shape (`null`,
 * `choices` not a list): 502, never a 500 from reading it. The caller records
 * the call as failed (outcome upstream_invalid): nothing in it can be trusted
 * to charge from, and a provider does not bill an answer it could not give.
 */
export function sendUpstreamInvalid(res: Response, deployment: ModelDeployment): void {
  sendError(
    res,
    502,
    "api_error",
    "upstream_invalid",
    `the upstream for ${deployment.name} answered with a body that is not a valid response`,
  );
}

/** Answers a call that produced nothing to relay: 504 for a timeout, 502 otherwise. */
export function sendUpstreamUnavailable(res: Response, err: UpstreamUnavailableError): void {
  sendError(res, err.code === "upstream_timeout" ? 504 : 502, "api_error", err.code, err.message);
}

/**
 * Relays an upstream's error answer: its status, and its OpenAI-shaped error
 * if it sent one (what the client's SDK reads), else one of ours naming the
 * status. A 429's Retry-After goes along.
 */
export async function relayUpstreamError(
  res: Response,
  upstream: globalThis.Response,
  deployment: ModelDeployment,
): Promise<void> {
  const text = (await upstream.text().catch(() => "")).slice(0, MAX_ERROR_BODY);
  const retryAfter = upstream.headers.get("retry-after");
  if (retryAfter !== null && /^\d{1,6}$/.test(retryAfter)) res.set("retry-after", retryAfter);
  let error: unknown;
  try {
    error = (JSON.parse(text) as { error?: unknown }).error;
  } catch {
    error = undefined;
  }
  const status = upstream.status >= 400 && upstream.status < 600 ? upstream.status : 502;
  if (isJsonObject(error)) {
    res.status(status).json({ error: withoutKey(error, deployment.apiKey) });
    return;
  }
  sendError(
    res,
    status,
    status < 500 ? "invalid_request_error" : "api_error",
    "upstream_error",
    `the upstream for ${deployment.name} answered ${upstream.status}`,
  );
}

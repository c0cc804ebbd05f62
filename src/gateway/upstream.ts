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
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (cancel.aborted) throw err;
    throw new UpstreamUnavailableError(timeout.aborted, deployment);
  }
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
  if (typeof error === "object" && error !== null && !Array.isArray(error)) {
    res.status(status).json({ error });
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

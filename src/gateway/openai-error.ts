import type { Response } from "express";

/**
 * Errors in the shape every OpenAI client reads: `{ error: { message, type,
 * param, code } }`, with OpenAI's types and, where OpenAI has one, its code.
 */

/** OpenAI's error types. */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "rate_limit_error"
  | "api_error"
  | "service_unavailable"
  | "budget_exceeded";

/** The codes this gateway answers with: OpenAI's own where it has one. */
export type ErrorCode =
  | "invalid_api_key"
  | "missing_api_key"
  | "master_key_required"
  | "admin_routes_off"
  | "model_not_found"
  | "invalid_body"
  | "invalid_json"
  | "body_too_large"
  | "batch_too_large"
  | "events_refused"
  | "unaccountable"
  | "key_not_chargeable"
  | "invalid_id"
  | "backpressure"
  | "buffer_full"
  | "partition_mismatch"
  | "key_lookup_unavailable"
  | "key_lookup_throttled"
  | "model_failed"
  | "budget_exceeded"
  | "budget_pending"
  | "context_length_exceeded"
  | "upstream_error"
  | "upstream_timeout"
  | "upstream_unreachable"
  | "upstream_invalid"
  | "too_many_values"
  | "not_found"
  | "internal_error"
  // Virtual keys (issue 19): LiteLLM's refusals, and its key routes.
  | "key_blocked"
  | "expired_key"
  | "key_model_access_denied"
  | "key_not_found"
  | "key_change_not_announced"
  // POST /spend/events with an Idempotency-Key (issue 19).
  | "invalid_idempotency_key"
  | "idempotency_key_reused"
  | "idempotency_key_in_use"
  | "idempotency_unavailable"
  | "ingest_unavailable";

/**
 * Sends an error. Every 503 says when to come back (Retry-After): each is a
 * state that passes (back-pressure, a full buffer, a dependency away), and a
 * client without the header retries at once or gives up.
 */
export function sendError(
  res: Response,
  status: number,
  type: ErrorType,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown> = {},
): void {
  if (status === 503 && !res.hasHeader("retry-after")) res.set("retry-after", "1");
  res.status(status).json({ error: { message, type, param: null, code }, ...extra });
}

/** Back-pressure (backpressure_backlog_age_seconds): a 503 every OpenAI client retries. */
export function sendBacklogged(res: Response): void {
  sendError(
    res,
    503,
    "service_unavailable",
    "backpressure",
    "spend accounting is behind (flush backlog past backpressure_backlog_age_seconds): retry shortly",
  );
}

/** OpenAI's answer for a model that does not exist or that the caller may not use: 404. */
export function sendModelNotFound(res: Response, model: string): void {
  sendError(
    res,
    404,
    "invalid_request_error",
    "model_not_found",
    `The model \`${model.slice(0, 100)}\` does not exist or you do not have access to it.`,
  );
}

/** A producer that must not take spend now (its partition count disagrees with the workers'). */
export function sendHalted(res: Response, why: string): void {
  sendError(res, 503, "service_unavailable", "partition_mismatch", why);
}

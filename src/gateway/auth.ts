import type { Request, RequestHandler } from "express";
import type { AppConfig } from "../config/config.js";
import type { Logger } from "../observe/logger.js";
import { bearerToken, secretEquals } from "../serve/admin-auth.js";
import type { GatewayMetrics } from "./gateway-metrics.js";
import { sendError } from "./openai-error.js";
import { KeyLookupThrottledError, type KeyCache, type KeyInfo } from "./virtual-keys.js";

/** What the authentication middleware leaves for the handler after it. */
export interface AuthLocals {
  key: KeyInfo;
}

/** LiteLLM also reads the key from x-litellm-api-key / api-key. */
function headerKey(req: Request): string | undefined {
  const h = req.headers["x-litellm-api-key"] ?? req.headers["api-key"];
  return typeof h === "string" && h !== "" ? h : undefined;
}

/**
 * The caller's virtual key, before the body is read: an unauthenticated
 * request costs a hash and a map lookup, never a parse of up to
 * max_request_body_bytes. Answers 401 / 503 itself otherwise.
 */
export function authenticate(
  keys: KeyCache,
  logger: Logger,
  metrics: GatewayMetrics,
): RequestHandler {
  return (req, res, next) => {
    const key = bearerToken(req) ?? headerKey(req);
    if (key === undefined)
      return sendError(
        res,
        401,
        "authentication_error",
        "missing_api_key",
        "missing API key: send Authorization: Bearer sk-...",
      );
    keys.lookup(key).then(
      (info) => {
        if (info === null)
          return sendError(res, 401, "authentication_error", "invalid_api_key", "invalid API key");
        // LiteLLM's refusals, in its words, for a key that exists.
        if (info.blocked) {
          metrics.keyRefusals.inc({ reason: "blocked" });
          return sendError(
            res,
            401,
            "authentication_error",
            "key_blocked",
            "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
          );
        }
        if (info.expiresAt !== undefined) {
          const now = Date.now();
          if (now >= info.expiresAt) {
            metrics.keyRefusals.inc({ reason: "expired" });
            return sendError(
              res,
              401,
              "authentication_error",
              "expired_key",
              `Authentication Error - Expired Key. Key Expiry time ${new Date(info.expiresAt).toISOString()} and current time ${new Date(now).toISOString()}`,
            );
          }
        }
        (res.locals as AuthLocals).key = info;
        next();
      },
      (err: unknown) => {
        // A flood of unknown keys: counted, not logged (thousands a second).
        if (err instanceof KeyLookupThrottledError) {
          metrics.lookupsThrottled.inc();
          res.set("retry-after", String(err.retryAfterSeconds));
          return sendError(
            res,
            503,
            "service_unavailable",
            "key_lookup_throttled",
            "too many unknown API keys: retry later",
          );
        }
        logger.error({ err: (err as Error).message }, "virtual key lookup failed");
        sendError(
          res,
          503,
          "service_unavailable",
          "key_lookup_unavailable",
          "cannot verify the API key right now",
        );
      },
    );
  };
}

/** Admin routes: the master key, checked before the body is read. */
export function masterOnly(config: AppConfig): RequestHandler {
  return (req, res, next) => {
    if (config.masterKey === undefined)
      return sendError(
        res,
        401,
        "authentication_error",
        "admin_routes_off",
        "general_settings.master_key is not configured: admin routes are off",
      );
    const given = bearerToken(req) ?? headerKey(req);
    if (given === undefined || !secretEquals(given, config.masterKey))
      return sendError(
        res,
        401,
        "authentication_error",
        "master_key_required",
        "this route needs the master key",
      );
    next();
  };
}

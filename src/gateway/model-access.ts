import type { RequestHandler } from "express";
import type { AuthLocals } from "./auth.js";
import type { GatewayMetrics } from "./gateway-metrics.js";
import { sendError } from "./openai-error.js";
import { keyAllowsModel } from "./virtual-keys.js";

/**
 * A key's `models`, enforced on every route that names a model (after the
 * key is authenticated and the body parsed, before the route does any
 * work): a model not on the list is refused 401, in LiteLLM's words. A body
 * without a string `model` is left to the route, which says what is wrong.
 */
export function modelAccess(metrics: GatewayMetrics): RequestHandler {
  return (req, res, next) => {
    const key = (res.locals as AuthLocals).key;
    const model = (req.body as { model?: unknown } | undefined)?.model;
    if (typeof model !== "string" || keyAllowsModel(key.models, model)) return next();
    metrics.keyRefusals.inc({ reason: "model_not_allowed" });
    sendError(
      res,
      401,
      "authentication_error",
      "key_model_access_denied",
      `key not allowed to access model. This key can only access models=${JSON.stringify(key.models)}. Tried to access ${model.slice(0, 256)}`,
    );
  };
}

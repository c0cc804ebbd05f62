import type { RequestHandler } from "express";
import type { AuthLocals } from "../auth.js";
import { sendModelNotFound } from "../openai-error.js";
import { keyAllowsModel } from "../virtual-keys.js";
import type { RouteContext } from "./context.js";

/** A model as OpenAI lists it. `created` is 0: the gateway does not know when a model was made. */
function entry(ctx: RouteContext, id: string): Record<string, unknown> {
  return { id, object: "model", created: 0, owned_by: ctx.models.ownerOf(id) };
}

/**
 * GET /v1/models: the model names this key may ask for (mock and model_list,
 * within the key's `models` if it has any), as LiteLLM lists them.
 */
export function listModels(ctx: RouteContext): RequestHandler {
  return (_req, res) => {
    const allowed = (res.locals as AuthLocals).key.models;
    const ids = ctx.models.names().filter((id) => keyAllowsModel(allowed, id));
    res.json({ object: "list", data: ids.map((id) => entry(ctx, id)) });
  };
}

/**
 * GET /v1/models/:model: one, or OpenAI's 404 model_not_found, also for a
 * model the key may not use (OpenAI's answer: it does not exist "or you do not
 * have access to it").
 */
export function getModel(ctx: RouteContext): RequestHandler {
  return (req, res) => {
    const id = String(req.params.model ?? "");
    const allowed = (res.locals as AuthLocals).key.models;
    if (!ctx.models.has(id) || !keyAllowsModel(allowed, id)) return sendModelNotFound(res, id);
    res.json(entry(ctx, id));
  };
}

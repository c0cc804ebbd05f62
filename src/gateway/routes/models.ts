import type { RequestHandler } from "express";
import { sendModelNotFound } from "../openai-error.js";
import type { RouteContext } from "./context.js";

/** A model as OpenAI lists it. `created` is 0: the gateway does not know when a model was made. */
function entry(ctx: RouteContext, id: string): Record<string, unknown> {
  return { id, object: "model", created: 0, owned_by: ctx.models.ownerOf(id) };
}

/** GET /v1/models: every model name clients may ask for (mock and model_list). */
export function listModels(ctx: RouteContext): RequestHandler {
  return (_req, res) => {
    res.json({ object: "list", data: ctx.models.names().map((id) => entry(ctx, id)) });
  };
}

/** GET /v1/models/:model: one, or OpenAI's 404 model_not_found. */
export function getModel(ctx: RouteContext): RequestHandler {
  return (req, res) => {
    const id = String(req.params.model ?? "");
    if (!ctx.models.has(id)) return sendModelNotFound(res, id);
    res.json(entry(ctx, id));
  };
}

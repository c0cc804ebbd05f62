import type { Request, Response } from "express";
import type { ModelDeployment } from "../../config/config.js";
import { SpendEventError } from "../../produce/spend-event.js";
import type { AuthLocals } from "../auth.js";
import type { ChargedEndpoint } from "../charge-check.js";
import { sendBacklogged, sendError, sendHalted, sendModelNotFound } from "../openai-error.js";
import type { KeyInfo } from "../virtual-keys.js";
import { counted, type RouteContext } from "./context.js";

/** A request let through to a model: whose key pays, and which deployment answers. */
export interface Admitted {
  key: KeyInfo;
  deployment: ModelDeployment;
}

/**
 * Everything that must hold before a model runs, for every route that calls
 * one: a request answered is a cost incurred and must be recorded, so each
 * reason it could not be (the pipeline halted or behind, the buffer full, an
 * owner or id the flush would refuse) is checked first, and answered in
 * OpenAI's shape. Undefined: the answer has been sent.
 */
export function admit(
  ctx: RouteContext,
  _req: Request,
  res: Response,
  model: string,
  endpoint: ChargedEndpoint,
  endUserId: string | undefined,
  tags: string[] | undefined,
): Admitted | undefined {
  const { producer, charge } = ctx;
  const key = (res.locals as AuthLocals).key;
  const halted = producer.halted;
  if (halted !== undefined) {
    sendHalted(res, halted);
    return undefined;
  }
  // Refused before the model runs: the spend pipeline is already further
  // behind than the operator allows.
  if (producer.backlogged) {
    sendBacklogged(res);
    return undefined;
  }
  const deployment = ctx.models.pick(model);
  if (deployment === undefined) {
    sendModelNotFound(res, model);
    return undefined;
  }
  if (producer.full) {
    ctx.producerStats.eventsRejected.inc({ reason: "buffer_full" });
    sendError(res, 503, "service_unavailable", "buffer_full", "spend buffer full: retry later");
    return undefined;
  }
  const problem = charge.keyProblem(key);
  if (problem !== undefined) {
    counted(ctx, problem);
    sendError(
      res,
      403,
      "permission_error",
      "key_not_chargeable",
      `this key cannot be charged: its ${problem.message}; an administrator must fix the key's owner ids`,
    );
    return undefined;
  }
  try {
    charge.check(key, model, endpoint, endUserId, tags);
  } catch (err) {
    if (!(err instanceof SpendEventError)) throw err;
    sendUnaccountable(res, counted(ctx, err));
    return undefined;
  }
  return { key, deployment };
}

/** A request whose spend the producer would refuse: never served uncharged. */
export function sendUnaccountable(res: Response, err: SpendEventError): void {
  sendError(
    res,
    400,
    "invalid_request_error",
    "unaccountable",
    `cannot account this request: ${err.message}`,
  );
}

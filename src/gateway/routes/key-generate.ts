import type { RequestHandler } from "express";
import { describeIssue, GENERATE_FIELDS, generateBody, keyChanges } from "../key-admin.js";
import { sendError } from "../openai-error.js";
import { createKey, KeyInputError, keyResponse } from "../virtual-keys.js";
import { budgetPart, budgetProblem, keyBudgetView, writeBudget } from "./budgets.js";
import type { RouteContext } from "./context.js";

/**
 * POST /key/generate (master key), in LiteLLM's field names: a key for a
 * user, team and/or organization, whose rows are created if new, with the
 * models it may call, how long it lasts (`duration`) and metadata. Unknown
 * fields are refused, named. The plaintext key is in the answer, once;
 * PostgreSQL keeps only its hash.
 */
export function keyGenerate(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const parsed = generateBody.safeParse(req.body ?? {});
    if (!parsed.success)
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        describeIssue(parsed.error, GENERATE_FIELDS),
      );
    const b = parsed.data;
    const budget = budgetPart(b);
    const problem = budget !== undefined ? budgetProblem(budget, null) : undefined;
    if (problem !== undefined)
      return sendError(res, 400, "invalid_request_error", "invalid_body", problem);
    try {
      const c = keyChanges(b, {
        metadataMaxBytes: ctx.config.gateway.keyMetadataMaxBytes,
        now: Date.now(),
      });
      const k = await createKey(ctx.db, {
        ...(b.user_id != null ? { userId: b.user_id } : {}),
        ...(b.team_id != null ? { teamId: b.team_id } : {}),
        ...(b.organization_id != null ? { organizationId: b.organization_id } : {}),
        ...(c.keyAlias != null ? { keyAlias: c.keyAlias } : {}),
        ...(c.models !== undefined ? { models: c.models } : {}),
        ...(c.expires != null ? { expires: c.expires } : {}),
        ...(c.metadata !== undefined ? { metadata: c.metadata } : {}),
      });
      ctx.logger.info({ keyAlias: k.keyAlias, userId: k.userId, teamId: k.teamId }, "key created");
      if (budget !== undefined) await writeBudget(ctx, "key", k.token, budget);
      res.json({
        ...keyResponse(k),
        ...(budget !== undefined ? { budget: await keyBudgetView(ctx, k.token) } : {}),
      });
    } catch (err) {
      if (err instanceof KeyInputError)
        return sendError(
          res,
          400,
          "invalid_request_error",
          err.kind === "id" ? "invalid_id" : "invalid_body",
          err.message,
        );
      throw err;
    }
  };
}

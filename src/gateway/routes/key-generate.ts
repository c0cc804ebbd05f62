import type { RequestHandler } from "express";
import { z } from "zod";
import { sendError } from "../openai-error.js";
import { createKey, KeyInputError, keyResponse } from "../virtual-keys.js";
import type { RouteContext } from "./context.js";

const body = z.object({
  user_id: z.string().nullish(),
  team_id: z.string().nullish(),
  organization_id: z.string().nullish(),
  key_alias: z.string().nullish(),
});

/**
 * POST /key/generate (master key), in LiteLLM's field names: a key for a
 * user, team and/or organization, whose rows are created if new. The
 * plaintext key is in the answer, once; PostgreSQL keeps only its hash.
 */
export function keyGenerate(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const parsed = body.safeParse(req.body ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        `${issue?.path.map(String).join(".") ?? ""}: ${issue?.message ?? "invalid"}`,
      );
    }
    const b = parsed.data;
    try {
      const k = await createKey(ctx.db, {
        ...(b.user_id != null ? { userId: b.user_id } : {}),
        ...(b.team_id != null ? { teamId: b.team_id } : {}),
        ...(b.organization_id != null ? { organizationId: b.organization_id } : {}),
        ...(b.key_alias != null ? { keyAlias: b.key_alias } : {}),
      });
      ctx.logger.info({ keyAlias: k.keyAlias, userId: k.userId, teamId: k.teamId }, "key created");
      res.json(keyResponse(k));
    } catch (err) {
      if (err instanceof KeyInputError)
        return sendError(res, 400, "invalid_request_error", "invalid_id", err.message);
      throw err;
    }
  };
}

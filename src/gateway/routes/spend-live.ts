import type { RequestHandler } from "express";
import { z } from "zod";
import { idProblem } from "../../contract/ids.js";
import { picoToDecimal } from "../../contract/money.js";
import { ENTITY_KINDS } from "../../contract/spend-batch.js";
import { liveSpend } from "../live-spend.js";
import { sendError } from "../openai-error.js";
import type { RouteContext } from "./context.js";

const query = z.object({
  kind: z.enum(ENTITY_KINDS),
  id: z.string().min(1),
  id2: z.string().optional(),
});

/**
 * GET /spend/live (master key): an entity's spend as a budget check needs
 * it, committed plus what is still pending in Redis and in this process.
 * Costs O(pending jobs' rows): see live-spend.ts.
 */
export function spendLive(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const parsed = query.safeParse(req.query);
    if (!parsed.success)
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        `kind must be one of ${ENTITY_KINDS.join(", ")} and id must be given`,
      );
    const { kind, id, id2 } = parsed.data;
    // An id no event could have been recorded under has no spend; PostgreSQL
    // would refuse some of them (NUL) rather than answer.
    for (const [field, v] of [
      ["id", id],
      ["id2", id2],
    ] as const) {
      if (v === undefined) continue;
      const problem =
        v.length > ctx.config.limits.maxIdLength
          ? { detail: `is longer than ${ctx.config.limits.maxIdLength} characters` }
          : idProblem(v);
      if (problem !== undefined)
        return sendError(
          res,
          400,
          "invalid_request_error",
          "invalid_id",
          `${field} ${problem.detail}`,
        );
    }
    const live = await liveSpend(
      { db: ctx.db, queues: ctx.queues, producer: ctx.producer },
      kind,
      id,
      id2,
    );
    res.json({
      kind,
      id,
      ...(id2 !== undefined ? { id2 } : {}),
      committed: picoToDecimal(live.committedPico),
      pending_redis: picoToDecimal(live.pendingRedisPico),
      pending_local: picoToDecimal(live.pendingLocalPico),
      total: picoToDecimal(live.totalPico),
      as_of: live.asOf.toISOString(),
    });
  };
}

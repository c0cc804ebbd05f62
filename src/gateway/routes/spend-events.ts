import type { RequestHandler } from "express";
import { z } from "zod";
import { BatchRefusedError, BufferFullError } from "../../produce/producer.js";
import { sendBacklogged, sendError, sendHalted } from "../openai-error.js";
import { chargeIngested } from "./budgets.js";
import type { RouteContext } from "./context.js";

// The envelope only: each event is validated by the producer, with a reason per event.
const body = z.object({ events: z.array(z.unknown()) });

/**
 * POST /spend/events: batch ingest for gateways written in other languages
 * (master key). All or nothing: a batch with one refused event records none
 * of its events, so a client can fix and resend it whole without counting
 * any event twice.
 */
export function spendEvents(ctx: RouteContext): RequestHandler {
  const { config, producer } = ctx;
  return (req, res) => {
    const parsed = body.safeParse(req.body);
    if (!parsed.success)
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        'the body must be { "events": [...] }',
      );
    const events = parsed.data.events;
    const halted = producer.halted;
    if (halted !== undefined) return sendHalted(res, halted);
    if (producer.backlogged) return sendBacklogged(res);
    if (events.length > config.gateway.ingestMaxEvents)
      return sendError(
        res,
        413,
        "invalid_request_error",
        "batch_too_large",
        `${events.length} events in one batch: at most ${config.gateway.ingestMaxEvents} (spend_buffer_settings.ingest_max_events)`,
      );
    try {
      producer.recordAll(events);
    } catch (err) {
      if (err instanceof BatchRefusedError)
        return sendError(res, 400, "invalid_request_error", "events_refused", err.message, {
          accepted: 0,
          rejected: err.refused.map(({ index, error }) => ({
            index,
            reason: error.reason,
            field: error.field,
            message: error.message,
          })),
        });
      if (err instanceof BufferFullError)
        return sendError(
          res,
          503,
          "service_unavailable",
          "buffer_full",
          `${err.message}: nothing was recorded`,
        );
      throw err;
    }
    chargeIngested(ctx, events);
    res.json({ accepted: events.length, rejected: [] });
  };
}

import type { RequestHandler, Response } from "express";
import { z } from "zod";
import type { SealedBatch } from "../../contract/spend-sink.js";
import { sleep, systemClock, withTimeout } from "../../produce/clock.js";
import { BatchRefusedError, BufferFullError } from "../../produce/producer.js";
import type { SpendEventError } from "../../produce/spend-event.js";
import { sealStandalone } from "../../produce/standalone.js";
import type { IdempotentOutcome } from "../gateway-metrics.js";
import {
  attemptId,
  idempotentProducerId,
  parseIdempotencyKey,
  sha256Hex,
  type ClaimState,
} from "../idempotency.js";
import { sendBacklogged, sendError, sendHalted } from "../openai-error.js";
import { chargeIngested } from "./budgets.js";
import type { RouteContext } from "./context.js";

// The envelope only: each event is validated by the producer, with a reason per event.
const body = z.object({ events: z.array(z.unknown()) });

/** How long an idempotent attempt keeps trying to add its batches to the queues before it answers 503. */
const SEND_DEADLINE_MS = 5_000;

/**
 * POST /spend/events: batch ingest for gateways written in other languages
 * (master key). All or nothing: a batch with one refused event records none
 * of its events, so a client can fix and resend it whole without counting
 * any event twice. With an `Idempotency-Key`, a batch sent again under the
 * same key is applied once (idempotency.ts says how).
 */
export function spendEvents(ctx: RouteContext): RequestHandler {
  const { config, producer } = ctx;
  return async (req, res) => {
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
    const idem = parseIdempotencyKey(req.headers["idempotency-key"], req.rawHeaders);
    if (!idem.ok) {
      ctx.gatewayStats.idempotent.inc({ outcome: "invalid_key" });
      return sendError(res, 400, "invalid_request_error", "invalid_idempotency_key", idem.message);
    }
    if (idem.key !== undefined) return idempotent(ctx, res, idem.key, req.body, events);
    const halted = producer.halted;
    if (halted !== undefined) return sendHalted(res, halted);
    if (producer.backlogged) return sendBacklogged(res);
    if (events.length > config.gateway.ingestMaxEvents) return tooMany(ctx, res, events.length);
    try {
      producer.recordAll(events);
    } catch (err) {
      if (err instanceof BatchRefusedError) return refusedBatch(res, err.message, err.refused);
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

function tooMany(ctx: RouteContext, res: Response, n: number): void {
  sendError(
    res,
    413,
    "invalid_request_error",
    "batch_too_large",
    `${n} events in one batch: at most ${ctx.config.gateway.ingestMaxEvents} (spend_buffer_settings.ingest_max_events)`,
  );
}

function refusedBatch(
  res: Response,
  message: string,
  refused: readonly { index: number; error: SpendEventError }[],
): void {
  sendError(res, 400, "invalid_request_error", "events_refused", message, {
    accepted: 0,
    rejected: refused.map(({ index, error }) => ({
      index,
      reason: error.reason,
      field: error.field,
      message: error.message,
    })),
  });
}

/** The answer to an attempt whose batch is (or was already) in the queues. */
function accepted(res: Response, n: number, replayed: boolean): void {
  if (replayed) res.set("idempotent-replayed", "true");
  res.json({ accepted: n, rejected: [], replayed });
}

async function idempotent(
  ctx: RouteContext,
  res: Response,
  key: string,
  rawBody: unknown,
  events: readonly unknown[],
): Promise<void> {
  const { config, producer } = ctx;
  const count = (outcome: IdempotentOutcome): void => {
    ctx.gatewayStats.idempotent.inc({ outcome });
  };
  const store = ctx.idempotency;
  if (store === undefined) {
    count("unavailable");
    return sendError(
      res,
      400,
      "invalid_request_error",
      "idempotency_unavailable",
      "Idempotency-Key needs the Redis buffer (general_settings.use_redis_transaction_buffer: true) on this gateway",
    );
  }
  const keyHash = sha256Hex(key);
  const fingerprint = sha256Hex(JSON.stringify(rawBody));
  const reused = (): void => {
    count("key_reused");
    sendError(
      res,
      422,
      "invalid_request_error",
      "idempotency_key_reused",
      "this Idempotency-Key was already used with a different body: use a new key for a new batch",
    );
  };
  const unavailable = (what: string): void => {
    count("unavailable");
    sendError(
      res,
      503,
      "service_unavailable",
      "ingest_unavailable",
      `${what}: send the same batch again with the same Idempotency-Key`,
    );
  };

  // A batch already in the queues is answered as it was, whatever this
  // gateway's state: a replay does no work.
  let seen: Awaited<ReturnType<typeof store.peek>>;
  try {
    seen = await store.peek(keyHash, fingerprint);
  } catch (err) {
    ctx.logger.warn({ err: (err as Error).message }, "idempotency claim unreadable");
    return unavailable("Redis did not answer: nothing was recorded");
  }
  if (seen?.outcome === "mismatch") return reused();
  if (seen?.outcome === "done") {
    count("replayed");
    return accepted(res, seen.accepted, true);
  }
  const halted = producer.halted;
  if (halted !== undefined) return sendHalted(res, halted);
  if (producer.backlogged) return sendBacklogged(res);
  if (events.length > config.gateway.ingestMaxEvents) return tooMany(ctx, res, events.length);

  // Validated and sealed before anything is claimed: a refused batch leaves
  // the key free (as Stripe does for requests that fail validation). An
  // attempt resuming a claim seals as of the first attempt's reception, so
  // validation and every event's date are the same as then.
  const proposed: ClaimState = {
    receivedAt: seen?.receivedAt ?? Date.now(),
    rowsPerJob: config.producer.maxRowsPerJob,
    partitions: config.partitions,
  };
  const producerId = idempotentProducerId(keyHash);
  const seal = (s: ClaimState): ReturnType<typeof sealStandalone> =>
    sealStandalone(events, {
      limits: config.limits,
      now: s.receivedAt,
      partitions: s.partitions,
      maxRowsPerJob: s.rowsPerJob,
      producerId,
      sealedAt: s.receivedAt,
    });
  let sealed = seal(proposed);
  if (!sealed.ok) {
    for (const { error } of sealed.refused)
      ctx.producerStats.eventsRejected.inc({ reason: error.reason });
    return refusedBatch(
      res,
      `${sealed.refused.length} of ${events.length} events refused: nothing was recorded`,
      sealed.refused,
    );
  }

  const owner = attemptId();
  let claim: Awaited<ReturnType<typeof store.claim>>;
  try {
    claim = await store.claim(keyHash, fingerprint, owner, proposed);
  } catch (err) {
    ctx.logger.warn({ err: (err as Error).message }, "idempotency claim failed");
    return unavailable("Redis did not answer: nothing was recorded");
  }
  switch (claim.outcome) {
    case "mismatch":
      return reused();
    case "done":
      count("replayed");
      return accepted(res, claim.accepted, true);
    case "busy":
      count("in_progress");
      res.set("retry-after", String(Math.max(1, Math.ceil(claim.retryAfterMs / 1000))));
      return sendError(
        res,
        409,
        "invalid_request_error",
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is being processed: retry after Retry-After seconds to get its answer",
      );
    case "claimed":
    case "taken":
      break;
  }
  if (claim.partitions !== config.partitions) {
    // The first attempt's batches were cut for another partition count; which
    // of them reached the queues cannot be told from here.
    await store.release(keyHash, fingerprint, owner).catch(() => undefined);
    count("unavailable");
    return sendError(
      res,
      409,
      "invalid_request_error",
      "idempotency_key_in_use",
      `this Idempotency-Key's first attempt was cut for ${claim.partitions} flush partitions and this gateway runs ${config.partitions}: it cannot be resumed safely; an operator must check spend_applied_batch for ${producerId}.*`,
    );
  }
  if (
    claim.receivedAt !== proposed.receivedAt ||
    claim.rowsPerJob !== proposed.rowsPerJob ||
    claim.partitions !== proposed.partitions
  ) {
    sealed = seal(claim);
    if (!sealed.ok) {
      await store.release(keyHash, fingerprint, owner).catch(() => undefined);
      return refusedBatch(
        res,
        `${sealed.refused.length} of ${events.length} events refused: nothing was recorded`,
        sealed.refused,
      );
    }
  }

  try {
    await sendAll(ctx, sealed.batches);
  } catch (err) {
    ctx.logger.warn(
      { err: (err as Error).message, producerId },
      "idempotent batch not delivered; the client's retry resumes it",
    );
    await store.release(keyHash, fingerprint, owner).catch(() => undefined);
    return unavailable("the spend queues did not take the batch in time");
  }
  // The batches are in the queues. If marking the claim fails, a retry
  // resumes it once the lease runs out and sends copies the ids make harmless.
  await store.complete(keyHash, fingerprint, events.length).catch((err: unknown) => {
    ctx.logger.warn({ err: (err as Error).message }, "idempotency claim not marked done");
  });
  count(claim.outcome === "taken" ? "resumed" : "recorded");
  accepted(res, events.length, false);
}

/** Adds every batch to the queues (job id = batch id), retrying within the deadline. */
async function sendAll(ctx: RouteContext, batches: readonly SealedBatch[]): Promise<void> {
  const sink = ctx.producer.sink;
  const deadline = Date.now() + SEND_DEADLINE_MS;
  for (const b of batches) {
    for (let attempt = 0; ; attempt++) {
      try {
        await withTimeout(systemClock, sink.write(b), 2_000, "send");
        break;
      } catch (err) {
        ctx.producerStats.enqueueFailures.inc();
        if (Date.now() + 100 * 2 ** attempt > deadline) throw err;
        await sleep(systemClock, 100 * 2 ** attempt);
      }
    }
  }
}

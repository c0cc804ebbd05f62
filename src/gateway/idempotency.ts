import { createHash, randomUUID } from "node:crypto";
import { LuaScript } from "../redis/lua.js";
import type { RedisClient } from "../redis/connection.js";
import type { RedisKeys } from "../redis/keys.js";

/**
 * Idempotency keys for POST /spend/events, as Stripe and the IETF draft
 * (draft-ietf-httpapi-idempotency-key-header) define them: a client sends
 * `Idempotency-Key: <key>` with a batch, and the same batch sent again with
 * the same key within ingest_idempotency_ttl_hours is applied once, on any
 * gateway, however the two attempts overlap.
 *
 * How (routes/spend-events.ts does it in this order):
 * 1. The key is claimed in Redis (idempotency-claim-1.lua): a hash holding
 *    the body's fingerprint, the time the first attempt received it, the
 *    batch layout (rows per job, partition count), a lease and, once done,
 *    the answer. Claims live for the TTL, from the first attempt.
 * 2. The batch is sealed on its own (produce/standalone.ts), not mixed into
 *    the producer's aggregate, with batch ids derived from the key:
 *    `idem-<sha256(key)>.<n>`. Sealing depends only on the events and what
 *    the claim holds, so any attempt seals the same batches under the same ids.
 * 3. The batches are added to the queues straight away (job id = batch id),
 *    then the claim is marked done with the answer.
 *
 * A gateway that dies after claiming leaves a pending claim; once its lease
 * (ingest_idempotency_lease_seconds, 10 s) runs out, the client's next attempt, on any gateway, takes the
 * claim over and sends the same batches again. Whatever the first attempt
 * got into Redis is a copy under the same id: BullMQ ignores it while the
 * job exists, PostgreSQL's spend_applied_batch skips it after. So the batch
 * is applied exactly once whichever attempts crash, overlap or both reach
 * Redis; an attempt that finds the claim pending and leased is told 409
 * (retry), one with another body under the key 422.
 */

/** How long an attempt holds a claim before another may resume it (ingest_idempotency_lease_seconds). */
export const DEFAULT_LEASE_MS = 10_000;

/** The most characters an Idempotency-Key may have (Stripe's bound). */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/**
 * The key a request sent, or why it is refused. Printable ASCII, 1-255
 * characters. The IETF draft makes the header a structured-field string
 * (`"..."`, with `\"` and `\\` escapes); Stripe sends it bare. Both are read.
 * `rawHeaders` (the request's, names and values alternating) tells a header
 * sent twice, which Node joins into one value ("a, b") that would pass for a key.
 */
export function parseIdempotencyKey(
  header: string | string[] | undefined,
  rawHeaders: readonly string[] = [],
): { ok: true; key: string | undefined } | { ok: false; message: string } {
  if (header === undefined) return { ok: true, key: undefined };
  let sent = 0;
  for (let i = 0; i < rawHeaders.length; i += 2)
    if (rawHeaders[i]?.toLowerCase() === "idempotency-key") sent++;
  if (Array.isArray(header) || sent > 1)
    return { ok: false, message: "Idempotency-Key: send the header once" };
  let key = header;
  if (key.startsWith('"') !== (key.length >= 2 && key.endsWith('"')))
    return { ok: false, message: 'Idempotency-Key: a quoted key must begin and end with "' };
  if (key.length >= 2 && key.startsWith('"') && key.endsWith('"')) {
    const inner = key.slice(1, -1);
    if (!/^(?:[^"\\]|\\["\\])*$/.test(inner))
      return { ok: false, message: 'Idempotency-Key: a quoted key escapes only " and \\' };
    key = inner.replace(/\\(["\\])/g, "$1");
  }
  if (key.length === 0) return { ok: false, message: "Idempotency-Key: must not be empty" };
  if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH)
    return {
      ok: false,
      message: `Idempotency-Key: ${key.length} characters, at most ${MAX_IDEMPOTENCY_KEY_LENGTH}`,
    };
  if (!/^[\x20-\x7e]+$/.test(key))
    return {
      ok: false,
      message: "Idempotency-Key: printable ASCII only (a UUID is a good key)",
    };
  return { ok: true, key };
}

export function sha256Hex(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

/** The producer id (and batch id prefix) of the batches sent under a key. */
export function idempotentProducerId(keyHash: string): string {
  return `idem-${keyHash}`;
}

/** A claim as it stands. */
export interface ClaimState {
  /** When the first attempt received the batch (epoch ms): every attempt seals as of it. */
  receivedAt: number;
  rowsPerJob: number;
  partitions: number;
}

export type ClaimResult =
  | (ClaimState & { outcome: "claimed" | "taken" })
  | (ClaimState & { outcome: "done"; accepted: number })
  | { outcome: "busy"; retryAfterMs: number }
  | { outcome: "mismatch" };

const dir = new URL("./scripts/", import.meta.url);
const scripts = {
  claim: LuaScript.load("idempotency-claim-1", dir),
  settle: LuaScript.load("idempotency-settle-1", dir),
};

export class IdempotencyStore {
  constructor(
    private readonly redis: RedisClient,
    private readonly keys: RedisKeys,
    /** How long a key is remembered, from its first attempt. */
    readonly ttlMs: number,
    readonly leaseMs: number = DEFAULT_LEASE_MS,
  ) {}

  /** The claim as it stands, without changing it; null if the key is new (or forgotten). */
  async peek(
    keyHash: string,
    fingerprint: string,
  ): Promise<
    | null
    | { outcome: "mismatch" }
    | (ClaimState & { outcome: "done"; accepted: number })
    | (ClaimState & { outcome: "pending" })
  > {
    const [fp, state, received, rows, parts, accepted] = await this.redis.hmget(
      this.keys.idempotencyClaim(keyHash),
      "fp",
      "state",
      "received",
      "rows",
      "parts",
      "accepted",
    );
    if (fp === null || fp === undefined) return null;
    if (fp !== fingerprint) return { outcome: "mismatch" };
    const s: ClaimState = {
      receivedAt: Number(received),
      rowsPerJob: Number(rows),
      partitions: Number(parts),
    };
    return state === "done"
      ? { outcome: "done", accepted: Number(accepted ?? 0), ...s }
      : { outcome: "pending", ...s };
  }

  /**
   * Claims the key for an attempt (`owner`), resumes a claim whose lease
   * ran out, or says why not. `proposed` is used only if the claim is new.
   */
  async claim(
    keyHash: string,
    fingerprint: string,
    owner: string,
    proposed: ClaimState,
  ): Promise<ClaimResult> {
    const r = (await scripts.claim.run(
      this.redis,
      [this.keys.idempotencyClaim(keyHash)],
      [
        fingerprint,
        owner,
        this.leaseMs,
        this.ttlMs,
        proposed.receivedAt,
        proposed.rowsPerJob,
        proposed.partitions,
      ],
    )) as [string, string, string, string, string];
    const [outcome, received, rows, parts, last] = r;
    const s: ClaimState = {
      receivedAt: Number(received),
      rowsPerJob: Number(rows),
      partitions: Number(parts),
    };
    switch (outcome) {
      case "claimed":
      case "taken":
        return { outcome, ...s };
      case "done":
        return { outcome, accepted: Number(last), ...s };
      case "busy":
        return { outcome, retryAfterMs: Number(last) };
      default:
        return { outcome: "mismatch" };
    }
  }

  /** The batches are in the queues: later attempts get `accepted` back. */
  async complete(keyHash: string, fingerprint: string, accepted: number): Promise<void> {
    await scripts.settle.run(
      this.redis,
      [this.keys.idempotencyClaim(keyHash)],
      [fingerprint, "done", accepted, ""],
    );
  }

  /** This attempt failed before its batches were all in: the next may resume at once. */
  async release(keyHash: string, fingerprint: string, owner: string): Promise<void> {
    await scripts.settle.run(
      this.redis,
      [this.keys.idempotencyClaim(keyHash)],
      [fingerprint, "release", 0, owner],
    );
  }
}

/** A fresh id for one attempt. */
export function attemptId(): string {
  return randomUUID();
}

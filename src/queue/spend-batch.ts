import { z } from "zod";

/**
 * The contract between producers and the flush worker: what one BullMQ spend
 * job carries. Rows are tuples, not objects, because thousands of them sit in
 * Redis between flushes and the field names would dominate their size.
 */

export const ENTITY_KINDS = [
  "key",
  "user",
  "team",
  "team_member",
  "org",
  "end_user",
  "tag",
] as const;
export type EntityKind = (typeof ENTITY_KINDS)[number];

export const DAILY_KINDS = ["user", "team", "org", "end_user", "tag"] as const;
export type DailyKind = (typeof DAILY_KINDS)[number];

/** A count or a sum that may outgrow 2^53: a number while it is safe, else a digit string. */
export type Count = number | string;

/** [kind, id, second id (the team of a team member, else ""), spend in picodollars]. */
export type EntityRow = [kind: EntityKind, id: string, id2: string, spendPico: string];

/**
 * [kind, entity id, date, api key, model, model group, provider, MCP tool,
 *  endpoint, prompt, completion, cache read, cache creation, api requests,
 *  successful, failed, spend in picodollars].
 */
export type DailyRow = [
  kind: DailyKind,
  entityId: string,
  date: string,
  apiKey: string,
  model: string,
  modelGroup: string,
  provider: string,
  mcpToolName: string,
  endpoint: string,
  promptTokens: Count,
  completionTokens: Count,
  cacheReadInputTokens: Count,
  cacheCreationInputTokens: Count,
  apiRequests: Count,
  successfulRequests: Count,
  failedRequests: Count,
  spendPico: string,
];

export interface SpendJobData<Row> {
  /** Payload version, so a future format can be told apart in a mixed deployment. */
  v: 1;
  /** Unique per batch; also the BullMQ job id and the key of spend_applied_batch. */
  batchId: string;
  producerId: string;
  /** When the producer sealed the batch (epoch ms): measures staleness. */
  sealedAt: number;
  /** The producer's partition count (absent from producers before partitions existed: 1). */
  partitions?: number;
  rows: Row[];
}

export type EntitySpendJob = SpendJobData<EntityRow>;
export type DailySpendJob = SpendJobData<DailyRow>;

// The flush worker re-validates every job: Redis is shared, and one malformed
// job must be set aside rather than block every batch behind it.
const id = z.string().max(1024);
const digits = z.string().regex(/^\d{1,38}$/);
const count = z.union([z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), digits]);
const date = z.string().regex(/^\d{4}-\d{2}-\d{2}$/);
const header = {
  v: z.literal(1),
  batchId: z.string().min(1).max(200),
  producerId: z.string().max(200),
  sealedAt: z.number().int().nonnegative(),
  partitions: z.number().int().min(1).max(1024).optional(),
};

export const entityJobSchema = z.object({
  ...header,
  rows: z.array(z.tuple([z.enum(ENTITY_KINDS), id.min(1), id, digits])),
});

export const dailyJobSchema = z.object({
  ...header,
  rows: z.array(
    z.tuple([
      z.enum(DAILY_KINDS),
      id.min(1),
      date,
      id,
      id,
      id,
      id,
      id,
      id,
      count,
      count,
      count,
      count,
      count,
      count,
      count,
      digits,
    ]),
  ),
});

/** Encodes a bigint sum for the wire: a plain number whenever JSON can carry it exactly. */
export function encodeCount(n: bigint): Count {
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
}

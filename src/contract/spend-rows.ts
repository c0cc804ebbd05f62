/**
 * What one spend row is, in every job format: the entity and daily kinds,
 * and the row tuples the flush works on (format 1's rows).
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
export type DailyRow = [kind: DailyKind, entityId: string, ...DailyContextDims, ...DailyCounts];

/** What the daily rows of one request context share: date, api key, model, model group, provider, MCP tool, endpoint. */
export type DailyContextDims = [
  date: string,
  apiKey: string,
  model: string,
  modelGroup: string,
  provider: string,
  mcpToolName: string,
  endpoint: string,
];

/** A daily row's seven counters and its spend in picodollars. */
export type DailyCounts = [
  promptTokens: Count,
  completionTokens: Count,
  cacheReadInputTokens: Count,
  cacheCreationInputTokens: Count,
  apiRequests: Count,
  successfulRequests: Count,
  failedRequests: Count,
  spendPico: string,
];

/** A daily row without its context (format 2). */
export type DailyCells = [kind: DailyKind, entityId: string, ...DailyCounts];

/** Daily rows grouped by the context they share (format 2). */
export type DailyGroup = [context: DailyContextDims, rows: DailyCells[]];

/** Two daily rows share a context: date, api key, model, model group, provider, MCP tool, endpoint. */
export function sameDailyContext(a: DailyRow, b: DailyRow): boolean {
  for (let i = 2; i < 9; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Encodes a bigint sum for the wire: a plain number whenever JSON can carry it exactly. */
export function encodeCount(n: bigint): Count {
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
}

import { DEFAULT_LIMITS, type ValidationLimits } from "../config/config.js";
import { DATE_BYTES, MAX_DAILY_KEY_BYTES, idProblem, utf8Bytes } from "../contract/ids.js";
import {
  MoneyError,
  PICO_PER_USD,
  usdNumberToPico,
  usdStringToPicoNumber,
} from "../contract/money.js";

/**
 * One LLM request's cost and usage, as a gateway reports it. Every id is
 * optional, but at least one entity (key, user, team, organization, end user
 * or tag) must be named: spend that belongs to nobody cannot be accounted.
 * An id or the tags may be absent or null (the same thing): a caller can
 * then build every event with the same fields, which is much cheaper than
 * spreading optional ones in.
 */
export interface SpendEvent {
  /** Cost in USD: a number (rounded at 10^-12) or an exact decimal string. */
  spend: number | string;
  /** The hashed virtual key (LiteLLM_VerificationToken.token). */
  apiKey?: string | null;
  userId?: string | null;
  teamId?: string | null;
  organizationId?: string | null;
  /** The caller's own end user (the OpenAI `user` field). */
  endUserId?: string | null;
  /** Every tag gets the request's full cost. */
  tags?: readonly string[] | null;
  model?: string | null;
  modelGroup?: string | null;
  /** custom_llm_provider, e.g. "openai". */
  provider?: string | null;
  endpoint?: string | null;
  mcpToolName?: string | null;
  promptTokens?: number;
  completionTokens?: number;
  cacheReadInputTokens?: number;
  cacheCreationInputTokens?: number;
  /** Whether the request succeeded; failed requests still cost. Default true. */
  success?: boolean;
  /** Request start: decides the daily row's UTC date. Default: now. */
  startTime?: Date | number | string;
}

/** A validated event, normalised: absent dimensions are "", money is picodollars. */
export interface NormalizedEvent {
  spendPico: number;
  apiKey: string;
  userId: string;
  teamId: string;
  organizationId: string;
  endUserId: string;
  tags: readonly string[];
  model: string;
  modelGroup: string;
  provider: string;
  endpoint: string;
  mcpToolName: string;
  promptTokens: number;
  completionTokens: number;
  cacheReadInputTokens: number;
  cacheCreationInputTokens: number;
  success: boolean;
  startMs: number;
}

/** Why an event was rejected: bounded, so it can label a metric. */
export type RejectReason =
  | "not_object"
  | "unknown_field"
  | "invalid_spend"
  | "invalid_tokens"
  | "invalid_id"
  | "invalid_unicode"
  | "key_too_large"
  | "invalid_tags"
  | "invalid_success"
  | "invalid_start_time"
  | "start_time_out_of_range"
  | "no_entity";

export const REJECT_REASONS: readonly RejectReason[] = [
  "not_object",
  "unknown_field",
  "invalid_spend",
  "invalid_tokens",
  "invalid_id",
  "invalid_unicode",
  "key_too_large",
  "invalid_tags",
  "invalid_success",
  "invalid_start_time",
  "start_time_out_of_range",
  "no_entity",
];

export class SpendEventError extends Error {
  readonly code = "SPEND_EVENT_REFUSED";
  constructor(
    readonly reason: RejectReason,
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = "SpendEventError";
  }
}

// The limits are configuration (spend_buffer_settings.max_*_per_event): their
// type and defaults live with the rest of it.
export { DEFAULT_LIMITS, type ValidationLimits };

const ALLOWED_FIELDS = new Set<string>([
  "spend",
  "apiKey",
  "userId",
  "teamId",
  "organizationId",
  "endUserId",
  "tags",
  "model",
  "modelGroup",
  "provider",
  "endpoint",
  "mcpToolName",
  "promptTokens",
  "completionTokens",
  "cacheReadInputTokens",
  "cacheCreationInputTokens",
  "success",
  "startTime",
]);

// Ids that turn into prototype accessors if any consumer ever indexes a plain object by them.
const RESERVED_IDS = new Set(["__proto__", "constructor", "prototype"]);

/**
 * Which field an id is: its name, or the index of a tag. A tag's name is
 * built only for an error: formatting it for every tag of every event cost
 * an allocation each.
 */
type IdField = string | number;

function fieldName(field: IdField): string {
  return typeof field === "number" ? `tags[${field}]` : field;
}

/** Type and length of one id: constant time. Its content is checked by checkIdContent. */
function checkId(value: unknown, field: IdField, limits: ValidationLimits): string {
  if (value === undefined || value === null) return "";
  if (typeof value !== "string")
    throw new SpendEventError(
      "invalid_id",
      fieldName(field),
      `must be a string, got ${typeof value}`,
    );
  if (value.length > limits.maxIdLength) {
    throw new SpendEventError(
      "invalid_id",
      fieldName(field),
      `longer than ${limits.maxIdLength} characters`,
    );
  }
  return value;
}

/** What an id holds: see contract/ids.ts for what is refused and why. */
function checkIdContent(value: string, field: IdField): void {
  const problem = idProblem(value);
  if (problem !== undefined)
    throw new SpendEventError(problem.reason, fieldName(field), problem.detail);
  // Only the reserved names are this short-circuit's length; skip the Set lookup otherwise.
  if ((value.length === 9 || value.length === 11) && RESERVED_IDS.has(value))
    throw new SpendEventError(
      "invalid_id",
      fieldName(field),
      `reserved id ${JSON.stringify(value)}`,
    );
}

function checkTokens(value: unknown, field: string, limits: ValidationLimits): number {
  if (value === undefined || value === null) return 0;
  if (
    typeof value !== "number" ||
    !Number.isInteger(value) ||
    value < 0 ||
    value > limits.maxTokens
  ) {
    throw new SpendEventError(
      "invalid_tokens",
      field,
      `must be an integer from 0 to ${limits.maxTokens}, got ${describe(value)}`,
    );
  }
  return value;
}

/** The largest cost one event may carry under `limits`, in picodollars. */
export function maxSpendPico(limits: ValidationLimits): number {
  return Math.round(limits.maxSpendUsd * PICO_PER_USD);
}

function checkSpend(value: unknown, limits: ValidationLimits): number {
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0 || value > limits.maxSpendUsd) {
      throw new SpendEventError(
        "invalid_spend",
        "spend",
        `must be a finite USD amount from 0 to ${limits.maxSpendUsd}, got ${describe(value)}`,
      );
    }
    return usdNumberToPico(value);
  }
  if (typeof value === "string") {
    let pico: number;
    try {
      pico = usdStringToPicoNumber(value);
    } catch (err) {
      throw new SpendEventError("invalid_spend", "spend", (err as MoneyError).message);
    }
    if (pico > maxSpendPico(limits)) {
      throw new SpendEventError("invalid_spend", "spend", `more than ${limits.maxSpendUsd} USD`);
    }
    return pico;
  }
  throw new SpendEventError(
    "invalid_spend",
    "spend",
    `must be a number or a decimal string, got ${describe(value)}`,
  );
}

function checkStartTime(value: unknown, nowMs: number, limits: ValidationLimits): number {
  if (value === undefined || value === null) return nowMs;
  let ms: number;
  if (value instanceof Date) ms = value.getTime();
  else if (typeof value === "number") ms = value;
  else if (typeof value === "string") ms = Date.parse(value);
  else
    throw new SpendEventError(
      "invalid_start_time",
      "startTime",
      `must be a Date, epoch ms or ISO string, got ${describe(value)}`,
    );
  if (!Number.isFinite(ms))
    throw new SpendEventError("invalid_start_time", "startTime", "is not a valid time");
  if (ms < nowMs - limits.maxAgeMs || ms > nowMs + limits.maxFutureMs) {
    throw new SpendEventError(
      "start_time_out_of_range",
      "startTime",
      `${timeText(ms)} is outside the accepted window (${limits.maxAgeMs / 3_600_000} h back, ${limits.maxFutureMs / 60_000} min ahead)`,
    );
  }
  return ms;
}

// Dates exist only within 8.64e15 ms of the epoch: toISOString throws beyond.
const MAX_DATE_MS = 8.64e15;

function timeText(ms: number): string {
  return Math.abs(ms) <= MAX_DATE_MS ? new Date(ms).toISOString() : `${ms} ms since the epoch`;
}

function describe(value: unknown): string {
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  return value === null ? "null" : typeof value;
}

/**
 * Validates and normalises one event. Hand-written rather than a schema
 * library because it runs on every gateway request and must stay well under a
 * microsecond; the same checks guard the producer and the ingest API.
 */
export function validateSpendEvent(
  input: unknown,
  limits: ValidationLimits = DEFAULT_LIMITS,
  nowMs: number = Date.now(),
): NormalizedEvent {
  const e = normalizeSpendEvent(input, limits, nowMs);
  checkIdsContent(e);
  return e;
}

/**
 * What a request will be charged to besides its end user and tags, already
 * checked (a key's owners when the key was looked up, the model when the
 * price table was loaded): its owners, and the UTF-8 bytes of its daily
 * context (dailyContextBytes).
 */
export interface ChargedContext {
  contextBytes: number;
  userId: string;
  teamId: string;
  organizationId: string;
}

/**
 * The checks validateSpendEvent makes of an end user id and tags, alone: what
 * a gateway can check of a request before the model runs. Throws the same
 * SpendEventError. Without building an event and normalising all its fields,
 * since it runs once per request. With `charged`, also the bound on every
 * daily row key the request makes, so nothing it is charged to can be refused
 * after it was served.
 */
export function checkEndUserAndTags(
  endUserId: unknown,
  tags: unknown,
  limits: ValidationLimits = DEFAULT_LIMITS,
  charged?: ChargedContext,
): void {
  // In validateSpendEvent's order (types and lengths first, then content), so a
  // request with two faults is refused for the same one.
  const endUser = checkId(endUserId, "endUserId", limits);
  const checked = checkTags(tags, limits);
  if (endUser !== "") checkIdContent(endUser, "endUserId");
  for (let i = 0; i < checked.length; i++) checkIdContent(checked[i] as string, i);
  if (charged !== undefined)
    checkDailyKeyBytes(
      charged.contextBytes,
      charged.userId,
      charged.teamId,
      charged.organizationId,
      endUser,
      checked,
    );
}

function asEventObject(input: unknown): Record<string, unknown> {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw new SpendEventError("not_object", "event", "must be an object");
  }
  return input as Record<string, unknown>;
}

/**
 * Every check but the content of the ids (types and lengths included), in
 * constant time. The producer calls this on every request and
 * checkIdsContent only for events that bring an id its buffer has not
 * accepted before: an id equal to one already buffered has passed it.
 */
export function normalizeSpendEvent(
  input: unknown,
  limits: ValidationLimits,
  nowMs: number,
): NormalizedEvent {
  const e = asEventObject(input);
  const rawTags = e.tags;
  const success = e.success;
  // Every known field is read once; if the object has more own keys than the
  // known fields it sets, one of them is unknown (scanned for only then).
  const known =
    present(e.spend) +
    present(e.apiKey) +
    present(e.userId) +
    present(e.teamId) +
    present(e.organizationId) +
    present(e.endUserId) +
    present(rawTags) +
    present(e.model) +
    present(e.modelGroup) +
    present(e.provider) +
    present(e.endpoint) +
    present(e.mcpToolName) +
    present(e.promptTokens) +
    present(e.completionTokens) +
    present(e.cacheReadInputTokens) +
    present(e.cacheCreationInputTokens) +
    present(success) +
    present(e.startTime);
  // Object.keys rather than counting with for-in: for-in is several times
  // slower once events of a few different shapes pass through.
  if (Object.keys(e).length !== known) {
    for (const k of Object.keys(e)) {
      if (!ALLOWED_FIELDS.has(k))
        throw new SpendEventError("unknown_field", k, "is not a known event field");
    }
  }
  const spendPico = checkSpend(e.spend, limits);
  const apiKey = checkId(e.apiKey, "apiKey", limits);
  const userId = checkId(e.userId, "userId", limits);
  const teamId = checkId(e.teamId, "teamId", limits);
  const organizationId = checkId(e.organizationId, "organizationId", limits);
  const endUserId = checkId(e.endUserId, "endUserId", limits);
  const tags = checkTags(rawTags, limits);

  if (
    apiKey === "" &&
    userId === "" &&
    teamId === "" &&
    organizationId === "" &&
    endUserId === "" &&
    tags.length === 0
  ) {
    throw new SpendEventError(
      "no_entity",
      "event",
      "names no key, user, team, organization, end user or tag",
    );
  }

  if (success !== undefined && typeof success !== "boolean") {
    throw new SpendEventError(
      "invalid_success",
      "success",
      `must be a boolean, got ${describe(success)}`,
    );
  }

  return {
    spendPico,
    apiKey,
    userId,
    teamId,
    organizationId,
    endUserId,
    tags,
    model: checkId(e.model, "model", limits),
    modelGroup: checkId(e.modelGroup, "modelGroup", limits),
    provider: checkId(e.provider, "provider", limits),
    endpoint: checkId(e.endpoint, "endpoint", limits),
    mcpToolName: checkId(e.mcpToolName, "mcpToolName", limits),
    promptTokens: checkTokens(e.promptTokens, "promptTokens", limits),
    completionTokens: checkTokens(e.completionTokens, "completionTokens", limits),
    cacheReadInputTokens: checkTokens(e.cacheReadInputTokens, "cacheReadInputTokens", limits),
    cacheCreationInputTokens: checkTokens(
      e.cacheCreationInputTokens,
      "cacheCreationInputTokens",
      limits,
    ),
    success: success !== false,
    startMs: checkStartTime(e.startTime, nowMs, limits),
  };
}

/**
 * The content of every id of a normalised event (contract/ids.ts), no
 * reserved names, and every daily row's unique key within what PostgreSQL
 * can index.
 */
export function checkIdsContent(e: NormalizedEvent): void {
  if (e.apiKey !== "") checkIdContent(e.apiKey, "apiKey");
  if (e.userId !== "") checkIdContent(e.userId, "userId");
  if (e.teamId !== "") checkIdContent(e.teamId, "teamId");
  if (e.organizationId !== "") checkIdContent(e.organizationId, "organizationId");
  if (e.endUserId !== "") checkIdContent(e.endUserId, "endUserId");
  for (let i = 0; i < e.tags.length; i++) checkIdContent(e.tags[i] as string, i);
  if (e.model !== "") checkIdContent(e.model, "model");
  if (e.modelGroup !== "") checkIdContent(e.modelGroup, "modelGroup");
  if (e.provider !== "") checkIdContent(e.provider, "provider");
  if (e.endpoint !== "") checkIdContent(e.endpoint, "endpoint");
  if (e.mcpToolName !== "") checkIdContent(e.mcpToolName, "mcpToolName");
  // A UTF-16 code unit is at most 3 UTF-8 bytes: when even that bound fits,
  // as for any id of ordinary length, no string needs scanning for its bytes.
  let longest = Math.max(
    e.userId.length,
    e.teamId.length,
    e.organizationId.length,
    e.endUserId.length,
  );
  for (let i = 0; i < e.tags.length; i++) longest = Math.max(longest, (e.tags[i] as string).length);
  const contextUnits =
    e.apiKey.length +
    e.model.length +
    e.modelGroup.length +
    e.provider.length +
    e.mcpToolName.length +
    e.endpoint.length;
  if (DATE_BYTES + 3 * (contextUnits + longest) <= MAX_DAILY_KEY_BYTES) return;
  checkDailyKeyBytes(
    dailyContextBytes(e.apiKey, e.model, e.modelGroup, e.provider, e.mcpToolName, e.endpoint),
    e.userId,
    e.teamId,
    e.organizationId,
    e.endUserId,
    e.tags,
  );
}

/**
 * UTF-8 bytes of what every daily row of a request shares in its unique key:
 * date, api key, model, model group, provider, MCP tool and endpoint.
 */
export function dailyContextBytes(
  apiKey: string,
  model: string,
  modelGroup: string,
  provider: string,
  mcpToolName: string,
  endpoint: string,
): number {
  return (
    DATE_BYTES +
    utf8Bytes(apiKey) +
    utf8Bytes(model) +
    utf8Bytes(modelGroup) +
    utf8Bytes(provider) +
    utf8Bytes(mcpToolName) +
    utf8Bytes(endpoint)
  );
}

/**
 * Each daily row's key is the context plus one entity id (user, team,
 * organization, end user or a tag): the longest of them must fit.
 */
function checkDailyKeyBytes(
  contextBytes: number,
  userId: string,
  teamId: string,
  organizationId: string,
  endUserId: string,
  tags: readonly string[],
): void {
  let longest = 0;
  let field: IdField = "";
  const consider = (id: string, f: IdField): void => {
    const n = utf8Bytes(id);
    if (n > longest) {
      longest = n;
      field = f;
    }
  };
  consider(userId, "userId");
  consider(teamId, "teamId");
  consider(organizationId, "organizationId");
  consider(endUserId, "endUserId");
  for (let i = 0; i < tags.length; i++) consider(tags[i] as string, i);
  // A request naming no user, team, organization, end user or tag has no daily rows.
  if (longest === 0 || contextBytes + longest <= MAX_DAILY_KEY_BYTES) return;
  throw new SpendEventError(
    "key_too_large",
    fieldName(field),
    `makes a daily row key of ${contextBytes + longest} UTF-8 bytes (${fieldName(field)} ${longest}, date, api key, model, model group, provider, MCP tool and endpoint ${contextBytes}): at most ${MAX_DAILY_KEY_BYTES}, what PostgreSQL can index`,
  );
}

function present(v: unknown): number {
  return v === undefined ? 0 : 1;
}

// Above this many tags, duplicates are found with a Set instead of by pairs.
const TAG_PAIRWISE_LIMIT = 8;

function checkTags(raw: unknown, limits: ValidationLimits): readonly string[] {
  if (raw === undefined || raw === null) return EMPTY_TAGS;
  if (!Array.isArray(raw))
    throw new SpendEventError("invalid_tags", "tags", "must be an array of strings");
  if (raw.length > limits.maxTags)
    throw new SpendEventError("invalid_tags", "tags", `more than ${limits.maxTags} tags`);
  if (raw.length === 0) return EMPTY_TAGS;
  let duplicate = false;
  for (let i = 0; i < raw.length; i++) {
    const t = checkId(raw[i], i, limits);
    if (t === "")
      throw new SpendEventError("invalid_tags", fieldName(i), "must be a non-empty string");
    if (raw.length <= TAG_PAIRWISE_LIMIT)
      for (let j = 0; j < i; j++) if (raw[j] === t) duplicate = true;
  }
  if (raw.length > TAG_PAIRWISE_LIMIT) duplicate = new Set(raw).size !== raw.length;
  // A tag named twice on one request is still one tag: it is charged once.
  return duplicate ? [...new Set(raw as string[])] : (raw as string[]);
}

const EMPTY_TAGS: readonly string[] = Object.freeze([]);

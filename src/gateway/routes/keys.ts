import {
  budgetPart,
  budgetProblem,
  keyBudgetView,
  writeBudget,
  type BudgetBody,
} from "./budgets.js";
import type { RequestHandler, Response } from "express";
import { z } from "zod";
import {
  deleteBody,
  deleteKeys,
  describeIssue,
  findKey,
  keyChanges,
  keyOnlyBody,
  keyRef,
  listKeys,
  OWNER_FIELDS,
  UPDATE_FIELDS,
  updateBody,
  updateKey,
  type KeyChanges,
  type KeyRecord,
  type KeyRef,
} from "../key-admin.js";
import { loadBudget } from "../../budget/budget-store.js";
import { sendError } from "../openai-error.js";
import { checkId, KeyInputError } from "../virtual-keys.js";
import type { RouteContext } from "./context.js";

/**
 * LiteLLM's key routes past /key/generate, all on the master key:
 * GET /key/info?key=, GET /key/list, POST /key/update, /key/block,
 * /key/unblock, /key/delete. A change is committed in PostgreSQL, then
 * announced to every gateway (key-sync.ts) before the answer, so once a
 * route has answered, every gateway acts on the change within
 * key_sync_seconds.
 */

function badRequest(res: Response, err: KeyInputError): void {
  sendError(
    res,
    400,
    "invalid_request_error",
    err.kind === "id" ? "invalid_id" : "invalid_body",
    err.message,
  );
}

function notFound(res: Response, shown: readonly string[]): void {
  sendError(
    res,
    404,
    "not_found_error",
    "key_not_found",
    `no such key: ${shown.slice(0, 10).join(", ")}${shown.length > 10 ? ` and ${shown.length - 10} more` : ""}`,
  );
}

/** Announces, or answers 503 saying the change is saved but not yet acted on everywhere. */
async function announced(
  ctx: RouteContext,
  res: Response,
  tokens: readonly string[],
): Promise<boolean> {
  try {
    await ctx.announceKeyChanges(tokens);
    return true;
  } catch (err) {
    ctx.logger.error({ err: (err as Error).message }, "key change not announced");
    sendError(
      res,
      503,
      "service_unavailable",
      "key_change_not_announced",
      `the change is saved in PostgreSQL, but Redis did not take its announcement: other gateways may act on the key's old state for up to key_cache_ttl_seconds (${ctx.config.gateway.keyCacheTtlMs / 1000} s); send the same request again`,
    );
    return false;
  }
}

/** A body (or query) parsed with `schema`, or the answer 400 sent and undefined. */
function parseBody<S extends z.ZodType>(
  input: unknown,
  res: Response,
  schema: S,
  fields: readonly string[],
): z.infer<S> | undefined {
  const parsed = schema.safeParse(input ?? {});
  if (parsed.success) return parsed.data;
  sendError(res, 400, "invalid_request_error", "invalid_body", describeIssue(parsed.error, fields));
  return undefined;
}

/** The key a request names, or the answer 400 sent and undefined. */
function refOf(res: Response, value: string, field = "key"): KeyRef | undefined {
  try {
    return keyRef(value, field);
  } catch (err) {
    if (!(err instanceof KeyInputError)) throw err;
    badRequest(res, err);
    return undefined;
  }
}

function withoutToken(r: KeyRecord): Omit<KeyRecord, "token"> {
  const { token: _token, ...rest } = r;
  return rest;
}

/** GET /key/info?key=sk-... (or the token): `{ key, info }`, as LiteLLM answers. */
export function keyInfo(ctx: RouteContext): RequestHandler {
  const query = z.strictObject({ key: z.string() });
  return async (req, res) => {
    const q = parseBody(req.query, res, query, ["key"]);
    if (q === undefined) return;
    const ref = refOf(res, q.key);
    if (ref === undefined) return;
    const r = await findKey(ctx.db, ref.token);
    if (r === null) return notFound(res, [ref.shown]);
    res.json({
      key: ref.shown,
      info: { ...withoutToken(r), budget: await keyBudgetView(ctx, r.token) },
    });
  };
}

const pageNumber = (max: number, fallback: number) =>
  z
    .string()
    .regex(/^[1-9][0-9]{0,8}$/, "must be a whole number from 1")
    .transform(Number)
    .refine((n) => n <= max, `must be at most ${max}`)
    .optional()
    .transform((n) => n ?? fallback);

const listQuery = z.strictObject({
  page: pageNumber(1_000_000_000, 1),
  size: pageNumber(100, 10),
  user_id: z.string().optional(),
  team_id: z.string().optional(),
  organization_id: z.string().optional(),
  key_alias: z.string().optional(),
  return_full_object: z.enum(["true", "false"]).optional(),
});
const LIST_FIELDS = Object.keys(listQuery.shape);

/**
 * GET /key/list: LiteLLM's page of keys, newest first: `{ keys, total_count,
 * current_page, total_pages }`, `keys` being tokens, or whole records with
 * `return_full_object=true`. Filters: user_id, team_id, organization_id, key_alias.
 */
export function keyList(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const q = parseBody(req.query, res, listQuery, LIST_FIELDS);
    if (q === undefined) return;
    let filters: Record<string, string>;
    try {
      filters = {};
      for (const [field, name] of [
        ["user_id", "userId"],
        ["team_id", "teamId"],
        ["organization_id", "organizationId"],
        ["key_alias", "keyAlias"],
      ] as const) {
        const v = checkId(q[field], field);
        if (v !== undefined) filters[name] = v;
      }
    } catch (err) {
      if (!(err instanceof KeyInputError)) throw err;
      return badRequest(res, err);
    }
    const { keys, totalCount } = await listKeys(ctx.db, { page: q.page, size: q.size, ...filters });
    res.json({
      keys: q.return_full_object === "true" ? keys : keys.map((k) => k.token),
      total_count: totalCount,
      current_page: q.page,
      total_pages: Math.ceil(totalCount / q.size),
    });
  };
}

async function change(
  ctx: RouteContext,
  res: Response,
  ref: KeyRef,
  changes: KeyChanges,
  budget?: BudgetBody,
): Promise<void> {
  const r = await updateKey(ctx.db, ref.token, changes);
  if (r === null) return notFound(res, [ref.shown]);
  // The budget is the key's, so only once the key is known to exist.
  if (budget !== undefined) await writeBudget(ctx, "key", r.token, budget);
  if (!(await announced(ctx, res, [ref.token]))) return;
  ctx.logger.info({ token: ref.token, changed: Object.keys(changes) }, "key changed");
  res.json({ key: ref.shown, ...withoutToken(r), token: r.token });
}

/**
 * POST /key/update: `key` and what to change: key_alias, models, duration
 * (from now; null: never expires), metadata (replaced), blocked. A key's
 * owners are not changed (they decide whom its spend is charged to): make a
 * new key.
 */
export function keyUpdate(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const raw = (req.body ?? {}) as Record<string, unknown>;
    const owners = OWNER_FIELDS.filter((f) => typeof raw === "object" && f in raw);
    if (owners.length > 0)
      return sendError(
        res,
        400,
        "invalid_request_error",
        "invalid_body",
        `${owners.join(", ")}: a key's owners cannot be changed (they decide whom its spend is charged to): generate a new key and delete this one`,
      );
    const b = parseBody(req.body, res, updateBody, UPDATE_FIELDS);
    if (b === undefined) return;
    const ref = refOf(res, b.key);
    if (ref === undefined) return;
    let changes: KeyChanges;
    try {
      changes = keyChanges(b, {
        metadataMaxBytes: ctx.config.gateway.keyMetadataMaxBytes,
        now: Date.now(),
      });
    } catch (err) {
      if (!(err instanceof KeyInputError)) throw err;
      return badRequest(res, err);
    }
    const budget = budgetPart(b);
    // Checked against the key's stored budget, so a change to one field cannot cross the other.
    const problem =
      budget !== undefined
        ? budgetProblem(budget, await loadBudget(ctx.db, "key", ref.token))
        : undefined;
    if (problem !== undefined)
      return sendError(res, 400, "invalid_request_error", "invalid_body", problem);
    await change(ctx, res, ref, changes, budget);
  };
}

/** POST /key/block and /key/unblock: `{ "key": ... }`; answers the key's record. */
export function keyBlock(ctx: RouteContext, blocked: boolean): RequestHandler {
  return async (req, res) => {
    const b = parseBody(req.body, res, keyOnlyBody, ["key"]);
    if (b === undefined) return;
    const ref = refOf(res, b.key);
    if (ref === undefined) return;
    await change(ctx, res, ref, { blocked });
  };
}

/**
 * POST /key/delete: `{ "keys": [...] }` (plaintext or tokens), all or none:
 * if one is no key, nothing is deleted and the answer (404) names it.
 * Answers `{ "deleted_keys": [...] }` as given, as LiteLLM does.
 */
export function keyDelete(ctx: RouteContext): RequestHandler {
  return async (req, res) => {
    const b = parseBody(req.body, res, deleteBody, ["keys"]);
    if (b === undefined) return;
    const refs: KeyRef[] = [];
    for (const [i, k] of b.keys.entries()) {
      const ref = refOf(res, k, `keys[${i}]`);
      if (ref === undefined) return;
      refs.push(ref);
    }
    const tokens = refs.map((r) => r.token);
    const r = await deleteKeys(ctx.db, tokens);
    if (!r.ok) {
      // A retry of a delete whose announcement failed finds its keys gone:
      // announce them again (best effort), so the retry still does its job.
      await ctx.announceKeyChanges(tokens).catch(() => undefined);
      const missing = new Set(r.missing);
      return notFound(
        res,
        refs.filter((x) => missing.has(x.token)).map((x) => x.shown),
      );
    }
    if (!(await announced(ctx, res, tokens))) return;
    ctx.logger.info({ tokens }, "keys deleted");
    res.json({ deleted_keys: b.keys });
  };
}

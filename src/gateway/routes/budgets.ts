import type { Express, RequestHandler } from "express";
import { z } from "zod";
import { idProblem } from "../../contract/ids.js";
import { decimalToPico, picoToDecimal, usdStringToPico } from "../../contract/money.js";
import {
  budgetHistory,
  loadBudget,
  setBudget,
  type BudgetDef,
  type BudgetKind,
} from "../../budget/budget-store.js";
import { BudgetDurationError, parseDuration } from "../../budget/duration.js";
import { ChargeList, chargedEntity, type ChargedEntity } from "../../budget/budget-guard.js";
import { normalizeSpendEvent } from "../../produce/spend-event.js";
import { budgetKey } from "../../redis/keys.js";
import { liveSpend } from "../live-spend.js";
import { sendError } from "../openai-error.js";
import type { RouteContext } from "./context.js";

/** LiteLLM's routes and id fields, per entity kind. */
const ROUTES: readonly { path: string; kind: BudgetKind; idField: string }[] = [
  { path: "/user", kind: "user", idField: "user_id" },
  { path: "/team", kind: "team", idField: "team_id" },
  { path: "/organization", kind: "org", idField: "organization_id" },
  { path: "/customer", kind: "end_user", idField: "end_user_id" },
  { path: "/end_user", kind: "end_user", idField: "end_user_id" },
  { path: "/tag", kind: "tag", idField: "name" },
];

/** Most USD a budget may be: leases are whole nanodollars below 2^53 in Redis. */
const MAX_BUDGET_USD = 9_000_000;

/**
 * A USD amount as LiteLLM's clients send it: a JSON number (its shortest
 * decimal form, as JavaScript prints it) or a decimal string, at most 12
 * decimals, from 0 to 9 million.
 */
const usd = z
  .union([z.number(), z.string()])
  .nullable()
  .transform((v, ctx): string | null => {
    if (v === null) return null;
    const text = typeof v === "number" ? String(v) : v;
    let pico: bigint;
    try {
      pico = usdStringToPico(text);
    } catch {
      ctx.addIssue({
        code: "custom",
        message: 'must be a USD amount with at most 12 decimals, e.g. 10 or "0.5"',
      });
      return z.NEVER;
    }
    if (pico > BigInt(MAX_BUDGET_USD) * 10n ** 12n) {
      ctx.addIssue({ code: "custom", message: `must be at most ${MAX_BUDGET_USD} USD` });
      return z.NEVER;
    }
    return picoToDecimal(pico);
  });

const budgetFields = {
  max_budget: usd.optional(),
  soft_budget: usd.optional(),
  budget_duration: z.string().max(16).nullable().optional(),
};

function describe(issues: z.core.$ZodIssue[]): string {
  const i = issues[0];
  const path = i?.path.map(String).join(".") ?? "";
  return `${path !== "" ? `${path}: ` : ""}${i?.message ?? "invalid"}`;
}

/**
 * Budgets on users, teams, organizations, end users and tags, with LiteLLM's
 * routes and field names (master key): `/<entity>/new` and `/<entity>/update`
 * set `max_budget`, `soft_budget` and `budget_duration`; `/<entity>/info`
 * shows the budget against the entity's live spend. Keys take the same fields
 * on /key/generate and /key/update.
 */
export function mountBudgetRoutes(
  app: Express,
  ctx: RouteContext,
  admin: RequestHandler,
  json: RequestHandler[],
): void {
  for (const r of ROUTES) {
    const body = z.object({ [r.idField]: z.string().min(1), ...budgetFields }).loose();
    const write =
      (creating: boolean): RequestHandler =>
      async (req, res) => {
        const parsed = body.safeParse(req.body);
        if (!parsed.success)
          return sendError(
            res,
            400,
            "invalid_request_error",
            "invalid_body",
            describe(parsed.error.issues),
          );
        const id = parsed.data[r.idField] as string;
        const problem = idProblem(id);
        if (problem !== undefined || id.length > ctx.config.limits.maxIdLength)
          return sendError(
            res,
            400,
            "invalid_request_error",
            "invalid_id",
            `${r.idField} ${problem?.detail ?? `is longer than ${ctx.config.limits.maxIdLength} characters`}`,
          );
        const existing = await loadBudget(ctx.db, r.kind, id);
        if (!creating && existing === null)
          return sendError(
            res,
            404,
            "not_found_error",
            "not_found",
            `no budget for ${r.idField} ${JSON.stringify(id)}`,
          );
        const refused = budgetProblem(parsed.data, existing);
        if (refused !== undefined)
          return sendError(res, 400, "invalid_request_error", "invalid_body", refused);
        const result = await writeBudget(ctx, r.kind, id, parsed.data);
        res.json(await budgetView(ctx, result, r.idField));
      };
    app.post(`${r.path}/new`, admin, json, write(true));
    app.post(`${r.path}/update`, admin, json, write(false));
    app.get(`${r.path}/info`, admin, async (req, res) => {
      const id = req.query[r.idField];
      if (typeof id !== "string" || id === "")
        return sendError(
          res,
          400,
          "invalid_request_error",
          "invalid_body",
          `${r.idField} is required`,
        );
      const def = idProblem(id) === undefined ? await loadBudget(ctx.db, r.kind, id) : null;
      if (def === null)
        return sendError(
          res,
          404,
          "not_found_error",
          "not_found",
          `no budget for ${r.idField} ${JSON.stringify(id.slice(0, 256))}`,
        );
      res.json(await budgetView(ctx, def, r.idField));
    });
  }
}

/** The budget fields of a request body, validated. */
export interface BudgetBody {
  max_budget?: string | null;
  soft_budget?: string | null;
  budget_duration?: string | null;
}

/** The budget fields keys take as well (/key/generate, /key/update). */
export const BUDGET_FIELDS = budgetFields;

/**
 * Stores a budget and makes every gateway lease it afresh: the entity's state
 * in Redis is dropped, so the next lease seeds it from the new limit and the
 * live spend, and what gateways held of the old one is void. Every caller has
 * had the input through budgetProblem first.
 */
export async function writeBudget(
  ctx: RouteContext,
  kind: BudgetKind,
  id: string,
  b: BudgetBody,
): Promise<BudgetDef> {
  const live = await liveSpend(
    { db: ctx.db, queues: ctx.queues, producer: ctx.producer },
    kind,
    id,
  );
  const def = await setBudget(
    ctx.db,
    kind,
    id,
    {
      ...(b.max_budget !== undefined ? { maxBudget: b.max_budget } : {}),
      ...(b.soft_budget !== undefined ? { softBudget: b.soft_budget } : {}),
      ...(b.budget_duration !== undefined ? { budgetDuration: b.budget_duration } : {}),
    },
    live.totalPico,
  );
  const redis = ctx.queues[0]?.connection;
  if (redis !== undefined) await redis.del(budgetKey(ctx.config.keyPrefix, kind, id));
  // This gateway enforces it from now; the others within budget_refresh_seconds.
  await ctx.budgets?.refresh();
  return def;
}

/** An entity's budget against its live spend, in LiteLLM's field names. */
export async function budgetView(
  ctx: RouteContext,
  def: BudgetDef,
  idField: string,
): Promise<Record<string, unknown>> {
  const live = await liveSpend(
    { db: ctx.db, queues: ctx.queues, producer: ctx.producer },
    def.kind,
    def.id,
  );
  const periodSpend = live.totalPico - def.periodStartSpendPico;
  const spent = periodSpend > 0n ? periodSpend : 0n;
  return {
    [idField]: def.id,
    spend: picoToDecimal(spent),
    total_spend: picoToDecimal(live.totalPico),
    max_budget: def.maxPico === null ? null : picoToDecimal(def.maxPico),
    soft_budget: def.softPico === null ? null : picoToDecimal(def.softPico),
    remaining_budget:
      def.maxPico === null ? null : picoToDecimal(def.maxPico > spent ? def.maxPico - spent : 0n),
    budget_duration: def.durationText,
    budget_reset_at: def.resetAt?.toISOString() ?? null,
    period_start: def.periodStart.toISOString(),
    previous_periods: (await budgetHistory(ctx.db, def.kind, def.id)).map((p) => ({
      period_start: p.periodStart.toISOString(),
      period_end: p.periodEnd.toISOString(),
      spend: picoToDecimal(decimalToPico(p.spend)),
      max_budget: p.maxBudget === null ? null : picoToDecimal(decimalToPico(p.maxBudget)),
    })),
  };
}

/**
 * Charges ingested events (already recorded) to the budgets of what they name:
 * spend reported by a gateway in another language counts against the same
 * budgets, though nothing refused it beforehand (it was already served).
 */
export function chargeIngested(ctx: RouteContext, events: readonly unknown[]): void {
  const book = ctx.budgets;
  if (book === undefined || book.size === 0) return;
  const now = Date.now();
  for (const raw of events) {
    const e = normalizeSpendEvent(raw, ctx.config.limits, now);
    const entities: ChargedEntity[] = [];
    if (e.apiKey !== "") entities.push(chargedEntity("key", e.apiKey));
    if (e.userId !== "") entities.push(chargedEntity("user", e.userId));
    if (e.teamId !== "") entities.push(chargedEntity("team", e.teamId));
    if (e.organizationId !== "") entities.push(chargedEntity("org", e.organizationId));
    if (e.endUserId !== "") entities.push(chargedEntity("end_user", e.endUserId));
    for (const tag of e.tags) entities.push(chargedEntity("tag", tag));
    book.charge(ChargeList.of(entities), BigInt(e.spendPico), now);
  }
}

/** The budget fields of a key request, if it names any (undefined: none). */
export function budgetPart(b: BudgetBody): BudgetBody | undefined {
  const part: BudgetBody = {
    ...(b.max_budget !== undefined ? { max_budget: b.max_budget } : {}),
    ...(b.soft_budget !== undefined ? { soft_budget: b.soft_budget } : {}),
    ...(b.budget_duration !== undefined ? { budget_duration: b.budget_duration } : {}),
  };
  return Object.keys(part).length > 0 ? part : undefined;
}

/**
 * Why a budget change is refused (undefined: it is fine): a budget_duration
 * that does not parse, or a soft_budget above max_budget once the change is
 * applied to `existing` (the stored budget, null if none): its alert could
 * never fire before requests are refused.
 */
export function budgetProblem(b: BudgetBody, existing: BudgetDef | null): string | undefined {
  if (b.budget_duration !== undefined && b.budget_duration !== null) {
    try {
      parseDuration(b.budget_duration);
    } catch (err) {
      if (err instanceof BudgetDurationError) return err.message;
      throw err;
    }
  }
  const max = limitAfter(b.max_budget, existing?.maxPico);
  const soft = limitAfter(b.soft_budget, existing?.softPico);
  if (max !== null && soft !== null && soft > max)
    return `soft_budget ${picoToDecimal(soft)} is above max_budget ${picoToDecimal(max)}: its alert could never fire before requests are refused`;
  return undefined;
}

/** A limit once a request is applied: the one it sets (null clears it), else the stored one. */
function limitAfter(
  requested: string | null | undefined,
  stored: bigint | null | undefined,
): bigint | null {
  if (requested === undefined) return stored ?? null;
  return requested === null ? null : decimalToPico(requested);
}

/** A key's budget for /key/info and the key routes' answers (null: none). */
export async function keyBudgetView(
  ctx: RouteContext,
  token: string,
): Promise<Record<string, unknown> | null> {
  const def = await loadBudget(ctx.db, "key", token);
  if (def === null) return null;
  const { token: _id, ...view } = await budgetView(ctx, def, "token");
  return view;
}

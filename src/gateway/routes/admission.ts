import type { Request, Response } from "express";
import {
  ChargeList,
  chargedEntity,
  EntityGroup,
  type ChargedEntity,
} from "../../budget/budget-guard.js";
import type { ModelDeployment } from "../../config/config.js";
import { picoToDecimal } from "../../contract/money.js";
import { SpendEventError } from "../../produce/spend-event.js";
import type { AuthLocals } from "../auth.js";
import type { ChargedEndpoint } from "../charge-check.js";
import { sendBacklogged, sendError, sendHalted, sendModelNotFound } from "../openai-error.js";
import type { KeyInfo } from "../virtual-keys.js";
import { counted, type RouteContext } from "./context.js";

/** A request let through to a model: whose key pays, and which deployment answers. */
export interface Admitted {
  key: KeyInfo;
  deployment: ModelDeployment;
  /** Everything the request is charged to that can carry a budget. */
  entities: ChargeList;
}

/**
 * A key's own entities (the key, its user, team and organization) as one
 * group, made once per key object: the key cache hands out the same object
 * until it reloads the key, and the budget book marks the group (and each
 * entity object in it) with what it found, so a request reuses what earlier
 * requests found. The list for a request with no end user or tags is kept
 * with it.
 */
const keyGroups = new WeakMap<KeyInfo, ChargeList>();

/**
 * End users' and tags' entities, by id: kept like a key's own, so a request
 * for one seen before reuses its object (and the slot the budget book marked
 * on it) instead of making one. Bounded: ids come from callers, and a cache
 * at its bound starts over rather than grow.
 */
const MAX_CACHED_ENTITIES = 10_000;
const endUserEntities = new Map<string, ChargedEntity>();
const tagEntities = new Map<string, ChargedEntity>();

function entityOf(
  cache: Map<string, ChargedEntity>,
  kind: ChargedEntity["kind"],
  id: string,
): ChargedEntity {
  let e = cache.get(id);
  if (e === undefined) {
    if (cache.size >= MAX_CACHED_ENTITIES) cache.clear();
    cache.set(id, (e = chargedEntity(kind, id)));
  }
  return e;
}

/** The entities a request by `key` for `endUserId` with `tags` is charged to. */
export function chargedEntities(
  key: KeyInfo,
  endUserId: string | undefined,
  tags: readonly string[] | undefined,
): ChargeList {
  let own = keyGroups.get(key);
  if (own === undefined) {
    const list: ChargedEntity[] = [chargedEntity("key", key.token)];
    if (key.userId !== undefined) list.push(chargedEntity("user", key.userId));
    if (key.teamId !== undefined) list.push(chargedEntity("team", key.teamId));
    if (key.organizationId !== undefined) list.push(chargedEntity("org", key.organizationId));
    keyGroups.set(key, (own = new ChargeList(new EntityGroup(list), [])));
  }
  if (endUserId === undefined && (tags === undefined || tags.length === 0)) return own;
  const extra: ChargedEntity[] = [];
  if (endUserId !== undefined) extra.push(entityOf(endUserEntities, "end_user", endUserId));
  for (const tag of tags ?? []) extra.push(entityOf(tagEntities, "tag", tag));
  return new ChargeList(own.group, extra);
}

/**
 * Everything that must hold before a model runs, for every route that calls
 * one: a request answered is a cost incurred and must be recorded, so each
 * reason it could not be (the pipeline halted or behind, the buffer full, an
 * owner or id the flush would refuse) is checked first, and answered in
 * OpenAI's shape. Undefined: the answer has been sent.
 */
export function admit(
  ctx: RouteContext,
  _req: Request,
  res: Response,
  model: string,
  endpoint: ChargedEndpoint,
  endUserId: string | undefined,
  tags: string[] | undefined,
): Admitted | undefined {
  const { producer, charge } = ctx;
  const key = (res.locals as AuthLocals).key;
  const halted = producer.halted;
  if (halted !== undefined) {
    sendHalted(res, halted);
    return undefined;
  }
  // Refused before the model runs: the spend pipeline is already further
  // behind than the operator allows.
  if (producer.backlogged) {
    sendBacklogged(res);
    return undefined;
  }
  const deployment = ctx.models.pick(model);
  if (deployment === undefined) {
    sendModelNotFound(res, model);
    return undefined;
  }
  if (producer.full) {
    ctx.producerStats.eventsRejected.inc({ reason: "buffer_full" });
    sendError(res, 503, "service_unavailable", "buffer_full", "spend buffer full: retry later");
    return undefined;
  }
  const problem = charge.keyProblem(key);
  if (problem !== undefined) {
    counted(ctx, problem);
    sendError(
      res,
      403,
      "permission_error",
      "key_not_chargeable",
      `this key cannot be charged: its ${problem.message}; an administrator must fix the key's owner ids`,
    );
    return undefined;
  }
  try {
    charge.check(key, model, endpoint, endUserId, tags);
  } catch (err) {
    if (!(err instanceof SpendEventError)) throw err;
    sendUnaccountable(res, counted(ctx, err));
    return undefined;
  }
  const entities = chargedEntities(key, endUserId, tags);
  // In memory: each gateway spends a lease of the budget it took from Redis.
  const over = ctx.budgets?.check(entities);
  if (over?.reason === "pending") {
    sendError(
      res,
      503,
      "service_unavailable",
      "budget_pending",
      `this gateway's share of the ${over.kind}'s budget is spent and more is being leased: retry in a moment`,
    );
    return undefined;
  }
  if (over !== undefined) {
    const max = picoToDecimal(over.maxPico);
    sendError(
      res,
      400,
      "budget_exceeded",
      "budget_exceeded",
      `Budget has been exceeded! ${over.kind} ${JSON.stringify(over.id.slice(0, 100))}: max budget ${max} USD` +
        (over.resetAt !== null ? `, resets at ${over.resetAt.toISOString()}` : ""),
      {
        budget: {
          entity_kind: over.kind,
          max_budget: max,
          budget_reset_at: over.resetAt?.toISOString() ?? null,
        },
      },
    );
    return undefined;
  }
  return { key, deployment, entities };
}

/** A request whose spend the producer would refuse: never served uncharged. */
export function sendUnaccountable(res: Response, err: SpendEventError): void {
  sendError(
    res,
    400,
    "invalid_request_error",
    "unaccountable",
    `cannot account this request: ${err.message}`,
  );
}

import { decimalToPico, picoToDecimal } from "../contract/money.js";
import type { Db } from "../persist/prisma.js";
import { addDuration, parseDuration, type BudgetDuration } from "./duration.js";

/** The entities a budget can be set on (LiteLLM's): a key's hash, a user, team, org, end user, tag. */
export const BUDGET_KINDS = ["key", "user", "team", "org", "end_user", "tag"] as const;
export type BudgetKind = (typeof BUDGET_KINDS)[number];

/** One entity's budget as the gateways hold it: exact picodollars. */
export interface BudgetDef {
  kind: BudgetKind;
  id: string;
  /** null: no hard limit (nothing is refused). */
  maxPico: bigint | null;
  softPico: bigint | null;
  duration: BudgetDuration | null;
  durationText: string | null;
  periodStart: Date;
  /** End of the current period (null: it never resets). */
  resetAt: Date | null;
  /** The entity's live spend when the period began. */
  periodStartSpendPico: bigint;
  updatedAt: Date;
}

/** What an admin route may change; absent fields stay, null clears. */
export interface BudgetInput {
  maxBudget?: string | null;
  softBudget?: string | null;
  budgetDuration?: string | null;
}

interface Row {
  entityKind: string;
  entityId: string;
  maxBudget: { toFixed(n: number): string } | null;
  softBudget: { toFixed(n: number): string } | null;
  budgetDuration: string | null;
  budgetResetAt: Date | null;
  periodStart: Date;
  periodStartSpend: { toFixed(n: number): string };
  updatedAt: Date;
}

const pico = (d: { toFixed(n: number): string } | null): bigint | null =>
  d === null ? null : decimalToPico(d.toFixed(12));

function toDef(r: Row): BudgetDef {
  return {
    kind: r.entityKind as BudgetKind,
    id: r.entityId,
    maxPico: pico(r.maxBudget),
    softPico: pico(r.softBudget),
    duration: r.budgetDuration === null ? null : parseDuration(r.budgetDuration),
    durationText: r.budgetDuration,
    periodStart: r.periodStart,
    resetAt: r.budgetResetAt,
    periodStartSpendPico: decimalToPico(r.periodStartSpend.toFixed(12)),
    updatedAt: r.updatedAt,
  };
}

/** Budgets changed at or after `since` (all of them from the epoch), oldest change first. */
export async function loadBudgetsSince(db: Db, since: Date): Promise<BudgetDef[]> {
  const rows = await db.spendBudget.findMany({
    // gte: two changes in one millisecond must not hide the second; the last is read again.
    where: { updatedAt: { gte: since } },
    orderBy: { updatedAt: "asc" },
  });
  return rows.map(toDef);
}

export async function loadBudget(db: Db, kind: BudgetKind, id: string): Promise<BudgetDef | null> {
  const r = await db.spendBudget.findUnique({
    where: { entityKind_entityId: { entityKind: kind, entityId: id } },
  });
  return r === null ? null : toDef(r);
}

/**
 * Sets an entity's budget. A new budget, or a new duration, starts a period
 * now, from the entity's live spend now (`liveSpendPico`); changing only the
 * amounts keeps the period.
 */
export async function setBudget(
  db: Db,
  kind: BudgetKind,
  id: string,
  input: BudgetInput,
  liveSpendPico: bigint,
  now = new Date(),
): Promise<BudgetDef> {
  const existing = await loadBudget(db, kind, id);
  const durationText =
    input.budgetDuration !== undefined ? input.budgetDuration : (existing?.durationText ?? null);
  const duration = durationText === null ? null : parseDuration(durationText);
  const newPeriod = existing === null || durationText !== existing.durationText;
  const periodStart = newPeriod ? now : existing.periodStart;
  const data = {
    ...(input.maxBudget !== undefined ? { maxBudget: input.maxBudget } : {}),
    ...(input.softBudget !== undefined ? { softBudget: input.softBudget } : {}),
    budgetDuration: durationText,
    budgetResetAt: duration === null ? null : addDuration(periodStart, duration),
    periodStart,
    ...(newPeriod ? { periodStartSpend: picoToDecimal(liveSpendPico) } : {}),
    updatedAt: now,
  };
  const r = await db.spendBudget.upsert({
    where: { entityKind_entityId: { entityKind: kind, entityId: id } },
    create: { entityKind: kind, entityId: id, ...data },
    update: data,
  });
  return toDef(r);
}

/**
 * Ends a period that is over and starts the next one at its exact boundary,
 * keeping the closed period's spend. Conditional on the period still being
 * `def.periodStart`: of all the gateways that see the boundary, one does it;
 * the others find it done (false) and reload.
 */
export async function rollOver(
  db: Db,
  def: BudgetDef,
  next: { start: Date; end: Date },
  liveSpendPico: bigint,
): Promise<boolean> {
  const spent = liveSpendPico - def.periodStartSpendPico;
  return db.$transaction(async (tx) => {
    const moved = await tx.spendBudget.updateMany({
      where: { entityKind: def.kind, entityId: def.id, periodStart: def.periodStart },
      data: {
        periodStart: next.start,
        budgetResetAt: next.end,
        periodStartSpend: picoToDecimal(liveSpendPico),
        updatedAt: new Date(),
      },
    });
    if (moved.count === 0) return false;
    await tx.spendBudgetPeriod.create({
      data: {
        entityKind: def.kind,
        entityId: def.id,
        periodStart: def.periodStart,
        periodEnd: def.resetAt ?? next.start,
        spend: picoToDecimal(spent > 0n ? spent : 0n),
        maxBudget: def.maxPico === null ? null : picoToDecimal(def.maxPico),
      },
    });
    return true;
  });
}

/** The closed periods of one entity, newest first. */
export async function budgetHistory(
  db: Db,
  kind: BudgetKind,
  id: string,
  limit = 12,
): Promise<{ periodStart: Date; periodEnd: Date; spend: string; maxBudget: string | null }[]> {
  const rows = await db.spendBudgetPeriod.findMany({
    where: { entityKind: kind, entityId: id },
    orderBy: { periodStart: "desc" },
    take: limit,
  });
  return rows.map((r) => ({
    periodStart: r.periodStart,
    periodEnd: r.periodEnd,
    spend: r.spend.toFixed(12),
    maxBudget: r.maxBudget === null ? null : r.maxBudget.toFixed(12),
  }));
}

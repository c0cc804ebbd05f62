import type { BudgetKind } from "./budget-store.js";

/** One entity a request is charged to. */
export interface ChargedEntity {
  kind: BudgetKind;
  id: string;
}

/**
 * An entity object with room for a budget guard's marks in the object itself
 * (where it found the entity's budget, and whether the entity was seen able
 * to pay): made once per entity and reused request after request, so a
 * check reads one small object per entity instead of looking the entity up.
 * Marks added to a plain `{ kind, id }` later would live outside the object,
 * one more trip to memory on a busy gateway.
 */
export interface MarkedEntity extends ChargedEntity {
  slot: number;
  generation: number;
  passed: number;
}

/** The entity object the request path should hold for `kind` and `id` (see MarkedEntity). */
export function chargedEntity(kind: BudgetKind, id: string): ChargedEntity {
  const e: MarkedEntity = { kind, id, slot: -1, generation: -1, passed: -1 };
  return e;
}

/**
 * Why a request is refused: the first budgeted entity with nothing left
 * (`exhausted`), or whose lease this gateway is renewing while its share is
 * spent (`pending`: a moment, answered 503 with Retry-After).
 */
export interface BudgetRefusal {
  reason: "exhausted" | "pending";
  kind: BudgetKind;
  id: string;
  maxPico: bigint;
  periodStart: Date;
  resetAt: Date | null;
}

/**
 * What the gateway's request path asks of budget enforcement: a synchronous
 * check before a request and a charge after it (no I/O on the request path),
 * and a reload when this gateway changed a budget. BudgetBook (leases in
 * Redis) is the product's; the benchmark holds it up against a naive
 * per-gateway check behind the same seam.
 */
export interface BudgetGuard {
  /** How many budgets are enforced (0: the request path skips budgets). */
  readonly size: number;
  /** The first entity with no budget left, or undefined: the request may go. */
  check(entities: readonly ChargedEntity[], now?: number): BudgetRefusal | undefined;
  /** Charges a served request's cost to every budgeted entity it was charged to. */
  charge(entities: readonly ChargedEntity[], costPico: bigint, now?: number): void;
  /** Reads changed budgets now (this gateway just wrote one), not at the next refresh. */
  refresh(): Promise<void>;
}

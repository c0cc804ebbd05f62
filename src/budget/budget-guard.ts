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

/** The most entities a group holds: a key's own (the key, its user, team and organization). */
export const MAX_GROUP = 4;

/** Of a request's own entities, how many have their budget's place kept in the list (end user and three tags). */
export const EXTRA_SLOTS = 4;

/**
 * Entities charged together request after request (a key's own: the key, its
 * user, team and organization), made once per key object, with room for a
 * budget guard's marks for all of them in one object: whether all were seen
 * able to pay, and where their budgets are. A check then reads one object
 * for the four instead of four, and a charge finds their budgets without
 * reading the entity objects again: on a busy gateway each object a call
 * reaches is a trip to memory.
 */
export class EntityGroup {
  passed = -1;
  generation = -1;
  s0 = -1;
  s1 = -1;
  s2 = -1;
  s3 = -1;
  /**
   * A reservation: an amount a book counted as charged to each of the
   * group's budgets at once, which the group's requests then spend from one
   * place in that book's meter (`place`) instead of reaching the four
   * budgets: one trip to memory per request instead of four. `holder` is
   * the book whose place it is (0: none), `r0`–`r3` the budgets the
   * reservation was taken from. Only the holder reads or changes them.
   */
  holder = 0;
  place = -1;
  r0 = -1;
  r1 = -1;
  r2 = -1;
  r3 = -1;
  readonly entities: readonly ChargedEntity[];
  constructor(entities: readonly ChargedEntity[]) {
    if (entities.length > MAX_GROUP)
      throw new RangeError(`a group holds at most ${MAX_GROUP} entities, not ${entities.length}`);
    this.entities = entities;
  }
}

/**
 * Everything one request is charged to: its key's group, and its own
 * entities (end user, tags), with room for what a budget guard's check found
 * of the first EXTRA_SLOTS of them (where their budgets are, and for which
 * generation), so the charge after the request need not read them again.
 */
export class ChargeList {
  generation = -1;
  x0 = -2;
  x1 = -2;
  x2 = -2;
  x3 = -2;
  /** How many extra entities: the charge reads this, not the array, when it kept their slots. */
  readonly n: number;
  constructor(
    readonly group: EntityGroup | undefined,
    readonly extra: readonly ChargedEntity[],
  ) {
    this.n = extra.length;
  }

  /** A list of entities with no group (spend ingested from elsewhere, tests). */
  static of(entities: readonly ChargedEntity[]): ChargeList {
    return new ChargeList(undefined, entities);
  }

  /** Every entity, the group's first. */
  all(): ChargedEntity[] {
    return [...(this.group?.entities ?? []), ...this.extra];
  }
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
  check(list: ChargeList, now?: number): BudgetRefusal | undefined;
  /** Charges a served request's cost to every budgeted entity it was charged to. */
  charge(list: ChargeList, costPico: bigint, now?: number): void;
  /** Reads changed budgets now (this gateway just wrote one), not at the next refresh. */
  refresh(): Promise<void>;
}

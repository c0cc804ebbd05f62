import { randomUUID } from "node:crypto";
import type { Logger } from "../observe/logger.js";
import type { Db } from "../persist/prisma.js";
import type { RedisClient } from "../redis/connection.js";
import { budgetKey } from "../redis/keys.js";
import type { BudgetAlerts } from "./budget-alerts.js";
import {
  EXTRA_SLOTS,
  type BudgetGuard,
  type BudgetRefusal,
  type ChargedEntity,
  type ChargeList,
  type EntityGroup,
  type MarkedEntity,
} from "./budget-guard.js";
import type { BudgetMetrics } from "./budget-metrics.js";
import {
  loadBudget,
  loadBudgetsSince,
  rollOver,
  type BudgetDef,
  type BudgetKind,
} from "./budget-store.js";
import { periodAt } from "./duration.js";
import { budgetScripts } from "./scripts.js";
import { FAST_LIMIT, ShareMeter } from "./share-meter.js";

/** A list's kept meter index when the check did not record one: look it up. */
const UNKNOWN = -2;

/**
 * A group's reservation (see `reserve`) is this many of the cost that
 * started it: long enough that a key's requests rarely take the long way,
 * small beside a budget's slice, so what idle keys hold strands little of it
 * (and all of it goes back whenever the book looks at the budget).
 */
const RESERVE_REQUESTS = 64;
/** At most this fraction of what a budget's share has left goes to one reservation. */
const RESERVE_SHARE = 16;
/** A reservation worth fewer requests than this is not taken: the long way is as cheap. */
const MIN_RESERVE_REQUESTS = 4;
/**
 * Every reservation is given back at least this often: a key object the
 * gateway dropped (its key reloaded) may hold one no request will finish.
 */
const RESERVE_MAX_AGE_MS = 60_000;

export interface BudgetBookOptions {
  db: Db;
  redis: RedisClient;
  keyPrefix: string;
  logger: Logger;
  metrics: BudgetMetrics;
  /** An entity's live spend (committed, in Redis, in this process), picodollars. */
  liveSpend: (kind: BudgetKind, id: string) => Promise<bigint>;
  /** How often definitions are reloaded, boundaries checked and leases renewed. */
  refreshMs: number;
  /** Each lease is this fraction of the budget (at most what remains). */
  leaseFraction: number;
  /** Shares of max_budget that raise an alert when crossed (soft_budget is one more). */
  alertThresholds?: readonly number[];
  alerts?: BudgetAlerts;
}

/** This gateway's part of one entity's budget, for one period. */
interface Allowance {
  /** The period it belongs to (its start, epoch ms). */
  period: number;
  /** The seeding its leases came from: leases of an older one are void. */
  epoch: string;
  /**
   * Leased and not yet spent, picodollars; below zero by what requests in
   * flight overran. Less what the meter holds as spent: read it (and
   * `unreported`) only after `settle`.
   */
  pico: bigint;
  /** The last lease left this gateway's share at or below zero: Redis had nothing more. */
  exhausted: boolean;
  /** Requests let through since the share ran out, while a lease is taken (at most one). */
  optimistic: number;
  /** Spent and not yet reported to Redis for the period's spend (threshold alerts). */
  unreported: bigint;
  refill?: Promise<void>;
  /** Half a slice of the budget it was made for: spent below it, the next lease starts. */
  half: bigint;
}

/**
 * One budgeted entity: its definition, the facts about it the slow paths
 * need copied flat, its allowance, and its share's index in the meter (what
 * the request path reads).
 */
interface Slot {
  def: BudgetDef;
  a: Allowance | undefined;
  /** Its share in the book's ShareMeter. */
  i: number;
  /** def.maxPico !== null: requests can be refused. */
  hasMax: boolean;
  /** A max or a soft budget: spend is counted. */
  counted: boolean;
  /** The period's start, epoch ms, until `until`; past it, periodOf works the period out. */
  start: number;
  until: number;
  /** Groups holding a reservation taken from this budget's share (see `reserve`). */
  holders: Set<EntityGroup>;
}

const PICO_PER_NANO = 1_000n;
/**
 * Stamps for a book's generations and narrowings, from one sequence for all
 * books: a mark one book left on an entity never matches another's stamp.
 */
let stamps = 0;
const stamp = (): number => ++stamps;
const FAST_LIMIT_BIG = BigInt(FAST_LIMIT);
/** Leases are whole nanodollars below 2^53 in Redis (Lua numbers are doubles). */
const MAX_NANO = 2n ** 53n - 1n;

/**
 * Budgets enforced by every gateway with no I/O on the request path.
 *
 * Each entity's remaining budget for the period lives in Redis; a gateway
 * leases a slice of it (an atomic script) and spends the slice in memory: the
 * check before a request is a map lookup and a comparison, the charge after
 * it a subtraction. Slices are renewed in the background when half spent.
 * A gateway admits a request while its slice is above zero or still being
 * leased, so the spend committed for a period stays within
 *
 *   max_budget + N × F × C
 *
 * for N gateways, F requests in flight on one gateway, C the largest cost of
 * one request: every slice was taken from what remained, and once a slice is
 * gone a gateway admits nothing more than what is already in flight.
 *
 * Seeding (first use, a new period, Redis restarted empty) reads the entity's
 * live spend once and is done by one gateway (the script refuses a second);
 * leases of an older seeding are void, so a restart never releases budget
 * that was already leased. Spend recorded in the seal interval before a seed
 * by other gateways is not yet visible to it: it adds N × (spend per gateway
 * per proxy_batch_write_at) to the bound after such an event.
 */
export class BudgetBook implements BudgetGuard {
  /**
   * Every budget's slot (its definition and this gateway's allowance), by
   * kind, then id: the request path's way in builds no string (it runs for
   * every entity of every request).
   */
  private readonly index = new Map<string, Map<string, Slot>>();
  /** Slots in `index`. */
  private count = 0;
  /** Every slot's share as the request path reads it (its index is Slot.i). */
  private readonly meter = new ShareMeter();
  /** Slots by Slot.i. */
  private readonly byIndex: Slot[] = [];
  /**
   * Stamped whenever a slot is made or removed: an entity object marked with
   * a slot found at an older generation looks it up again (indexOf).
   */
  private generation = stamp();
  /**
   * Stamped whenever a share that could pay for anything in flight stops
   * being able to (falls below half a slice, is spent, replaced or not yet
   * leased), and with every generation. An entity marked `passed` at the
   * current stamp was seen able to pay since, and nothing has narrowed:
   * a check reads only its mark. In a gateway far from its limits that is
   * every entity of every request.
   */
  private narrowed = stamp();
  /**
   * What a refresh looks at, so its cost follows what needs work rather than
   * how many budgets exist: slots whose share is exhausted (another gateway
   * may give back, the limit may rise), or whose last lease failed.
   */
  private readonly attention = new Set<Slot>();
  /** Slots of budgets with a period, so a refresh leases at each boundary. */
  private readonly periodic = new Set<Slot>();
  private loadedUntil = new Date(0);
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private closed = false;
  /**
   * Keeps the meter's coarse time (ShareMeter.now), which a charge reads to
   * pick its period: a served request's charge needs the time to the
   * millisecond no more than its event's date does, and Date.now() per
   * request costs 60 ns on a KVM guest, far more where the VM gives no fast
   * path for it (coarse-clock.ts). Behind by at most 10 ms: a charge in a
   * period's first 10 ms may count in the one before, as if its request had
   * ended that much sooner. Only the meter reads it: the book, which moves a
   * share from one period to the next, reads the exact time, so a lagging
   * read never takes a share back a period.
   */
  private readonly clock = setInterval(() => this.meter.tick(Date.now()), 10).unref();
  /** Marks the groups whose reservation this book holds (EntityGroup.holder). */
  private readonly id = stamp();
  /** Groups holding a reservation of this book's (see `reserve`). */
  private readonly held = new Set<EntityGroup>();
  /** Meter places of reservations given back, for the next ones. */
  private readonly freePlaces: number[] = [];
  /** When the refresh next gives back every reservation (see RESERVE_MAX_AGE_MS). */
  private foldAllAt = Date.now() + RESERVE_MAX_AGE_MS;

  constructor(private readonly o: BudgetBookOptions) {}

  /**
   * Loads every budget and takes a first lease of each, so requests find a
   * share already held; then keeps them fresh.
   */
  async start(): Promise<void> {
    // PostgreSQL away at start is not fatal: the gateway starts unready, and
    // the budgets load at the next refresh that reaches it.
    await this.reload().catch((err: unknown) =>
      this.o.logger.warn({ err: (err as Error).message }, "budgets not loaded yet"),
    );
    const first: Promise<void>[] = [];
    for (const slot of this.slots()) if (slot.a?.refill !== undefined) first.push(slot.a.refill);
    // Bounded: a Redis that does not answer must not hold the gateway's start.
    await Promise.race([Promise.all(first), new Promise((r) => setTimeout(r, 2_000).unref())]);
    const loop = (): void => {
      if (this.closed) return;
      this.timer = setTimeout(() => {
        this.ticking = this.tick()
          .catch((err: unknown) =>
            this.o.logger.warn({ err: (err as Error).message }, "budget refresh failed"),
          )
          .finally(() => {
            this.ticking = undefined;
            loop();
          });
      }, this.o.refreshMs);
      this.timer.unref();
    };
    loop();
  }

  /** Reads changed budgets now (this gateway just wrote one), not at the next refresh. */
  async refresh(): Promise<void> {
    await this.reload();
  }

  /** How many budgets this gateway enforces. */
  get size(): number {
    return this.count;
  }

  /**
   * The first entity with no budget left, or undefined: the request may go.
   * No I/O: an entity this gateway holds nothing for yet is let through while
   * its first lease is taken.
   */
  check(list: ChargeList, now?: number): BudgetRefusal | undefined {
    if (this.count === 0) return undefined;
    // The common case, kept small enough for the compiler to inline it into
    // the gateway's own code (a call into code of its own, cold after the
    // request's work, cost more than all the rest): every entity was seen
    // able to pay since anything narrowed.
    const narrowed = this.narrowed;
    const g = list.group;
    const n = list.n;
    if ((g !== undefined && g.passed !== narrowed) || n > EXTRA_SLOTS)
      return this.checkAll(list, now);
    const x = list.extra;
    for (let k = 0; k < n; k++)
      if ((x[k] as MarkedEntity).passed !== narrowed) return this.checkAll(list, now);
    if (n > 0) this.keepSlots(list);
    return undefined;
  }

  /** The check, every entity looked at as it must be. */
  private checkAll(list: ChargeList, now?: number): BudgetRefusal | undefined {
    const g = list.group;
    if (g !== undefined && g.passed !== this.narrowed) {
      const refused = this.checkEach(g.entities, now);
      if (refused !== undefined) return refused;
      // Marked only if every one is (one let through while leasing is not).
      if (g.entities.every((e) => (e as MarkedEntity).passed === this.narrowed))
        g.passed = this.narrowed;
    }
    const refused = this.checkEach(list.extra, now);
    if (refused !== undefined) return refused;
    if (list.n > 0) this.keepSlots(list);
    return undefined;
  }

  /** Where each extra entity's budget is, for the charge: it need not read the entity objects again. */
  private keepSlots(list: ChargeList): void {
    const extra = list.extra;
    const n = list.n;
    list.x0 = this.knownSlot(extra[0]);
    if (n > 1) list.x1 = this.knownSlot(extra[1]);
    if (n > 2) list.x2 = this.knownSlot(extra[2]);
    if (n > 3) list.x3 = this.knownSlot(extra[3]);
    list.generation = this.generation;
  }

  /** The entity's meter index as its marks say, if they are of this generation (else UNKNOWN). */
  private knownSlot(e: ChargedEntity | undefined): number {
    const m = e as MarkedEntity;
    return m.generation === this.generation ? m.slot : UNKNOWN;
  }

  private checkEach(entities: readonly ChargedEntity[], now?: number): BudgetRefusal | undefined {
    for (const e of entities) {
      const m = e as MarkedEntity;
      if (m.passed === this.narrowed) continue;
      const i = this.indexOf(m);
      // No budget, no limit, or above half a slice: nothing in flight can spend it.
      if (i < 0 || this.meter.passes(i)) {
        m.passed = this.narrowed;
        continue;
      }
      const slot = this.byIndex[i] as Slot;
      // The exact time, and only here: a check that passes from its mark or the meter needs none.
      const a = this.current(slot, now ?? Date.now());
      this.settle(slot, a);
      if (a.pico > 0n) continue;
      const { def } = slot;
      let reason: BudgetRefusal["reason"] = "exhausted";
      if (!a.exhausted) {
        // Its share is spent and a lease is on its way: one request goes
        // ahead (so a gateway's first request for an entity is not refused),
        // the rest wait for the lease. Never more than one on debt: the bound.
        this.refill(slot, a);
        if (a.optimistic === 0) {
          a.optimistic = 1;
          continue;
        }
        reason = "pending";
      }
      this.o.metrics.refusals.inc({ kind: e.kind, reason });
      return {
        reason,
        kind: e.kind,
        id: e.id,
        maxPico: def.maxPico ?? 0n,
        periodStart: def.periodStart,
        resetAt: def.resetAt,
      };
    }
    return undefined;
  }

  /** Charges a served request's cost to every budgeted entity it was charged to. */
  charge(list: ChargeList, costPico: bigint, at?: number): void {
    if (this.count === 0) return;
    // Exact below 2^53, so it says exactly whether costPico <= FAST_LIMIT (no
    // BigInt compared on the request path).
    const cost = Number(costPico);
    const g = list.group;
    const n = list.n;
    // The common case, small enough to inline (see check): a cost the meter
    // can take, the group's reservation held (a reservation is of the
    // current generation: a new one gives every reservation back), and
    // where the extra entities' budgets are, kept by the check.
    if (
      !(cost > 0 && cost <= FAST_LIMIT) ||
      (g !== undefined && g.holder !== this.id) ||
      (n > 0 && (n > EXTRA_SLOTS || list.generation !== this.generation))
    )
      return this.chargeAll(list, costPico, cost, at);
    const now = at ?? this.meter.now();
    const meter = this.meter;
    // Spent from the group's reservation: one place in the meter for four budgets.
    if (g !== undefined && !meter.spend(g.place, cost, now))
      this.chargeGroup(g, true, cost, costPico, now, at);
    for (let k = 0; k < n; k++) {
      const i = k === 0 ? list.x0 : k === 1 ? list.x1 : k === 2 ? list.x2 : list.x3;
      if (i >= 0) {
        if (!meter.charge(i, cost, now)) this.chargeSlow(i, true, cost, costPico, now, at);
      } else if (i === UNKNOWN)
        this.chargeAt(this.indexOf(list.extra[k] as MarkedEntity), true, cost, costPico, now, at);
    }
  }

  /** The charge, every budget found and looked at as it must be. */
  private chargeAll(list: ChargeList, costPico: bigint, cost: number, at?: number): void {
    if (cost === 0) return;
    // A cost past FAST_LIMIT (2,251.8 USD; one event may carry up to 4,000) goes in as BigInts.
    const fast = cost <= FAST_LIMIT;
    const now = at ?? this.meter.now();
    const g = list.group;
    if (g !== undefined) {
      // Spent from the group's reservation: one place in the meter for four budgets.
      if (!fast || g.holder !== this.id || !this.meter.spend(g.place, cost, now))
        this.chargeGroup(g, fast, cost, costPico, now, at);
    }
    const n = list.n;
    if (n === 0) return;
    if (list.generation === this.generation && n <= EXTRA_SLOTS) {
      // Where the check found their budgets: the entity objects are not read again.
      this.chargeAt(this.extraAt(list, list.x0, 0), fast, cost, costPico, now, at);
      if (n > 1) this.chargeAt(this.extraAt(list, list.x1, 1), fast, cost, costPico, now, at);
      if (n > 2) this.chargeAt(this.extraAt(list, list.x2, 2), fast, cost, costPico, now, at);
      if (n > 3) this.chargeAt(this.extraAt(list, list.x3, 3), fast, cost, costPico, now, at);
      return;
    }
    for (const e of list.extra)
      this.chargeAt(this.indexOf(e as MarkedEntity), fast, cost, costPico, now, at);
  }

  /** The meter index the check kept for the list's extra entity `k`, or found now. */
  private extraAt(list: ChargeList, kept: number, k: number): number {
    return kept === UNKNOWN ? this.indexOf(list.extra[k] as MarkedEntity) : kept;
  }

  /**
   * Charges a group the long way: what is left of its reservation goes back,
   * then a new one pays for the cost if every budget of the group has room
   * for it, else each budget is charged (and looked at, if it must be).
   */
  private chargeGroup(
    g: EntityGroup,
    fast: boolean,
    cost: number,
    costPico: bigint,
    now: number,
    at: number | undefined,
  ): void {
    if (g.generation !== this.generation) this.placeGroup(g);
    if (g.holder === this.id) this.fold(g);
    // A group another book holds a reservation of (tests hold several) is charged the long way.
    if (fast && g.holder === 0 && this.reserve(g, cost, now)) return;
    // The group's slots, not its entity objects: one object read for four.
    this.chargeAt(g.s0, fast, cost, costPico, now, at);
    this.chargeAt(g.s1, fast, cost, costPico, now, at);
    this.chargeAt(g.s2, fast, cost, costPico, now, at);
    this.chargeAt(g.s3, fast, cost, costPico, now, at);
  }

  /**
   * Takes a reservation for the group and charges `cost` to it: an amount
   * counted as charged to each of the group's budgets at once (added to
   * their shares in the meter), kept in a place of its own that the group's
   * next requests spend from without reaching the four budgets.
   *
   * The bound on overshoot is unchanged: a share counts what its groups
   * reserved as spent, so checks and leases see no more room than if each
   * request had been charged to it, and what a group did not spend goes back
   * before the book reads the share (`settle`), so it is never reported or
   * lost. False: some budget has too little room (or no share for this
   * period), and nothing was taken.
   */
  private reserve(g: EntityGroup, cost: number, now: number): boolean {
    let r = cost * RESERVE_REQUESTS;
    let until = Infinity;
    const from = [g.s0, g.s1, g.s2, g.s3];
    for (let k = 0; k < 4; k++) {
      const i = from[k] as number;
      // No budget, or nothing counted: nothing to reserve from.
      if (i < 0 || !(this.byIndex[i] as Slot).counted) {
        from[k] = -1;
        continue;
      }
      const share = this.meter.headroom(i, now) / RESERVE_SHARE;
      if (share < r) r = share;
      const end = this.meter.until(i);
      if (end < until) until = end;
    }
    if (r < cost * MIN_RESERVE_REQUESTS) return false;
    // Whole picodollars: shares sum integers in doubles, exactly.
    r = Math.floor(r);
    for (const i of from) {
      if (i < 0) continue;
      this.meter.addSpent(i, r);
      (this.byIndex[i] as Slot).holders.add(g);
    }
    g.holder = this.id;
    this.held.add(g);
    g.place = this.freePlaces.pop() ?? this.meter.add();
    this.meter.hold(g.place, r - cost, until);
    [g.r0, g.r1, g.r2, g.r3] = from as [number, number, number, number];
    return true;
  }

  /**
   * A budget made or removed: every mark and kept slot is of an older
   * generation, and every reservation is given back (it may not cover a
   * group's budgets as they are now), so the request path's fast paths may
   * trust a reservation they find without checking its generation.
   */
  private regenerate(): void {
    for (const g of this.held) this.fold(g);
    this.generation = this.narrowed = stamp();
  }

  /** Gives what is left of the group's reservation back to the budgets it was taken from. */
  private fold(g: EntityGroup): void {
    const left = this.meter.held(g.place);
    for (const i of [g.r0, g.r1, g.r2, g.r3]) {
      if (i < 0) continue;
      if (left > 0) this.meter.addSpent(i, -left);
      (this.byIndex[i] as Slot).holders.delete(g);
    }
    this.meter.hold(g.place, 0, 0);
    this.freePlaces.push(g.place);
    this.held.delete(g);
    g.holder = 0;
    g.place = g.r0 = g.r1 = g.r2 = g.r3 = -1;
  }

  /** Finds the budgets of a group's entities (its slots are valid for this generation). */
  private placeGroup(g: EntityGroup): void {
    const e = g.entities;
    g.s0 = e[0] === undefined ? -1 : this.indexOf(e[0] as MarkedEntity);
    g.s1 = e[1] === undefined ? -1 : this.indexOf(e[1] as MarkedEntity);
    g.s2 = e[2] === undefined ? -1 : this.indexOf(e[2] as MarkedEntity);
    g.s3 = e[3] === undefined ? -1 : this.indexOf(e[3] as MarkedEntity);
    g.generation = this.generation;
  }

  /**
   * Charges the share at meter index `i` (none: -1). `now` is the coarse
   * clock's (see `clock`); `at`, the caller's time if it gave one.
   */
  private chargeAt(
    i: number,
    fast: boolean,
    cost: number,
    costPico: bigint,
    now: number,
    at: number | undefined,
  ): void {
    if (i < 0 || (fast && this.meter.charge(i, cost, now))) return;
    this.chargeSlow(i, fast, cost, costPico, now, at);
  }

  /** The rest of chargeAt, once the meter could not settle it (and took the cost if it could). */
  private chargeSlow(
    i: number,
    fast: boolean,
    cost: number,
    costPico: bigint,
    now: number,
    at: number | undefined,
  ): void {
    const slot = this.byIndex[i] as Slot;
    if (!slot.counted) return;
    // The meter took the cost unless the share's period is over (or it had none).
    const taken = fast && this.meter.current(i, now);
    const a = this.current(slot, at ?? Date.now());
    if (!taken) {
      a.pico -= costPico;
      a.unreported += costPico;
    }
    this.settle(slot, a);
    // A soft budget alone is never leased: the refresh reports its spend.
    if (a.pico < a.half && slot.hasMax) this.refill(slot, a);
  }

  /**
   * Moves what the meter took for the slot's share since the last settle
   * into its allowance (from the share, to what is unreported), then tells
   * the meter how much more the request path may charge and let through
   * before the book must look again. An allowance the slot no longer holds
   * was settled when it was replaced.
   */
  private settle(slot: Slot, a: Allowance): void {
    if (slot.a !== a) return;
    // Reservations are not spend: what their groups did not spend goes back first.
    for (const g of slot.holders) this.fold(g);
    const spent = this.meter.take(slot.i);
    if (spent !== 0) {
      const s = BigInt(spent);
      a.pico -= s;
      a.unreported += s;
    }
    this.publish(slot);
  }

  /** Tells the meter what the slot's settled share allows (see ShareMeter.set). */
  private publish(slot: Slot): void {
    const a = slot.a;
    if (a === undefined || !slot.counted) {
      // No share yet, or nothing counted: every charge goes to the book.
      const check = slot.hasMax ? -1 : Infinity;
      this.narrow(slot, check);
      this.meter.set(slot.i, -1, check, 0);
      return;
    }
    // A soft budget alone is reported by the refresh, however much is spent.
    const left = a.pico - a.half;
    const room = !slot.hasMax || left > FAST_LIMIT_BIG ? FAST_LIMIT : Number(left);
    // Only the period the slot's definition is in ends at a known time; a
    // share of a later one (the definition not yet reloaded) goes to the book.
    const until = a.period === slot.start ? slot.until : 0;
    // Below half a slice, exhausted or not leased (pico - half < 0): a check must look.
    const check = slot.hasMax ? room : Infinity;
    this.narrow(slot, check);
    this.meter.set(slot.i, room, check, until);
  }

  /**
   * Stamps `narrowed` if the slot's share could let a check pass and will
   * not at `check`: only then can a mark be wrong (no entity is marked while
   * its share cannot let a check pass), so a share already below half a
   * slice, settled again at every charge while its lease is on its way,
   * does not undo every other entity's mark each time.
   */
  private narrow(slot: Slot, check: number): void {
    if (check < 0 && this.meter.checkRoom(slot.i) >= 0) this.narrowed = stamp();
  }

  /** Gives back what this gateway leased and did not spend, so other gateways can. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.clock);
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.ticking;
    // Leases under way land first, so what they bring is given back too.
    for (const slot of this.slots()) if (slot.a?.refill !== undefined) await slot.a.refill;
    // The last spend reported, so a threshold it crossed is not missed.
    for (const slot of this.slots()) {
      const a = slot.a;
      if (a === undefined) continue;
      this.settle(slot, a);
      if (a.epoch !== "" && a.unreported >= PICO_PER_NANO)
        await this.report(slot, a).catch(() => undefined);
    }
    await this.o.alerts?.close();
    for (const slot of this.slots()) {
      const { def, a } = slot;
      if (a !== undefined) this.settle(slot, a);
      slot.a = undefined;
      this.publish(slot);
      if (a === undefined || a.epoch === "") continue;
      const nano = a.pico / PICO_PER_NANO;
      if (nano <= 0n) continue;
      await budgetScripts.giveBack
        .run(
          this.o.redis,
          [budgetKey(this.o.keyPrefix, def.kind, def.id)],
          [a.period, a.epoch, nano.toString()],
        )
        .catch(() => undefined);
    }
  }

  /**
   * The entity's slot index (-1: no budget). Found once and marked on the
   * entity object: the request path holds one object per entity
   * (chargedEntity), so its slot is found without a lookup, which on a busy
   * gateway's request path waits on memory the rest of the request evicted;
   * the mark is trusted only at the generation it was made.
   */
  private indexOf(m: MarkedEntity): number {
    if (m.generation === this.generation) return m.slot;
    const slot = this.slotOf(m);
    m.slot = slot === undefined ? -1 : slot.i;
    m.generation = this.generation;
    return m.slot;
  }

  private *slots(): Iterable<Slot> {
    for (const ids of this.index.values()) yield* ids.values();
  }

  /** This gateway's allowance for the entity's current period (a fresh one if the period moved). */
  private current(slot: Slot, now: number): Allowance {
    const period = now < slot.until ? slot.start : this.periodOf(slot.def, now);
    let a = slot.a;
    if (a === undefined || a.period !== period) {
      // What the meter took belongs to the period that ended.
      if (a !== undefined) this.settle(slot, a);
      a = {
        period,
        epoch: "",
        pico: 0n,
        exhausted: false,
        optimistic: 0,
        unreported: 0n,
        half: this.slicePico(slot.def) / 2n,
      };
      slot.a = a;
      this.publish(slot);
    }
    return a;
  }

  /** The entity's slot, made or updated for a definition just loaded. */
  private place(def: BudgetDef): Slot {
    let ids = this.index.get(def.kind);
    if (ids === undefined) this.index.set(def.kind, (ids = new Map<string, Slot>()));
    let slot = ids.get(def.id);
    const flat = {
      def,
      hasMax: def.maxPico !== null,
      counted: def.maxPico !== null || def.softPico !== null,
      start: def.periodStart.getTime(),
      until: def.duration === null || def.resetAt === null ? Infinity : def.resetAt.getTime(),
    };
    if (slot === undefined) {
      ids.set(def.id, (slot = { a: undefined, i: this.meter.add(), holders: new Set(), ...flat }));
      this.byIndex[slot.i] = slot;
      this.count++;
      this.regenerate();
    } else Object.assign(slot, flat);
    if (def.duration !== null && def.maxPico !== null) this.periodic.add(slot);
    else this.periodic.delete(slot);
    if (slot.a !== undefined) {
      // Charged so far under the old definition's thresholds.
      this.settle(slot, slot.a);
      slot.a.half = this.slicePico(def) / 2n;
    }
    this.publish(slot);
    return slot;
  }

  /** The start of the period `now` falls in (epoch ms). */
  private periodOf(def: BudgetDef, now: number): number {
    if (def.duration === null || def.resetAt === null || now < def.resetAt.getTime())
      return def.periodStart.getTime();
    return periodAt(def.periodStart, def.duration, new Date(now)).start.getTime();
  }

  private slicePico(def: BudgetDef): bigint {
    // A soft budget alone is never leased; its slice sets the step spend is reported in.
    const max = def.maxPico ?? def.softPico ?? 0n;
    const slice = (max * BigInt(Math.round(this.o.leaseFraction * 1e6))) / 1_000_000n;
    // At least a nanodollar: leases are whole nanodollars.
    return slice > PICO_PER_NANO ? slice : PICO_PER_NANO;
  }

  /** Starts a lease for the entity unless one is under way. */
  private refill(slot: Slot, a: Allowance): void {
    if (a.refill !== undefined || this.closed) return;
    const def = slot.def;
    a.refill = this.lease(slot, a)
      .catch((err: unknown) => {
        this.needsAttention(def, true);
        this.o.metrics.leases.inc({ outcome: "failed" });
        this.o.logger.warn({ err: (err as Error).message, kind: def.kind }, "budget lease failed");
      })
      .finally(() => {
        a.refill = undefined;
      });
  }

  private async lease(slot: Slot, a: Allowance): Promise<void> {
    // This call's own seed, if it won: its epoch, and the debt its live spend counted.
    let seeded: { epoch: string; debt: bigint } | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      // The newest definition this gateway has (a reload may have brought one
      // while it waited: place() updates the slot in place).
      let def = slot.def;
      // The period moved on (a boundary passed): one gateway records it in
      // PostgreSQL, every gateway reloads the definition before seeding.
      if (def.resetAt !== null && a.period >= def.resetAt.getTime()) {
        def = await this.rollOver(def, a.period);
        if (a.period !== def.periodStart.getTime()) return;
      }
      const key = budgetKey(this.o.keyPrefix, def.kind, def.id);
      // A slice, and what this gateway overran (requests in flight went past its share).
      this.settle(slot, a);
      const debt = a.pico < 0n ? -a.pico : 0n;
      const want = (this.slicePico(def) + debt + PICO_PER_NANO - 1n) / PICO_PER_NANO;
      const ttl = this.ttlMs(def);
      const [status, grant, epoch] = (await budgetScripts.lease.run(
        this.o.redis,
        [key],
        [a.period, want.toString(), ttl, def.updatedAt.getTime()],
      )) as [number, number, string];
      if (status === 3) {
        // Seeded from a newer definition (the limit changed) than this gateway
        // holds: read it, then lease under it.
        await this.reload();
        continue;
      }
      if (status === 2) {
        // Redis is in a later period than this gateway's clock: the next tick catches up.
        this.o.metrics.leases.inc({ outcome: "period_over" });
        return;
      }
      if (status === 0) {
        // None for this period, or one made from an older definition: seed it
        // (the script keeps the first seed of a definition, and a newer one's).
        seeded = await this.seed(key, slot, def, a, ttl);
        continue;
      }
      this.settle(slot, a);
      if (epoch !== a.epoch) {
        if (a.epoch !== "") {
          // Seeded again (Redis lost its state, or the budget changed): what
          // was leased before is void, the new seed counted the spend itself.
          this.o.metrics.leases.inc({ outcome: "forfeited" });
          a.pico = 0n;
        } else if (seeded?.epoch === epoch) {
          // The first lease of this allowance: what requests overran while it
          // was on its way stays owed (the grant paid for it), less what this
          // gateway's own seed counted in the live spend it read. Spend a seed
          // by another gateway did not see is never handed back.
          a.pico += seeded.debt;
        }
        a.epoch = epoch;
      }
      a.pico += BigInt(grant) * PICO_PER_NANO;
      // The meter reads the new share (unless the slot has since moved on to a later period).
      this.settle(slot, a);
      // Less than its debt and a slice means Redis had no more: nothing more is admitted.
      a.exhausted = a.pico <= 0n;
      a.optimistic = 0;
      this.needsAttention(def, a.exhausted);
      this.o.metrics.leases.inc({ outcome: grant === 0 ? "exhausted" : "granted" });
      // What it spent since the last lease (about half a slice) counts towards
      // the thresholds: reported at the lease's pace, not per request.
      if (a.unreported >= PICO_PER_NANO)
        await this.report(slot, a).catch((err: unknown) =>
          this.o.logger.warn(
            { err: (err as Error).message, kind: def.kind },
            "budget report failed",
          ),
        );
      return;
    }
  }

  /**
   * Seeds the period's state from the entity's live spend: only the first
   * seeder wins. Its epoch and the debt the live spend includes (requests
   * charged so far were recorded before it is read), if it won.
   */
  private async seed(
    key: string,
    slot: Slot,
    def: BudgetDef,
    a: Allowance,
    ttl: number,
  ): Promise<{ epoch: string; debt: bigint } | undefined> {
    this.settle(slot, a);
    const debt = a.pico < 0n ? -a.pico : 0n;
    const epoch = randomUUID();
    const spent = (await this.o.liveSpend(def.kind, def.id)) - def.periodStartSpendPico;
    let remaining = ((def.maxPico ?? 0n) - (spent > 0n ? spent : 0n)) / PICO_PER_NANO;
    if (remaining < 0n) remaining = 0n;
    if (remaining > MAX_NANO) remaining = MAX_NANO;
    const spentNano = (spent > 0n ? spent : 0n) / PICO_PER_NANO;
    const won = await budgetScripts.seed.run(
      this.o.redis,
      [key],
      [a.period, remaining.toString(), epoch, ttl, spentNano.toString(), def.updatedAt.getTime()],
    );
    if (won !== 1) return undefined;
    this.o.metrics.leases.inc({ outcome: "seeded" });
    return { epoch, debt };
  }

  /** Past the period's end, and a period of slack: a budget's state outlives no period by much. */
  private ttlMs(def: BudgetDef): number {
    const day = 86_400_000;
    if (def.resetAt === null || def.duration === null) return 30 * day;
    const len = def.resetAt.getTime() - def.periodStart.getTime();
    return Math.max(60_000, Math.min(2 * len + 60_000, 400 * day));
  }

  /** Ends the period in PostgreSQL (one gateway does; the rest find it done), and reloads it. */
  private async rollOver(def: BudgetDef, period: number): Promise<BudgetDef> {
    if (def.duration !== null && def.periodStart.getTime() < period) {
      const next = periodAt(def.periodStart, def.duration, new Date(period));
      const live = await this.o.liveSpend(def.kind, def.id);
      if (await rollOver(this.o.db, def, next, live)) {
        this.o.metrics.periods.inc({ kind: def.kind });
        this.o.logger.info(
          { kind: def.kind, period: next.start.toISOString() },
          "budget period reset",
        );
      }
    }
    const fresh = await loadBudget(this.o.db, def.kind, def.id);
    if (fresh === null) {
      const gone = this.slotOf(def);
      if (gone !== undefined) {
        this.periodic.delete(gone);
        this.index.get(def.kind)?.delete(def.id);
        this.count--;
        this.regenerate();
      }
      return def;
    }
    this.place(fresh);
    return fresh;
  }

  /** One refresh: changed definitions, boundaries passed, exhausted budgets asked again. */
  private async tick(): Promise<void> {
    await this.reload();
    const now = Date.now();
    if (now >= this.foldAllAt) {
      this.foldAllAt = now + RESERVE_MAX_AGE_MS;
      for (const g of this.held) this.fold(g);
    }
    // A boundary passed: lease the new period's share now, not on its first request.
    for (const slot of this.periodic)
      if (now >= slot.until && slot.a !== undefined && slot.a.period < now) {
        const cur = this.current(slot, now);
        if (cur.epoch === "") this.refill(slot, cur);
      }
    for (const slot of this.attention) {
      const a = slot.a;
      if (a === undefined || this.slotOf(slot.def) !== slot) {
        this.attention.delete(slot);
        continue;
      }
      const cur = this.current(slot, now);
      this.settle(slot, cur);
      if ((slot.hasMax && (cur.exhausted || cur.pico < cur.half)) || cur.epoch === "")
        this.refill(slot, cur);
      // All of it once the share is exhausted, so the sum reaches the limit's
      // own threshold; a soft budget alone (never leased) in half-slice steps.
      if (
        cur.epoch !== "" &&
        (cur.unreported >= cur.half ||
          (slot.hasMax && cur.exhausted && cur.unreported >= PICO_PER_NANO))
      )
        await this.report(slot, cur);
    }
  }

  /** Puts the entity's slot in (or takes it out of) what each refresh looks at. */
  private needsAttention(def: BudgetDef, needs: boolean): void {
    const slot = this.slotOf(def);
    if (slot === undefined) return;
    if (needs) this.attention.add(slot);
    else this.attention.delete(slot);
  }

  /**
   * Adds this gateway's spend since its last report to the period's spend in
   * Redis; a threshold the sum crossed is claimed there by exactly one
   * gateway, which raises the alert.
   */
  private async report(slot: Slot, a: Allowance): Promise<void> {
    const def = slot.def;
    this.settle(slot, a);
    const nano = a.unreported / PICO_PER_NANO;
    a.unreported -= nano * PICO_PER_NANO;
    const thresholds: string[] = [];
    if (def.softPico !== null)
      thresholds.push("soft_budget", (def.softPico / PICO_PER_NANO).toString());
    if (def.maxPico !== null)
      for (const f of this.o.alertThresholds ?? []) {
        const at = (def.maxPico * BigInt(Math.round(f * 1e6))) / 1_000_000n / PICO_PER_NANO;
        thresholds.push(`${Math.round(f * 100)}%`, at.toString());
      }
    const out = (await budgetScripts.report.run(
      this.o.redis,
      [budgetKey(this.o.keyPrefix, def.kind, def.id)],
      [a.period, a.epoch, nano.toString(), ...thresholds],
    )) as string[];
    const [spent, ...crossed] = out;
    for (const threshold of crossed)
      await this.o.alerts?.emit({
        kind: def.kind,
        id: def.id,
        threshold,
        spendPico: BigInt(spent ?? "0") * PICO_PER_NANO,
        maxPico: def.maxPico,
        softPico: def.softPico,
        periodStart: new Date(a.period),
        resetAt: def.resetAt,
      });
  }

  private async reload(): Promise<void> {
    const changed = await loadBudgetsSince(this.o.db, this.loadedUntil);
    for (const def of changed) {
      const old = this.slotOf(def)?.def;
      const slot = this.place(def);
      if (def.updatedAt > this.loadedUntil) this.loadedUntil = def.updatedAt;
      // A changed limit or period: what this gateway holds is re-leased from the new seed.
      if (
        old !== undefined &&
        (old.maxPico !== def.maxPico || old.periodStart.getTime() !== def.periodStart.getTime())
      ) {
        if (slot.a !== undefined) slot.a.exhausted = false;
      }
      // A budget new to this gateway (or changed): lease a share now, not on its first request.
      if ((def.maxPico !== null || def.softPico !== null) && !this.closed)
        this.refill(slot, this.current(slot, Date.now()));
    }
    this.o.metrics.enforced.set(this.count);
  }

  /** The entity's slot, if it has a budget. */
  private slotOf(def: { kind: string; id: string }): Slot | undefined {
    return this.index.get(def.kind)?.get(def.id);
  }
}

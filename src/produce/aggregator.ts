import { MAX_SAFE_PICO } from "../contract/money.js";
import {
  encodeCount,
  type Count,
  type DailyKind,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../contract/spend-batch.js";
import type { NormalizedEvent } from "./spend-event.js";

/**
 * In-memory aggregation inside a gateway process.
 *
 * Each event adds to the rows it touches directly: ~8 entity rows (key, user,
 * team, team member, org, end user, tags) and ~5 daily rows (user, team, org,
 * end user, tags for the request's date, key, model, group, provider,
 * endpoint and MCP tool). The cost per event is the same whether its
 * combination of ids is new or not; only a new *row* allocates.
 *
 * No composite key string is ever built on the request path: every map is
 * keyed by one id the event already holds (V8 caches a string's hash on the
 * string), and the daily dimensions a request shares with its key's earlier
 * requests are found by comparing references (DailyContext).
 *
 * Rows outlive a seal: drain() emits the rows touched since the last one
 * and zeroes them, and drops only rows that went a whole interval untouched.
 * A gateway's ids recur interval after interval, so in steady state a
 * request finds its rows already there (addIfKnown) instead of allocating
 * them again every interval. Memory grows with the rows of the last two
 * intervals, never with requests.
 */

// Tokens per event are capped (config), so a row that has seen fewer requests
// than this cannot hold a token sum past 2^53 in a plain number.
const COUNT_SPILL_REQUESTS = 4_000_000;
// A key's distinct daily contexts are scanned linearly up to this many, then indexed.
const CONTEXT_SCAN_LIMIT = 8;
const SEP = "\u001f";
// Rows (or contexts) a drain step handles before it yields: well under a
// millisecond of work, so a driver can check its time budget often.
const DRAIN_STEP = 256;
const DAY_MS = 86_400_000;

export interface DrainedRows {
  entity: EntityRow[];
  daily: DailyRow[];
}

/**
 * One entity row's spend. Keys and team memberships are added to directly (an
 * exact integer number while below 2^52, then spilled); the other kinds are
 * the sum of their daily rows, added up only when read, so a request touches
 * one object per row kind instead of two.
 */
class EntityAcc {
  spend = 0;
  over = 0n;
  /** Direct adds since the last drain (keys and memberships). */
  hits = 0;
  parts: DailyAcc[] = [];
  /** Set by drain(): touched in the interval it drains. */
  keep = false;

  add(pico: number): void {
    this.hits++;
    this.spend += pico;
    if (this.spend >= MAX_SAFE_PICO) {
      this.over += BigInt(this.spend);
      this.spend = 0;
    }
  }

  total(): bigint {
    // Summed as a number while that is exact: a bigint per part made the
    // seal of a busy interval spend most of its time here.
    let big = this.over;
    let n = this.spend;
    for (const d of this.parts) {
      if (d.over !== undefined) big += d.over.spend;
      const x = d.spend;
      if (n > Number.MAX_SAFE_INTEGER - x) {
        big += BigInt(n);
        n = x;
      } else n += x;
    }
    return big + BigInt(n);
  }

  touched(): boolean {
    if (this.hits > 0) return true;
    for (const d of this.parts) if (d.touched()) return true;
    return false;
  }

  reset(): void {
    this.spend = 0;
    this.over = 0n;
    this.hits = 0;
    // Parts dropped by the drain are gone for good; the others were zeroed with it.
    if (this.parts.some((d) => !d.alive)) this.parts = this.parts.filter((d) => d.alive);
  }
}

/** A virtual key's row, which also holds the daily contexts of its requests. */
class KeyAcc extends EntityAcc {
  readonly contexts = new ContextIndex();
}

/** Where a daily row's counters spill before a plain number could round. */
interface DailyOverflow {
  spend: bigint;
  prompt: bigint;
  completion: bigint;
  cacheRead: bigint;
  cacheCreation: bigint;
  requests: bigint;
  successes: bigint;
}

/** A daily row's columns after its dimensions: the six counters, failures, and spend. */
type DailyColumns = [Count, Count, Count, Count, Count, Count, Count, string];

class DailyAcc {
  /** False once a drain dropped it (idle for a whole interval). */
  alive = true;
  spend = 0;
  prompt = 0;
  completion = 0;
  cacheRead = 0;
  cacheCreation = 0;
  requests = 0;
  successes = 0;
  over: DailyOverflow | undefined = undefined;

  /** Adds the event; returns 1 if it is the row's first since it was last zeroed, else 0. */
  add(e: NormalizedEvent): number {
    const first = this.requests === 0 && this.over === undefined ? 1 : 0;
    this.spend += e.spendPico;
    this.prompt += e.promptTokens;
    this.completion += e.completionTokens;
    this.cacheRead += e.cacheReadInputTokens;
    this.cacheCreation += e.cacheCreationInputTokens;
    this.requests += 1;
    if (e.success) this.successes += 1;
    if (this.spend >= MAX_SAFE_PICO || this.requests >= COUNT_SPILL_REQUESTS) this.spill();
    return first;
  }

  touched(): boolean {
    return this.requests > 0 || this.over !== undefined;
  }

  /** Zero for the next interval. */
  reset(): void {
    this.zeroCounters();
    this.over = undefined;
  }

  private zeroCounters(): void {
    this.spend = 0;
    this.prompt = 0;
    this.completion = 0;
    this.cacheRead = 0;
    this.cacheCreation = 0;
    this.requests = 0;
    this.successes = 0;
  }

  spill(): void {
    const o = (this.over ??= {
      spend: 0n,
      prompt: 0n,
      completion: 0n,
      cacheRead: 0n,
      cacheCreation: 0n,
      requests: 0n,
      successes: 0n,
    });
    o.spend += BigInt(this.spend);
    o.prompt += BigInt(this.prompt);
    o.completion += BigInt(this.completion);
    o.cacheRead += BigInt(this.cacheRead);
    o.cacheCreation += BigInt(this.cacheCreation);
    o.requests += BigInt(this.requests);
    o.successes += BigInt(this.successes);
    this.zeroCounters();
  }

  /** Its counters and spend as exact bigints: prompt, completion, cache read/creation, requests, successes, spend. */
  bigCounters(): bigint[] {
    const o = this.over;
    return [
      (o?.prompt ?? 0n) + BigInt(this.prompt),
      (o?.completion ?? 0n) + BigInt(this.completion),
      (o?.cacheRead ?? 0n) + BigInt(this.cacheRead),
      (o?.cacheCreation ?? 0n) + BigInt(this.cacheCreation),
      (o?.requests ?? 0n) + BigInt(this.requests),
      (o?.successes ?? 0n) + BigInt(this.successes),
      (o?.spend ?? 0n) + BigInt(this.spend),
    ];
  }

  /** Its row as `id`'s in context c: the context's dimensions, then its counters and spend, exact. */
  row(kind: DailyKind, id: string, c: DailyContext): DailyRow {
    if (this.over === undefined) {
      // No spill: every counter is an exact integer number below 2^53.
      return dailyRow(
        kind,
        id,
        c,
        this.prompt,
        this.completion,
        this.cacheRead,
        this.cacheCreation,
        this.requests,
        this.successes,
        this.requests - this.successes,
        String(this.spend),
      );
    }
    this.spill();
    const o = this.over;
    return dailyRow(
      kind,
      id,
      c,
      encodeCount(o.prompt),
      encodeCount(o.completion),
      encodeCount(o.cacheRead),
      encodeCount(o.cacheCreation),
      encodeCount(o.requests),
      encodeCount(o.successes),
      encodeCount(o.requests - o.successes),
      o.spend.toString(),
    );
  }
}

/**
 * A context's rows of one entity kind. The first id is held inline: a key
 * belongs to one user, team and org, so in a key's context those kinds have
 * exactly one row and need no Map at all; other ids (end users, tags) go to
 * a Map behind it.
 */
class DailySlots {
  private firstId = "";
  private first: DailyAcc | undefined = undefined;
  private more: Map<string, DailyAcc> | undefined = undefined;

  get(id: string): DailyAcc | undefined {
    if (id === this.firstId) return this.first;
    return this.more?.get(id);
  }

  set(id: string, acc: DailyAcc): void {
    if (this.first === undefined) {
      this.firstId = id;
      this.first = acc;
    } else (this.more ??= new Map()).set(id, acc);
  }

  /** Each entry, the inline one first, then the others in the order they were set. */
  forEach(f: (acc: DailyAcc, id: string) => void): void {
    if (this.first === undefined) return;
    f(this.first, this.firstId);
    this.more?.forEach(f);
  }

  /**
   * Keeps the entries `keep` says to keep, asked in forEach's order; returns
   * how many were dropped. In place: a seal sweeps every slot set it holds.
   */
  sweep(keep: (id: string, acc: DailyAcc) => boolean): number {
    if (this.first === undefined) return 0;
    const keepFirst = keep(this.firstId, this.first);
    let dropped = 0;
    const more = this.more;
    if (more !== undefined) {
      // Deleting the entry being visited is safe in a Map's iteration.
      more.forEach((acc, id) => {
        if (!keep(id, acc)) {
          more.delete(id);
          dropped++;
        }
      });
    }
    if (!keepFirst) {
      dropped++;
      this.firstId = "";
      this.first = undefined;
      // The next entry, if any, moves inline: the inline one is set whenever any is.
      if (more !== undefined)
        for (const [id, acc] of more) {
          more.delete(id);
          this.firstId = id;
          this.first = acc;
          break;
        }
    }
    if (more?.size === 0) this.more = undefined;
    return dropped;
  }
}

/**
 * The dimensions a daily row shares with the other daily rows of one request
 * (date, key, model, group, provider, endpoint, MCP tool), and those rows,
 * one slot set per entity kind.
 */
class DailyContext {
  readonly users = new DailySlots();
  readonly teams = new DailySlots();
  readonly orgs = new DailySlots();
  readonly endUsers = new DailySlots();
  readonly tags = new DailySlots();
  /**
   * The user, team and org of the context's first request, and one
   * accumulator for every request that names exactly these three. A key
   * belongs to one user, team and org, so its requests add to one object
   * instead of four (three daily rows and the membership); the rows are
   * written out from it at drain. Other requests use the slots above.
   */
  ownerUser = "";
  ownerTeam = "";
  ownerOrg = "";
  owner: DailyAcc | undefined = undefined;
  // The team-membership row this context's other requests last charged.
  memberUser = "";
  memberTeam = "";
  member: EntityAcc | undefined = undefined;
  /** Requests since the last drain. */
  hits = 0;

  constructor(
    readonly date: string,
    readonly apiKey: string,
    readonly model: string,
    readonly modelGroup: string,
    readonly provider: string,
    readonly endpoint: string,
    readonly mcpToolName: string,
  ) {}

  matches(e: NormalizedEvent, date: string): boolean {
    // Equal strings from the same source are usually the same object, so
    // these are mostly pointer comparisons.
    return (
      this.model === e.model &&
      this.date === date &&
      this.provider === e.provider &&
      this.modelGroup === e.modelGroup &&
      this.endpoint === e.endpoint &&
      this.mcpToolName === e.mcpToolName
    );
  }

  isOwner(e: NormalizedEvent): boolean {
    return (
      this.owner !== undefined &&
      this.ownerUser === e.userId &&
      this.ownerTeam === e.teamId &&
      this.ownerOrg === e.organizationId
    );
  }

  /** Daily rows the owner accumulator stands for. */
  ownerRows(): number {
    return (
      (this.ownerUser !== "" ? 1 : 0) +
      (this.ownerTeam !== "" ? 1 : 0) +
      (this.ownerOrg !== "" ? 1 : 0)
    );
  }
}

/**
 * One key's daily contexts. A key sees few (one per model and day, mostly),
 * so a short list scanned by reference beats building and hashing a
 * seven-part string per request; a key with many falls back to that index.
 */
class ContextIndex {
  readonly list: DailyContext[] = [];
  private index: Map<string, DailyContext> | undefined;

  find(e: NormalizedEvent, date: string): DailyContext | undefined {
    if (this.index !== undefined) return this.index.get(contextKey(e, date));
    const list = this.list;
    for (let i = 0; i < list.length; i++) {
      const c = list[i] as DailyContext;
      if (c.matches(e, date)) return c;
    }
    return undefined;
  }

  /** Keeps the contexts `keep` says to keep, and re-indexes them. */
  sweep(keep: (c: DailyContext) => boolean): void {
    const kept = this.list.filter(keep);
    if (kept.length === this.list.length) return;
    this.list.length = 0;
    this.index = undefined;
    for (const c of kept) this.list.push(c);
    if (kept.length > CONTEXT_SCAN_LIMIT) {
      this.index = new Map();
      for (const x of kept) this.index.set(contextKey(x, x.date), x);
    }
  }

  open(e: NormalizedEvent, date: string): DailyContext {
    const c = new DailyContext(
      date,
      e.apiKey,
      e.model,
      e.modelGroup,
      e.provider,
      e.endpoint,
      e.mcpToolName,
    );
    this.list.push(c);
    if (this.index !== undefined) this.index.set(contextKey(e, date), c);
    else if (this.list.length > CONTEXT_SCAN_LIMIT) {
      this.index = new Map();
      for (const x of this.list) this.index.set(contextKey(x, x.date), x);
    }
    return c;
  }
}

/** The columns of one daily row charged through two accumulators, exact. */
function sumColumns(a: DailyAcc, b: DailyAcc): DailyColumns {
  const x = a.bigCounters();
  const y = b.bigCounters();
  const c = x.map((v, i) => v + (y[i] ?? 0n));
  const [
    prompt = 0n,
    completion = 0n,
    cacheRead = 0n,
    cacheCreation = 0n,
    requests = 0n,
    successes = 0n,
    spend = 0n,
  ] = c;
  return [
    encodeCount(prompt),
    encodeCount(completion),
    encodeCount(cacheRead),
    encodeCount(cacheCreation),
    encodeCount(requests),
    encodeCount(successes),
    encodeCount(requests - successes),
    spend.toString(),
  ];
}

/** A daily row: its entity, its context's dimensions, then its counters and spend. */
function dailyRow(
  kind: DailyKind,
  id: string,
  c: DailyContext,
  prompt: Count,
  completion: Count,
  cacheRead: Count,
  cacheCreation: Count,
  requests: Count,
  successes: Count,
  failures: Count,
  spend: string,
): DailyRow {
  return [
    kind,
    id,
    c.date,
    c.apiKey,
    c.model,
    c.modelGroup,
    c.provider,
    c.mcpToolName,
    c.endpoint,
    prompt,
    completion,
    cacheRead,
    cacheCreation,
    requests,
    successes,
    failures,
    spend,
  ];
}

/**
 * The most rows one event with `tags` tags can add: an entity row for its
 * key, user, team, membership, org, end user and each tag, and a daily row
 * for its user, team, org, end user and each tag.
 */
export function rowBound(tags: number): number {
  return 10 + 2 * tags;
}

type ContextDims = Pick<
  NormalizedEvent,
  "model" | "modelGroup" | "provider" | "endpoint" | "mcpToolName"
>;

function contextKey(e: ContextDims, date: string): string {
  return (
    date +
    SEP +
    e.model +
    SEP +
    e.modelGroup +
    SEP +
    e.provider +
    SEP +
    e.endpoint +
    SEP +
    e.mcpToolName
  );
}

export class Aggregator {
  private readonly keys = new Map<string, KeyAcc>();
  // Entity rows other than keys and memberships are sums of their daily rows
  // (EntityAcc.parts): these maps are touched only when a daily row is
  // created, and when read.
  private readonly users = new Map<string, EntityAcc>();
  private readonly teams = new Map<string, EntityAcc>();
  private readonly orgs = new Map<string, EntityAcc>();
  private readonly endUsers = new Map<string, EntityAcc>();
  private readonly tags = new Map<string, EntityAcc>();
  /** user → team → membership row (the user's spend within that team). */
  private readonly members = new Map<string, Map<string, EntityAcc>>();
  /** Daily contexts of requests that name no key. */
  private readonly keyless = new ContextIndex();
  /** Rows allocated (pending or kept from the last interval): what the memory bound counts. */
  private entityRowsHeld = 0;
  private dailyRowsHeld = 0;
  /** Events added since the last drain. */
  private events = 0;
  /** Daily rows touched since the last drain (counted as they are first touched). */
  private dailyTouched = 0;
  /** Rows (entity + daily) per daily row in the last drain: scales the estimate. */
  private rowsPerDailyRow = 1.5;
  private lastDay = -1;
  private lastDate = "";
  // Reused by addIfKnown so the request path allocates nothing.
  private readonly tagScratch: DailyAcc[] = [];

  /** Rows held in memory, pending or kept from the last interval (O(1)): the buffer bound's measure. */
  get heldRowCount(): number {
    return this.entityRowsHeld + this.dailyRowsHeld;
  }

  /**
   * Rows the next drain will emit, estimated in O(1): the daily rows touched
   * since the last drain (counted exactly, as they are first touched), times
   * the last drain's rows per daily row (its entity rows are sums of daily
   * ones, not counted on the request path). What back-pressure weighs.
   */
  get pendingRowEstimate(): number {
    return Math.ceil(this.dailyTouched * this.rowsPerDailyRow);
  }

  /** Events added since the last drain (O(1)). */
  get eventCount(): number {
    return this.events;
  }

  /** Whether anything was added since the last drain (O(1)). */
  get hasPending(): boolean {
    return this.events > 0;
  }

  /**
   * Distinct rows with spend not drained yet, entity and daily (the seed's
   * in-memory queue gauges). O(rows held): read at scrape time, not per request.
   */
  pendingRowCounts(): { entity: number; daily: number } {
    let entity = 0;
    for (const m of [this.keys, this.users, this.teams, this.orgs, this.endUsers, this.tags])
      for (const acc of m.values()) if (acc.touched()) entity++;
    for (const teams of this.members.values())
      for (const acc of teams.values()) if (acc.touched()) entity++;
    let daily = 0;
    this.forEachContext((c) => {
      const owner = c.owner?.touched() === true;
      const kinds: [DailySlots, string][] = [
        [c.users, owner ? c.ownerUser : ""],
        [c.teams, owner ? c.ownerTeam : ""],
        [c.orgs, owner ? c.ownerOrg : ""],
        [c.endUsers, ""],
        [c.tags, ""],
      ];
      for (const [slots, ownerId] of kinds) {
        // The owner's row for this kind, unless a slot holds the same row.
        if (ownerId !== "" && slots.get(ownerId)?.touched() !== true) daily++;
        slots.forEach((acc) => {
          if (acc.touched()) daily++;
        });
      }
    });
    return { entity, daily };
  }

  /**
   * Picodollars buffered here for one entity row (read-only, O(1); O(teams)
   * for a user's memberships). For team_member, `id` is the user and `id2`
   * the team; without `id2` it sums the user's memberships of every team.
   */
  entitySpendFor(kind: EntityKind, id: string, id2?: string): bigint {
    if (kind === "team_member") {
      const teams = this.members.get(id);
      if (teams === undefined) return 0n;
      if (id2 !== undefined) return teams.get(id2)?.total() ?? 0n;
      let sum = 0n;
      for (const acc of teams.values()) sum += acc.total();
      return sum;
    }
    return this.entityMap(kind).get(id)?.total() ?? 0n;
  }

  /**
   * The request path: adds the event if every row it touches is already held
   * and returns true; otherwise changes nothing and returns false, and the
   * caller checks the event's ids and its buffer bound before add(). Every id
   * found here equals one that passed those checks when its row was created.
   */
  addIfKnown(e: NormalizedEvent): boolean {
    let contexts = this.keyless;
    let key: KeyAcc | undefined;
    if (e.apiKey !== "") {
      key = this.keys.get(e.apiKey);
      if (key === undefined) return false;
      contexts = key.contexts;
    }
    const ctx = contexts.find(e, this.dateOf(e.startMs));
    if (ctx === undefined) return false;
    const user = e.userId;
    const team = e.teamId;
    let owner: DailyAcc | undefined;
    let u: DailyAcc | undefined;
    let t: DailyAcc | undefined;
    let o: DailyAcc | undefined;
    let eu: DailyAcc | undefined;
    let member: EntityAcc | undefined;
    if (ctx.isOwner(e)) owner = ctx.owner;
    else {
      // Only a request naming none of them needs no owner; any other one sets it up in add().
      if (ctx.owner === undefined && (user !== "" || team !== "" || e.organizationId !== ""))
        return false;
      if (user !== "" && (u = ctx.users.get(user)) === undefined) return false;
      if (team !== "" && (t = ctx.teams.get(team)) === undefined) return false;
      if (user !== "" && team !== "") {
        member =
          ctx.member !== undefined && ctx.memberUser === user && ctx.memberTeam === team
            ? ctx.member
            : this.members.get(user)?.get(team);
        if (member === undefined) return false;
      }
      if (e.organizationId !== "" && (o = ctx.orgs.get(e.organizationId)) === undefined)
        return false;
    }
    if (e.endUserId !== "" && (eu = ctx.endUsers.get(e.endUserId)) === undefined) return false;
    const tags = e.tags;
    const tagAccs = this.tagScratch;
    for (let i = 0; i < tags.length; i++) {
      const acc = ctx.tags.get(tags[i] as string);
      if (acc === undefined) return false;
      tagAccs[i] = acc;
    }

    // Everything exists: add.
    this.events++;
    ctx.hits++;
    key?.add(e.spendPico);
    member?.add(e.spendPico);
    // Daily rows touched for the first time since the last drain: the estimate's count.
    let first = 0;
    if (owner !== undefined && owner.add(e) === 1) first += ctx.ownerRows();
    if (u !== undefined) first += u.add(e);
    if (t !== undefined) first += t.add(e);
    if (o !== undefined) first += o.add(e);
    if (eu !== undefined) first += eu.add(e);
    for (let i = 0; i < tags.length; i++) first += (tagAccs[i] as DailyAcc).add(e);
    this.dailyTouched += first;
    return true;
  }

  /** Adds the event, creating the rows it touches that do not exist yet. */
  add(e: NormalizedEvent): void {
    const pico = e.spendPico;
    const user = e.userId;
    const team = e.teamId;
    const tags = e.tags;

    let contexts = this.keyless;
    if (e.apiKey !== "") {
      let k = this.keys.get(e.apiKey);
      if (k === undefined) {
        k = new KeyAcc();
        this.keys.set(e.apiKey, k);
        this.entityRowsHeld++;
      }
      k.add(pico);
      contexts = k.contexts;
    }
    const date = this.dateOf(e.startMs);
    const ctx = contexts.find(e, date) ?? contexts.open(e, date);
    this.events++;
    ctx.hits++;

    const org = e.organizationId;
    if (ctx.owner === undefined && (user !== "" || team !== "" || org !== "")) {
      // The context's first request naming a user, team or org sets its owner.
      const acc = new DailyAcc();
      ctx.owner = acc;
      ctx.ownerUser = user;
      ctx.ownerTeam = team;
      ctx.ownerOrg = org;
      if (user !== "") this.entity(this.users, user).parts.push(acc);
      if (team !== "") this.entity(this.teams, team).parts.push(acc);
      if (org !== "") this.entity(this.orgs, org).parts.push(acc);
      if (user !== "" && team !== "") this.member(user, team).parts.push(acc);
      this.dailyRowsHeld += ctx.ownerRows();
    }
    let first = 0;
    if (ctx.isOwner(e)) {
      if ((ctx.owner as DailyAcc).add(e) === 1) first += ctx.ownerRows();
    } else {
      if (user !== "") first += this.daily(ctx.users, this.users, user).add(e);
      if (team !== "") {
        first += this.daily(ctx.teams, this.teams, team).add(e);
        if (user !== "") {
          if (ctx.member === undefined || ctx.memberUser !== user || ctx.memberTeam !== team) {
            ctx.member = this.member(user, team);
            ctx.memberUser = user;
            ctx.memberTeam = team;
          }
          ctx.member.add(pico);
        }
      }
      if (org !== "") first += this.daily(ctx.orgs, this.orgs, org).add(e);
    }
    const endUser = e.endUserId;
    if (endUser !== "") first += this.daily(ctx.endUsers, this.endUsers, endUser).add(e);
    for (let i = 0; i < tags.length; i++) {
      first += this.daily(ctx.tags, this.tags, tags[i] as string).add(e);
    }
    this.dailyTouched += first;
  }

  /**
   * The rows touched since the last drain, exact, and zeroes them for the
   * next interval; rows untouched for the whole interval are dropped.
   */
  drain(): DrainedRows {
    const out: DrainedRows = { entity: [], daily: [] };
    const steps = this.drainSteps(out);
    while (steps.next().done !== true);
    return out;
  }

  /**
   * drain() in steps: appends to `out`, and yields after every DRAIN_STEP
   * rows or so, so a caller can spread a large drain over several turns of
   * the event loop. Nothing may be added to this aggregator until the steps
   * are done: the producer drains one aggregator while the other records.
   */
  *drainSteps(out: DrainedRows): Generator<void, void> {
    // 1. Entity rows, read before their daily parts are zeroed.
    const entity = out.entity;
    let work = 0;
    const emitKind = function* (kind: EntityKind, m: Map<string, EntityAcc>): Generator<void> {
      for (const [id, acc] of m) {
        acc.keep = acc.touched();
        if (acc.keep) entity.push([kind, id, "", acc.total().toString()]);
        if (++work % DRAIN_STEP === 0) yield;
      }
    };
    yield* emitKind("key", this.keys);
    yield* emitKind("user", this.users);
    yield* emitKind("team", this.teams);
    yield* emitKind("org", this.orgs);
    yield* emitKind("end_user", this.endUsers);
    yield* emitKind("tag", this.tags);
    for (const [user, teams] of this.members) {
      for (const [team, acc] of teams) {
        acc.keep = acc.touched();
        if (acc.keep) entity.push(["team_member", user, team, acc.total().toString()]);
        if (++work % DRAIN_STEP === 0) yield;
      }
    }

    // 2. Daily rows: emitted and zeroed, or dropped.
    const daily = out.daily;
    const dailyBefore = daily.length;
    const sweepKind = (kind: DailyKind, c: DailyContext, slots: DailySlots, ownerId = ""): void => {
      // The owner's share of this kind's row for ownerId, merged with the
      // slot's own share if other requests charged that id too.
      const owner = ownerId !== "" && c.owner?.touched() === true ? c.owner : undefined;
      if (owner !== undefined) {
        const same = slots.get(ownerId);
        daily.push(
          same?.touched() === true
            ? dailyRow(kind, ownerId, c, ...sumColumns(owner, same))
            : owner.row(kind, ownerId, c),
        );
      }
      this.dailyRowsHeld -= slots.sweep((id, acc) => {
        if (!acc.touched()) {
          acc.alive = false;
          return false;
        }
        if (owner === undefined || id !== ownerId) daily.push(acc.row(kind, id, c));
        acc.reset();
        return true;
      });
    };
    const sweepContexts = function* (this: Aggregator, index: ContextIndex): Generator<void> {
      for (const c of index.list) {
        sweepKind("user", c, c.users, c.ownerUser);
        sweepKind("team", c, c.teams, c.ownerTeam);
        sweepKind("org", c, c.orgs, c.ownerOrg);
        sweepKind("end_user", c, c.endUsers);
        sweepKind("tag", c, c.tags);
        const owner = c.owner;
        if (owner !== undefined) {
          if (owner.touched()) owner.reset();
          else {
            owner.alive = false;
            c.owner = undefined;
            this.dailyRowsHeld -= c.ownerRows();
          }
        }
        if (++work % DRAIN_STEP === 0) yield;
      }
      // A context no request reached this interval has no rows left.
      index.sweep((c) => c.hits > 0);
      for (const c of index.list) {
        c.hits = 0;
        // Its membership row may be dropped below; the next request looks it up again.
        c.member = undefined;
      }
    };
    yield* sweepContexts.call(this, this.keyless);
    for (const k of this.keys.values()) yield* sweepContexts.call(this, k.contexts);

    // 3. Entity rows: zeroed, or dropped.
    const sweep = function* <A extends EntityAcc>(
      this: Aggregator,
      m: Map<string, A>,
    ): Generator<void> {
      // Deleting the entry being visited is safe in a Map's iteration.
      for (const [id, acc] of m) {
        if (acc.keep) acc.reset();
        else {
          m.delete(id);
          this.entityRowsHeld--;
        }
        if (++work % DRAIN_STEP === 0) yield;
      }
    };
    for (const m of [this.keys, this.users, this.teams, this.orgs, this.endUsers, this.tags])
      yield* sweep.call(this, m);
    for (const [user, teams] of this.members) {
      yield* sweep.call(this, teams);
      if (teams.size === 0) this.members.delete(user);
    }
    this.events = 0;
    this.dailyTouched = 0;
    const dailyRows = daily.length - dailyBefore;
    if (dailyRows > 0) this.rowsPerDailyRow = (entity.length + dailyRows) / dailyRows;
  }

  private forEachContext(f: (c: DailyContext) => void): void {
    for (const c of this.keyless.list) f(c);
    for (const k of this.keys.values()) for (const c of k.contexts.list) f(c);
  }

  private entityMap(kind: Exclude<EntityKind, "team_member">): Map<string, EntityAcc> {
    switch (kind) {
      case "key":
        return this.keys;
      case "user":
        return this.users;
      case "team":
        return this.teams;
      case "org":
        return this.orgs;
      case "end_user":
        return this.endUsers;
      case "tag":
        return this.tags;
    }
  }

  /** The daily row for `id` in a context, created (with its entity row if new) on first use. */
  private daily(slots: DailySlots, entities: Map<string, EntityAcc>, id: string): DailyAcc {
    let acc = slots.get(id);
    if (acc === undefined) {
      acc = new DailyAcc();
      this.entity(entities, id).parts.push(acc);
      slots.set(id, acc);
      this.dailyRowsHeld++;
    }
    return acc;
  }

  /** The entity row for `id` in `entities`, created on first use. */
  private entity(entities: Map<string, EntityAcc>, id: string): EntityAcc {
    let ent = entities.get(id);
    if (ent === undefined) {
      ent = new EntityAcc();
      entities.set(id, ent);
      this.entityRowsHeld++;
    }
    return ent;
  }

  private member(user: string, team: string): EntityAcc {
    let teams = this.members.get(user);
    if (teams === undefined) {
      teams = new Map();
      this.members.set(user, teams);
    }
    return this.entity(teams, team);
  }

  /** UTC YYYY-MM-DD, cached per day: formatting a date per event would cost more than the rest. */
  private dateOf(ms: number): string {
    const day = Math.floor(ms / DAY_MS);
    if (day !== this.lastDay) {
      this.lastDay = day;
      this.lastDate = new Date(day * DAY_MS).toISOString().slice(0, 10);
    }
    return this.lastDate;
  }
}

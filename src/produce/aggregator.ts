import { MAX_SAFE_PICO } from "../contract/money.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  encodeCount,
  type Count,
  type DailyKind,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../contract/spend-batch.js";
import type { NormalizedEvent } from "./spend-event.js";
import { IdMap } from "./id-map.js";
import { CHUNK_MASK, CHUNK_SHIFT, DailyChunk, DW, EntityChunk, IntList } from "./slabs.js";

/**
 * In-memory aggregation inside a gateway process.
 *
 * Each event adds to the rows it touches directly: ~8 entity rows (key, user,
 * team, team member, org, end user, tags) and ~5 daily rows (user, team, org,
 * end user, tags for the request's date, key, model, group, provider,
 * endpoint and MCP tool).
 *
 * Counters live in typed-array slabs, not in an object per row: a daily row
 * is eight doubles (one cache line) in one Float64Array, an entity row one
 * double in another, and a row is its index there. A new row takes a free
 * index instead of allocating, and the garbage collector never walks the
 * counters. A row finds its place through maps keyed by one id the event
 * already holds (V8 caches a string's hash on the string): no composite key
 * string is built on the request path. The daily dimensions a request shares
 * with its key's earlier requests are found by comparing references
 * (DailyContext), and a context keeps the index of each daily row it holds,
 * with the index of the entity row that row adds to, so a request adds to
 * its entity rows without looking them up again.
 *
 * Rows outlive a seal: drain() emits the rows touched since the last one
 * and zeroes them, and drops only rows that went a whole interval untouched.
 * A gateway's ids recur interval after interval, so in steady state a
 * request finds its rows already there (addIfKnown). A drain visits only the
 * rows touched in its interval or the one before (lists kept as rows are
 * first touched), never every row held. Memory grows with the rows of the
 * last two intervals, never with requests.
 */

// Tokens per event are capped (config), so a row that has seen fewer requests
// than this cannot hold a token sum past 2^53 in a plain number.
const COUNT_SPILL_REQUESTS = 4_000_000;
// A key's distinct daily contexts are scanned linearly up to this many, then indexed.
const CONTEXT_SCAN_LIMIT = 8;
const SEP = "\u001f";
// Rows (or contexts) a drain step handles before it yields: well under a
// millisecond of work, so a driver can check its time budget often.
const DRAIN_STEP = 64;
const DAY_MS = 86_400_000;

// Entity kinds, as indexes into ENTITY_KINDS.
const E_KEY = 0;
const E_USER = 1;
const E_TEAM = 2;
const E_MEMBER = 3;
const E_ORG = 4;
const E_END_USER = 5;
const E_TAG = 6;
// Daily kinds, as indexes into DAILY_KINDS.
const D_USER = 0;
const D_TEAM = 1;
const D_ORG = 2;
const D_END_USER = 3;
const D_TAG = 4;
/** The entity kind each daily kind adds to. */
const ENTITY_OF_DAILY = [E_USER, E_TEAM, E_ORG, E_END_USER, E_TAG] as const;

// Offsets of a daily row's doubles (DW of them, slabs.ts).
const SPEND = 0;
const PROMPT = 1;
const COMPLETION = 2;
const CACHE_READ = 3;
const CACHE_CREATION = 4;
const REQUESTS = 5;
const SUCCESSES = 6;

// Dropped contexts (and keys' context indexes) kept for reuse, at most this
// many: a context lives an interval or two, and allocating one per new
// context was most of what the garbage collector copied and promoted.
const POOL_LIMIT = 4_096;

/** Where a sliced drain of daily contexts stopped: a context, a row in it, rows kept so far. */
interface ContextCursor {
  j: number;
  r: number;
  kept: number;
}

export interface DrainedRows {
  entity: EntityRow[];
  daily: DailyRow[];
}

/** The seven strings a daily context's rows share. */
export interface ContextStrings {
  readonly date: string;
  readonly apiKey: string;
  readonly model: string;
  readonly modelGroup: string;
  readonly provider: string;
  readonly mcpToolName: string;
  readonly endpoint: string;
}

/**
 * Where a drain writes the rows it emits, one call per row, values as they
 * leave the slabs (kinds as indexes into ENTITY_KINDS / DAILY_KINDS): the
 * producer's JobWriter writes each straight into its job's text, so no row
 * is ever built as an array; drain() builds the tuples.
 */
export interface DrainTarget {
  /** Spend is a number below 2^53, or its digits past that. */
  entity(kind: number, id: string, id2: string, spendPico: number | string): void;
  /** Every entity row is written: daily rows follow. */
  entitiesDone(): void;
  /** A daily row of context `c` (a context's rows come one after another). */
  daily(
    c: ContextStrings,
    kind: number,
    id: string,
    prompt: Count,
    completion: Count,
    cacheRead: Count,
    cacheCreation: Count,
    requests: Count,
    successes: Count,
    failed: Count,
    spendPico: number | string,
  ): void;
}

/** A DrainTarget that appends tuples to a DrainedRows. */
export class TupleTarget implements DrainTarget {
  constructor(private readonly out: DrainedRows) {}
  entity(kind: number, id: string, id2: string, spendPico: number | string): void {
    this.out.entity.push([ENTITY_KINDS[kind] as EntityKind, id, id2, String(spendPico)]);
  }
  entitiesDone(): void {
    // Nothing to close: entity and daily rows go to separate lists.
  }
  daily(
    c: ContextStrings,
    kind: number,
    id: string,
    prompt: Count,
    completion: Count,
    cacheRead: Count,
    cacheCreation: Count,
    requests: Count,
    successes: Count,
    failed: Count,
    spendPico: number | string,
  ): void {
    this.out.daily.push([
      DAILY_KINDS[kind] as DailyKind,
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
      failed,
      String(spendPico),
    ]);
  }
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

/**
 * The dimensions a daily row shares with the other daily rows of one request
 * (date, key, model, group, provider, endpoint, MCP tool), and the indexes
 * of those rows. Per daily kind, the first id is held inline (a key belongs
 * to one user, team and org, so in a key's context those kinds have one row
 * and need no Map), others in a Map behind it.
 */
class DailyContext {
  /** The inline id per daily kind ("" when none). */
  readonly firstId: string[] = ["", "", "", "", ""];
  /** The inline id's daily row per daily kind (-1 when none). */
  readonly firstRow: number[] = [-1, -1, -1, -1, -1];
  /** The other ids' daily rows, per daily kind. */
  more: (IdMap<number> | undefined)[] | undefined = undefined;
  /**
   * Every daily row this context holds: rows[0..count). The array keeps its
   * length past `count` between intervals, so refilling it does not copy it
   * at each growth step (one context can hold most of a gateway's rows).
   */
  readonly rows: number[] = [];
  count = 0;
  /** The drain epoch this context was last touched in. */
  mark = 0;
  /** Where it sits in its index's list. */
  pos = 0;
  // The team-membership row this context's requests last charged (reset at drains).
  memberUser = "";
  memberTeam = "";
  member = -1;

  // Its dimensions and index: set by ContextIndex.open, reset when pooled.
  index: ContextIndex | undefined = undefined;
  date = "";
  apiKey = "";
  model = "";
  modelGroup = "";
  provider = "";
  endpoint = "";
  mcpToolName = "";

  /** Forgets everything (its rows are released by the caller), ready for reuse. */
  clear(): void {
    for (let k = 0; k < 5; k++) {
      this.firstId[k] = "";
      this.firstRow[k] = -1;
    }
    this.more = undefined;
    this.rows.length = 0;
    this.count = 0;
    this.mark = 0;
    this.member = -1;
    this.memberUser = "";
    this.memberTeam = "";
    this.index = undefined;
    this.date = "";
    this.apiKey = "";
    this.model = "";
    this.modelGroup = "";
    this.provider = "";
    this.endpoint = "";
    this.mcpToolName = "";
  }

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

  /** The daily row of `id` of daily kind k, or -1. */
  row(k: number, id: string): number {
    if (this.firstId[k] === id) return this.firstRow[k] as number;
    const m = this.more?.[k];
    if (m === undefined) return -1;
    return m.get(id) ?? -1;
  }

  set(k: number, id: string, d: number): void {
    this.rows[this.count++] = d;
    if (this.firstId[k] === "") {
      this.firstId[k] = id;
      this.firstRow[k] = d;
      return;
    }
    const more = (this.more ??= [undefined, undefined, undefined, undefined, undefined]);
    let m = more[k];
    if (m === undefined) more[k] = m = new IdMap();
    m.set(id, d);
  }

  /** Forgets `id`'s row of daily kind k (the caller removes it from `rows`). */
  unset(k: number, id: string): void {
    if (this.firstId[k] === id) {
      this.firstId[k] = "";
      this.firstRow[k] = -1;
    } else this.more?.[k]?.delete(id);
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

  /** A new context for the event's dimensions on `date` (a pooled one if `pool` has one). */
  open(e: NormalizedEvent, date: string, pool: DailyContext[]): DailyContext {
    const c = pool.pop() ?? new DailyContext();
    c.index = this;
    c.date = date;
    c.apiKey = e.apiKey;
    c.model = e.model;
    c.modelGroup = e.modelGroup;
    c.provider = e.provider;
    c.endpoint = e.endpoint;
    c.mcpToolName = e.mcpToolName;
    c.pos = this.list.length;
    this.list.push(c);
    if (this.index !== undefined) this.index.set(contextKey(e, date), c);
    else if (this.list.length > CONTEXT_SCAN_LIMIT) {
      this.index = new Map();
      for (const x of this.list) this.index.set(contextKey(x, x.date), x);
    }
    return c;
  }

  /** Whether it holds no context: then it can be pooled. */
  get empty(): boolean {
    return this.list.length === 0;
  }

  /** Removes a context (O(1): the last one takes its place). */
  remove(c: DailyContext): void {
    const list = this.list;
    const last = list.pop() as DailyContext;
    if (last !== c) {
      last.pos = c.pos;
      list[c.pos] = last;
    }
    if (this.index !== undefined) {
      this.index.delete(contextKey(c, c.date));
      if (list.length === 0) this.index = undefined;
    }
  }
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
  // Entity row i: field r = i & CHUNK_MASK of chunk i >> CHUNK_SHIFT (slabs.ts).
  private readonly ent: EntityChunk<ContextIndex>[] = [];
  private readonly entOver = new Map<number, bigint>();
  /** Released entity rows, taken before the slab grows; then the next never used. */
  private readonly entFree = new IntList();
  private entNext = 0;

  // Daily row d: likewise, in `day`.
  private readonly day: DailyChunk[] = [];
  private readonly dayOver = new Map<number, DailyOverflow>();
  private readonly dayFree = new IntList();
  private dayNext = 0;

  /** id → entity row, per entity kind but memberships. */
  private readonly keys = new IdMap<number>();
  private readonly users = new IdMap<number>();
  private readonly teams = new IdMap<number>();
  private readonly orgs = new IdMap<number>();
  private readonly endUsers = new IdMap<number>();
  private readonly tags = new IdMap<number>();
  /** user → team → membership row (the user's spend within that team). */
  private readonly members = new IdMap<Map<string, number>>();
  /** Daily contexts of requests that name no key. */
  private readonly keyless = new ContextIndex();
  private readonly contextPool: DailyContext[] = [];
  private readonly indexPool: ContextIndex[] = [];

  /** The current interval: a row's mark equals it once touched in it. */
  private epoch = 1;
  /** Entity rows touched this interval, and in the last one. */
  private entTouched = new IntList();
  private entPrev = new IntList();
  /** Contexts touched this interval, and in the last one. */
  private ctxTouched: DailyContext[] = [];
  private ctxPrev: DailyContext[] = [];

  /** Rows allocated (pending or kept from the last interval): what the memory bound counts. */
  private entityRowsHeld = 0;
  private dailyRowsHeld = 0;
  /** Events added since the last drain. */
  private events = 0;
  /** Rows with pending spend: touched since the last drain and not yet zeroed by one. */
  private entityPending = 0;
  private dailyPending = 0;
  /** Daily rows touched since the last drain (counted as they are first touched). */
  private dailyTouched = 0;
  /** Rows (entity + daily) per daily row in the last drain: scales the estimate. */
  private rowsPerDailyRow = 1.5;
  private lastDay = -1;
  private lastDate = "";
  // Reused by addIfKnown so the request path allocates nothing.
  private readonly scratch: number[] = [];

  /** Rows held in memory, pending or kept from the last interval (O(1)): the buffer bound's measure. */
  get heldRowCount(): number {
    return this.entityRowsHeld + this.dailyRowsHeld;
  }

  /**
   * Rows the next drain will emit, estimated in O(1): the daily rows touched
   * since the last drain (counted exactly, as they are first touched), times
   * the last drain's rows per daily row. What back-pressure weighs.
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
   * in-memory queue gauges), O(1). During a drain, rows it has zeroed no
   * longer count.
   */
  pendingRowCounts(): { entity: number; daily: number } {
    return { entity: this.entityPending, daily: this.dailyPending };
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
      if (id2 !== undefined) {
        const i = teams.get(id2);
        return i === undefined ? 0n : this.entTotal(i);
      }
      let sum = 0n;
      for (const i of teams.values()) sum += this.entTotal(i);
      return sum;
    }
    const i = this.entityMap(kind).get(id);
    return i === undefined ? 0n : this.entTotal(i);
  }

  /**
   * The request path: adds the event if every row it touches is already held
   * and returns true; otherwise changes nothing and returns false, and the
   * caller checks the event's ids and its buffer bound before add(). Every id
   * found here equals one that passed those checks when its row was created.
   */
  addIfKnown(e: NormalizedEvent): boolean {
    let contexts = this.keyless;
    let key = -1;
    if (e.apiKey !== "") {
      const k = this.keys.get(e.apiKey);
      if (k === undefined) return false;
      key = k;
      contexts = (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[
        k & CHUNK_MASK
      ] as ContextIndex;
    }
    const ctx = contexts.find(e, this.dateOf(e.startMs));
    if (ctx === undefined) return false;
    const user = e.userId;
    const team = e.teamId;
    const org = e.organizationId;
    const endUser = e.endUserId;
    const tags = e.tags;
    let u = -1;
    let t = -1;
    let o = -1;
    let eu = -1;
    let member = -1;
    if (user !== "" && (u = ctx.row(D_USER, user)) < 0) return false;
    if (team !== "" && (t = ctx.row(D_TEAM, team)) < 0) return false;
    if (u >= 0 && t >= 0) {
      member =
        ctx.member >= 0 && ctx.memberUser === user && ctx.memberTeam === team
          ? ctx.member
          : (this.members.get(user)?.get(team) ?? -1);
      if (member < 0) return false;
    }
    if (org !== "" && (o = ctx.row(D_ORG, org)) < 0) return false;
    if (endUser !== "" && (eu = ctx.row(D_END_USER, endUser)) < 0) return false;
    // The daily rows to add to, gathered first: nothing is added unless all exist.
    const scratch = this.scratch;
    let n = 0;
    if (u >= 0) scratch[n++] = u;
    if (t >= 0) scratch[n++] = t;
    if (o >= 0) scratch[n++] = o;
    if (eu >= 0) scratch[n++] = eu;
    for (let i = 0; i < tags.length; i++) {
      const d = ctx.row(D_TAG, tags[i] as string);
      if (d < 0) return false;
      scratch[n++] = d;
    }

    // Everything exists: add.
    this.touchContext(ctx);
    const pico = e.spendPico;
    if (key >= 0) this.entAdd(key, pico);
    if (member >= 0) {
      ctx.member = member;
      ctx.memberUser = user;
      ctx.memberTeam = team;
      this.entAdd(member, pico);
    }
    this.dayAddAll(scratch, n, e);
    this.events++;
    return true;
  }

  /** Adds the event to daily rows rows[0..n) and to the entity row each belongs to. */
  private dayAddAll(rows: readonly number[], n: number, e: NormalizedEvent): void {
    const epoch = this.epoch;
    const day = this.day;
    const pico = e.spendPico;
    const prompt = e.promptTokens;
    const completion = e.completionTokens;
    const cacheRead = e.cacheReadInputTokens;
    const cacheCreation = e.cacheCreationInputTokens;
    const success = e.success ? 1 : 0;
    for (let i = 0; i < n; i++) {
      const d = rows[i] as number;
      const c = day[d >> CHUNK_SHIFT] as DailyChunk;
      const r = d & CHUNK_MASK;
      if (c.mark[r] !== epoch) {
        c.mark[r] = epoch;
        this.dailyTouched++;
        this.dailyPending++;
      }
      const f = c.f;
      const o = r * DW;
      const spend = (f[o + SPEND] as number) + pico;
      f[o + SPEND] = spend;
      f[o + PROMPT] = (f[o + PROMPT] as number) + prompt;
      f[o + COMPLETION] = (f[o + COMPLETION] as number) + completion;
      f[o + CACHE_READ] = (f[o + CACHE_READ] as number) + cacheRead;
      f[o + CACHE_CREATION] = (f[o + CACHE_CREATION] as number) + cacheCreation;
      const requests = (f[o + REQUESTS] as number) + 1;
      f[o + REQUESTS] = requests;
      f[o + SUCCESSES] = (f[o + SUCCESSES] as number) + success;
      if (spend >= MAX_SAFE_PICO || requests >= COUNT_SPILL_REQUESTS) this.daySpill(d);
      this.entAdd(c.ent[r] as number, pico);
    }
  }

  /** Adds the event, creating the rows it touches that do not exist yet. */
  add(e: NormalizedEvent): void {
    const pico = e.spendPico;
    const user = e.userId;
    const team = e.teamId;
    const org = e.organizationId;
    const endUser = e.endUserId;
    const tags = e.tags;

    let contexts = this.keyless;
    if (e.apiKey !== "") {
      let k = this.keys.get(e.apiKey);
      if (k === undefined) {
        k = this.newEntity(E_KEY, e.apiKey, "");
        this.keys.set(e.apiKey, k);
        (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[k & CHUNK_MASK] =
          this.indexPool.pop() ?? new ContextIndex();
      }
      this.entAdd(k, pico);
      contexts = (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[
        k & CHUNK_MASK
      ] as ContextIndex;
    }
    const date = this.dateOf(e.startMs);
    const ctx = contexts.find(e, date) ?? contexts.open(e, date, this.contextPool);
    this.touchContext(ctx);
    this.events++;

    const rows = this.scratch;
    let n = 0;
    if (user !== "") rows[n++] = this.daily(ctx, D_USER, this.users, user);
    if (team !== "") {
      rows[n++] = this.daily(ctx, D_TEAM, this.teams, team);
      if (user !== "") {
        if (ctx.member < 0 || ctx.memberUser !== user || ctx.memberTeam !== team) {
          ctx.member = this.member(user, team);
          ctx.memberUser = user;
          ctx.memberTeam = team;
        }
        this.entAdd(ctx.member, pico);
      }
    }
    if (org !== "") rows[n++] = this.daily(ctx, D_ORG, this.orgs, org);
    if (endUser !== "") rows[n++] = this.daily(ctx, D_END_USER, this.endUsers, endUser);
    for (let i = 0; i < tags.length; i++)
      rows[n++] = this.daily(ctx, D_TAG, this.tags, tags[i] as string);
    this.dayAddAll(rows, n, e);
  }

  /**
   * The rows touched since the last drain, exact, and zeroes them for the
   * next interval; rows untouched for the whole interval are dropped.
   */
  drain(): DrainedRows {
    const out: DrainedRows = { entity: [], daily: [] };
    const steps = this.drainSteps(new TupleTarget(out));
    while (steps.next().done !== true);
    return out;
  }

  /**
   * drain() in steps: writes each row to `out`, and yields after every DRAIN_STEP
   * rows or so, so a caller can spread a large drain over several turns of
   * the event loop. Nothing may be added to this aggregator until the steps
   * are done: the producer drains one aggregator while the other records.
   */
  *drainSteps(out: DrainTarget): Generator<void, void> {
    // The loops run in plain methods, a chunk at a time: locals that live
    // across a yield are slower to reach than a method's.
    const epoch = this.epoch;
    let dailyRows = 0;

    // 1. Entity rows touched this interval: emitted and zeroed.
    const touched = this.entTouched;
    for (let j = 0; j < touched.length; j += DRAIN_STEP) {
      this.emitEntities(touched, j, Math.min(touched.length, j + DRAIN_STEP), out);
      yield;
    }
    const entityRows = touched.length;
    out.entitiesDone();

    // 2. Daily rows, context by context (a job groups a context's rows):
    // touched ones emitted and zeroed, the others dropped.
    const ctxs = this.ctxTouched;
    const at: ContextCursor = { j: 0, r: 0, kept: 0 };
    while (at.j < ctxs.length) {
      dailyRows += this.emitContexts(ctxs, at, epoch, out);
      yield;
    }
    // Contexts touched last interval and not this one: dropped with their rows.
    const prevCtxs = this.ctxPrev;
    for (let j = 0; j < prevCtxs.length; j += DRAIN_STEP) {
      this.dropContexts(prevCtxs, j, Math.min(prevCtxs.length, j + DRAIN_STEP), epoch);
      yield;
    }
    prevCtxs.length = 0;
    this.ctxPrev = ctxs;
    this.ctxTouched = prevCtxs;

    // 3. Entity rows touched last interval and not this one: dropped.
    const prev = this.entPrev;
    for (let j = 0; j < prev.length; j += DRAIN_STEP) {
      this.dropEntities(prev, j, Math.min(prev.length, j + DRAIN_STEP), epoch);
      yield;
    }
    prev.clear();
    this.entPrev = touched;
    this.entTouched = prev;

    this.epoch = epoch + 1;
    this.events = 0;
    this.dailyTouched = 0;
    if (dailyRows > 0) this.rowsPerDailyRow = (entityRows + dailyRows) / dailyRows;
  }

  /** Emits and zeroes entity rows list[from..to). */
  private emitEntities(list: IntList, from: number, to: number, out: DrainTarget): void {
    const ent = this.ent;
    for (let j = from; j < to; j++) {
      const i = list.at(j);
      this.emitEntity(i, out);
      (ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).spend[i & CHUNK_MASK] = 0;
      if (this.entOver.size > 0) this.entOver.delete(i);
    }
    this.entityPending -= to - from;
  }

  /**
   * From `at` on, each context's touched daily rows emitted and zeroed, its
   * others dropped, until about DRAIN_STEP rows; `at` is left where it
   * stopped, inside a context if need be: one context can hold most of a
   * gateway's rows (every request of one key on one day and model), and
   * draining it whole blocked the event loop for as long as it took.
   * Returns how many rows it emitted.
   */
  private emitContexts(
    list: DailyContext[],
    at: ContextCursor,
    epoch: number,
    out: DrainTarget,
  ): number {
    const day = this.day;
    let work = 0;
    let emitted = 0;
    while (at.j < list.length && work < DRAIN_STEP) {
      const c = list[at.j] as DailyContext;
      if (at.r === 0) c.member = -1;
      const rows = c.rows;
      // Rows are kept in place (compacted towards the front): nothing is added
      // to this aggregator while it drains, so the list holds still between steps.
      let kept = at.kept;
      let r = at.r;
      const end = Math.min(c.count, r + DRAIN_STEP - work);
      for (; r < end; r++) {
        const d = rows[r] as number;
        const k = day[d >> CHUNK_SHIFT] as DailyChunk;
        const dr = d & CHUNK_MASK;
        if (k.mark[dr] === epoch) {
          this.emitDaily(d, c, out);
          emitted++;
          this.dayZero(d);
          rows[kept++] = d;
        } else {
          c.unset(k.kind[dr] as number, k.id[dr] as string);
          this.releaseDaily(d);
        }
      }
      work += r - at.r + 1;
      if (r < c.count) {
        at.r = r;
        at.kept = kept;
        return emitted;
      }
      c.count = kept;
      // Storage given back only when mostly unused, so a steady context never regrows it.
      if (kept < rows.length >> 2) rows.length = kept;
      this.dailyPending -= kept;
      at.j++;
      at.r = 0;
      at.kept = 0;
    }
    return emitted;
  }

  /** Drops the contexts of list[from..to) not touched in `epoch`, with their rows. */
  private dropContexts(list: DailyContext[], from: number, to: number, epoch: number): void {
    for (let j = from; j < to; j++) {
      const c = list[j] as DailyContext;
      if (c.mark === epoch) continue;
      for (let r = 0; r < c.count; r++) this.releaseDaily(c.rows[r] as number);
      (c.index as ContextIndex).remove(c);
      c.clear();
      if (this.contextPool.length < POOL_LIMIT) this.contextPool.push(c);
    }
  }

  /** Drops the entity rows of list[from..to) not touched in `epoch`. */
  private dropEntities(list: IntList, from: number, to: number, epoch: number): void {
    const ent = this.ent;
    for (let j = from; j < to; j++) {
      const i = list.at(j);
      if ((ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).mark[i & CHUNK_MASK] !== epoch)
        this.releaseEntity(i);
    }
  }

  private touchContext(c: DailyContext): void {
    if (c.mark !== this.epoch) {
      c.mark = this.epoch;
      this.ctxTouched.push(c);
    }
  }

  private entAdd(i: number, pico: number): void {
    const c = this.ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>;
    const r = i & CHUNK_MASK;
    if (c.mark[r] !== this.epoch) {
      c.mark[r] = this.epoch;
      this.entTouched.push(i);
      this.entityPending++;
    }
    const s = c.spend;
    const v = (s[r] as number) + pico;
    if (v >= MAX_SAFE_PICO) {
      this.entOver.set(i, (this.entOver.get(i) ?? 0n) + BigInt(v));
      s[r] = 0;
    } else s[r] = v;
  }

  /** Moves daily row d's counters into its bigint overflow. */
  private daySpill(d: number): void {
    let over = this.dayOver.get(d);
    if (over === undefined) {
      over = {
        spend: 0n,
        prompt: 0n,
        completion: 0n,
        cacheRead: 0n,
        cacheCreation: 0n,
        requests: 0n,
        successes: 0n,
      };
      this.dayOver.set(d, over);
    }
    const f = (this.day[d >> CHUNK_SHIFT] as DailyChunk).f;
    const o = (d & CHUNK_MASK) * DW;
    over.spend += BigInt(f[o + SPEND] as number);
    over.prompt += BigInt(f[o + PROMPT] as number);
    over.completion += BigInt(f[o + COMPLETION] as number);
    over.cacheRead += BigInt(f[o + CACHE_READ] as number);
    over.cacheCreation += BigInt(f[o + CACHE_CREATION] as number);
    over.requests += BigInt(f[o + REQUESTS] as number);
    over.successes += BigInt(f[o + SUCCESSES] as number);
    f.fill(0, o, o + DW);
  }

  private dayZero(d: number): void {
    // Stores, not fill(): a builtin call costs more than the eight writes.
    const f = (this.day[d >> CHUNK_SHIFT] as DailyChunk).f;
    const o = (d & CHUNK_MASK) * DW;
    f[o] = 0;
    f[o + 1] = 0;
    f[o + 2] = 0;
    f[o + 3] = 0;
    f[o + 4] = 0;
    f[o + 5] = 0;
    f[o + 6] = 0;
    f[o + 7] = 0;
    if (this.dayOver.size > 0) this.dayOver.delete(d);
  }

  private entTotal(i: number): bigint {
    const s = (this.ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).spend[i & CHUNK_MASK];
    return (this.entOver.get(i) ?? 0n) + BigInt(s as number);
  }

  /** Entity row i written to `out`: its kind, ids and spend, exact. */
  private emitEntity(i: number, out: DrainTarget): void {
    const over = this.entOver.size > 0 ? this.entOver.get(i) : undefined;
    const c = this.ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>;
    const r = i & CHUNK_MASK;
    const s = c.spend[r] as number;
    out.entity(
      c.kind[r] as number,
      c.id[r] as string,
      c.id2[r] as string,
      over === undefined ? s : (over + BigInt(s)).toString(),
    );
  }

  /** Daily row d of context c written to `out`: its counters and spend, exact. */
  private emitDaily(d: number, c: DailyContext, out: DrainTarget): void {
    const k = this.day[d >> CHUNK_SHIFT] as DailyChunk;
    const r = d & CHUNK_MASK;
    const kind = k.kind[r] as number;
    const id = k.id[r] as string;
    const over = this.dayOver.size > 0 ? this.dayOver.get(d) : undefined;
    if (over === undefined) {
      // No spill: every counter is an exact integer number below 2^53.
      const f = k.f;
      const o = r * DW;
      const requests = f[o + REQUESTS] as number;
      const successes = f[o + SUCCESSES] as number;
      out.daily(
        c,
        kind,
        id,
        f[o + PROMPT] as number,
        f[o + COMPLETION] as number,
        f[o + CACHE_READ] as number,
        f[o + CACHE_CREATION] as number,
        requests,
        successes,
        requests - successes,
        f[o + SPEND] as number,
      );
      return;
    }
    this.daySpill(d);
    out.daily(
      c,
      kind,
      id,
      encodeCount(over.prompt),
      encodeCount(over.completion),
      encodeCount(over.cacheRead),
      encodeCount(over.cacheCreation),
      encodeCount(over.requests),
      encodeCount(over.successes),
      encodeCount(over.requests - over.successes),
      over.spend.toString(),
    );
  }

  private newEntity(kind: number, id: string, id2: string): number {
    let i = this.entFree.pop();
    if (i === undefined) {
      i = this.entNext++;
      if (i >> CHUNK_SHIFT >= this.ent.length) this.ent.push(new EntityChunk());
    }
    const c = this.ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>;
    const r = i & CHUNK_MASK;
    c.spend[r] = 0;
    c.mark[r] = 0;
    c.kind[r] = kind;
    c.id[r] = id;
    c.id2[r] = id2;
    this.entityRowsHeld++;
    return i;
  }

  private releaseEntity(i: number): void {
    const c = this.ent[i >> CHUNK_SHIFT] as EntityChunk<ContextIndex>;
    const r = i & CHUNK_MASK;
    const kind = c.kind[r] as number;
    const id = c.id[r] as string;
    if (kind === E_MEMBER) {
      const teams = this.members.get(id);
      if (teams !== undefined) {
        teams.delete(c.id2[r] as string);
        if (teams.size === 0) this.members.delete(id);
      }
    } else this.entityMap(ENTITY_KINDS[kind] as Exclude<EntityKind, "team_member">).delete(id);
    c.id[r] = "";
    c.id2[r] = "";
    const contexts = c.contexts[r];
    if (contexts !== undefined) {
      c.contexts[r] = undefined;
      // Its contexts were dropped before it (a key is touched with each of them).
      if (contexts.empty && this.indexPool.length < POOL_LIMIT) this.indexPool.push(contexts);
    }
    this.entFree.push(i);
    this.entityRowsHeld--;
  }

  private releaseDaily(d: number): void {
    (this.day[d >> CHUNK_SHIFT] as DailyChunk).id[d & CHUNK_MASK] = "";
    this.dayFree.push(d);
    this.dailyRowsHeld--;
  }

  private entityMap(kind: Exclude<EntityKind, "team_member">): IdMap<number> {
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

  /** Context c's daily row of kind k for `id`, created (with its entity row if new) on first use. */
  private daily(c: DailyContext, k: number, entities: IdMap<number>, id: string): number {
    let d = c.row(k, id);
    if (d < 0) {
      const free = this.dayFree.pop();
      if (free !== undefined) d = free;
      else {
        d = this.dayNext++;
        if (d >> CHUNK_SHIFT >= this.day.length) this.day.push(new DailyChunk());
      }
      this.dayZero(d);
      const chunk = this.day[d >> CHUNK_SHIFT] as DailyChunk;
      const r = d & CHUNK_MASK;
      chunk.mark[r] = 0;
      chunk.kind[r] = k;
      chunk.ent[r] = this.entity(entities, ENTITY_OF_DAILY[k] as number, id);
      chunk.id[r] = id;
      c.set(k, id, d);
      this.dailyRowsHeld++;
    }
    return d;
  }

  /** The entity row for `id` in `entities`, created on first use. */
  private entity(entities: IdMap<number>, kind: number, id: string): number {
    let i = entities.get(id);
    if (i === undefined) {
      i = this.newEntity(kind, id, "");
      entities.set(id, i);
    }
    return i;
  }

  private member(user: string, team: string): number {
    let teams = this.members.get(user);
    if (teams === undefined) {
      teams = new Map();
      this.members.set(user, teams);
    }
    let i = teams.get(team);
    if (i === undefined) {
      i = this.newEntity(E_MEMBER, user, team);
      teams.set(team, i);
    }
    return i;
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

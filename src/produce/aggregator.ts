import { MAX_SAFE_PICO } from "../contract/money.js";
import { DailyFactRows, NO_TAGS, factRowCount, failedCount } from "../contract/daily-facts.js";
import {
  ENTITY_KINDS,
  encodeCount,
  type Count,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../contract/spend-batch.js";
import type { NormalizedEvent } from "./spend-event.js";
import { IdMap } from "./id-map.js";
import {
  CHUNK_MASK,
  CHUNK_SHIFT,
  DW,
  EntityChunk,
  FACT_ENTS,
  FactChunk,
  IntList,
} from "./slabs.js";

/**
 * In-memory aggregation inside a gateway process.
 *
 * Each event adds to the entity rows it touches directly (key, user, team,
 * team member, org, end user, tags) and to one daily fact: the event's
 * user, team, org, end user and tags in its context (date, key, model,
 * group, provider, endpoint and MCP tool), with one set of counters
 * (contract/daily-facts.ts). The worker fans a fact out to the 3-5 daily
 * rows it adds to; keeping and sealing one fact where the aggregator kept
 * and sealed each of those rows is most of what brought recording at
 * realistic cardinality down (issue 22, goal 1a).
 *
 * Counters live in typed-array slabs, not in an object per row: a fact is
 * eight doubles (one cache line) in one Float64Array, an entity row one
 * double in another, and a row is its index there. A new row takes a free
 * index instead of allocating, and the garbage collector never walks the
 * counters. A row finds its place through maps keyed by one id the event
 * already holds (V8 caches a string's hash on the string): no composite key
 * string is built on the request path. The daily dimensions a request shares
 * with its key's earlier requests are found by comparing references
 * (DailyContext); a context finds a fact by its end user, then compares the
 * rest, and a fact keeps the index of each entity row it adds to, so a
 * request adds to its entity rows without looking them up again.
 *
 * Rows outlive a seal: drain() emits the rows touched since the last one
 * and zeroes them, and drops only rows that went a whole interval untouched.
 * A gateway's ids recur interval after interval, so in steady state a
 * request finds its rows already there (addIfKnown). A drain visits only the
 * rows touched in its interval or the one before (lists kept as rows are
 * first touched), never every row held. Memory grows with the rows of the
 * last two intervals, never with requests.
 */

// Tokens per event are capped (config), so a fact that has seen fewer requests
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

// Offsets of a fact's doubles (DW of them, slabs.ts).
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

/** Where a sliced drain of daily contexts stopped: a context, a fact in it, facts kept so far. */
interface ContextCursor {
  j: number;
  r: number;
  kept: number;
}

/** What drain() returns: rows as the worker writes them (facts fanned out). */
export interface DrainedRows {
  entity: EntityRow[];
  daily: DailyRow[];
}

/** The seven strings a daily context's facts share. */
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
 * Where a drain writes what it emits, one call per entity row or daily
 * fact, values as they leave the slabs (kinds as indexes into
 * ENTITY_KINDS): the producer's JobWriter writes each straight into its
 * job's text, so nothing is ever built as an array; drain() builds tuples.
 */
export interface DrainTarget {
  /** Spend is a number below 2^53, or its digits past that. */
  entity(kind: number, id: string, id2: string, spendPico: number | string): void;
  /** Every entity row is written: daily facts follow. */
  entitiesDone(): void;
  /** A daily fact of context `c` (a context's facts come one after another). */
  fact(
    c: ContextStrings,
    tags: readonly string[],
    user: string,
    team: string,
    org: string,
    endUser: string,
    prompt: Count,
    completion: Count,
    cacheRead: Count,
    cacheCreation: Count,
    requests: Count,
    successes: Count,
    spendPico: number | string,
  ): void;
}

/** A DrainTarget that appends tuples to a DrainedRows, facts fanned out to daily rows. */
export class TupleTarget implements DrainTarget {
  private readonly facts: DailyFactRows;
  private context: ContextStrings | undefined = undefined;

  constructor(private readonly out: DrainedRows) {
    this.facts = new DailyFactRows(out.daily);
  }

  entity(kind: number, id: string, id2: string, spendPico: number | string): void {
    this.out.entity.push([ENTITY_KINDS[kind] as EntityKind, id, id2, String(spendPico)]);
  }

  entitiesDone(): void {
    // Nothing to close: entity and daily rows go to separate lists.
  }

  /** Completes the daily rows (merged rows' spend): call once, after the drain. */
  finish(): void {
    this.facts.finish();
  }

  fact(
    c: ContextStrings,
    tags: readonly string[],
    user: string,
    team: string,
    org: string,
    endUser: string,
    prompt: Count,
    completion: Count,
    cacheRead: Count,
    cacheCreation: Count,
    requests: Count,
    successes: Count,
    spendPico: number | string,
  ): void {
    if (c !== this.context) {
      this.context = c;
      this.facts.context([
        c.date,
        c.apiKey,
        c.model,
        c.modelGroup,
        c.provider,
        c.mcpToolName,
        c.endpoint,
      ]);
    }
    this.facts.fact(
      tags,
      user,
      team,
      org,
      endUser,
      prompt,
      completion,
      cacheRead,
      cacheCreation,
      requests,
      successes,
      failedCount(requests, successes) ?? 0,
      String(spendPico),
    );
  }
}

/** Where a fact's counters spill before a plain number could round. */
interface FactOverflow {
  spend: bigint;
  prompt: bigint;
  completion: bigint;
  cacheRead: bigint;
  cacheCreation: bigint;
  requests: bigint;
  successes: bigint;
}

/**
 * The dimensions a request's daily fact shares with the other facts of its
 * key (date, key, model, group, provider, endpoint, MCP tool), and the
 * indexes of those facts. Facts are chained by end user (the id that varies
 * most among a key's requests: its user, team and org are one each): the
 * first end user's chain head is held inline, others in a map behind it.
 */
class DailyContext {
  /** The inline end user ("" is an end user too: requests that name none). */
  firstEnd = "";
  /** The inline end user's first fact (-1 when none). */
  firstHead = -1;
  /** Other end users' first facts. */
  heads: IdMap<number> | undefined = undefined;
  /**
   * Every fact this context holds: rows[0..count). The array keeps its
   * length past `count` between intervals, so refilling it does not copy it
   * at each growth step (one context can hold most of a gateway's facts).
   */
  readonly rows: number[] = [];
  count = 0;
  /** The drain epoch this context was last touched in. */
  mark = 0;
  /** Where it sits in its index's list. */
  pos = 0;

  // Its dimensions and index: set by ContextIndex.open, reset when pooled.
  index: ContextIndex | undefined = undefined;
  date = "";
  apiKey = "";
  model = "";
  modelGroup = "";
  provider = "";
  endpoint = "";
  mcpToolName = "";

  /** Forgets everything (its facts are released by the caller), ready for reuse. */
  clear(): void {
    this.firstEnd = "";
    this.firstHead = -1;
    this.heads = undefined;
    this.rows.length = 0;
    this.count = 0;
    this.mark = 0;
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

  /** The first fact of end user `endUser`'s chain, or -1. */
  head(endUser: string): number {
    if (this.firstHead >= 0 && this.firstEnd === endUser) return this.firstHead;
    return this.heads?.get(endUser) ?? -1;
  }

  /** Makes f (or nothing, -1) the first fact of `endUser`'s chain. */
  setHead(endUser: string, f: number): void {
    if (this.firstHead >= 0 && this.firstEnd === endUser) {
      this.firstHead = f;
      return;
    }
    if (f < 0) {
      this.heads?.delete(endUser);
      return;
    }
    // The inline slot is free, and this end user has no chain in the map.
    if (this.firstHead < 0 && this.heads?.get(endUser) === undefined) {
      this.firstEnd = endUser;
      this.firstHead = f;
      return;
    }
    (this.heads ??= new IdMap()).set(endUser, f);
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
 * key, user, team, membership, org, end user and each tag, and a daily fact.
 */
export function rowBound(tags: number): number {
  return 7 + tags;
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

/** Whether the event adds to any daily row (else it has no fact). */
function hasDailyRows(e: NormalizedEvent): boolean {
  return (
    e.userId !== "" ||
    e.teamId !== "" ||
    e.organizationId !== "" ||
    e.endUserId !== "" ||
    e.tags.length > 0
  );
}

function sameTags(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class Aggregator {
  // Entity row i: field r = i & CHUNK_MASK of chunk i >> CHUNK_SHIFT (slabs.ts).
  private readonly ent: EntityChunk<ContextIndex>[] = [];
  private readonly entOver = new Map<number, bigint>();
  /** Released entity rows, taken before the slab grows; then the next never used. */
  private readonly entFree = new IntList();
  private entNext = 0;

  // Fact f: likewise, in `fact`.
  private readonly fact: FactChunk[] = [];
  private readonly factOver = new Map<number, FactOverflow>();
  /** The entity rows of facts that add to more than FACT_ENTS. */
  private readonly factEnts = new Map<number, number[]>();
  private readonly factFree = new IntList();
  private factNext = 0;

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
  private factsHeld = 0;
  /** Events added since the last drain. */
  private events = 0;
  /** Rows with pending spend: touched since the last drain and not yet zeroed by one. */
  private entityPending = 0;
  private factsPending = 0;
  /** Facts touched since the last drain (counted as they are first touched). */
  private factsTouched = 0;
  /** Rows the worker writes (entity + daily, facts fanned out) per fact in the last drain. */
  private rowsPerFact = 5;
  private lastDay = -1;
  private lastDate = "";
  /**
   * What addIfKnown found of the event it last refused (its key row, and its
   * context when only the fact was missing), so that add() of the same event
   * right after it does not look them up again.
   */
  private missEvent: NormalizedEvent | undefined = undefined;
  private missKey = -1;
  private missContext: DailyContext | undefined = undefined;
  // Entity rows a new fact adds to, gathered before they are stored.
  private readonly scratch: number[] = [];

  /** Rows held in memory (entity rows and facts), pending or kept from the last interval (O(1)): the buffer bound's measure. */
  get heldRowCount(): number {
    return this.entityRowsHeld + this.factsHeld;
  }

  /**
   * Rows the next drain will have the worker write, estimated in O(1): the
   * facts touched since the last drain (counted exactly, as they are first
   * touched), times the last drain's rows (entity, and daily once facts are
   * fanned out) per fact. What back-pressure weighs against the flush rate.
   */
  get pendingRowEstimate(): number {
    return Math.ceil(this.factsTouched * this.rowsPerFact);
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
   * Distinct entity rows and daily facts with spend not drained yet (the
   * seed's in-memory queue gauges), O(1). During a drain, rows it has
   * zeroed no longer count.
   */
  pendingRowCounts(): { entity: number; daily: number } {
    return { entity: this.entityPending, daily: this.factsPending };
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
    this.missEvent = e;
    this.missContext = undefined;
    if (e.apiKey !== "") {
      const k = this.keys.get(e.apiKey);
      this.missKey = k ?? -1;
      if (k === undefined) return false;
      key = k;
      contexts = (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[
        k & CHUNK_MASK
      ] as ContextIndex;
    }
    const ctx = contexts.find(e, this.dateOf(e.startMs));
    if (ctx === undefined) return false;
    let f = -1;
    if (hasDailyRows(e)) {
      f = this.findFact(ctx, e);
      if (f < 0) {
        this.missContext = ctx;
        return false;
      }
    }
    this.missEvent = undefined;
    // Everything exists: add.
    this.touchContext(ctx);
    if (key >= 0) this.entAdd(key, e.spendPico);
    if (f >= 0) this.factAdd(f, e);
    this.events++;
    return true;
  }

  /** Adds the event, creating the rows it touches that do not exist yet. */
  add(e: NormalizedEvent): void {
    // Right after addIfKnown refused it: its key row (and context) are as it found them.
    const miss = this.missEvent === e;
    this.missEvent = undefined;
    const missContext = miss ? this.missContext : undefined;
    this.missContext = undefined;
    let contexts = this.keyless;
    if (e.apiKey !== "") {
      let k = miss ? this.missKey : (this.keys.get(e.apiKey) ?? -1);
      if (k < 0) {
        k = this.newEntity(E_KEY, e.apiKey, "");
        this.keys.set(e.apiKey, k);
        (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[k & CHUNK_MASK] =
          this.indexPool.pop() ?? new ContextIndex();
      }
      this.entAdd(k, e.spendPico);
      contexts = (this.ent[k >> CHUNK_SHIFT] as EntityChunk<ContextIndex>).contexts[
        k & CHUNK_MASK
      ] as ContextIndex;
    }
    let ctx = missContext;
    if (ctx === undefined) {
      const date = this.dateOf(e.startMs);
      ctx = contexts.find(e, date) ?? contexts.open(e, date, this.contextPool);
    }
    this.touchContext(ctx);
    this.events++;
    if (!hasDailyRows(e)) return;
    let f = missContext !== undefined ? -1 : this.findFact(ctx, e);
    if (f < 0) f = this.newFact(ctx, e);
    this.factAdd(f, e);
  }

  /** The event's fact in context c: same end user, user, team, org and tags (in order); or -1. */
  private findFact(c: DailyContext, e: NormalizedEvent): number {
    const fact = this.fact;
    let f = c.head(e.endUserId);
    while (f >= 0) {
      const k = fact[f >> CHUNK_SHIFT] as FactChunk;
      const r = f & CHUNK_MASK;
      if (
        k.user[r] === e.userId &&
        k.team[r] === e.teamId &&
        k.org[r] === e.organizationId &&
        sameTags(k.tags[r] as readonly string[], e.tags)
      )
        return f;
      f = k.next[r] as number;
    }
    return -1;
  }

  /** Adds the event to fact f and to every entity row the fact adds to. */
  private factAdd(f: number, e: NormalizedEvent): void {
    const k = this.fact[f >> CHUNK_SHIFT] as FactChunk;
    const r = f & CHUNK_MASK;
    if (k.mark[r] !== this.epoch) {
      k.mark[r] = this.epoch;
      this.factsTouched++;
      this.factsPending++;
    }
    const pico = e.spendPico;
    const x = k.f;
    const o = r * DW;
    const spend = (x[o + SPEND] as number) + pico;
    x[o + SPEND] = spend;
    x[o + PROMPT] = (x[o + PROMPT] as number) + e.promptTokens;
    x[o + COMPLETION] = (x[o + COMPLETION] as number) + e.completionTokens;
    x[o + CACHE_READ] = (x[o + CACHE_READ] as number) + e.cacheReadInputTokens;
    x[o + CACHE_CREATION] = (x[o + CACHE_CREATION] as number) + e.cacheCreationInputTokens;
    const requests = (x[o + REQUESTS] as number) + 1;
    x[o + REQUESTS] = requests;
    if (e.success) x[o + SUCCESSES] = (x[o + SUCCESSES] as number) + 1;
    if (spend >= MAX_SAFE_PICO || requests >= COUNT_SPILL_REQUESTS) this.factSpill(f);
    const n = k.entCount[r] as number;
    if (n <= FACT_ENTS) {
      const ents = k.ents;
      const at = r * FACT_ENTS;
      for (let i = at; i < at + n; i++) this.entAdd(ents[i] as number, pico);
    } else for (const i of this.factEnts.get(f) as number[]) this.entAdd(i, pico);
  }

  /** A new fact for the event in context c, with the entity rows it adds to (created if new). */
  private newFact(c: DailyContext, e: NormalizedEvent): number {
    let f = this.factFree.pop();
    if (f === undefined) {
      f = this.factNext++;
      if (f >> CHUNK_SHIFT >= this.fact.length) this.fact.push(new FactChunk());
    }
    const k = this.fact[f >> CHUNK_SHIFT] as FactChunk;
    const r = f & CHUNK_MASK;
    this.factZero(f);
    k.mark[r] = 0;
    const user = e.userId;
    const team = e.teamId;
    const org = e.organizationId;
    const endUser = e.endUserId;
    const tags = e.tags;
    k.user[r] = user;
    k.team[r] = team;
    k.org[r] = org;
    k.endUser[r] = endUser;
    k.tags[r] = tags.length === 0 ? NO_TAGS : tags.slice();
    const ents = this.scratch;
    let n = 0;
    if (user !== "") ents[n++] = this.entity(this.users, E_USER, user);
    if (team !== "") {
      ents[n++] = this.entity(this.teams, E_TEAM, team);
      if (user !== "") ents[n++] = this.member(user, team);
    }
    if (org !== "") ents[n++] = this.entity(this.orgs, E_ORG, org);
    if (endUser !== "") ents[n++] = this.entity(this.endUsers, E_END_USER, endUser);
    for (let i = 0; i < tags.length; i++)
      ents[n++] = this.entity(this.tags, E_TAG, tags[i] as string);
    k.entCount[r] = n;
    if (n <= FACT_ENTS) {
      const at = r * FACT_ENTS;
      for (let i = 0; i < n; i++) k.ents[at + i] = ents[i] as number;
    } else this.factEnts.set(f, ents.slice(0, n));
    // First in its end user's chain.
    const head = c.head(endUser);
    k.prev[r] = -1;
    k.next[r] = head;
    if (head >= 0) (this.fact[head >> CHUNK_SHIFT] as FactChunk).prev[head & CHUNK_MASK] = f;
    c.setHead(endUser, f);
    c.rows[c.count++] = f;
    this.factsHeld++;
    return f;
  }

  /**
   * The rows touched since the last drain, exact, and zeroes them for the
   * next interval; rows untouched for the whole interval are dropped. Daily
   * facts come out fanned out to the daily rows they add to.
   */
  drain(): DrainedRows {
    const out: DrainedRows = { entity: [], daily: [] };
    const target = new TupleTarget(out);
    const steps = this.drainSteps(target);
    while (steps.next().done !== true);
    target.finish();
    return out;
  }

  /**
   * drain() in steps: writes each entity row and fact to `out`, and yields
   * after every DRAIN_STEP rows or so, so a caller can spread a large drain
   * over several turns of the event loop. Nothing may be added to this
   * aggregator until the steps are done: the producer drains one aggregator
   * while the other records.
   */
  *drainSteps(out: DrainTarget): Generator<void, void> {
    // The loops run in plain methods, a chunk at a time: locals that live
    // across a yield are slower to reach than a method's.
    const epoch = this.epoch;
    const emitted = { facts: 0, rows: 0 };
    // A drain drops contexts: what addIfKnown last found may be gone.
    this.missEvent = undefined;
    this.missContext = undefined;

    // 1. Entity rows touched this interval: emitted and zeroed.
    const touched = this.entTouched;
    for (let j = 0; j < touched.length; j += DRAIN_STEP) {
      this.emitEntities(touched, j, Math.min(touched.length, j + DRAIN_STEP), out);
      yield;
    }
    const entityRows = touched.length;
    out.entitiesDone();

    // 2. Facts, context by context (a job groups a context's facts):
    // touched ones emitted and zeroed, the others dropped.
    const ctxs = this.ctxTouched;
    const at: ContextCursor = { j: 0, r: 0, kept: 0 };
    while (at.j < ctxs.length) {
      this.emitContexts(ctxs, at, epoch, out, emitted);
      yield;
    }
    // Contexts touched last interval and not this one: dropped with their facts.
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
    this.factsTouched = 0;
    if (emitted.facts > 0) this.rowsPerFact = (entityRows + emitted.rows) / emitted.facts;
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
   * From `at` on, each context's touched facts emitted and zeroed, its
   * others dropped, until about DRAIN_STEP facts; `at` is left where it
   * stopped, inside a context if need be: one context can hold most of a
   * gateway's facts (every request of one key on one day and model), and
   * draining it whole blocked the event loop for as long as it took.
   * Adds what it emitted to `emitted` (facts, and the daily rows they fan out to).
   */
  private emitContexts(
    list: DailyContext[],
    at: ContextCursor,
    epoch: number,
    out: DrainTarget,
    emitted: { facts: number; rows: number },
  ): void {
    const fact = this.fact;
    let work = 0;
    while (at.j < list.length && work < DRAIN_STEP) {
      const c = list[at.j] as DailyContext;
      const rows = c.rows;
      // Facts are kept in place (compacted towards the front): nothing is added
      // to this aggregator while it drains, so the list holds still between steps.
      let kept = at.kept;
      let r = at.r;
      const end = Math.min(c.count, r + DRAIN_STEP - work);
      for (; r < end; r++) {
        const f = rows[r] as number;
        const k = fact[f >> CHUNK_SHIFT] as FactChunk;
        const fr = f & CHUNK_MASK;
        if (k.mark[fr] === epoch) {
          this.emitFact(f, c, out);
          emitted.facts++;
          emitted.rows += factRowCount(
            k.tags[fr] as readonly string[],
            k.user[fr] as string,
            k.team[fr] as string,
            k.org[fr] as string,
            k.endUser[fr] as string,
          );
          this.factZero(f);
          rows[kept++] = f;
        } else {
          this.unlinkFact(c, f);
          this.releaseFact(f);
        }
      }
      work += r - at.r + 1;
      if (r < c.count) {
        at.r = r;
        at.kept = kept;
        return;
      }
      c.count = kept;
      // Storage given back only when mostly unused, so a steady context never regrows it.
      if (kept < rows.length >> 2) rows.length = kept;
      this.factsPending -= kept;
      at.j++;
      at.r = 0;
      at.kept = 0;
    }
  }

  /** Drops the contexts of list[from..to) not touched in `epoch`, with their facts. */
  private dropContexts(list: DailyContext[], from: number, to: number, epoch: number): void {
    for (let j = from; j < to; j++) {
      const c = list[j] as DailyContext;
      if (c.mark === epoch) continue;
      for (let r = 0; r < c.count; r++) this.releaseFact(c.rows[r] as number);
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

  /** Moves fact f's counters into its bigint overflow. */
  private factSpill(f: number): void {
    let over = this.factOver.get(f);
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
      this.factOver.set(f, over);
    }
    const x = (this.fact[f >> CHUNK_SHIFT] as FactChunk).f;
    const o = (f & CHUNK_MASK) * DW;
    over.spend += BigInt(x[o + SPEND] as number);
    over.prompt += BigInt(x[o + PROMPT] as number);
    over.completion += BigInt(x[o + COMPLETION] as number);
    over.cacheRead += BigInt(x[o + CACHE_READ] as number);
    over.cacheCreation += BigInt(x[o + CACHE_CREATION] as number);
    over.requests += BigInt(x[o + REQUESTS] as number);
    over.successes += BigInt(x[o + SUCCESSES] as number);
    x.fill(0, o, o + DW);
  }

  private factZero(f: number): void {
    // Stores, not fill(): a builtin call costs more than the eight writes.
    const x = (this.fact[f >> CHUNK_SHIFT] as FactChunk).f;
    const o = (f & CHUNK_MASK) * DW;
    x[o] = 0;
    x[o + 1] = 0;
    x[o + 2] = 0;
    x[o + 3] = 0;
    x[o + 4] = 0;
    x[o + 5] = 0;
    x[o + 6] = 0;
    x[o + 7] = 0;
    if (this.factOver.size > 0) this.factOver.delete(f);
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

  /** Fact f of context c written to `out`: its ids, counters and spend, exact. */
  private emitFact(f: number, c: DailyContext, out: DrainTarget): void {
    const k = this.fact[f >> CHUNK_SHIFT] as FactChunk;
    const r = f & CHUNK_MASK;
    const tags = k.tags[r] as readonly string[];
    const user = k.user[r] as string;
    const team = k.team[r] as string;
    const org = k.org[r] as string;
    const endUser = k.endUser[r] as string;
    const over = this.factOver.size > 0 ? this.factOver.get(f) : undefined;
    if (over === undefined) {
      // No spill: every counter is an exact integer number below 2^53.
      const x = k.f;
      const o = r * DW;
      out.fact(
        c,
        tags,
        user,
        team,
        org,
        endUser,
        x[o + PROMPT] as number,
        x[o + COMPLETION] as number,
        x[o + CACHE_READ] as number,
        x[o + CACHE_CREATION] as number,
        x[o + REQUESTS] as number,
        x[o + SUCCESSES] as number,
        x[o + SPEND] as number,
      );
      return;
    }
    this.factSpill(f);
    out.fact(
      c,
      tags,
      user,
      team,
      org,
      endUser,
      encodeCount(over.prompt),
      encodeCount(over.completion),
      encodeCount(over.cacheRead),
      encodeCount(over.cacheCreation),
      encodeCount(over.requests),
      encodeCount(over.successes),
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

  /** Takes fact f out of its end user's chain in context c (the caller removes it from `rows`). */
  private unlinkFact(c: DailyContext, f: number): void {
    const fact = this.fact;
    const k = fact[f >> CHUNK_SHIFT] as FactChunk;
    const r = f & CHUNK_MASK;
    const prev = k.prev[r] as number;
    const next = k.next[r] as number;
    if (next >= 0) (fact[next >> CHUNK_SHIFT] as FactChunk).prev[next & CHUNK_MASK] = prev;
    if (prev >= 0) (fact[prev >> CHUNK_SHIFT] as FactChunk).next[prev & CHUNK_MASK] = next;
    else c.setHead(k.endUser[r] as string, next);
  }

  private releaseFact(f: number): void {
    const k = this.fact[f >> CHUNK_SHIFT] as FactChunk;
    const r = f & CHUNK_MASK;
    // Strings and tags let go, so a free fact keeps no id alive.
    k.user[r] = "";
    k.team[r] = "";
    k.org[r] = "";
    k.endUser[r] = "";
    k.tags[r] = NO_TAGS;
    if ((k.entCount[r] as number) > FACT_ENTS) this.factEnts.delete(f);
    this.factFree.push(f);
    this.factsHeld--;
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

import { MAX_SAFE_PICO } from "../money.js";
import {
  encodeCount,
  type DailyRow,
  type EntityRow,
  type DailyKind,
  type EntityKind,
} from "../queue/spend-batch.js";
import type { NormalizedEvent } from "./spend-event.js";

/**
 * In-memory aggregation inside a gateway process.
 *
 * record() must cost well under a microsecond, so it does one Map lookup per
 * event: the *cell* of events that share every dimension (key, user, team,
 * org, end user, tags, model, group, provider, endpoint, MCP tool, date) and
 * adds plain numbers to it. Cells expand into the entity and daily rows they
 * touch only when the buffer is drained, off the request path.
 *
 * Memory grows with distinct cells and rows, never with requests.
 */

// Tokens per event are capped at 10^9 (config), so a cell that has seen
// fewer requests than this cannot hold a token sum past 2^52.
const COUNT_SPILL_REQUESTS = 4_000_000;

interface Cell {
  dims: NormalizedEvent;
  date: string;
  // Hot accumulators: exact integers while below 2^53.
  spend: number;
  prompt: number;
  completion: number;
  cacheRead: number;
  cacheCreation: number;
  requests: number;
  successes: number;
  // Cold accumulators: where the hot ones spill before they could round.
  spendBig: bigint;
  promptBig: bigint;
  completionBig: bigint;
  cacheReadBig: bigint;
  cacheCreationBig: bigint;
  requestsBig: bigint;
  successesBig: bigint;
}

export interface DrainedRows {
  entity: EntityRow[];
  daily: DailyRow[];
}

interface DailyAcc {
  row: DailyRow;
  prompt: bigint;
  completion: bigint;
  cacheRead: bigint;
  cacheCreation: bigint;
  requests: bigint;
  successes: bigint;
  spend: bigint;
}

const SEP = "\u001f";
const TAG_SEP = "\u001e";
const DAY_MS = 86_400_000;

export class Aggregator {
  private cells = new Map<string, Cell>();
  // Distinct row identities, kept only so the buffer's size in rows (the
  // seed's gauges, the memory bound) is known in O(1).
  private entityKeys = new Set<string>();
  private dailyKeys = new Set<string>();
  private lastDay = -1;
  private lastDate = "";

  /** Distinct entity rows buffered (litellm_in_memory_spend_update_queue_size). */
  get entityRowCount(): number {
    return this.entityKeys.size;
  }

  /** Distinct daily rows buffered (litellm_in_memory_daily_spend_update_queue_size). */
  get dailyRowCount(): number {
    return this.dailyKeys.size;
  }

  get cellCount(): number {
    return this.cells.size;
  }

  /**
   * Picodollars buffered here for one entity row (read-only; O(cells), off
   * the request path). For team_member, `id` is the user and `id2` the team;
   * without `id2` it sums the user's memberships of every team.
   */
  entitySpendFor(kind: EntityKind, id: string, id2?: string): bigint {
    if (id === "") return 0n;
    let sum = 0n;
    for (const c of this.cells.values()) {
      const d = c.dims;
      let times = 0;
      if (kind === "key") times = d.apiKey === id ? 1 : 0;
      else if (kind === "user") times = d.userId === id ? 1 : 0;
      else if (kind === "team") times = d.teamId === id ? 1 : 0;
      else if (kind === "org") times = d.organizationId === id ? 1 : 0;
      else if (kind === "end_user") times = d.endUserId === id ? 1 : 0;
      else if (kind === "team_member")
        times =
          d.userId === id && d.teamId !== "" && (id2 === undefined || d.teamId === id2) ? 1 : 0;
      // As drain() does: once per occurrence of the tag.
      else for (const t of d.tags) if (t === id) times++;
      if (times > 0) sum += BigInt(times) * (c.spendBig + BigInt(c.spend));
    }
    return sum;
  }

  /**
   * Whether this event would open a new cell (and maybe new rows) rather than
   * land in an existing one: lets the producer enforce its bound before growing.
   */
  wouldGrow(e: NormalizedEvent): boolean {
    return !this.cells.has(this.cellKey(e, this.dateOf(e.startMs)));
  }

  add(e: NormalizedEvent): void {
    const date = this.dateOf(e.startMs);
    const key = this.cellKey(e, date);
    let c = this.cells.get(key);
    if (c === undefined) {
      c = this.newCell(e, date);
      this.cells.set(key, c);
    }
    c.spend += e.spendPico;
    c.prompt += e.promptTokens;
    c.completion += e.completionTokens;
    c.cacheRead += e.cacheReadInputTokens;
    c.cacheCreation += e.cacheCreationInputTokens;
    c.requests += 1;
    if (e.success) c.successes += 1;
    if (c.spend >= MAX_SAFE_PICO || c.requests >= COUNT_SPILL_REQUESTS) spill(c);
  }

  /** Takes everything aggregated so far as rows and leaves the aggregator empty. */
  drain(): DrainedRows {
    const entity = new Map<string, { row: EntityRow; spend: bigint }>();
    const daily = new Map<string, DailyAcc>();
    for (const c of this.cells.values()) {
      spill(c);
      const d = c.dims;
      const addEntity = (kind: EntityKind, id: string, id2 = ""): void => {
        if (id === "") return;
        const k = kind + SEP + id + SEP + id2;
        const acc = entity.get(k);
        if (acc === undefined) entity.set(k, { row: [kind, id, id2, ""], spend: c.spendBig });
        else acc.spend += c.spendBig;
      };
      const addDaily = (kind: DailyKind, id: string): void => {
        if (id === "") return;
        const k = dailyKey(kind, id, c.date, d);
        let acc = daily.get(k);
        if (acc === undefined) {
          acc = {
            row: [
              kind,
              id,
              c.date,
              d.apiKey,
              d.model,
              d.modelGroup,
              d.provider,
              d.mcpToolName,
              d.endpoint,
              0,
              0,
              0,
              0,
              0,
              0,
              0,
              "",
            ],
            prompt: 0n,
            completion: 0n,
            cacheRead: 0n,
            cacheCreation: 0n,
            requests: 0n,
            successes: 0n,
            spend: 0n,
          };
          daily.set(k, acc);
        }
        acc.prompt += c.promptBig;
        acc.completion += c.completionBig;
        acc.cacheRead += c.cacheReadBig;
        acc.cacheCreation += c.cacheCreationBig;
        acc.requests += c.requestsBig;
        acc.successes += c.successesBig;
        acc.spend += c.spendBig;
      };
      addEntity("key", d.apiKey);
      addEntity("user", d.userId);
      addEntity("team", d.teamId);
      if (d.userId !== "" && d.teamId !== "") addEntity("team_member", d.userId, d.teamId);
      addEntity("org", d.organizationId);
      addEntity("end_user", d.endUserId);
      addDaily("user", d.userId);
      addDaily("team", d.teamId);
      addDaily("org", d.organizationId);
      addDaily("end_user", d.endUserId);
      for (const t of d.tags) {
        addEntity("tag", t);
        addDaily("tag", t);
      }
    }
    this.cells = new Map();
    this.entityKeys = new Set();
    this.dailyKeys = new Set();

    const entityRows: EntityRow[] = [];
    for (const { row, spend } of entity.values()) {
      row[3] = spend.toString();
      entityRows.push(row);
    }
    const dailyRows: DailyRow[] = [];
    for (const a of daily.values()) {
      const r = a.row;
      r[9] = encodeCount(a.prompt);
      r[10] = encodeCount(a.completion);
      r[11] = encodeCount(a.cacheRead);
      r[12] = encodeCount(a.cacheCreation);
      r[13] = encodeCount(a.requests);
      r[14] = encodeCount(a.successes);
      r[15] = encodeCount(a.requests - a.successes);
      r[16] = a.spend.toString();
      dailyRows.push(r);
    }
    return { entity: entityRows, daily: dailyRows };
  }

  private newCell(e: NormalizedEvent, date: string): Cell {
    // Cold path: once per distinct cell. Record which rows it touches.
    const ek = this.entityKeys;
    if (e.apiKey !== "") ek.add("key" + SEP + e.apiKey);
    if (e.userId !== "") ek.add("user" + SEP + e.userId);
    if (e.teamId !== "") ek.add("team" + SEP + e.teamId);
    if (e.userId !== "" && e.teamId !== "") ek.add("team_member" + SEP + e.userId + SEP + e.teamId);
    if (e.organizationId !== "") ek.add("org" + SEP + e.organizationId);
    if (e.endUserId !== "") ek.add("end_user" + SEP + e.endUserId);
    for (const t of e.tags) ek.add("tag" + SEP + t);
    const dk = this.dailyKeys;
    if (e.userId !== "") dk.add(dailyKey("user", e.userId, date, e));
    if (e.teamId !== "") dk.add(dailyKey("team", e.teamId, date, e));
    if (e.organizationId !== "") dk.add(dailyKey("org", e.organizationId, date, e));
    if (e.endUserId !== "") dk.add(dailyKey("end_user", e.endUserId, date, e));
    for (const t of e.tags) dk.add(dailyKey("tag", t, date, e));
    return {
      dims: e,
      date,
      spend: 0,
      prompt: 0,
      completion: 0,
      cacheRead: 0,
      cacheCreation: 0,
      requests: 0,
      successes: 0,
      spendBig: 0n,
      promptBig: 0n,
      completionBig: 0n,
      cacheReadBig: 0n,
      cacheCreationBig: 0n,
      requestsBig: 0n,
      successesBig: 0n,
    };
  }

  private cellKey(e: NormalizedEvent, date: string): string {
    return (
      e.apiKey +
      SEP +
      e.userId +
      SEP +
      e.teamId +
      SEP +
      e.organizationId +
      SEP +
      e.endUserId +
      SEP +
      (e.tags.length === 0 ? "" : e.tags.length === 1 ? (e.tags[0] ?? "") : e.tags.join(TAG_SEP)) +
      SEP +
      e.model +
      SEP +
      e.modelGroup +
      SEP +
      e.provider +
      SEP +
      e.endpoint +
      SEP +
      e.mcpToolName +
      SEP +
      date
    );
  }

  /** UTC YYYY-MM-DD, cached per day: formatting a date per event would cost more than the rest. */
  private dateOf(ms: number): string {
    const day = Math.floor(ms / DAY_MS);
    if (day !== this.lastDay) {
      this.lastDay = day;
      this.lastDate = new Date(day * DAY_MS).toISOString().slice(0, 10);
      return this.lastDate;
    }
    return this.lastDate;
  }
}

function dailyKey(kind: DailyKind, id: string, date: string, e: NormalizedEvent): string {
  return (
    kind +
    SEP +
    id +
    SEP +
    date +
    SEP +
    e.apiKey +
    SEP +
    e.model +
    SEP +
    e.modelGroup +
    SEP +
    e.provider +
    SEP +
    e.mcpToolName +
    SEP +
    e.endpoint
  );
}

function spill(c: Cell): void {
  c.spendBig += BigInt(c.spend);
  c.promptBig += BigInt(c.prompt);
  c.completionBig += BigInt(c.completion);
  c.cacheReadBig += BigInt(c.cacheRead);
  c.cacheCreationBig += BigInt(c.cacheCreation);
  c.requestsBig += BigInt(c.requests);
  c.successesBig += BigInt(c.successes);
  c.spend = 0;
  c.prompt = 0;
  c.completion = 0;
  c.cacheRead = 0;
  c.cacheCreation = 0;
  c.requests = 0;
  c.successes = 0;
}

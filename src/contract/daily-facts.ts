import type { Count, DailyContextDims, DailyKind, DailyRow } from "./spend-rows.js";

/**
 * Daily facts (job format 4): what a producer sends for the daily tables.
 *
 * One request adds the same counters to a daily row for its user, team,
 * org, end user and each tag, all in one context (date, key, model, group,
 * provider, MCP tool, endpoint). Sent as rows, that is 3-5 rows a request,
 * each aggregated, sealed and encoded by the gateway. A fact is those rows
 * before they are fanned out: the request's ids once, with one set of
 * counters, aggregated per distinct (user, team, org, end user, tags) in
 * its context. A gateway holds and writes one fact where it held and wrote
 * ~3.5 rows (issue 22, goal 1a); the worker fans each fact out to its daily
 * rows here, so everything past the decoder (merge, dedupe, fence, sorted
 * keys, dead letters) works on rows as before.
 */

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** No tags: one frozen array for every fact and event that names none. */
export const NO_TAGS: readonly string[] = Object.freeze([]);
// Digit strings of at most this many digits are below 2^53 and sum exactly as numbers.
const SAFE_DIGITS = 15;

/** Two counts summed exactly: a number while it stays below 2^53, else digits. */
export function addCounts(a: Count, b: Count): Count {
  if (typeof a === "number" && typeof b === "number" && a + b <= MAX_SAFE) return a + b;
  const s = BigInt(a) + BigInt(b);
  return s <= BigInt(MAX_SAFE) ? Number(s) : s.toString();
}

/** requests - successes, or undefined when successes exceed requests. */
export function failedCount(requests: Count, successes: Count): Count | undefined {
  if (typeof requests === "number" && typeof successes === "number")
    return successes <= requests ? requests - successes : undefined;
  const d = BigInt(requests) - BigInt(successes);
  if (d < 0n) return undefined;
  return d <= BigInt(MAX_SAFE) ? Number(d) : d.toString();
}

// A context's rows are found by a scan while it has at most this many, then through maps.
const SCAN_LIMIT = 16;

/**
 * Fans facts out to daily rows, one row per database row: facts of one
 * context that share an id (a key's user, team and org are in all of its
 * facts) add to one row. A context's facts come one after another. A
 * context's rows are found by scanning them while they are few (most
 * contexts hold a handful), then through a map per kind.
 */
export class DailyFactRows {
  private dims: DailyContextDims | undefined = undefined;
  /** Where the current context's rows start in `rows`. */
  private from = 0;
  /** id → index in rows, per kind, for the current context once it outgrows a scan. */
  private maps: Map<string, number>[] | undefined = undefined;
  /** The current context's merged rows (indexes in rows), and their spend sums by position in the context. */
  private readonly merged: number[] = [];
  private readonly sums: (number | bigint | undefined)[] = [];

  /** Rows are appended to `rows`. */
  constructor(readonly rows: DailyRow[] = []) {}

  /** The context the next facts belong to. */
  context(dims: DailyContextDims): void {
    this.closeContext();
    this.dims = dims;
    this.from = this.rows.length;
    this.maps = undefined;
  }

  /** A fact of the current context (failed = requests - successes, computed by the caller). */
  fact(
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
    failed: Count,
    spendPico: string,
  ): void {
    const counts: FactCounts = [
      prompt,
      completion,
      cacheRead,
      cacheCreation,
      requests,
      successes,
      failed,
      spendPico,
    ];
    if (user !== "") this.add("user", user, counts);
    if (team !== "") this.add("team", team, counts);
    if (org !== "") this.add("org", org, counts);
    if (endUser !== "") this.add("end_user", endUser, counts);
    for (let i = 0; i < tags.length; i++) this.add("tag", tags[i] as string, counts);
  }

  private add(kind: DailyKind, id: string, n: FactCounts): void {
    const at = this.find(kind, id);
    if (at < 0) {
      const d = this.dims;
      if (d === undefined) throw new Error("a daily fact before any context");
      const i = this.rows.length;
      this.rows.push([
        kind,
        id,
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
        d[6],
        n[0],
        n[1],
        n[2],
        n[3],
        n[4],
        n[5],
        n[6],
        n[7],
      ]);
      if (this.maps !== undefined) (this.maps[KIND_INDEX[kind]] as Map<string, number>).set(id, i);
      else if (i + 1 - this.from > SCAN_LIMIT) this.index();
      return;
    }
    const r = this.rows[at] as DailyRow;
    r[9] = addCounts(r[9], n[0]);
    r[10] = addCounts(r[10], n[1]);
    r[11] = addCounts(r[11], n[2]);
    r[12] = addCounts(r[12], n[3]);
    r[13] = addCounts(r[13], n[4]);
    r[14] = addCounts(r[14], n[5]);
    r[15] = addCounts(r[15], n[6]);
    // Spend is summed as a number while exact, and written back as digits with the context.
    const j = at - this.from;
    let prev = this.sums[j];
    if (prev === undefined) {
      this.merged.push(at);
      const own = r[16];
      prev = own.length <= SAFE_DIGITS ? Number(own) : BigInt(own);
    }
    const next = n[7];
    this.sums[j] =
      typeof prev === "number" && next.length <= SAFE_DIGITS && prev + Number(next) <= MAX_SAFE
        ? prev + Number(next)
        : BigInt(prev) + BigInt(next);
  }

  /** The rows, every merged row's spend written as its digits. Call once, after the last fact. */
  finish(): DailyRow[] {
    this.closeContext();
    return this.rows;
  }

  /** Writes the merged rows' spend sums of the current context back as digits. */
  private closeContext(): void {
    const merged = this.merged;
    if (merged.length === 0) return;
    for (const at of merged) (this.rows[at] as DailyRow)[16] = String(this.sums[at - this.from]);
    merged.length = 0;
    this.sums.length = 0;
  }

  /** The index in rows of the current context's row of `kind` and `id`, or -1. */
  private find(kind: DailyKind, id: string): number {
    if (this.maps !== undefined) return this.maps[KIND_INDEX[kind]]?.get(id) ?? -1;
    const rows = this.rows;
    for (let i = this.from; i < rows.length; i++) {
      const r = rows[i] as DailyRow;
      if (r[1] === id && r[0] === kind) return i;
    }
    return -1;
  }

  /** Indexes the current context's rows: it has outgrown a scan. */
  private index(): void {
    const maps = Array.from({ length: 5 }, () => new Map<string, number>());
    for (let i = this.from; i < this.rows.length; i++) {
      const r = this.rows[i] as DailyRow;
      (maps[KIND_INDEX[r[0]]] as Map<string, number>).set(r[1], i);
    }
    this.maps = maps;
  }
}

type FactCounts = [Count, Count, Count, Count, Count, Count, Count, string];

const KIND_INDEX: Record<DailyKind, number> = { user: 0, team: 1, org: 2, end_user: 3, tag: 4 };

/** How many daily rows a fact fans out to (before merging with its context's other facts). */
export function factRowCount(
  tags: readonly string[],
  user: string,
  team: string,
  org: string,
  endUser: string,
): number {
  return (
    tags.length +
    (user !== "" ? 1 : 0) +
    (team !== "" ? 1 : 0) +
    (org !== "" ? 1 : 0) +
    (endUser !== "" ? 1 : 0)
  );
}

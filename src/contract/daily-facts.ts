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

const SEP = "\u001f";
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
// Digit strings of at most this many digits are below 2^53 and sum exactly as numbers.
const SAFE_DIGITS = 15;

/** Two counts summed exactly: a number while it stays below 2^53, else digits. */
export function addCounts(a: Count, b: Count): Count {
  if (typeof a === "number" && typeof b === "number" && a + b <= MAX_SAFE) return a + b;
  const s = BigInt(a) + BigInt(b);
  return s <= BigInt(MAX_SAFE) ? Number(s) : s.toString();
}

/** Two picodollar digit strings summed exactly. */
export function addDigits(a: string, b: string): string {
  if (a.length <= SAFE_DIGITS && b.length <= SAFE_DIGITS) return String(Number(a) + Number(b));
  return (BigInt(a) + BigInt(b)).toString();
}

/** requests - successes, or undefined when successes exceed requests. */
export function failedCount(requests: Count, successes: Count): Count | undefined {
  if (typeof requests === "number" && typeof successes === "number")
    return successes <= requests ? requests - successes : undefined;
  const d = BigInt(requests) - BigInt(successes);
  if (d < 0n) return undefined;
  return d <= BigInt(MAX_SAFE) ? Number(d) : d.toString();
}

/**
 * Fans facts out to daily rows, one row per database row: facts of one
 * context that share an id (a key's user, team and org are in all of its
 * facts) add to one row. A context's facts come one after another.
 */
export class DailyFactRows {
  private dims: DailyContextDims | undefined = undefined;
  /** kind + SEP + id → index in rows, for the current context. */
  private readonly inContext = new Map<string, number>();

  /** Rows are appended to `rows`. */
  constructor(readonly rows: DailyRow[] = []) {}

  /** The context the next facts belong to. */
  context(dims: DailyContextDims): void {
    this.dims = dims;
    this.inContext.clear();
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
    const add = (kind: DailyKind, id: string): void =>
      this.add(
        kind,
        id,
        prompt,
        completion,
        cacheRead,
        cacheCreation,
        requests,
        successes,
        failed,
        spendPico,
      );
    if (user !== "") add("user", user);
    if (team !== "") add("team", team);
    if (org !== "") add("org", org);
    if (endUser !== "") add("end_user", endUser);
    for (let i = 0; i < tags.length; i++) add("tag", tags[i] as string);
  }

  private add(
    kind: DailyKind,
    id: string,
    prompt: Count,
    completion: Count,
    cacheRead: Count,
    cacheCreation: Count,
    requests: Count,
    successes: Count,
    failed: Count,
    spendPico: string,
  ): void {
    const d = this.dims;
    if (d === undefined) throw new Error("a daily fact before any context");
    const key = kind + SEP + id;
    const at = this.inContext.get(key);
    if (at === undefined) {
      this.inContext.set(key, this.rows.length);
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
        prompt,
        completion,
        cacheRead,
        cacheCreation,
        requests,
        successes,
        failed,
        spendPico,
      ]);
      return;
    }
    const r = this.rows[at] as DailyRow;
    r[9] = addCounts(r[9], prompt);
    r[10] = addCounts(r[10], completion);
    r[11] = addCounts(r[11], cacheRead);
    r[12] = addCounts(r[12], cacheCreation);
    r[13] = addCounts(r[13], requests);
    r[14] = addCounts(r[14], successes);
    r[15] = addCounts(r[15], failed);
    r[16] = addDigits(r[16], spendPico);
  }
}

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

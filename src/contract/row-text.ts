import {
  DAILY_KINDS,
  ENTITY_KINDS,
  sameDailyContext,
  type Count,
  type DailyRow,
  type EntityRow,
} from "./spend-rows.js";
import { DailyFactRows, failedCount } from "./daily-facts.js";
import type { SealedBatch } from "./spend-sink.js";

/**
 * Format 3 of a spend job: its rows as one string ("row text").
 *
 * Formats 1 and 2 carry rows as JSON arrays. A producer had to build every
 * row as an array of strings and numbers, keep it until its job was sent,
 * and BullMQ then walked them all again to write the JSON: hundreds of
 * thousands of small arrays living in the young generation through a seal,
 * which every scavenge copied (issue 22). In format 3 a producer writes each
 * row's text as it drains it; what a batch holds until it is sent is one
 * flat string, and JSON-encoding a string is a scan, not a walk.
 *
 * The text is a sequence of tokens, each a run of decimal digits and a
 * terminator:
 *   - `<digits>,` is a number (a kind's index, a counter, picodollars);
 *   - `<n>:` is a string: the n UTF-16 code units after the colon.
 * Strings are length-prefixed rather than quoted, so an id may hold any
 * character (commas, colons, digits, quotes) with nothing to escape, and a
 * reader never scans one. Lengths count UTF-16 code units, as JSON and
 * JavaScript strings do, so the text survives BullMQ's JSON round trip.
 *
 * Entity text: rows, each `kind id id2 spend` (kind: index in ENTITY_KINDS).
 * Daily text: contexts, each its seven strings (date, api key, model, model
 * group, provider, MCP tool, endpoint) followed by its rows, each
 * `kind entityId prompt completion cacheRead cacheCreation requests
 * successful failed spend` (kind: index in DAILY_KINDS). A row starts with a
 * number and a context with a string, which is how a reader tells them apart.
 *
 * Fact text (format 4, daily-facts.ts): contexts as in daily text, each
 * followed by its facts, each `tagCount tag... user team org endUser prompt
 * completion cacheRead cacheCreation requests successful spend` (an absent
 * id is the empty string; failed is requests - successful). A fact, like a
 * row, starts with a number.
 */

// Longest digit run a number may have: spend and counts are at most 38 digits (numeric(38,…)).
const MAX_DIGITS = 38;
// A string's length prefix above this is refused before anything is sliced.
const MAX_STRING = 1024;
// A count of at most this many digits is below 2^53, so it is carried as a number.
const SAFE_DIGITS = 15;
const DATE = /^\d{4}-\d{2}-\d{2}$/;

const ZERO = 48;
const NINE = 57;
const COMMA = 44;
const COLON = 58;

// A Uint16Array's bytes are the host's order; "utf16le" reads them as such only on little-endian hosts.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The first n code units as a string, a chunk at a time (a call takes only so many arguments). */
export function fromUnits(units: Uint16Array, n: number): string {
  let s = "";
  for (let i = 0; i < n; i += 8_192)
    s += String.fromCharCode(...units.subarray(i, Math.min(n, i + 8_192)));
  return s;
}

// A writer's first buffer, in code units; it doubles as a job needs.
const INITIAL_UNITS = 16_384;

/**
 * Writes row text into a typed array, code unit by code unit: no string is
 * made per row or per number, only the job's text when it is taken. One
 * byte a code unit while every one written is below 256 (ids are mostly
 * ASCII), two from the first that is not. A writer is reused job after job.
 */
export class RowTextWriter {
  private bytes = new Uint8Array(INITIAL_UNITS);
  private units: Uint16Array | undefined = undefined;
  private n = 0;
  /** Rows written since the last take(). */
  rows = 0;

  /** Code units written since the last take(). */
  get length(): number {
    return this.n;
  }

  /** Bytes the text taken now would occupy as a V8 string (one or two a code unit). */
  get byteLength(): number {
    return this.units === undefined ? this.n : this.n * 2;
  }

  /** An entity row. */
  entityRow(kind: number, id: string, id2: string, spendPico: number | string): void {
    this.number(kind);
    this.string(id);
    this.string(id2);
    this.count(spendPico);
    this.rows++;
  }

  /** The seven strings that open a daily context. */
  context(
    date: string,
    apiKey: string,
    model: string,
    modelGroup: string,
    provider: string,
    mcpToolName: string,
    endpoint: string,
  ): void {
    this.string(date);
    this.string(apiKey);
    this.string(model);
    this.string(modelGroup);
    this.string(provider);
    this.string(mcpToolName);
    this.string(endpoint);
  }

  /** A daily row of the context written last. */
  dailyRow(
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
    this.number(kind);
    this.string(id);
    this.count(prompt);
    this.count(completion);
    this.count(cacheRead);
    this.count(cacheCreation);
    this.count(requests);
    this.count(successes);
    this.count(failed);
    this.count(spendPico);
    this.rows++;
  }

  /** A daily fact of the context written last (fact text); counts as one of `rows`. */
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
    spendPico: number | string,
  ): void {
    this.number(tags.length);
    for (let i = 0; i < tags.length; i++) this.string(tags[i] as string);
    this.string(user);
    this.string(team);
    this.string(org);
    this.string(endUser);
    this.count(prompt);
    this.count(completion);
    this.count(cacheRead);
    this.count(cacheCreation);
    this.count(requests);
    this.count(successes);
    this.count(spendPico);
    this.rows++;
  }

  /** The text written since the last take(), and a fresh start (the buffer is kept). */
  take(): string {
    const n = this.n;
    const text =
      this.units === undefined
        ? Buffer.from(this.bytes.buffer, 0, n).toString("latin1")
        : LITTLE_ENDIAN
          ? Buffer.from(this.units.buffer, 0, n * 2).toString("utf16le")
          : fromUnits(this.units, n);
    this.n = 0;
    this.rows = 0;
    this.units = undefined;
    return text;
  }

  /** A count: a number below 2^53, or its digits. */
  private count(c: number | string): void {
    if (typeof c === "number") this.number(c);
    else {
      this.ascii(c);
      this.unit(COMMA);
    }
  }

  /**
   * A non-negative integer below 2^53 and its terminator: a comma for a
   * number, a colon for a string's length (no string made for either).
   */
  private number(v: number, terminator = COMMA): void {
    let digits = 1;
    for (let p = 10; p <= v; p *= 10) digits++;
    this.room(digits + 1);
    let at = this.n + digits;
    this.n = at + 1;
    const b = this.units ?? this.bytes;
    b[at] = terminator;
    // Integer arithmetic only: a double's % is a call into C, several times
    // slower, and spend in picodollars is past 2^31 for a cent.
    let w: number;
    if (v < 2_147_483_648) w = v | 0;
    else {
      // Below 2^53: nine low digits and a high part, both int32. The floor
      // is exact: the quotient is below 2^24, so it rounds by at most 2^-30,
      // and a quotient that is not an integer is at least 1e-9 from one.
      const hi = Math.floor(v / 1e9);
      let l = (v - hi * 1e9) | 0;
      for (let i = 0; i < 9; i++) {
        const q = (l / 10) | 0;
        b[--at] = ZERO + l - q * 10;
        l = q;
      }
      w = hi | 0;
    }
    do {
      const q = (w / 10) | 0;
      b[--at] = ZERO + w - q * 10;
      w = q;
    } while (w > 0);
  }

  /** A string token: its length, a colon, its code units. */
  private string(s: string): void {
    const len = s.length;
    this.number(len, COLON);
    this.room(len);
    let b = this.units ?? this.bytes;
    let at = this.n;
    for (let i = 0; i < len; i++) {
      const c = s.charCodeAt(i);
      if (c > 0xff && this.units === undefined) {
        this.n = at;
        b = this.widen();
      }
      b[at++] = c;
    }
    this.n = at;
  }

  /** Code units known to be ASCII (digits). */
  private ascii(s: string): void {
    this.room(s.length);
    const b = this.units ?? this.bytes;
    let at = this.n;
    for (let i = 0; i < s.length; i++) b[at++] = s.charCodeAt(i);
    this.n = at;
  }

  private unit(c: number): void {
    this.room(1);
    (this.units ?? this.bytes)[this.n++] = c;
  }

  /** Room for `k` more code units. */
  private room(k: number): void {
    const need = this.n + k;
    const cap = this.units === undefined ? this.bytes.length : this.units.length;
    if (need <= cap) return;
    const size = Math.max(need, cap * 2);
    if (this.units === undefined) {
      const b = new Uint8Array(size);
      b.set(this.bytes.subarray(0, this.n));
      this.bytes = b;
    } else {
      const u = new Uint16Array(size);
      u.set(this.units.subarray(0, this.n));
      this.units = u;
    }
  }

  /** Two bytes a code unit from here on, what is written so far copied over. */
  private widen(): Uint16Array {
    const u = new Uint16Array(Math.max(this.bytes.length, this.n * 2));
    u.set(this.bytes.subarray(0, this.n));
    this.units = u;
    return u;
  }
}

/** Entity rows as format 3 text. */
export function encodeEntityRows(rows: readonly EntityRow[]): string {
  const w = new RowTextWriter();
  for (const r of rows) w.entityRow(ENTITY_KINDS.indexOf(r[0]), r[1], r[2], r[3]);
  return w.take();
}

/** Daily rows as format 3 text: consecutive rows sharing a context share its text. */
export function encodeDailyRows(rows: readonly DailyRow[]): string {
  const w = new RowTextWriter();
  let last: DailyRow | undefined;
  for (const r of rows) {
    if (last === undefined || !sameDailyContext(last, r))
      w.context(r[2], r[3], r[4], r[5], r[6], r[7], r[8]);
    w.dailyRow(
      DAILY_KINDS.indexOf(r[0]),
      r[1],
      r[9],
      r[10],
      r[11],
      r[12],
      r[13],
      r[14],
      r[15],
      r[16],
    );
    last = r;
  }
  return w.take();
}

/**
 * Most tags one fact may name. A producer's max_tags is at most this
 * (config.ts); the cap bounds what one fact fans out to.
 */
export const MAX_FACT_TAGS = 1_000;
// Above this many tags, a fact's duplicates are found with a Set instead of by pairs.
const TAG_PAIRWISE_LIMIT = 8;

/** Row text a reader refuses: where, and why. */
export class RowTextError extends Error {
  constructor(
    readonly at: number,
    reason: string,
  ) {
    super(`row text, at character ${at}: ${reason}`);
    this.name = "RowTextError";
  }
}

/**
 * A reader of row text that checks each token as the contract's schemas
 * check the same value in formats 1 and 2 (ids at most 1024 characters, an
 * entity id not empty, counts and spend 1–38 digits, the date YYYY-MM-DD).
 */
class Reader {
  at = 0;
  constructor(private readonly t: string) {}

  get done(): boolean {
    return this.at >= this.t.length;
  }

  /** True if the next token is a number (its digits end with a comma). */
  nextIsNumber(): boolean {
    const t = this.t;
    let i = this.at;
    while (i < t.length) {
      const c = t.charCodeAt(i);
      if (c < ZERO || c > NINE) return c === COMMA;
      i++;
    }
    return false;
  }

  // The token read last by digits(): where its digits start, how many, their value, its terminator.
  private from = 0;
  private len = 0;
  private value = 0;
  private end = 0;

  /**
   * Reads the next token's digits and terminator into from/len/value/end,
   * with no string made: most tokens are small numbers and lengths.
   */
  private digits(what: string): void {
    const t = this.t;
    const from = this.at;
    let i = from;
    let v = 0;
    for (; i < t.length; i++) {
      const c = t.charCodeAt(i);
      if (c < ZERO || c > NINE) break;
      if (i - from === MAX_DIGITS)
        throw new RowTextError(from, `${what}: more than ${MAX_DIGITS} digits`);
      v = v * 10 + (c - ZERO);
    }
    if (i === from)
      throw new RowTextError(
        from,
        i < t.length ? `${what}: expected digits` : `${what}: text ends early`,
      );
    if (i >= t.length) throw new RowTextError(i, `${what}: text ends early`);
    this.from = from;
    this.len = i - from;
    this.value = v;
    this.end = t.charCodeAt(i);
  }

  /** Reads a number token (its digits and comma). */
  private numberToken(what: string): void {
    this.digits(what);
    if (this.end !== COMMA)
      throw new RowTextError(this.from + this.len, `${what}: expected a number`);
    this.at = this.from + this.len + 1;
  }

  /** A number token's digits. */
  numberDigits(what: string): string {
    this.numberToken(what);
    return this.t.slice(this.from, this.from + this.len);
  }

  /** A count: a number while it has at most 15 digits (exact below 2^53), else its digits. */
  count(what: string): Count {
    this.numberToken(what);
    return this.len <= SAFE_DIGITS ? this.value : this.t.slice(this.from, this.from + this.len);
  }

  /** A kind's index, below `n`. */
  kind(n: number): number {
    this.numberToken("kind");
    if (this.value >= n || this.len > 2)
      throw new RowTextError(
        this.from,
        `kind: no kind ${this.t.slice(this.from, this.from + this.len)}`,
      );
    return this.value;
  }

  /** A number token of at most `max`. */
  bounded(what: string, max: number): number {
    this.numberToken(what);
    if (this.len > 15 || this.value > max)
      throw new RowTextError(this.from, `${what}: more than ${max}`);
    return this.value;
  }

  /** A string token of at most 1024 characters (at least `min`). */
  string(what: string, min = 0): string {
    this.digits(what);
    const from = this.from;
    if (this.end !== COLON) throw new RowTextError(from + this.len, `${what}: expected a string`);
    const n = this.len <= 4 ? this.value : MAX_STRING + 1;
    if (n > MAX_STRING)
      throw new RowTextError(from, `${what}: longer than ${MAX_STRING} characters`);
    if (n < min) throw new RowTextError(from, `${what}: empty`);
    const start = from + this.len + 1;
    if (start + n > this.t.length) throw new RowTextError(from, `${what}: text ends early`);
    this.at = start + n;
    return this.t.slice(start, start + n);
  }
}

/** Format 3 entity text as rows; throws RowTextError on anything the schemas would refuse. */
export function decodeEntityRows(text: string): EntityRow[] {
  const r = new Reader(text);
  const rows: EntityRow[] = [];
  while (!r.done) {
    const kind = ENTITY_KINDS[r.kind(ENTITY_KINDS.length)] as EntityRow[0];
    rows.push([kind, r.string("id", 1), r.string("second id"), r.numberDigits("spend")]);
  }
  return rows;
}

/** Format 3 daily text as rows (format 1's); throws RowTextError on anything the schemas would refuse. */
export function decodeDailyRows(text: string): DailyRow[] {
  const r = new Reader(text);
  const rows: DailyRow[] = [];
  let ctx: string[] | undefined;
  while (!r.done) {
    if (!r.nextIsNumber()) {
      ctx = readContext(r);
      continue;
    }
    if (ctx === undefined) throw new RowTextError(r.at, "a daily row before any context");
    const kind = DAILY_KINDS[r.kind(DAILY_KINDS.length)] as DailyRow[0];
    rows.push([
      kind,
      r.string("entity id", 1),
      ctx[0] as string,
      ctx[1] as string,
      ctx[2] as string,
      ctx[3] as string,
      ctx[4] as string,
      ctx[5] as string,
      ctx[6] as string,
      r.count("prompt tokens"),
      r.count("completion tokens"),
      r.count("cache read tokens"),
      r.count("cache creation tokens"),
      r.count("requests"),
      r.count("successful requests"),
      r.count("failed requests"),
      r.numberDigits("spend"),
    ]);
  }
  return rows;
}

/** The seven strings that open a context, the date checked. */
function readContext(r: Reader): [string, string, string, string, string, string, string] {
  const at = r.at;
  const date = r.string("date");
  if (!DATE.test(date)) throw new RowTextError(at, "date: not YYYY-MM-DD");
  return [
    date,
    r.string("api key"),
    r.string("model"),
    r.string("model group"),
    r.string("provider"),
    r.string("MCP tool"),
    r.string("endpoint"),
  ];
}

/**
 * Format 4 fact text fanned out to daily rows (format 1's, one per database
 * row of each context), and how many facts it held; throws RowTextError on
 * anything a producer cannot have written: a fact before any context, more
 * than MAX_FACT_TAGS tags, an empty or repeated tag, a fact that names no
 * entity, more successful requests than requests, and whatever the row
 * schemas refuse in a value.
 */
export function decodeDailyFacts(text: string): { rows: DailyRow[]; facts: number } {
  const r = new Reader(text);
  const out = new DailyFactRows();
  let facts = 0;
  let inContext = false;
  const tags: string[] = [];
  while (!r.done) {
    if (!r.nextIsNumber()) {
      out.context(readContext(r));
      inContext = true;
      continue;
    }
    const at = r.at;
    if (!inContext) throw new RowTextError(at, "a daily fact before any context");
    const n = r.bounded("tag count", MAX_FACT_TAGS);
    tags.length = 0;
    for (let i = 0; i < n; i++) tags.push(r.string("tag", 1));
    if (n > 1 && hasDuplicate(tags)) throw new RowTextError(at, "a tag named twice in one fact");
    const user = r.string("user");
    const team = r.string("team");
    const org = r.string("org");
    const endUser = r.string("end user");
    if (n === 0 && user === "" && team === "" && org === "" && endUser === "")
      throw new RowTextError(at, "a fact that names no user, team, org, end user or tag");
    const prompt = r.count("prompt tokens");
    const completion = r.count("completion tokens");
    const cacheRead = r.count("cache read tokens");
    const cacheCreation = r.count("cache creation tokens");
    const requests = r.count("requests");
    const successes = r.count("successful requests");
    const failed = failedCount(requests, successes);
    if (failed === undefined) throw new RowTextError(at, "more successful requests than requests");
    out.fact(
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
      failed,
      r.numberDigits("spend"),
    );
    facts++;
  }
  return { rows: out.finish(), facts };
}

function hasDuplicate(tags: readonly string[]): boolean {
  if (tags.length > TAG_PAIRWISE_LIMIT) return new Set(tags).size !== tags.length;
  for (let i = 1; i < tags.length; i++)
    for (let j = 0; j < i; j++) if (tags[i] === tags[j]) return true;
  return false;
}

/** A sealed daily batch's rows, whichever its text (facts fanned out). */
export function sealedDailyRows(b: Pick<SealedBatch, "textFormat" | "rowText">): DailyRow[] {
  return b.textFormat === 4 ? decodeDailyFacts(b.rowText).rows : decodeDailyRows(b.rowText);
}

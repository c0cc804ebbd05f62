import {
  DAILY_KINDS,
  ENTITY_KINDS,
  sameDailyContext,
  type Count,
  type DailyKind,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../contract/spend-batch.js";

/**
 * Merges the rows of many batches into one row per database row, sorted by
 * key. Sorted keys mean every writer locks rows in the same order (the
 * reference's unsorted updates deadlocked), and one row per key means one
 * INSERT ... ON CONFLICT never touches a row twice.
 */

export interface EntityColumns {
  /** One array per key column (1 or 2), aligned with spend. */
  keys: string[][];
  /**
   * Spend in picodollars, a row's own digits or an exact sum (upsert.ts
   * scales it to NUMERIC in SQL, exactly): a row seen once costs no new value.
   */
  spend: Count[];
}

export interface DailyColumns {
  entityId: string[];
  /** date, api_key, model, model_group, provider, mcp tool, endpoint. */
  dims: string[][];
  /** The seven counters: the rows' own numbers or digit strings, int8 to PostgreSQL. */
  counters: Count[][];
  /** Picodollars, as EntityColumns.spend. */
  spend: Count[];
}

export interface MergedRows {
  entity: Map<EntityKind, EntityColumns>;
  daily: Map<DailyKind, DailyColumns>;
  entityRowCount: number;
  dailyRowCount: number;
}

/**
 * A database row's spend so far. Many keys occur once per flush (a producer
 * seals each row once per interval), so a key seen once keeps only its row and
 * is written from the row's own text; a repeated key sums, in plain numbers
 * while they stay exact (no allocation), in bigints past that.
 */
interface EntityAcc {
  row: EntityRow;
  spend: Sum | undefined;
}

interface DailyAcc {
  row: DailyRow;
  /** The seven counters and the spend, once a second row for the key arrived. */
  sums: Sum[] | undefined;
}

export function mergeRows(
  entityRows: Iterable<readonly EntityRow[]>,
  dailyRows: Iterable<readonly DailyRow[]>,
): MergedRows {
  const m = new RowMerger();
  for (const rows of entityRows) m.addEntity(rows);
  for (const rows of dailyRows) m.addDaily(rows);
  return m.finish();
}

/**
 * mergeRows one batch at a time: a flush adds jobs as it takes them and
 * stops once the rows they merge into (what its transaction will write and
 * lock) reach its bound.
 */
export class RowMerger {
  // Keyed by the first id only, never by a key string built per row: with a
  // backlog of hundreds of thousands of rows, building and hashing those
  // strings was most of the merge's time and memory. The second id (a team
  // member's team; "" for every other kind) is compared in a short list.
  private readonly entityAcc = new Map<EntityKind, Map<string, EntityAcc | EntityAcc[]>>();
  // Keyed by entity id, then api key: the other dimensions (date, model, ...)
  // usually have one value per such pair; a pair with several keeps a short
  // list, compared field by field.
  private readonly dailyAcc = new Map<DailyKind, Map<string, Map<string, DailyAcc | DailyAcc[]>>>();
  /** Distinct entity rows so far. */
  entityRows = 0;
  /** Distinct daily rows so far. */
  dailyRows = 0;
  /** The date of every daily row so far, or null once two differ (sortedDaily). */
  private oneDate: string | null | undefined;

  constructor() {
    for (const k of ENTITY_KINDS) this.entityAcc.set(k, new Map());
    for (const k of DAILY_KINDS) this.dailyAcc.set(k, new Map());
  }

  addEntity(rows: readonly EntityRow[]): void {
    for (const row of rows) {
      const m = this.entityAcc.get(row[0]);
      if (m === undefined) continue;
      const found = m.get(row[1]);
      let acc: EntityAcc | undefined;
      if (found === undefined) {
        m.set(row[1], { row, spend: undefined });
        this.entityRows++;
      } else if (Array.isArray(found)) {
        acc = found.find((x) => x.row[2] === row[2]);
        if (acc === undefined) {
          found.push({ row, spend: undefined });
          this.entityRows++;
        }
      } else if (found.row[2] === row[2]) acc = found;
      else {
        m.set(row[1], [found, { row, spend: undefined }]);
        this.entityRows++;
      }
      if (acc !== undefined) acc.spend = add(acc.spend ?? sumOf(acc.row[3]), row[3]);
    }
  }

  addDaily(rows: readonly DailyRow[]): void {
    for (const row of rows) {
      if (this.oneDate !== row[2]) this.oneDate = this.oneDate === undefined ? row[2] : null;
      const byEntity = this.dailyAcc.get(row[0]);
      if (byEntity === undefined) continue;
      let m = byEntity.get(row[1]);
      if (m === undefined) byEntity.set(row[1], (m = new Map<string, DailyAcc | DailyAcc[]>()));
      const found = m.get(row[3]);
      let acc: DailyAcc | undefined;
      if (found === undefined) {
        m.set(row[3], { row, sums: undefined });
        this.dailyRows++;
      } else if (Array.isArray(found)) {
        acc = found.find((x) => sameDailyContext(x.row, row));
        if (acc === undefined) {
          found.push({ row, sums: undefined });
          this.dailyRows++;
        }
      } else if (sameDailyContext(found.row, row)) acc = found;
      else {
        m.set(row[3], [found, { row, sums: undefined }]);
        this.dailyRows++;
      }
      if (acc !== undefined) {
        const sums = (acc.sums ??= countsOf(acc.row));
        for (let i = 0; i < 8; i++) sums[i] = add(sums[i] as Sum, row[9 + i] as Count);
      }
    }
  }

  /** The merged rows, each table's sorted by key. */
  finish(): MergedRows {
    return columns(this.entityAcc, this.dailyAcc, this.oneDate !== null);
  }
}

function columns(
  entityAcc: ReadonlyMap<EntityKind, Map<string, EntityAcc | EntityAcc[]>>,
  dailyAcc: ReadonlyMap<DailyKind, Map<string, Map<string, DailyAcc | DailyAcc[]>>>,
  oneDate: boolean,
): MergedRows {
  const merged: MergedRows = {
    entity: new Map(),
    daily: new Map(),
    entityRowCount: 0,
    dailyRowCount: 0,
  };
  for (const [kind, m] of entityAcc) {
    if (m.size === 0) continue;
    const sorted = sortedEntity(m);
    // Columns sized once and filled in place: grown push by push, they were
    // copied over and over, a large share of a flush's garbage.
    const n = sorted.length;
    const twoKeys = kind === "team_member";
    const cols: EntityColumns = {
      keys: twoKeys ? [new Array<string>(n), new Array<string>(n)] : [new Array<string>(n)],
      spend: new Array<Count>(n),
    };
    const [first, second = []] = cols.keys as [string[], string[]?];
    for (let r = 0; r < n; r++) {
      const { row, spend } = sorted[r] as EntityAcc;
      first[r] = row[1];
      if (twoKeys) second[r] = row[2];
      cols.spend[r] = spend === undefined ? row[3] : countOf(spend);
    }
    merged.entity.set(kind, cols);
    merged.entityRowCount += sorted.length;
  }
  for (const [kind, byEntity] of dailyAcc) {
    if (byEntity.size === 0) continue;
    const sorted = sortedDaily(byEntity, oneDate);
    const n = sorted.length;
    const cols: DailyColumns = {
      entityId: new Array<string>(n),
      dims: Array.from({ length: 7 }, () => new Array<string>(n)),
      counters: Array.from({ length: 7 }, () => new Array<Count>(n)),
      spend: new Array<Count>(n),
    };
    const dims = cols.dims;
    const counters = cols.counters;
    for (let r = 0; r < n; r++) {
      const { row, sums } = sorted[r] as DailyAcc;
      cols.entityId[r] = row[1];
      for (let i = 0; i < 7; i++) (dims[i] as string[])[r] = row[2 + i] as string;
      if (sums === undefined) {
        for (let i = 0; i < 7; i++) (counters[i] as Count[])[r] = row[9 + i] as Count;
        cols.spend[r] = row[16];
      } else {
        for (let i = 0; i < 7; i++) (counters[i] as Count[])[r] = countOf(sums[i] as Sum);
        cols.spend[r] = countOf(sums[7] as Sum);
      }
    }
    merged.daily.set(kind, cols);
    merged.dailyRowCount += sorted.length;
  }
  return merged;
}

/** Appends to `out` the accumulators of a map whose values are one or a short list of them. */
function flatten<T extends object>(values: Iterable<T | T[]>, out: T[]): T[] {
  for (const v of values) {
    if (Array.isArray(v)) for (const x of v) out.push(x);
    else out.push(v);
  }
  return out;
}

/**
 * A kind's entity rows by id, then second id, each by UTF-16 code units (the
 * order every writer locks entity rows in): the ids sorted as strings, and
 * only a team member's short list by the second id (see sortedDaily).
 */
function sortedEntity(m: ReadonlyMap<string, EntityAcc | EntityAcc[]>): EntityAcc[] {
  const out: EntityAcc[] = [];
  for (const id of [...m.keys()].sort()) {
    const v = m.get(id) as EntityAcc | EntityAcc[];
    if (Array.isArray(v)) out.push(...v.sort(compareSecondId));
    else out.push(v);
  }
  return out;
}

function compareSecondId(x: EntityAcc, y: EntityAcc): number {
  const a = x.row[2];
  const b = y.row[2];
  return a === b ? 0 : a < b ? -1 : 1;
}

/**
 * A kind's daily rows by entity id, then date, api key, model, ...: column
 * by column, each by UTF-16 code units, as every writer sorts them (the lock
 * order). The maps already group rows by entity id and api key, so those
 * keys are sorted as strings (the default sort, which calls no comparator)
 * and only rows sharing both are compared; one sort of every row called the
 * comparator ~17 times a row, most of a large merge's time. When the rows
 * hold more than one date (a flush across midnight), the date comes before
 * the api key, and each entity's rows are sorted among themselves instead.
 */
function sortedDaily(
  byEntity: ReadonlyMap<string, Map<string, DailyAcc | DailyAcc[]>>,
  oneDate: boolean,
): DailyAcc[] {
  const out: DailyAcc[] = [];
  // Default sort compares strings by UTF-16 code units, as `<` does.
  for (const id of [...byEntity.keys()].sort()) {
    const m = byEntity.get(id) as Map<string, DailyAcc | DailyAcc[]>;
    if (!oneDate) {
      out.push(...flatten(m.values(), []).sort(compareDailyContext));
      continue;
    }
    const keys = m.size === 1 ? m.keys() : [...m.keys()].sort();
    for (const key of keys) {
      const v = m.get(key) as DailyAcc | DailyAcc[];
      if (Array.isArray(v)) out.push(...v.sort(compareDailyContext));
      else out.push(v);
    }
  }
  return out;
}

/** Two daily rows of one entity: by date, api key, model, ... (see sortedDaily). */
function compareDailyContext(x: DailyAcc, y: DailyAcc): number {
  const a = x.row;
  const b = y.row;
  for (let i = 2; i < 9; i++) {
    const p = a[i] as string;
    const q = b[i] as string;
    if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

function countsOf(row: DailyRow): Sum[] {
  const out: Sum[] = [];
  for (let i = 9; i < 17; i++) out.push(sumOf(row[i] as Count));
  return out;
}

/** A running sum: a number while it is an exact integer, a bigint past 2^53. */
type Sum = number | bigint;

/** A count or picodollar digits (validated: a safe integer, or 1-38 digits) as a Sum. */
function sumOf(c: Count): Sum {
  if (typeof c === "number") return c;
  // Up to 15 digits is below 2^53: exact as a number.
  return c.length <= 15 ? Number(c) : BigInt(c);
}

function add(a: Sum, b: Count): Sum {
  const n = sumOf(b);
  if (typeof a === "number" && typeof n === "number") {
    // Both below 2^53: a sum past it cannot round down to it, so this check is exact.
    const s = a + n;
    if (s <= Number.MAX_SAFE_INTEGER) return s;
  }
  return BigInt(a) + BigInt(n);
}

/** A Sum as PostgreSQL reads it: a number as it is, a bigint as its digits. */
function countOf(s: Sum): Count {
  return typeof s === "number" ? s : s.toString();
}

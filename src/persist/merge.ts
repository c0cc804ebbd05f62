import { picoDigitsToDecimal, picoToDecimal } from "../contract/money.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
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
  /** NUMERIC text, exact. */
  spend: string[];
}

export interface DailyColumns {
  entityId: string[];
  /** date, api_key, model, model_group, provider, mcp tool, endpoint. */
  dims: string[][];
  /** The seven counters as int8 text. */
  counters: string[][];
  spend: string[];
}

export interface MergedRows {
  entity: Map<EntityKind, EntityColumns>;
  daily: Map<DailyKind, DailyColumns>;
  entityRowCount: number;
  dailyRowCount: number;
}

const SEP = "\u001f";
const compareKeys = (a: [string, unknown], b: [string, unknown]): number =>
  a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;

/**
 * A database row's spend so far. Most keys occur once per flush (a producer
 * seals each row once per interval), so a key seen once keeps only its row and
 * is written from the row's own text; a repeated key sums into bigints.
 */
interface EntityAcc {
  row: EntityRow;
  spend: bigint | undefined;
}

interface DailyAcc {
  row: DailyRow;
  /** The seven counters and the spend, once a second row for the key arrived. */
  sums: bigint[] | undefined;
}

export function mergeRows(
  entityRows: Iterable<readonly EntityRow[]>,
  dailyRows: Iterable<readonly DailyRow[]>,
): MergedRows {
  const entityAcc = new Map<EntityKind, Map<string, EntityAcc>>();
  for (const k of ENTITY_KINDS) entityAcc.set(k, new Map());
  for (const rows of entityRows) {
    for (const row of rows) {
      const m = entityAcc.get(row[0]);
      if (m === undefined) continue;
      const key = row[1] + SEP + row[2];
      const acc = m.get(key);
      if (acc === undefined) m.set(key, { row, spend: undefined });
      else acc.spend = (acc.spend ?? BigInt(acc.row[3])) + BigInt(row[3]);
    }
  }

  // Keyed by entity id and api key only: building and hashing the whole
  // eight-part key of every row cost more than the rest of the merge. The
  // other dimensions (date, model, ...) usually have one value per such pair;
  // a pair with several keeps a short list, compared field by field.
  const dailyAcc = new Map<DailyKind, Map<string, DailyAcc | DailyAcc[]>>();
  for (const k of DAILY_KINDS) dailyAcc.set(k, new Map());
  for (const rows of dailyRows) {
    for (const row of rows) {
      const m = dailyAcc.get(row[0]);
      if (m === undefined) continue;
      const key = row[1] + SEP + row[3];
      const found = m.get(key);
      let acc: DailyAcc | undefined;
      if (found === undefined) m.set(key, { row, sums: undefined });
      else if (Array.isArray(found)) {
        acc = found.find((x) => sameContext(x.row, row));
        if (acc === undefined) found.push({ row, sums: undefined });
      } else if (sameContext(found.row, row)) acc = found;
      else m.set(key, [found, { row, sums: undefined }]);
      if (acc !== undefined) {
        const sums = (acc.sums ??= countsOf(acc.row));
        for (let i = 0; i < 8; i++) sums[i] = (sums[i] as bigint) + BigInt(row[9 + i] as Count);
      }
    }
  }

  const merged: MergedRows = {
    entity: new Map(),
    daily: new Map(),
    entityRowCount: 0,
    dailyRowCount: 0,
  };
  for (const [kind, m] of entityAcc) {
    if (m.size === 0) continue;
    const sorted = [...m.entries()].sort(compareKeys);
    const twoKeys = kind === "team_member";
    const cols: EntityColumns = { keys: twoKeys ? [[], []] : [[]], spend: [] };
    for (const [, { row, spend }] of sorted) {
      cols.keys[0]?.push(row[1]);
      if (twoKeys) cols.keys[1]?.push(row[2]);
      cols.spend.push(spend === undefined ? picoDigitsToDecimal(row[3]) : picoToDecimal(spend));
    }
    merged.entity.set(kind, cols);
    merged.entityRowCount += sorted.length;
  }
  for (const [kind, m] of dailyAcc) {
    if (m.size === 0) continue;
    const sorted: DailyAcc[] = [];
    for (const v of m.values()) {
      if (Array.isArray(v)) for (const x of v) sorted.push(x);
      else sorted.push(v);
    }
    sorted.sort(compareDaily);
    const cols: DailyColumns = {
      entityId: [],
      dims: Array.from({ length: 7 }, () => []),
      counters: Array.from({ length: 7 }, () => []),
      spend: [],
    };
    for (const { row, sums } of sorted) {
      cols.entityId.push(row[1]);
      for (let i = 0; i < 7; i++) cols.dims[i]?.push(row[2 + i] as string);
      if (sums === undefined) {
        for (let i = 0; i < 7; i++) cols.counters[i]?.push(countText(row[9 + i] as Count));
        cols.spend.push(picoDigitsToDecimal(row[16]));
      } else {
        for (let i = 0; i < 7; i++) cols.counters[i]?.push((sums[i] as bigint).toString());
        cols.spend.push(picoToDecimal(sums[7] as bigint));
      }
    }
    merged.daily.set(kind, cols);
    merged.dailyRowCount += sorted.length;
  }
  return merged;
}

/** Same date, api key, model, model group, provider, MCP tool and endpoint. */
function sameContext(a: DailyRow, b: DailyRow): boolean {
  for (let i = 2; i < 9; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * By entity id, then date, api key, model, ...: the order of the eight
 * columns joined with a separator below every character an id may hold, as
 * every writer sorts them (the lock order).
 */
function compareDaily(x: DailyAcc, y: DailyAcc): number {
  const a = x.row;
  const b = y.row;
  for (let i = 1; i < 9; i++) {
    const p = a[i] as string;
    const q = b[i] as string;
    if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

function countsOf(row: DailyRow): bigint[] {
  const out: bigint[] = [];
  for (let i = 9; i < 17; i++) out.push(BigInt(row[i] as Count));
  return out;
}

/** A counter as int8 text: a number prints as its digits, a string count already is them. */
function countText(c: Count): string {
  return typeof c === "number" ? String(c) : String(BigInt(c));
}

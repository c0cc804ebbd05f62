import { picoToDecimal } from "../money.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  type DailyKind,
  type DailyRow,
  type EntityKind,
  type EntityRow,
} from "../queue/spend-batch.js";

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

export function mergeRows(
  entityRows: Iterable<readonly EntityRow[]>,
  dailyRows: Iterable<readonly DailyRow[]>,
): MergedRows {
  const entityAcc = new Map<EntityKind, Map<string, { row: EntityRow; spend: bigint }>>();
  for (const k of ENTITY_KINDS) entityAcc.set(k, new Map());
  for (const rows of entityRows) {
    for (const row of rows) {
      const m = entityAcc.get(row[0]);
      if (m === undefined) continue;
      const key = row[1] + SEP + row[2];
      const acc = m.get(key);
      if (acc === undefined) m.set(key, { row, spend: BigInt(row[3]) });
      else acc.spend += BigInt(row[3]);
    }
  }

  const dailyAcc = new Map<DailyKind, Map<string, { row: DailyRow; sums: bigint[] }>>();
  for (const k of DAILY_KINDS) dailyAcc.set(k, new Map());
  for (const rows of dailyRows) {
    for (const row of rows) {
      const m = dailyAcc.get(row[0]);
      if (m === undefined) continue;
      const key = row.slice(1, 9).join(SEP);
      const acc = m.get(key);
      if (acc === undefined) {
        m.set(key, { row, sums: row.slice(9, 17).map((v) => BigInt(v)) });
      } else {
        for (let i = 0; i < 8; i++)
          acc.sums[i] = (acc.sums[i] ?? 0n) + BigInt(row[9 + i] as string | number);
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
      cols.spend.push(picoToDecimal(spend));
    }
    merged.entity.set(kind, cols);
    merged.entityRowCount += sorted.length;
  }
  for (const [kind, m] of dailyAcc) {
    if (m.size === 0) continue;
    const sorted = [...m.entries()].sort(compareKeys);
    const cols: DailyColumns = {
      entityId: [],
      dims: Array.from({ length: 7 }, () => []),
      counters: Array.from({ length: 7 }, () => []),
      spend: [],
    };
    for (const [, { row, sums }] of sorted) {
      cols.entityId.push(row[1]);
      for (let i = 0; i < 7; i++) cols.dims[i]?.push(row[2 + i] as string);
      for (let i = 0; i < 7; i++) cols.counters[i]?.push((sums[i] ?? 0n).toString());
      cols.spend.push(picoToDecimal(sums[7] ?? 0n));
    }
    merged.daily.set(kind, cols);
    merged.dailyRowCount += sorted.length;
  }
  return merged;
}

import pg from "pg";
import type { DailyRow, EntityRow } from "../../src/contract/spend-batch.js";
import type { Totals } from "./ledger.js";

/**
 * Totals (the Ledger's shape) of spend rows as jobs carry them: what a test
 * that writes jobs by hand expects PostgreSQL and the dead letters to hold
 * between them.
 */
export function rowTotals(entity: readonly EntityRow[], daily: readonly DailyRow[]): Totals {
  const t: Totals = new Map();
  const add = (key: string, values: bigint[]): void => {
    const cur = t.get(key);
    if (cur === undefined) t.set(key, values);
    else values.forEach((v, i) => (cur[i] = (cur[i] ?? 0n) + v));
  };
  for (const [kind, id, id2, pico] of entity)
    add(["entity", kind, id, id2].join("|"), [BigInt(pico)]);
  for (const r of daily)
    add(
      ["daily", ...r.slice(0, 9)].join("|"),
      r.slice(9).map((v) => BigInt(v)),
    );
  return t;
}

/** The sum of several totals. */
export function addTotals(...all: Totals[]): Totals {
  const t: Totals = new Map();
  for (const one of all)
    for (const [k, v] of one) {
      const cur = t.get(k);
      if (cur === undefined) t.set(k, [...v]);
      else v.forEach((x, i) => (cur[i] = (cur[i] ?? 0n) + x));
    }
  return t;
}

/** What the dead letters not yet replayed hold, as totals (rows of "job" letters included). */
export async function deadLetterTotals(databaseUrl: string): Promise<Totals> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const res = await client.query<{ kind: string; payload: string }>(
      `SELECT kind, payload FROM spend_dead_letter WHERE replayed_at IS NULL`,
    );
    const entity: EntityRow[] = [];
    const daily: DailyRow[] = [];
    for (const { kind, payload } of res.rows) {
      const parsed = JSON.parse(payload) as unknown;
      if (kind === "entity") entity.push(...(parsed as EntityRow[]));
      else if (kind === "daily") daily.push(...(parsed as DailyRow[]));
    }
    return rowTotals(entity, daily);
  } finally {
    await client.end();
  }
}

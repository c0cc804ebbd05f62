import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { mergeRows } from "../../src/persist/merge.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  type Count,
  type DailyRow,
  type EntityRow,
} from "../../src/contract/spend-batch.js";

/**
 * What mergeRows must produce, written the obvious way: every row's whole key
 * joined, every figure summed as a bigint, keys sorted as joined strings.
 */
function reference(entity: EntityRow[][], daily: DailyRow[][]) {
  const SEP = "\u001f";
  const e = new Map<string, Map<string, { ids: string[]; spend: bigint }>>();
  for (const row of entity.flat()) {
    const m = e.get(row[0]) ?? new Map<string, { ids: string[]; spend: bigint }>();
    e.set(row[0], m);
    const key = row[1] + SEP + row[2];
    const acc = m.get(key) ?? { ids: [row[1], row[2]], spend: 0n };
    acc.spend += BigInt(row[3]);
    m.set(key, acc);
  }
  const d = new Map<string, Map<string, { dims: string[]; sums: bigint[] }>>();
  for (const row of daily.flat()) {
    const m = d.get(row[0]) ?? new Map<string, { dims: string[]; sums: bigint[] }>();
    d.set(row[0], m);
    const key = row.slice(1, 9).join(SEP);
    const acc = m.get(key) ?? {
      dims: row.slice(1, 9) as string[],
      sums: Array.from({ length: 8 }, () => 0n),
    };
    for (let i = 0; i < 8; i++) acc.sums[i] = (acc.sums[i] ?? 0n) + BigInt(row[9 + i] as Count);
    m.set(key, acc);
  }
  const sorted = <T>(m: Map<string, T> | undefined): T[] =>
    [...(m ?? new Map<string, T>()).entries()]
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .map(([, v]) => v);
  return {
    entity: ENTITY_KINDS.filter((k) => e.has(k)).map((k) => {
      const accs = sorted(e.get(k));
      return [k, accs.map((a) => a.ids[0]), accs.map((a) => a.ids[1]), accs.map((a) => a.spend)];
    }),
    daily: DAILY_KINDS.filter((k) => d.has(k)).map((k) => {
      const accs = sorted(d.get(k));
      return [
        k,
        accs.map((a) => a.dims),
        accs.map((a) => a.sums.slice(0, 7)),
        accs.map((a) => a.sums[7] ?? 0n),
      ];
    }),
  };
}

/**
 * mergeRows' columns in the reference's shape. Counters and picodollars are
 * read as PostgreSQL reads them (int8 and NUMERIC text: leading zeros mean
 * nothing), so they compare as numbers.
 */
function actual(entity: EntityRow[][], daily: DailyRow[][]) {
  const m = mergeRows(entity, daily);
  return {
    entity: [...m.entity].map(([k, c]) => [
      k,
      c.keys[0],
      c.keys[1] ?? c.spend.map(() => ""),
      c.spend.map((x) => BigInt(x)),
    ]),
    daily: [...m.daily].map(([k, c]) => [
      k,
      c.entityId.map((id, i) => [id, ...c.dims.map((col) => col[i] ?? "")]),
      c.entityId.map((_, i) => c.counters.map((col) => BigInt(col[i] ?? -1))),
      c.spend.map((x) => BigInt(x)),
    ]),
  };
}

// Few values per column, so keys repeat across batches and one entity and api
// key pair meets several dates, models and endpoints.
const pick = (values: string[]) => fc.constantFrom(...values);
const digits = fc.oneof(
  fc.bigInt({ min: 0n, max: 10n ** 15n }).map(String),
  // Past 2^53, and with leading zeros: both arrive in jobs.
  fc.bigInt({ min: 2n ** 53n, max: 10n ** 30n }).map(String),
  fc.bigInt({ min: 0n, max: 999n }).map((n) => `000${n}`),
  // Just below and above 15 digits, where a sum moves from numbers to bigints.
  fc.bigInt({ min: 10n ** 14n, max: 10n ** 16n }).map(String),
);
// Numbers near 2^53 too: two of them sum past what a number holds exactly.
const count: fc.Arbitrary<Count> = fc.oneof(
  fc.nat({ max: 1_000_000 }),
  fc.maxSafeNat(),
  fc.constant(Number.MAX_SAFE_INTEGER),
  digits,
);
// A second id only for a team member (its team), as producers write them.
const entityRow: fc.Arbitrary<EntityRow> = fc
  .tuple(
    fc.constantFrom(...ENTITY_KINDS),
    pick(["a", "ab", "b", "\uffff", "😀", "é"]),
    pick(["t1", "t2"]),
    digits,
  )
  .map(([kind, id, team, spend]) => [kind, id, kind === "team_member" ? team : "", spend]);
const dailyRow: fc.Arbitrary<DailyRow> = fc.tuple(
  fc.constantFrom(...DAILY_KINDS),
  pick(["u", "ua", "v", "\uffff", "😀", "é"]),
  pick(["2026-11-25", "2026-11-26"]),
  pick(["", "k1", "k"]),
  pick(["m", "m2"]),
  pick(["m", "g"]),
  pick(["", "openai"]),
  pick(["", "tool"]),
  pick(["/chat", "/embed"]),
  count,
  count,
  count,
  count,
  count,
  count,
  count,
  digits,
);

describe("mergeRows", () => {
  it("sums repeated keys exactly and sorts every table's rows by their whole key, as the obvious merge does", () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(entityRow, { maxLength: 12 }), { maxLength: 4 }),
        fc.array(fc.array(dailyRow, { maxLength: 30 }), { maxLength: 4 }),
        (entity, daily) => {
          assert.deepEqual(actual(entity, daily), reference(entity, daily));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("sorts by api key within an entity when every row holds one date, by the date first otherwise", () => {
    // mergeRows takes a shorter path when the rows share one date: both paths
    // against the reference, with one date, and with the second date at most once.
    fc.assert(
      fc.property(
        fc.array(fc.array(dailyRow, { maxLength: 40 }), { maxLength: 4 }),
        fc.boolean(),
        (daily, oneDate) => {
          let second = !oneDate;
          const rows = daily.map((batch) =>
            batch.map((r): DailyRow => {
              const out: DailyRow = [...r];
              out[2] = second ? "2026-11-24" : "2026-11-25";
              second = false;
              return out;
            }),
          );
          assert.deepEqual(actual([], rows), reference([], rows));
        },
      ),
      { numRuns: 300 },
    );
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { mergeRows } from "../src/flush/merge.js";
import { Aggregator } from "../src/produce/aggregator.js";
import { validateSpendEvent, type SpendEvent } from "../src/produce/spend-event.js";
import type { DailyRow, EntityRow } from "../src/queue/spend-batch.js";
import { Ledger, type Totals } from "./support/ledger.js";

const NOW = Date.parse("2026-11-26T12:00:00Z");

/** Turns merged columns back into the Ledger's shape. */
function totalsOf(entity: EntityRow[][], daily: DailyRow[][]): Totals {
  const m = mergeRows(entity, daily);
  const out: Totals = new Map();
  for (const [kind, cols] of m.entity) {
    cols.spend.forEach((s, i) => {
      const id2 = kind === "team_member" ? (cols.keys[1]?.[i] ?? "") : "";
      out.set(["entity", kind, cols.keys[0]?.[i] ?? "", id2].join("|"), [
        BigInt(s.replace(".", "")),
      ]);
    });
  }
  for (const [kind, cols] of m.daily) {
    cols.entityId.forEach((id, i) => {
      const key = ["daily", kind, id, ...cols.dims.map((d) => d[i] ?? "")].join("|");
      out.set(key, [
        ...cols.counters.map((c) => BigInt(c[i] ?? "0")),
        BigInt((cols.spend[i] ?? "0").replace(".", "")),
      ]);
    });
  }
  return out;
}

const id = (prefix: string) => fc.integer({ min: 0, max: 4 }).map((n) => `${prefix}${n}`);
const eventArb: fc.Arbitrary<SpendEvent> = fc
  .record(
    {
      spend: fc.oneof(
        fc.double({ min: 0, max: 5, noNaN: true }),
        fc.bigInt({ min: 0n, max: 5_000_000_000_000n }).map((p) => {
          const s = p.toString().padStart(13, "0");
          return `${s.slice(0, -12)}.${s.slice(-12)}`;
        }),
      ),
      apiKey: id("k"),
      userId: id("u"),
      teamId: id("t"),
      organizationId: id("o"),
      endUserId: id("e"),
      tags: fc.array(id("tag"), { maxLength: 3 }),
      model: fc.constantFrom("m1", "m2"),
      provider: fc.constantFrom("", "openai"),
      promptTokens: fc.integer({ min: 0, max: 100_000 }),
      completionTokens: fc.integer({ min: 0, max: 100_000 }),
      cacheReadInputTokens: fc.integer({ min: 0, max: 1_000 }),
      success: fc.boolean(),
      startTime: fc.integer({ min: NOW - 3 * 86_400_000, max: NOW }),
    },
    { requiredKeys: ["spend"] },
  )
  .filter((e) =>
    Boolean(
      e.apiKey ||
      e.userId ||
      e.teamId ||
      e.organizationId ||
      e.endUserId ||
      (e.tags && e.tags.length > 0),
    ),
  );

describe("aggregation", () => {
  it("any sequence of valid events, sealed in any grouping, totals the same as summing them one by one", () => {
    fc.assert(
      fc.property(
        fc.array(eventArb, { maxLength: 120 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        (events, cuts) => {
          const ledger = new Ledger();
          const entity: EntityRow[][] = [];
          const daily: DailyRow[][] = [];
          const cutAt = new Set(cuts.map((c) => (events.length === 0 ? 0 : c % events.length)));
          let agg = new Aggregator();
          events.forEach((e, i) => {
            if (cutAt.has(i)) {
              const d = agg.drain();
              entity.push(d.entity);
              daily.push(d.daily);
              agg = new Aggregator();
            }
            agg.add(validateSpendEvent(e, undefined, NOW));
            ledger.record(e);
          });
          const d = agg.drain();
          entity.push(d.entity);
          daily.push(d.daily);
          assert.deepEqual(totalsOf(entity, daily), ledger.totals);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("keeps sums exact past 2^53 picodollars", () => {
    const agg = new Aggregator();
    const e = validateSpendEvent({ spend: "999.999999999999", userId: "big" }, undefined, NOW);
    for (let i = 0; i < 20_000; i++) agg.add(e);
    const row = agg.drain().entity.find((r) => r[0] === "user");
    assert.equal(row?.[3], (999_999_999_999_999n * 20_000n).toString());
  });

  it("grows with distinct rows, not with requests", () => {
    const agg = new Aggregator();
    const e = validateSpendEvent(
      { spend: 0.01, apiKey: "k", userId: "u", teamId: "t", tags: ["a", "b"] },
      undefined,
      NOW,
    );
    for (let i = 0; i < 50_000; i++) agg.add(e);
    assert.equal(agg.cellCount, 1);
    assert.equal(agg.entityRowCount, 6); // key, user, team, member, 2 tags
    assert.equal(agg.dailyRowCount, 4); // user, team, 2 tags
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { mergeRows } from "../../src/persist/merge.js";
import { Aggregator, TupleTarget } from "../../src/produce/aggregator.js";
import { validateSpendEvent, type SpendEvent } from "../../src/produce/spend-event.js";
import type { DailyRow, EntityRow } from "../../src/contract/spend-batch.js";
import { Ledger, type Totals } from "../support/ledger.js";

const NOW = Date.parse("2026-11-26T12:00:00Z");

/** Turns merged columns back into the Ledger's shape. */
function totalsOf(entity: EntityRow[][], daily: DailyRow[][]): Totals {
  const m = mergeRows(entity, daily);
  const out: Totals = new Map();
  for (const [kind, cols] of m.entity) {
    cols.spend.forEach((s, i) => {
      const id2 = kind === "team_member" ? (cols.keys[1]?.[i] ?? "") : "";
      // Spend columns hold picodollars.
      out.set(["entity", kind, cols.keys[0]?.[i] ?? "", id2].join("|"), [BigInt(s)]);
    });
  }
  for (const [kind, cols] of m.daily) {
    cols.entityId.forEach((id, i) => {
      const key = ["daily", kind, id, ...cols.dims.map((d) => d[i] ?? "")].join("|");
      out.set(key, [
        ...cols.counters.map((c) => BigInt(c[i] ?? "0")),
        BigInt(cols.spend[i] ?? "0"),
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

/**
 * Events as a gateway sends them: a key belongs to one user, team and org
 * (some of them absent), so a key's facts share those and differ in end user
 * and tags, and most of a context's facts share entity rows. Random
 * independent ids seldom put two facts on the same rows.
 */
const gatewayEventArb: fc.Arbitrary<SpendEvent> = fc
  .tuple(eventArb, fc.integer({ min: 0, max: 3 }), fc.option(id("e"), { nil: undefined }))
  .map(([e, k, endUserId]) => {
    const { userId: _u, teamId: _t, organizationId: _o, endUserId: _e, ...rest } = e;
    // Key 3 has no user, key 2 no team, key 1 no org.
    return {
      ...rest,
      apiKey: `k${k}`,
      ...(k === 3 ? {} : { userId: `u${k}` }),
      ...(k === 2 ? {} : { teamId: `t${k}` }),
      ...(k === 1 ? {} : { organizationId: `o${k}` }),
      ...(endUserId === undefined ? {} : { endUserId }),
    };
  });

describe("aggregation", () => {
  it("any sequence of valid events, sealed in any grouping, totals the same as summing them one by one", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.array(eventArb, { maxLength: 120 }),
          fc.array(gatewayEventArb, { maxLength: 120 }),
        ),
        fc.array(fc.nat(), { maxLength: 6 }),
        // The producer's path (addIfKnown, then add on a miss) or add() alone.
        fc.boolean(),
        (events, cuts, requestPath) => {
          const ledger = new Ledger();
          const entity: EntityRow[][] = [];
          const daily: DailyRow[][] = [];
          const cutAt = new Set(cuts.map((c) => (events.length === 0 ? 0 : c % events.length)));
          // One aggregator throughout: rows outlive a drain, as in the producer.
          const agg = new Aggregator();
          events.forEach((e, i) => {
            if (cutAt.has(i)) {
              const d = agg.drain();
              entity.push(d.entity);
              daily.push(d.daily);
            }
            const n = validateSpendEvent(e, undefined, NOW);
            if (!requestPath || !agg.addIfKnown(n)) agg.add(n);
            // The validator was told NOW: the ledger must date start-less events the same.
            ledger.record(e, NOW);
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

  it("addIfKnown adds only when every row exists, and changes nothing otherwise", () => {
    const agg = new Aggregator();
    const base = { spend: 1, apiKey: "k", userId: "u", teamId: "t", tags: ["a"], model: "m" };
    const at = (e: SpendEvent) => validateSpendEvent(e, undefined, NOW);
    assert.equal(agg.addIfKnown(at(base)), false);
    assert.equal(agg.heldRowCount, 0);
    agg.add(at(base));
    assert.equal(agg.addIfKnown(at(base)), true);
    // Each of these differs in one dimension, so one row (or context) is missing.
    for (const other of [
      { ...base, apiKey: "k2" },
      { ...base, userId: "u2" },
      { ...base, teamId: "t2" },
      { ...base, organizationId: "o" },
      { ...base, endUserId: "e" },
      { ...base, tags: ["a", "b"] },
      { ...base, model: "m2" },
      { ...base, startTime: NOW - 86_400_000 },
    ]) {
      assert.equal(agg.addIfKnown(at(other)), false, JSON.stringify(other));
    }
    assert.equal(agg.entitySpendFor("user", "u"), 2_000_000_000_000n);
    assert.equal(agg.entitySpendFor("team_member", "u", "t"), 2_000_000_000_000n);
    assert.equal(agg.entitySpendFor("tag", "a"), 2_000_000_000_000n);
    assert.equal(agg.entitySpendFor("key", "k"), 2_000_000_000_000n);
  });

  it("keeps rows across a drain, emits only rows touched since, and drops rows idle for a whole interval", () => {
    const agg = new Aggregator();
    const at = (e: SpendEvent) => validateSpendEvent(e, undefined, NOW);
    const a = at({ spend: 1, apiKey: "k", userId: "u", teamId: "t", model: "m" });
    const b = at({ spend: 2, apiKey: "k", userId: "u", teamId: "t", model: "m", endUserId: "e" });
    agg.add(a);
    agg.add(b);
    const held = agg.heldRowCount;
    assert.equal(agg.drain().entity.length, 5); // key, user, team, member, end user
    // Interval 2: the key's request without the end user again. Every row exists: nothing allocated.
    assert.equal(agg.addIfKnown(a), true);
    assert.equal(agg.heldRowCount, held);
    // One daily fact: it fans out to the user's and the team's daily rows.
    assert.deepEqual(agg.pendingRowCounts(), { entity: 4, daily: 1 });
    const d2 = agg.drain();
    assert.deepEqual(d2.daily.map((r) => r[0]).sort(), ["team", "user"]);
    assert.deepEqual(d2.entity.map((r) => r[0]).sort(), ["key", "team", "team_member", "user"]);
    assert.deepEqual(
      d2.entity.map((r) => r[3]),
      d2.entity.map(() => "1000000000000"),
      "each row carries only this interval's spend",
    );
    // The end user was idle for interval 2: dropped with its daily fact.
    assert.equal(agg.heldRowCount, held - 2);
    assert.equal(agg.addIfKnown(b), false);
    // Nothing touched: an empty drain, then everything dropped.
    assert.deepEqual(agg.drain(), { entity: [], daily: [] });
    assert.deepEqual(agg.drain(), { entity: [], daily: [] });
    assert.equal(agg.heldRowCount, 0);
    assert.equal(agg.entitySpendFor("key", "k"), 0n);
    agg.add(b);
    assert.equal(agg.entitySpendFor("team_member", "u", "t"), 2_000_000_000_000n);
  });

  it("a drain that drops some of a context's end users keeps finding the others, whichever was first", () => {
    const agg = new Aggregator();
    const ev = (endUserId: string) =>
      validateSpendEvent({ spend: 1, apiKey: "k", model: "m", endUserId }, undefined, NOW);
    // e1 is the context's first end user (held inline), e2 and e3 come after it.
    for (const e of ["e1", "e2", "e3"]) agg.add(ev(e));
    agg.drain();
    const held = agg.heldRowCount;
    // Interval 2 touches e2 and e3 only: e1, the inline one, is dropped at the drain after it.
    assert.equal(agg.addIfKnown(ev("e2")), true);
    assert.equal(agg.addIfKnown(ev("e3")), true);
    agg.drain();
    assert.equal(agg.heldRowCount, held - 2, "e1's entity and daily rows dropped");
    assert.equal(agg.addIfKnown(ev("e1")), false);
    // e2 and e3 are still found without allocating anything.
    assert.equal(agg.addIfKnown(ev("e3")), true);
    assert.equal(agg.heldRowCount, held - 2);
    // Interval 3 touched e3 only: e2 goes, e3 stays.
    let d = agg.drain();
    assert.deepEqual(
      d.daily.map((r) => r[1]),
      ["e3"],
    );
    assert.equal(agg.heldRowCount, held - 4);
    assert.equal(agg.addIfKnown(ev("e2")), false);
    assert.equal(agg.addIfKnown(ev("e3")), true);
    // A new end user after the sweep, then both charged again: two rows of one request each.
    agg.add(ev("e4"));
    d = agg.drain();
    assert.deepEqual(d.daily.map((r) => [r[1], r[13]]).sort(), [
      ["e3", 1],
      ["e4", 1],
    ]);
  });

  it("a drain steps through one context's rows in slices, emitting the touched and dropping the rest", () => {
    const agg = new Aggregator();
    const ev = (endUserId: string) =>
      validateSpendEvent({ spend: 1, apiKey: "k", model: "m", endUserId }, undefined, NOW);
    // One key, day and model: one context holding 1,000 daily rows.
    const users = Array.from({ length: 1_000 }, (_, i) => `e${i}`);
    for (const u of users) agg.add(ev(u));
    agg.drain();
    // Interval 2 touches every third end user, then drains in steps.
    const touched = users.filter((_, i) => i % 3 === 0);
    for (const u of touched) assert.equal(agg.addIfKnown(ev(u)), true);
    const out = { entity: [] as EntityRow[], daily: [] as DailyRow[] };
    // No step handles much more than 256 rows, even inside one context
    // (1,000 rows in it, 334 of them emitted).
    let mostPerStep = 0;
    let before = 0;
    for (const _ of agg.drainSteps(new TupleTarget(out))) {
      mostPerStep = Math.max(mostPerStep, out.daily.length - before);
      before = out.daily.length;
    }
    assert.ok(mostPerStep <= 100, `${mostPerStep} daily rows emitted in one step`);
    assert.deepEqual(
      out.daily.map((r) => r[1]),
      touched,
    );
    // The untouched ones are gone (their daily and entity rows); the touched ones are held.
    assert.equal(agg.addIfKnown(ev("e1")), false);
    assert.equal(agg.addIfKnown(ev("e999")), true);
    assert.equal(agg.addIfKnown(ev("e3")), true);
    const d = agg.drain();
    assert.deepEqual(d.daily.map((r) => r[1]).sort(), ["e3", "e999"]);
  });

  it("a fact adding to more entity rows than it holds inline adds to each of them, interval after interval", () => {
    const agg = new Aggregator();
    const tags = ["t1", "t2", "t3", "t4", "t5", "t6"];
    const e = validateSpendEvent(
      {
        spend: 1,
        apiKey: "k",
        userId: "u",
        teamId: "t",
        organizationId: "o",
        endUserId: "e",
        tags,
      },
      undefined,
      NOW,
    );
    const small = validateSpendEvent(
      { spend: 2, apiKey: "k", userId: "u", tags: ["t1"] },
      undefined,
      NOW,
    );
    for (let interval = 1; interval <= 3; interval++) {
      for (const x of [e, small, e]) if (!agg.addIfKnown(x)) agg.add(x);
      const d = agg.drain();
      // user, team, membership, org, end user and six tags: 11, past the 8 held inline.
      const spend = new Map(d.entity.map((r) => [`${r[0]}:${r[1]}:${r[2]}`, r[3]]));
      assert.equal(spend.get("user:u:"), "4000000000000", `interval ${interval}`);
      assert.equal(spend.get("team_member:u:t"), "2000000000000");
      assert.equal(spend.get("tag:t1:"), "4000000000000");
      for (const t of tags.slice(1)) assert.equal(spend.get(`tag:${t}:`), "2000000000000");
      assert.equal(spend.get("end_user:e:"), "2000000000000");
      assert.equal(d.entity.length, 12);
      const daily = new Map(d.daily.map((r) => [`${r[0]}:${r[1]}`, r[13]]));
      assert.equal(daily.get("user:u"), 3);
      assert.equal(daily.get("tag:t6"), 2);
      assert.equal(d.daily.length, 10);
    }
  });

  it("grows with distinct rows, not with requests", () => {
    const agg = new Aggregator();
    const e = validateSpendEvent(
      { spend: 0.01, apiKey: "k", userId: "u", teamId: "t", tags: ["a", "b"] },
      undefined,
      NOW,
    );
    for (let i = 0; i < 50_000; i++) agg.add(e);
    // Entity: key, user, team, member, 2 tags. Daily: one fact (user, team, 2 tags).
    assert.deepEqual(agg.pendingRowCounts(), { entity: 6, daily: 1 });
    assert.equal(agg.heldRowCount, 7);
    const d = agg.drain();
    assert.deepEqual(d.daily.map((r) => [r[0], r[1], r[13]]).sort(), [
      ["tag", "a", 50_000],
      ["tag", "b", 50_000],
      ["team", "t", 50_000],
      ["user", "u", 50_000],
    ]);
  });
});

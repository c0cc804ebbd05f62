import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  MAX_FACT_TAGS,
  RowTextError,
  RowTextWriter,
  decodeDailyFacts,
} from "../../src/contract/row-text.js";
import type { Count, DailyRow } from "../../src/contract/spend-batch.js";
import { trafficGenerator, type TrafficShape } from "../../src/demo/traffic.js";
import { Aggregator } from "../../src/produce/aggregator.js";
import { contextIdentity, partitionOf } from "../../src/produce/partition.js";
import { JobWriter } from "../../src/produce/sealer.js";
import { validateSpendEvent } from "../../src/produce/spend-event.js";

/**
 * Daily facts (job format 4, contract/daily-facts.ts): a producer sends one
 * fact per distinct user, team, org, end user and tags of a context, and the
 * worker fans it out to daily rows. Whatever a seal writes must fan out to
 * exactly the rows the aggregator holds, through JSON, whatever the ids hold.
 */

const NOW = Date.parse("2026-12-04T12:00:00Z");
// Many ids, as the benchmark's realistic traffic (bench/plan.ts).
const SHAPE: TrafficShape = {
  keys: 300,
  users: 200,
  teams: 20,
  orgs: 5,
  endUsers: 200,
  tags: 8,
  failureRate: 0.1,
};

const wire = (text: string): string => (JSON.parse(JSON.stringify({ t: text })) as { t: string }).t;

/** A daily row's database identity. */
const rowKey = (r: DailyRow): string => [r[0], r[1], ...r.slice(2, 9)].join("\u0000");

/** Daily rows summed per database row, every counter and the spend as bigints. */
function totals(rows: readonly DailyRow[]): Map<string, bigint[]> {
  const m = new Map<string, bigint[]>();
  for (const r of rows) {
    const v = r.slice(9).map((x) => BigInt(x));
    const t = m.get(rowKey(r));
    if (t === undefined) m.set(rowKey(r), v);
    else v.forEach((x, i) => (t[i] = (t[i] ?? 0n) + x));
  }
  return m;
}

function refuses(text: string, reason: RegExp): void {
  assert.throws(
    () => decodeDailyFacts(text),
    (err: unknown) => err instanceof RowTextError && reason.test(err.message),
    reason.source,
  );
}

const CTX = ["2026-12-04", "key", "gpt-x", "gpt-x", "openai", "", "/v1/chat"] as const;

/** Fact text for `facts` in context CTX. */
function factText(
  facts: {
    tags?: string[];
    user?: string;
    team?: string;
    org?: string;
    endUser?: string;
    n?: [Count, Count, Count, Count, Count, Count, Count];
  }[],
): string {
  const w = new RowTextWriter();
  w.context(...CTX);
  for (const f of facts)
    w.fact(
      f.tags ?? [],
      f.user ?? "",
      f.team ?? "",
      f.org ?? "",
      f.endUser ?? "",
      ...(f.n ?? [10, 5, 0, 0, 1, 1, 7]),
    );
  return w.take();
}

describe("daily facts (job format 4)", () => {
  it("a producer's seal fans out to exactly the rows the aggregator holds, each in its context's partition", () => {
    const gen = trafficGenerator(7, SHAPE, () => NOW);
    const events = Array.from({ length: 3_000 }, () => validateSpendEvent(gen(), undefined, NOW));
    const sealed = new Aggregator();
    const drained = new Aggregator();
    // Two intervals, so the second seal holds facts kept from the first and new ones.
    for (const half of [events.slice(0, 1_500), events.slice(1_500)]) {
      for (const e of half) {
        if (!sealed.addIfKnown(e)) sealed.add(e);
        if (!drained.addIfKnown(e)) drained.add(e);
      }
      const w = new JobWriter(4, 200);
      const steps = sealed.drainSteps(w);
      while (steps.next().done !== true);
      const all = w.finish();
      for (const j of all) if (j.kind === "entity") assert.equal(j.flushRows, j.rowCount);
      const jobs = all.filter((j) => j.kind === "daily");
      const expected = drained.drain().daily;

      const rows: DailyRow[] = [];
      let facts = 0;
      for (const j of jobs) {
        assert.equal(j.textFormat, 4);
        const d = decodeDailyFacts(wire(j.rowText));
        assert.equal(d.facts, j.rowCount);
        assert.ok(j.rowCount <= 200);
        for (const r of d.rows) assert.equal(partitionOf(contextIdentity(r), 4), j.partition);
        facts += d.facts;
        rows.push(...d.rows);
      }
      assert.deepEqual(totals(rows), totals(expected));
      // What back-pressure weighs: the daily rows the facts fan out to, a context's merged.
      assert.equal(
        jobs.reduce((n, j) => n + j.flushRows, 0),
        expected.length,
      );
      assert.equal(new Set(expected.map(rowKey)).size, expected.length, "drain(): one row each");
      assert.ok(facts < expected.length / 2, `${facts} facts for ${expected.length} rows`);
    }
  });

  it("carries facts through JSON exactly, whatever their ids hold, counts past 2^53 as digits", () => {
    const id = fc.oneof(
      fc.string({ unit: "binary", maxLength: 12 }),
      fc.constantFrom("12:", "3,", ":", ",", "0", '"', "\u0000", "\ud800", "😀"),
    );
    const count = fc.oneof(fc.nat(), fc.bigInt({ min: 2n ** 53n, max: 10n ** 30n }).map(String));
    const fact = fc
      .record({
        tags: fc.uniqueArray(
          id.filter((s) => s !== ""),
          { maxLength: 3 },
        ),
        user: id,
        team: id,
        org: id,
        endUser: id,
        n: fc.tuple(count, count, count, count, fc.bigInt({ min: 0n, max: 10n ** 20n })),
        ok: fc.bigInt({ min: 0n, max: 10n ** 20n }),
        spend: fc.bigInt({ min: 0n, max: 10n ** 37n }),
      })
      .filter((f) => f.tags.length > 0 || f.user + f.team + f.org + f.endUser !== "");
    fc.assert(
      fc.property(fc.array(fact, { minLength: 1, maxLength: 8 }), (facts) => {
        const w = new RowTextWriter();
        w.context(...CTX);
        // The reference fan-out: each fact adds its counters to a row per id it names.
        const expected: DailyRow[] = [];
        for (const f of facts) {
          const [p, c, cr, cc, requests] = f.n;
          const ok = f.ok > requests ? requests : f.ok;
          const enc = (x: bigint): Count => (x < 2n ** 53n ? Number(x) : x.toString());
          w.fact(
            f.tags,
            f.user,
            f.team,
            f.org,
            f.endUser,
            p,
            c,
            cr,
            cc,
            enc(requests),
            enc(ok),
            f.spend.toString(),
          );
          const names: [DailyRow[0], string][] = [
            ["user", f.user],
            ["team", f.team],
            ["org", f.org],
            ["end_user", f.endUser],
            ...f.tags.map((t): [DailyRow[0], string] => ["tag", t]),
          ];
          for (const [kind, v] of names)
            if (v !== "")
              expected.push([
                kind,
                v,
                ...CTX,
                p,
                c,
                cr,
                cc,
                enc(requests),
                enc(ok),
                enc(requests - ok),
                f.spend.toString(),
              ]);
        }
        const d = decodeDailyFacts(wire(w.take()));
        assert.equal(d.facts, facts.length);
        assert.deepEqual(totals(d.rows), totals(expected));
        assert.equal(new Set(d.rows.map(rowKey)).size, d.rows.length, "one row per database row");
        // Counts of up to 15 digits are read as numbers, longer ones kept as digits (as format 3).
        for (const r of d.rows)
          for (const x of r.slice(9, 16)) if (typeof x === "string") assert.ok(x.length > 15, x);
      }),
      { numRuns: 300 },
    );
  });

  it("adds the facts of one context that share an id into one row", () => {
    const d = decodeDailyFacts(
      factText([
        { user: "u", team: "t", tags: ["a"] },
        { user: "u", team: "t", endUser: "e", tags: ["a", "b"] },
        { user: "u", endUser: "e", n: [1, 1, 1, 1, 3, 1, 9_007_199_254_740_991] },
      ]),
    );
    assert.equal(d.facts, 3);
    const byId = new Map(d.rows.map((r) => [`${r[0]}:${r[1]}`, r.slice(9)]));
    assert.deepEqual([...byId.keys()], ["user:u", "team:t", "tag:a", "end_user:e", "tag:b"]);
    assert.deepEqual(byId.get("user:u"), [21, 11, 1, 1, 5, 3, 2, "9007199254741005"]);
    assert.deepEqual(byId.get("tag:b"), [10, 5, 0, 0, 1, 1, 0, "7"]);
  });

  it("refuses what no producer writes, saying where and why", () => {
    const ok = factText([{ user: "u" }]);
    assert.equal(decodeDailyFacts(ok).facts, 1);
    refuses(ok.slice(ok.indexOf("0,1:u")), /a daily fact before any context/);
    refuses(factText([{}]), /a fact that names no user, team, org, end user or tag/);
    refuses(factText([{ tags: ["a", "b", "a"] }]), /a tag named twice in one fact/);
    refuses(factText([{ tags: [""] }]), /tag: empty/);
    refuses(
      factText([{ user: "u", n: [0, 0, 0, 0, 1, 2, 0] }]),
      /more successful requests than requests/,
    );
    refuses(
      factText([{ user: "u", n: [0, 0, 0, 0, "9007199254740993", "9007199254740994", 0] }]),
      /more successful requests than requests/,
    );
    const many = Array.from({ length: MAX_FACT_TAGS + 1 }, (_, i) => `t${i}`);
    refuses(factText([{ tags: many }]), /tag count: more than 1000/);
    assert.equal(decodeDailyFacts(factText([{ tags: many.slice(1) }])).rows.length, MAX_FACT_TAGS);
    refuses(ok.slice(0, -3), /text ends early/);
  });
});

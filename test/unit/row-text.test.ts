import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  RowTextError,
  decodeDailyRows,
  decodeEntityRows,
  encodeDailyRows,
  encodeEntityRows,
  fromUnits,
  RowTextWriter,
} from "../../src/contract/row-text.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  type DailyRow,
  type EntityRow,
} from "../../src/contract/spend-batch.js";
import { Aggregator, type DrainedRows } from "../../src/produce/aggregator.js";
import { dailyIdentity, entityIdentity, partitionOf } from "../../src/produce/partition.js";
import { MAX_JOB_TEXT_BYTES, sealBatches } from "../../src/produce/sealer.js";
import { validateSpendEvent, type SpendEvent } from "../../src/produce/spend-event.js";
import type { SealedBatch } from "../../src/contract/spend-sink.js";
import { isTwoByte } from "../support/strings.js";

/**
 * Format 3's row text (row-text.ts): every row survives the trip through
 * BullMQ's JSON exactly, whatever its ids hold, and a reader refuses
 * anything else with where and why.
 */

// Any UTF-16 code units: separators, digits, quotes, NUL, astral pairs and lone surrogates.
const anyId = fc.string({ unit: "binary", maxLength: 40 });
const nonEmpty = fc.string({ unit: "binary", minLength: 1, maxLength: 40 });
const tricky = fc.constantFrom("12:", "3,", ":", ",", "0", '"', "\\", "\u0000", "\ud800", "😀");
const ident = fc.oneof(anyId, tricky);
const digits = fc.bigInt({ min: 0n, max: 10n ** 38n - 1n }).map(String);
// A count is a number below 2^53, or digits once it outgrows a number.
const count = fc.oneof(fc.nat(), fc.bigInt({ min: 10n ** 15n, max: 10n ** 38n - 1n }).map(String));

const entityRow = fc.tuple(
  fc.constantFrom(...ENTITY_KINDS),
  fc.oneof(nonEmpty, tricky),
  ident,
  digits,
) as fc.Arbitrary<EntityRow>;

const context = fc.tuple(
  fc.constantFrom("2026-12-03", "1999-01-31"),
  ident,
  ident,
  ident,
  ident,
  ident,
  ident,
);
const dailyRows = fc
  .array(
    fc.tuple(
      context,
      fc.array(
        fc.tuple(
          fc.constantFrom(...DAILY_KINDS),
          fc.oneof(nonEmpty, tricky),
          fc.array(count, { minLength: 7, maxLength: 7 }),
          digits,
        ),
        { minLength: 1, maxLength: 4 },
      ),
    ),
    { maxLength: 4 },
  )
  .map((groups) =>
    groups.flatMap(([c, rows]) =>
      rows.map(([k, id, n, spend]) => [k, id, ...c, ...n, spend] as unknown as DailyRow),
    ),
  );

/** Through JSON as BullMQ stores it, then read back. */
const wire = (text: string): string =>
  (JSON.parse(JSON.stringify({ rowText: text })) as { rowText: string }).rowText;

function refuses(read: () => unknown, reason: RegExp): void {
  assert.throws(read, (err: unknown) => err instanceof RowTextError && reason.test(err.message));
}

/** `events` aggregated and sealed into jobs of at most `maxRowsPerJob` rows, with what was drained. */
function sealEvents(
  events: readonly SpendEvent[],
  partitions: number,
  maxRowsPerJob: number,
): { drained: DrainedRows; batches: SealedBatch[] } {
  const agg = new Aggregator();
  const now = Date.now();
  for (const e of events) agg.add(validateSpendEvent(e, undefined, now));
  const drained = agg.drain();
  let n = 0;
  const header = { producerId: "p", sealedAt: now, partitions };
  return { drained, batches: sealBatches(drained, header, maxRowsPerJob, () => `p.${++n}`) };
}

describe("row text (job format 3)", () => {
  it("carries entity rows through JSON exactly, whatever their ids hold", () => {
    fc.assert(
      fc.property(fc.array(entityRow, { maxLength: 20 }), (rows) => {
        assert.deepEqual(decodeEntityRows(wire(encodeEntityRows(rows))), rows);
      }),
    );
  });

  it("writes every number a slab holds exactly, up to 2^53 (spend in picodollars)", () => {
    // The writer splits numbers past 2^31 into int32 halves around 10^9: its
    // edges (k * 10^9 - 1, k * 10^9, 2^53 - 1) are where a rounded quotient errs.
    const edges = [
      2 ** 31 - 1,
      2 ** 31,
      1e9,
      1e9 - 1,
      2 ** 53 - 1,
      2 ** 53 - 1e9,
      2 ** 53 - 1e9 - 1,
    ];
    const nearBillions = fc
      .tuple(fc.integer({ min: 1, max: 9_007_199 }), fc.integer({ min: -2, max: 2 }))
      .map(([k, d]) => Math.min(2 ** 53 - 1, k * 1e9 + d));
    const any = fc.oneof(fc.constantFrom(...edges), nearBillions, fc.maxSafeNat());
    fc.assert(
      fc.property(fc.array(any, { minLength: 1, maxLength: 20 }), (values) => {
        const w = new RowTextWriter();
        for (const v of values) w.entityRow(0, "k", "", v);
        const spends = decodeEntityRows(wire(w.take())).map((r) => r[3]);
        assert.deepEqual(spends, values.map(String));
      }),
      { numRuns: 2_000 },
    );
  });

  it("carries daily rows through JSON exactly, counts past 2^53 as digits", () => {
    fc.assert(
      fc.property(dailyRows, (rows) => {
        assert.deepEqual(decodeDailyRows(wire(encodeDailyRows(rows))), rows);
      }),
    );
  });

  it("reads code units back the same way on a big-endian host as on this one", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 20_000 }), (s) => {
        const all = new Uint16Array(s.length);
        for (let i = 0; i < s.length; i++) all[i] = s.charCodeAt(i);
        assert.equal(fromUnits(all, s.length), s);
        assert.equal(
          fromUnits(all, Math.floor(s.length / 2)),
          s.slice(0, Math.floor(s.length / 2)),
        );
      }),
      { numRuns: 50 },
    );
  });

  it("writes a context once for the rows that share it", () => {
    const ctx = ["2026-12-03", "key", "gpt-x", "gpt-x", "openai", "", "/v1/chat"] as const;
    const row = (id: string): DailyRow => ["user", id, ...ctx, 1, 2, 0, 0, 1, 1, 0, "250"];
    const one = encodeDailyRows([row("a")]);
    const three = encodeDailyRows([row("a"), row("b"), row("c")]);
    assert.equal((three.match(/gpt-x/g) ?? []).length, 2, three);
    assert.ok(three.length < 3 * one.length);
  });

  it("refuses what no producer writes, saying where and why", () => {
    const ok = encodeEntityRows([["tag", "t", "", "5"]]);
    assert.equal(ok, "6,1:t0:5,");
    refuses(() => decodeEntityRows("6,1:t0:5"), /spend: text ends early/);
    refuses(() => decodeEntityRows("6,9:t0:5,"), /id: text ends early/);
    refuses(() => decodeEntityRows("7,1:t0:5,"), /kind: no kind 7/);
    refuses(() => decodeEntityRows("123,1:t0:5,"), /kind: no kind 123/);
    refuses(() => decodeEntityRows("6,0:0:5,"), /id: empty/);
    refuses(() => decodeEntityRows("6,1025:"), /id: longer than 1024/);
    refuses(() => decodeEntityRows(`6,${"9".repeat(40)}:`), /id: more than 38 digits/);
    refuses(() => decodeEntityRows(`6,1:t0:${"9".repeat(39)},`), /spend: more than 38 digits/);
    refuses(() => decodeEntityRows("6,1:t0:-5,"), /spend: expected digits/);
    refuses(() => decodeEntityRows("6,1:t0:5:x"), /spend: expected a number/);
    refuses(() => decodeEntityRows("6:t"), /kind: expected a number/);
    refuses(() => decodeEntityRows("x"), /kind: expected digits/);
    const row = "0,1:u1,2,0,0,1,1,0,250,";
    const ctx = "10:2026-12-033:key5:gpt-x5:gpt-x6:openai0:8:/v1/chat";
    assert.equal(decodeDailyRows(ctx + row).length, 1);
    refuses(() => decodeDailyRows(row), /a daily row before any context/);
    refuses(() => decodeDailyRows(ctx.replace("2026-12-03", "2026-1-033") + row), /date/);
    refuses(() => decodeDailyRows(ctx + row.replace("0,1:u", "5,1:u")), /kind: no kind 5/);
    refuses(() => decodeDailyRows(ctx + row.slice(0, -4)), /text ends early/);
  });

  it("sealBatches puts each row in the partition its identity hashes to, as before row text", () => {
    const events = Array.from({ length: 300 }, (_, i) => ({
      spend: "0.001",
      apiKey: `k${i % 7}`,
      userId: `u${i % 11}`,
      teamId: `t${i % 3}`,
      endUserId: `e${i}`,
      model: `m${i % 4}`,
      tags: [`tag${i % 5}`],
    }));
    const { drained, batches } = sealEvents(events, 4, 50);
    const entity = batches.flatMap((b) =>
      b.kind === "entity"
        ? decodeEntityRows(b.rowText).map((r) => [b.partition, b.rowCount, r] as const)
        : [],
    );
    const daily = batches.flatMap((b) =>
      b.kind === "daily"
        ? decodeDailyRows(b.rowText).map((r) => [b.partition, b.rowCount, r] as const)
        : [],
    );
    assert.equal(entity.length, drained.entity.length);
    assert.equal(daily.length, drained.daily.length);
    for (const [p, , r] of entity) assert.equal(p, partitionOf(entityIdentity(r), 4));
    for (const [p, , r] of daily) assert.equal(p, partitionOf(dailyIdentity(r), 4));
    assert.ok(batches.every((b) => b.rowCount <= 50 && b.rowCount > 0));
    assert.deepEqual(
      new Set(batches.map((b) => b.batchId)).size,
      batches.length,
      "every batch has its own id",
    );
  });

  it("closes a job at MAX_JOB_TEXT_BYTES of text, before its row limit, one or two bytes a unit", () => {
    // Ids as long as real ones (64-hex key hashes, emails): 2,000 rows would pass V8's 128 KB
    // large-object threshold. A two-byte id (Cyrillic) doubles the bytes a unit from where it appears.
    const long = (p: string, i: number): string =>
      `${p}-${String(i).padStart(4, "0")}-${"f".repeat(60)}`;
    const events = Array.from({ length: 3_000 }, (_, i) => ({
      spend: "0.001",
      apiKey: long("key", i % 40),
      userId: i % 500 === 7 ? `пользователь-${i}` : long("user", i),
      endUserId: long("end", i),
      model: `m${i % 3}`,
    }));
    const { drained, batches } = sealEvents(events, 1, 2_000);
    const bytes = (t: string): number => t.length * (isTwoByte(t) ? 2 : 1);
    // A job closes at the first row that takes it past the cap: at most one row's text over it;
    // one that turns two-byte part way doubles at once, so it can reach twice the cap.
    for (const b of batches)
      assert.ok(bytes(b.rowText) < (isTwoByte(b.rowText) ? 2 : 1) * MAX_JOB_TEXT_BYTES + 2_000);
    assert.ok(
      batches.some((b) => isTwoByte(b.rowText)) && batches.some((b) => !isTwoByte(b.rowText)),
    );
    assert.ok(
      batches.some((b) => bytes(b.rowText) >= MAX_JOB_TEXT_BYTES),
      "the cap closed jobs",
    );
    assert.ok(
      batches.every((b) => b.rowCount < 2_000),
      "before the row limit did",
    );
    const entity = batches.flatMap((b) => (b.kind === "entity" ? decodeEntityRows(b.rowText) : []));
    const daily = batches.flatMap((b) => (b.kind === "daily" ? decodeDailyRows(b.rowText) : []));
    assert.deepEqual(entity, drained.entity);
    assert.deepEqual(daily, drained.daily);
  });
});

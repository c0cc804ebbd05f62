import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { encodeDailyRowsAsFacts } from "../support/spend-rows.js";
import {
  DAILY_KINDS,
  dailyJobPayloadSchema,
  groupDailyRows,
  ungroupDailyRows,
  type DailyRow,
} from "../../src/contract/spend-batch.js";
import { jobPayload } from "../../src/queue/queue-sink.js";

/** Daily job formats: grouping by context loses nothing, in any order of rows. */
const contexts = [
  ["2026-11-26", "key-a", "gpt-4o", "gpt-4o", "openai", "", "/chat/completions"],
  ["2026-11-26", "key-a", "gpt-4o-mini", "gpt-4o-mini", "openai", "", "/chat/completions"],
  ["2026-11-27", "key-a", "gpt-4o", "gpt-4o", "openai", "", "/chat/completions"],
  ["2026-11-26", "", "claude", "claude", "anthropic", "search", "/messages"],
] as const;

const row = fc
  .tuple(
    fc.constantFrom(...DAILY_KINDS),
    fc.string({ minLength: 1, maxLength: 8 }),
    fc.integer({ min: 0, max: contexts.length - 1 }),
    fc.array(fc.nat(), { minLength: 7, maxLength: 7 }),
    fc.bigInt({ min: 0n, max: 10n ** 30n }),
  )
  .map(([kind, id, c, counts, spend]): DailyRow => {
    const ctx = contexts[c] ?? contexts[0];
    const [prompt, completion, cacheRead, cacheCreation, requests, successes] = counts as [
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    // As a producer counts them: failed is requests - successful.
    const ok = Math.min(successes, requests);
    return [
      kind,
      id,
      ...ctx,
      prompt,
      completion,
      cacheRead,
      cacheCreation,
      requests,
      ok,
      requests - ok,
      spend.toString(),
    ];
  });

/** Rows naming distinct database rows (a seal emits each once). */
const distinctRows = (min: number) =>
  fc.uniqueArray(row, {
    minLength: min,
    maxLength: 60,
    selector: (r) => [r[0], r[1], ...r.slice(2, 9)].join("\u0000"),
  });

describe("daily job formats", () => {
  it("format 2 round-trips every row, in order, through JSON and the worker's schema", () => {
    fc.assert(
      fc.property(fc.array(row, { maxLength: 60 }), (rows) => {
        const groups = groupDailyRows(rows);
        assert.deepEqual(ungroupDailyRows(groups), rows);
        const wire = JSON.parse(
          JSON.stringify({ v: 2, batchId: "b", producerId: "p", sealedAt: 1, groups }),
        ) as unknown;
        assert.deepEqual(dailyJobPayloadSchema.parse(wire).rows, rows);
      }),
    );
  });

  it("a sealed batch's fact text reaches the worker as the same rows in all four formats", () => {
    fc.assert(
      fc.property(distinctRows(1), (rows) => {
        const batch = {
          kind: "daily" as const,
          batchId: "p.1",
          producerId: "p",
          sealedAt: 1,
          partition: 0,
          partitions: 1,
          rowCount: rows.length,
          flushRows: rows.length,
          textFormat: 4 as const,
          rowText: encodeDailyRowsAsFacts(rows),
        };
        const bytes: number[] = [];
        for (const format of [1, 2, 3, 4] as const) {
          const json = JSON.stringify(jobPayload(batch, format));
          bytes.push(json.length);
          const read = dailyJobPayloadSchema.parse(JSON.parse(json));
          assert.deepEqual(read.rows, rows, `format ${format}`);
          assert.equal(read.batchId, "p.1");
        }
        // Format 3 is the smallest once rows share contexts.
        const [, v2, v3] = bytes;
        if (rows.length >= 20) assert.ok((v3 ?? 0) < (v2 ?? 0), bytes.join(" > "));
      }),
    );
  });

  it("consecutive rows of one context share one group", () => {
    const rows: DailyRow[] = [];
    for (const ctx of contexts)
      for (let i = 0; i < 3; i++)
        rows.push(["user", `u${i}`, ...ctx, 1, 1, 0, 0, 1, 1, 0, "10"] as unknown as DailyRow);
    const groups = groupDailyRows(rows);
    assert.equal(groups.length, contexts.length);
    assert.deepEqual(
      groups.map((g) => g[1].length),
      contexts.map(() => 3),
    );
  });
});

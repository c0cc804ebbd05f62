import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeDailyRows, encodeEntityRows, RowTextWriter } from "../../src/contract/row-text.js";
import type { EntityRow } from "../../src/contract/spend-rows.js";
import { BOARD_ROWS_SHOWN, boardJobData } from "../../src/serve/board-job-view.js";
import { userDailyRow } from "../support/spend-rows.js";

/** What Bull Board shows of a spend job (src/serve/board-job-view.ts). */

const header = { batchId: "p.1", producerId: "p", sealedAt: 1, partitions: 1 };

describe("the board's view of a job", () => {
  it("lists the first rows of a format-3 job decoded, and counts the rest", () => {
    const rows: EntityRow[] = Array.from({ length: 120 }, (_, i) => [
      i % 2 === 0 ? "team_member" : "key",
      `id-${i}`,
      i % 2 === 0 ? "team-1" : "",
      "1500000000000",
    ]);
    const shown = boardJobData({
      ...header,
      v: 3,
      kind: "entity",
      rowCount: 120,
      rowText: encodeEntityRows(rows),
    }) as { rows: unknown[]; rowsShown: string; rowText?: string };
    assert.equal(shown.rowText, undefined);
    assert.equal(shown.rowsShown, `${BOARD_ROWS_SHOWN} of 120`);
    assert.equal(shown.rows.length, BOARD_ROWS_SHOWN);
    assert.deepEqual(shown.rows.slice(0, 2), [
      { kind: "team_member", id: "id-0", id2: "team-1", spend_usd: "1.500000000000" },
      { kind: "key", id: "id-1", spend_usd: "1.500000000000" },
    ]);
  });

  it("shows daily rows with their context and counters", () => {
    const row = userDailyRow("u,1:2", "7");
    const shown = boardJobData({
      ...header,
      v: 3,
      kind: "daily",
      rowCount: 1,
      rowText: encodeDailyRows([row]),
    }) as { rows: Record<string, unknown>[] };
    assert.equal(shown.rows[0]?.entity_id, "u,1:2");
    assert.equal(shown.rows[0]?.endpoint, "/v1/chat/completions");
    assert.equal(shown.rows[0]?.prompt_tokens, 100);
    assert.equal(shown.rows[0]?.spend_usd, "0.000000000007");
  });

  it("shows a format 4 job's facts fanned out to the daily rows they add to", () => {
    const row = userDailyRow("u1", "7");
    const w = new RowTextWriter();
    w.context(row[2], row[3], row[4], row[5], row[6], row[7], row[8]);
    w.fact(["t"], "u1", "", "", "", 100, 5, 0, 0, 1, 1, 7);
    w.fact([], "u1", "", "", "", 100, 5, 0, 0, 1, 0, 7);
    const shown = boardJobData({
      ...header,
      v: 4,
      kind: "daily",
      rowCount: 2,
      rowText: w.take(),
    }) as {
      rowsShown: string;
      rowCount: number;
      rows: Record<string, unknown>[];
    };
    assert.equal(shown.rowsShown, "2 of 2");
    assert.equal(shown.rowCount, 2);
    assert.deepEqual(
      shown.rows.map((r) => [r.kind, r.entity_id, r.api_requests, r.failed_requests, r.spend_usd]),
      [
        ["user", "u1", 2, 1, "0.000000000014"],
        ["tag", "t", 1, 0, "0.000000000007"],
      ],
    );
  });

  it("shows a text that does not decode as it is, with the reason, and never throws", () => {
    for (const [v, kind, rowText] of [
      [3, "entity", "0,3:abc"],
      [3, "entity", "9,1:a0:1,"],
      [3, "entity", "x"],
      [3, "entity", "0,99:short"],
      [4, "daily", "0,0:0:0:0:1,1,0,0,1,1,5,"],
      [4, "daily", "10:2026-12-040:1:m0:0:0:0:0,0:0:0:0:1,1,0,0,1,1,5,"],
    ] as const) {
      const data = { ...header, v, kind, rowCount: 1, rowText };
      const shown = boardJobData(data) as { rowText: string; rowTextError: string };
      assert.equal(shown.rowText, rowText);
      assert.match(shown.rowTextError, /\S/, rowText);
    }
  });

  it("leaves formats 1 and 2, other jobs and non-objects as they are", () => {
    const v1 = { ...header, rows: [["user", "u", "", "1"]] };
    assert.equal(boardJobData(v1), v1);
    const v3WrongKind = { ...header, v: 3, kind: "other", rowText: "" };
    assert.equal(boardJobData(v3WrongKind), v3WrongKind);
    assert.equal(boardJobData(null), null);
    assert.equal(boardJobData("text"), "text");
    assert.deepEqual(boardJobData({ partition: "0" }), { partition: "0" });
  });
});

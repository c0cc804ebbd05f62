import { decodeDailyRows, decodeEntityRows } from "../../src/contract/row-text.js";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_LIMITS } from "../../src/config/config.js";
import { sealStandalone } from "../../src/produce/standalone.js";

const NOW = Date.parse("2026-11-26T12:00:00Z");

/**
 * An idempotent batch resumed by another gateway must be cut into the same
 * jobs under the same ids, whatever version that gateway runs: the order
 * below is what the aggregator before issue 22's slabs sealed (it emitted
 * rows kind by kind), so a rolling deploy never splits one batch two ways.
 */
describe("standalone seal order", () => {
  it("is the order earlier versions sealed: entity rows by kind, daily rows by key and context, then kind", () => {
    const events = [
      {
        spend: "0.5",
        apiKey: "k2",
        userId: "u1",
        teamId: "t1",
        organizationId: "o1",
        endUserId: "e1",
        tags: ["b", "a"],
        model: "m1",
      },
      { spend: "0.25", tags: ["a"], endUserId: "e2", model: "m1" },
      { spend: "1", apiKey: "k1", userId: "u2", teamId: "t1", model: "m2" },
      { spend: "2", apiKey: "k2", userId: "u3", teamId: "t2", organizationId: "o1", model: "m1" },
      { spend: "3", apiKey: "k2", userId: "u1", teamId: "t2", endUserId: "e3", model: "m2" },
      { spend: "4", apiKey: "k1", teamId: "t3", model: "m2" },
      { spend: "5", apiKey: "k1", userId: "u2", teamId: "t1", model: "m2", tags: ["c"] },
    ];
    const r = sealStandalone(events, {
      limits: DEFAULT_LIMITS,
      now: NOW,
      partitions: 1,
      maxRowsPerJob: 1000,
      producerId: "p",
      sealedAt: NOW,
    });
    assert.ok(r.ok);
    const order = r.batches.map((b) =>
      b.kind === "entity"
        ? decodeEntityRows(b.rowText).map((x) => [x[0], x[1], x[2]])
        : decodeDailyRows(b.rowText).map((x) => [x[0], x[1], x[3], x[4]]),
    );
    assert.deepEqual(order, [
      [
        ["key", "k2", ""],
        ["key", "k1", ""],
        ["user", "u1", ""],
        ["user", "u2", ""],
        ["user", "u3", ""],
        ["team", "t1", ""],
        ["team", "t2", ""],
        ["team", "t3", ""],
        ["org", "o1", ""],
        ["end_user", "e1", ""],
        ["end_user", "e2", ""],
        ["end_user", "e3", ""],
        ["tag", "b", ""],
        ["tag", "a", ""],
        ["tag", "c", ""],
        ["team_member", "u1", "t1"],
        ["team_member", "u1", "t2"],
        ["team_member", "u2", "t1"],
        ["team_member", "u3", "t2"],
      ],
      [
        ["end_user", "e2", "", "m1"],
        ["tag", "a", "", "m1"],
        ["user", "u1", "k2", "m1"],
        ["user", "u3", "k2", "m1"],
        ["team", "t1", "k2", "m1"],
        ["team", "t2", "k2", "m1"],
        ["org", "o1", "k2", "m1"],
        ["end_user", "e1", "k2", "m1"],
        ["tag", "b", "k2", "m1"],
        ["tag", "a", "k2", "m1"],
        ["user", "u1", "k2", "m2"],
        ["team", "t2", "k2", "m2"],
        ["end_user", "e3", "k2", "m2"],
        ["user", "u2", "k1", "m2"],
        ["team", "t1", "k1", "m2"],
        ["team", "t3", "k1", "m2"],
        ["tag", "c", "k1", "m2"],
      ],
    ]);
  });
});

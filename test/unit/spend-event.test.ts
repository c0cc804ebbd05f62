import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  checkEndUserAndTags,
  SpendEventError,
  validateSpendEvent,
  type RejectReason,
} from "../../src/produce/spend-event.js";

const NOW = Date.parse("2026-11-26T12:00:00Z");
const ok = { spend: 0.25, apiKey: "k1" };

function reason(input: unknown): RejectReason | "accepted" {
  try {
    validateSpendEvent(input, undefined, NOW);
    return "accepted";
  } catch (err) {
    assert.ok(err instanceof SpendEventError, `unexpected ${String(err)}`);
    return err.reason;
  }
}

describe("spend event validation", () => {
  it("normalises a valid event: money to picodollars, absent dimensions to ''", () => {
    const e = validateSpendEvent(
      { ...ok, spend: "0.000000000001", tags: ["a", "a", "b"] },
      undefined,
      NOW,
    );
    assert.equal(e.spendPico, 1);
    assert.equal(e.userId, "");
    assert.deepEqual(e.tags, ["a", "b"]);
    assert.equal(e.success, true);
    assert.equal(e.startMs, NOW);
    assert.equal(
      validateSpendEvent({ ...ok, spend: 0.1 }, undefined, NOW).spendPico,
      100_000_000_000,
    );
  });

  const cases: [string, unknown, RejectReason][] = [
    ["not an object", [1], "not_object"],
    ["null", null, "not_object"],
    ["unknown field", { ...ok, costUsd: 1 }, "unknown_field"],
    ["NaN spend", { ...ok, spend: NaN }, "invalid_spend"],
    ["infinite spend", { ...ok, spend: Infinity }, "invalid_spend"],
    ["negative spend", { ...ok, spend: -0.01 }, "invalid_spend"],
    ["absurd spend", { ...ok, spend: 1e9 }, "invalid_spend"],
    ["spend as a non-decimal string", { ...ok, spend: "1e3" }, "invalid_spend"],
    ["spend with 13 decimals", { ...ok, spend: "0.0000000000001" }, "invalid_spend"],
    ["missing spend", { apiKey: "k" }, "invalid_spend"],
    ["fractional tokens", { ...ok, promptTokens: 1.5 }, "invalid_tokens"],
    ["negative tokens", { ...ok, completionTokens: -1 }, "invalid_tokens"],
    ["absurd tokens", { ...ok, promptTokens: 1e12 }, "invalid_tokens"],
    ["tokens as string", { ...ok, promptTokens: "10" }, "invalid_tokens"],
    ["id of the wrong type", { ...ok, userId: 42 }, "invalid_id"],
    ["oversized id", { ...ok, userId: "u".repeat(257) }, "invalid_id"],
    ["control characters", { ...ok, teamId: "team\u0000x" }, "invalid_id"],
    ["separator characters", { ...ok, model: "gpt\u001f4" }, "invalid_id"],
    ["__proto__ as id", { ...ok, userId: "__proto__" }, "invalid_id"],
    ["constructor as id", { ...ok, endUserId: "constructor" }, "invalid_id"],
    ["tags not an array", { ...ok, tags: "a,b" }, "invalid_tags"],
    ["empty tag", { ...ok, tags: [""] }, "invalid_tags"],
    [
      "too many tags",
      { ...ok, tags: Array.from({ length: 33 }, (_, i) => `t${i}`) },
      "invalid_tags",
    ],
    ["success not boolean", { ...ok, success: "yes" }, "invalid_success"],
    ["unparseable start time", { ...ok, startTime: "yesterday" }, "invalid_start_time"],
    [
      "start time far in the past",
      { ...ok, startTime: NOW - 30 * 86_400_000 },
      "start_time_out_of_range",
    ],
    [
      "start time far in the future",
      { ...ok, startTime: "2027-01-01T00:00:00Z" },
      "start_time_out_of_range",
    ],
    ["no entity at all", { spend: 1, model: "gpt-4o" }, "no_entity"],
  ];
  for (const [name, input, expected] of cases) {
    it(`rejects ${name} as ${expected}`, () => assert.equal(reason(input), expected));
  }

  it("checks an end user and tags alone exactly as the whole event's validation does", () => {
    // What a gateway checks of a request before the model runs must refuse what the
    // producer would refuse later, with the same reason and field, and nothing more.
    const outcome = (f: () => unknown): string => {
      try {
        f();
        return "accepted";
      } catch (err) {
        assert.ok(err instanceof SpendEventError, `unexpected ${String(err)}`);
        return `${err.reason} ${err.field}`;
      }
    };
    const endUsers: unknown[] = [undefined, null, "eu-1", "", 42, "e".repeat(257), "a\u0007b"];
    endUsers.push("__proto__", "prototype", "e".repeat(256));
    const tagLists: unknown[] = [undefined, null, [], ["a", "b"], ["a", "a"], "a,b", [""], [7]];
    tagLists.push(
      ["ok", "bad\u0000"],
      ["constructor"],
      Array.from({ length: 33 }, (_, i) => `t${i}`),
    );
    let refused = 0;
    for (const endUserId of endUsers)
      for (const tags of tagLists) {
        const whole = outcome(() => validateSpendEvent({ ...ok, endUserId, tags }, undefined, NOW));
        const alone = outcome(() => checkEndUserAndTags(endUserId, tags));
        assert.equal(
          alone,
          whole,
          `endUserId ${JSON.stringify(endUserId)}, tags ${JSON.stringify(tags)}`,
        );
        if (whole !== "accepted") refused++;
      }
    assert.ok(refused > 0 && refused < endUsers.length * tagLists.length);
  });

  it("names the offending field in the message", () => {
    assert.throws(
      () => validateSpendEvent({ ...ok, cacheReadInputTokens: -3 }, undefined, NOW),
      /cacheReadInputTokens: must be an integer/,
    );
  });

  it("accepts a tag alone as the entity, and a late event within the window", () => {
    assert.equal(reason({ spend: 0, tags: ["batch-job"] }), "accepted");
    assert.equal(reason({ ...ok, startTime: new Date(NOW - 6 * 86_400_000) }), "accepted");
  });

  it("reads null ids and null tags as absent, with or without other fields set", () => {
    const nulls = {
      ...ok,
      userId: null,
      teamId: null,
      organizationId: null,
      endUserId: null,
      tags: null,
      mcpToolName: null,
    };
    assert.deepEqual(
      validateSpendEvent(nulls, undefined, NOW),
      validateSpendEvent(ok, undefined, NOW),
    );
    assert.equal(reason({ spend: 1, apiKey: null, userId: null, tags: null }), "no_entity");
    assert.equal(reason({ ...nulls, extra: null }), "unknown_field");
  });
});

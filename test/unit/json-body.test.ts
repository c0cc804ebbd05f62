import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MAX_JSON_DEPTH, nestedDeeperThan } from "../../src/gateway/json-body.js";

/** `levels` arrays and objects, alternating, nested in one another. */
function nested(levels: number): unknown {
  let v: unknown = "leaf";
  for (let i = 0; i < levels; i++) v = i % 2 === 0 ? [v] : { k: v };
  return v;
}

describe("nestedDeeperThan (the gateway's JSON depth limit)", () => {
  it("counts arrays and objects, not scalars, and stops exactly at the limit", () => {
    assert.equal(nestedDeeperThan("text", 0), false);
    assert.equal(nestedDeeperThan(null, 0), false);
    assert.equal(nestedDeeperThan({}, 0), true);
    assert.equal(nestedDeeperThan({}, 1), false);
    for (const max of [1, 2, 7, MAX_JSON_DEPTH]) {
      assert.equal(nestedDeeperThan(nested(max), max), false, `${max} levels`);
      assert.equal(nestedDeeperThan(nested(max + 1), max), true, `${max + 1} levels`);
    }
  });

  it("finds the deep branch among shallow siblings, and walks 100,000 levels without recursing", () => {
    const body = {
      model: "m",
      messages: [{ role: "user" }],
      a: [1, 2, { b: nested(MAX_JSON_DEPTH) }],
    };
    assert.equal(nestedDeeperThan(body, MAX_JSON_DEPTH), true);
    assert.equal(nestedDeeperThan({ a: nested(MAX_JSON_DEPTH - 1) }, MAX_JSON_DEPTH), false);
    assert.equal(nestedDeeperThan(nested(100_000), MAX_JSON_DEPTH), true);
    assert.equal(nestedDeeperThan(nested(100_000), 200_000), false);
  });
});

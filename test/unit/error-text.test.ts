import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { errorText, RepeatedErrors } from "../../src/observe/error-text.js";

describe("errorText", () => {
  it("drops Prisma's invocation preamble and makes the message one line", () => {
    const err = new Error(
      "\nInvalid `prisma.$queryRawUnsafe()` invocation:\n\n\nRaw query failed. Code: `57014`. Message: `canceling statement due to statement timeout`",
    );
    assert.equal(
      errorText(err),
      "Raw query failed. Code: `57014`. Message: `canceling statement due to statement timeout`",
    );
    assert.equal(errorText("a\r\n  b\tc"), "a b c");
    assert.equal(errorText(new Error("x".repeat(5_000))).length, 1_001);
  });
});

describe("RepeatedErrors", () => {
  it("logs an error once per period while it repeats, then with how often it recurred", () => {
    const r = new RepeatedErrors(1_000);
    assert.deepEqual(r.note("ECONNREFUSED", 0), { err: "ECONNREFUSED" });
    for (let t = 100; t < 1_000; t += 100) assert.equal(r.note("ECONNREFUSED", t), undefined);
    assert.deepEqual(r.note("ECONNREFUSED", 1_000), { err: "ECONNREFUSED", repeated: 9 });
    // Another error is logged at once, and the count starts over.
    assert.deepEqual(r.note("ETIMEDOUT", 1_001), { err: "ETIMEDOUT" });
    assert.deepEqual(r.note("ECONNREFUSED", 1_002), { err: "ECONNREFUSED" });
  });
});

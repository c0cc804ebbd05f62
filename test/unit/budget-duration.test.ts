import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { addDuration, parseDuration, periodAt } from "../../src/budget/duration.js";

const at = (iso: string): Date => new Date(iso);

describe("budget durations (LiteLLM's budget_duration)", () => {
  it("reads s, m, h, d, w and mo, and refuses anything else", () => {
    assert.deepEqual(parseDuration("30s"), { n: 30, unit: "s" });
    assert.deepEqual(parseDuration("1mo"), { n: 1, unit: "mo" });
    assert.deepEqual(parseDuration("2w"), { n: 2, unit: "w" });
    for (const bad of ["", "0d", "1y", "1.5h", "-1d", "1 d", "10000000d", "d"])
      assert.throws(() => parseDuration(bad), /budget_duration must be/, bad);
  });

  it("adds months on the same day, clamped to the month's end, without drifting", () => {
    const jan31 = at("2026-01-31T10:00:00Z");
    assert.equal(
      addDuration(jan31, { n: 1, unit: "mo" }).toISOString(),
      "2026-02-28T10:00:00.000Z",
    );
    assert.equal(
      addDuration(jan31, { n: 2, unit: "mo" }).toISOString(),
      "2026-03-31T10:00:00.000Z",
    );
    const p = periodAt(jan31, { n: 1, unit: "mo" }, at("2026-04-05T00:00:00Z"));
    assert.equal(p.start.toISOString(), "2026-03-31T10:00:00.000Z");
    assert.equal(p.end.toISOString(), "2026-04-30T10:00:00.000Z");
  });

  it("finds the period an instant is in, with boundaries every gateway agrees on", () => {
    const start = at("2026-12-01T00:00:00Z");
    const d = parseDuration("1h");
    assert.deepEqual(periodAt(start, d, at("2026-12-01T00:59:59.999Z")), {
      start,
      end: at("2026-12-01T01:00:00Z"),
    });
    // A boundary belongs to the period it starts.
    assert.equal(
      periodAt(start, d, at("2026-12-01T01:00:00Z")).start.toISOString(),
      "2026-12-01T01:00:00.000Z",
    );
    // Many periods later, in one step.
    assert.equal(
      periodAt(start, d, at("2027-01-01T05:30:00Z")).start.toISOString(),
      "2027-01-01T05:00:00.000Z",
    );
  });
});

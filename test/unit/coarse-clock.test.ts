import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CoarseClock } from "../../src/produce/coarse-clock.js";
import { ManualClock } from "../support/manual-clock.js";

describe("coarse clock", () => {
  it("follows the real clock within its period, on its timer and within a synchronous run", async () => {
    const time = new ManualClock();
    const clock = new CoarseClock(time, 10, 1_000);
    try {
      const start = clock.read();
      assert.equal(start, time.now());
      // Between two ticks it stays where it was: that is what makes it cheap.
      time.skip(7);
      assert.equal(clock.read(), start);
      // The timer moves it while the event loop runs.
      await time.advance(60 - 7);
      assert.equal(clock.read(), start + 60, "timer refresh");
      // A synchronous run that never yields (no timer fires): refreshed every
      // `refreshEvery` reads, so it cannot fall behind for long.
      time.skip(30);
      let seen = 0;
      for (let i = 0; i < 1_000; i++) seen = clock.read();
      assert.equal(seen, time.now());
    } finally {
      clock.stop();
    }
    assert.equal(time.pending, 0, "stop() leaves no timer behind");
  });
});

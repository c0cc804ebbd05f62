import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CoarseClock } from "../../src/produce/coarse-clock.js";

describe("coarse clock", () => {
  it("follows the real clock within its period, on its timer and within a synchronous run", async () => {
    const clock = new CoarseClock(10, 1_000);
    try {
      const start = clock.read();
      assert.ok(Math.abs(start - Date.now()) <= 10);
      await new Promise((r) => setTimeout(r, 60));
      // The timer moved it while the event loop ran.
      assert.ok(clock.read() >= start + 40, "timer refresh");
      // A synchronous run that never yields: refreshed every `refreshEvery` reads.
      const spin = Date.now() + 30;
      while (Date.now() < spin);
      let seen = 0;
      for (let i = 0; i < 1_000; i++) seen = clock.read();
      assert.ok(Date.now() - seen <= 5, `behind by ${Date.now() - seen} ms`);
    } finally {
      clock.stop();
    }
  });
});

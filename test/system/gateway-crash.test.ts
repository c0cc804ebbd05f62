import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { measureCrashWindow } from "../support/crash-window.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * A gateway killed without warning loses what it has not sealed and sent:
 * with the default seal interval (1 s), at most about a second of traffic.
 * The benchmark reports the window for several intervals; this holds the
 * default to its bound (plus the time one send takes, with margin).
 */
describe("gateway SIGKILL", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("crash");
  before(async () => {
    t = await createTestDatabase("gateway_crash");
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
  });

  it("loses at most about one second of answered traffic with the default configuration", async () => {
    const w = await measureCrashWindow({ db: t, prefix, redisUrl: TEST_REDIS_URL, runMs: 3_500 });
    assert.ok(w.served > 50, `only ${w.served} requests answered`);
    assert.ok(w.committedPico > 0n, "spend sealed before the kill reached PostgreSQL");
    assert.ok(
      w.committedPico <= w.servedPico + 10n ** 9n,
      "never more than was answered (in flight aside)",
    );
    assert.ok(
      w.lostSeconds <= 1.5,
      `lost ${w.lostSeconds} s of traffic (${w.lostRequests} of ${w.served} requests)`,
    );
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Ledger } from "../support/ledger.js";
import { runProducers } from "../support/processes.js";

describe("buffer off: each producer writes to PostgreSQL itself", () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase("direct");
  });
  after(async () => {
    await t.drop();
  });

  it("still applies every batch exactly once, retrying what fails", async () => {
    const ledger = new Ledger();
    await runProducers(4, { MODE: "direct", DATABASE_URL: t.url, EVENTS: "800" }, ledger, 500);
    assert.equal(ledger.events, 3_200);
    const diff = diffTotals(ledger.totals, await readTotals(t.url));
    assert.deepEqual(diff, [], diff.join("\n"));
  });
});

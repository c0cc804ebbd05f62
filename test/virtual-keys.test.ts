import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import type { Db } from "../src/persist/prisma.js";
import { createKey, hashKey, KeyCache } from "../src/gateway/virtual-keys.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "./support/db.js";

/** Virtual keys against a real PostgreSQL: creation under concurrency. */

describe("createKey", () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase("virtual_keys_create");
  });
  after(async () => {
    await t.drop();
  });
  beforeEach(async () => {
    await truncateAll(t.db);
  });

  for (const [label, input, rows] of [
    ["user, team and organization", { userId: "u", teamId: "t", organizationId: "o" }, 1],
    ["user and team", { userId: "u", teamId: "t" }, 0],
    ["user", { userId: "u" }, 0],
  ] as const) {
    it(`creates 20 keys concurrently for a new ${label}, the owners' rows once`, async () => {
      const results = await Promise.allSettled(
        Array.from({ length: 20 }, () => createKey(t.db, input)),
      );
      const failures = results.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
      assert.deepEqual(failures, [], "every creation succeeds");
      const keys = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      assert.equal(new Set(keys.map((k) => k.key)).size, 20, "20 distinct keys");
      assert.equal(await t.db.verificationToken.count({ where: input }), 20);
      assert.equal(await t.db.userTable.count(), 1);
      const team = "teamId" in input ? 1 : 0;
      assert.equal(await t.db.teamTable.count(), team);
      assert.equal(await t.db.teamMembership.count(), team);
      assert.equal(await t.db.organizationTable.count(), rows);
      if (rows === 1)
        assert.equal(
          (await t.db.teamTable.findUnique({ where: { teamId: "t" } }))?.organizationId,
          "o",
        );
    });
  }

  it("attaches a team to the organization it is named with, and keeps it when none is named", async () => {
    await createKey(t.db, { teamId: "t", organizationId: "o1" });
    await createKey(t.db, { teamId: "t" });
    assert.equal(
      (await t.db.teamTable.findUnique({ where: { teamId: "t" } }))?.organizationId,
      "o1",
    );
    await createKey(t.db, { teamId: "t", organizationId: "o2" });
    assert.equal(
      (await t.db.teamTable.findUnique({ where: { teamId: "t" } }))?.organizationId,
      "o2",
    );
    assert.equal(await t.db.organizationTable.count(), 2);
    assert.equal(await t.db.teamMembership.count(), 0, "no user, no membership");
  });
});

/** The cache over a real database, every query it makes counted. */
function counted(db: Db): { db: Db; queries: () => number } {
  let queries = 0;
  const wrapped = db.$extends({
    query: {
      $allOperations({ args, query }) {
        queries++;
        return query(args);
      },
    },
  });
  return { db: wrapped as unknown as Db, queries: () => queries };
}

describe("KeyCache", () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase("virtual_keys_cache");
  });
  after(async () => {
    await t.drop();
  });
  beforeEach(async () => {
    await truncateAll(t.db);
  });

  it("treats a key row with no user, team or organization as no key", async () => {
    // What the flush leaves behind for spend ingested under sha256(X) when nobody issued X.
    await t.db.verificationToken.create({ data: { token: hashKey("sk-nobody-issued-this") } });
    const issued = await createKey(t.db, { teamId: "t" });
    const { db, queries } = counted(t.db);
    const cache = new KeyCache(db, 60_000, 100);
    assert.equal(await cache.lookup("sk-nobody-issued-this"), null);
    assert.equal(await cache.lookup("sk-nobody-issued-this"), null);
    assert.equal(queries(), 1, "and remembers it as unknown");
    assert.equal((await cache.lookup(issued.key))?.teamId, "t");
  });
});

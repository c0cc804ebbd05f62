import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import type { Db } from "../../src/persist/prisma.js";
import {
  createKey,
  hashKey,
  KeyCache,
  KeyLookupThrottledError,
  newKey,
} from "../../src/gateway/virtual-keys.js";
import { Redis } from "ioredis";
import { announceKeyChanges, KeySync } from "../../src/gateway/key-sync.js";
import { silentLogger } from "../../src/observe/logger.js";
import { redisKeys } from "../../src/redis/keys.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { ManualClock } from "../support/manual-clock.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/** Virtual keys against a real PostgreSQL: creation under concurrency; the cache, and how it follows key changes. */

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

  it("keeps a valid key cached through a flood of unknown keys, and asks PostgreSQL at most at the bucket's rate", async () => {
    const valid = await createKey(t.db, { userId: "legit" });
    const { db, queries } = counted(t.db);
    let clock = 0;
    const rate = 200;
    const burst = 50;
    const cache = new KeyCache(db, 60_000, 100, {
      now: () => clock,
      lookupsPerSecond: rate,
      lookupBurst: burst,
    });
    assert.equal((await cache.lookup(valid.key))?.userId, "legit");
    assert.equal(queries(), 1);
    let unknown = 0;
    let throttled = 0;
    const rounds = 20;
    for (let round = 0; round < rounds; round++) {
      // Far more made-up keys than the cache holds, or the bucket allows.
      const results = await Promise.allSettled(
        Array.from({ length: 250 }, () => cache.lookup(newKey())),
      );
      for (const r of results) {
        if (r.status === "fulfilled") {
          assert.equal(r.value, null);
          unknown++;
        } else {
          assert.ok(r.reason instanceof KeyLookupThrottledError, String(r.reason));
          assert.ok(r.reason.retryAfterSeconds >= 1);
          throttled++;
        }
      }
      const before = queries();
      assert.equal((await cache.lookup(valid.key))?.userId, "legit");
      assert.equal(queries(), before, `round ${round}: the valid key answers without a query`);
      clock += 100;
    }
    // The bucket starts full (the valid key's first lookup took one), then
    // refills rate/10 tokens per 100 ms round.
    const allowed = burst - 1 + (rounds - 1) * (rate / 10);
    assert.equal(queries() - 1, unknown, "one query per unknown key answered");
    assert.equal(unknown, allowed, "PostgreSQL was asked exactly as often as the bucket allows");
    assert.equal(throttled, rounds * 250 - allowed);
    assert.equal(cache.size, 1);
    assert.ok(cache.unknownSize <= 100, "unknown keys bounded on their own");
  });

  it("shares one query and one token among concurrent lookups of the same key", async () => {
    const { db, queries } = counted(t.db);
    const cache = new KeyCache(db, 60_000, 100, {
      now: () => 0,
      lookupsPerSecond: 1,
      lookupBurst: 1,
    });
    const key = newKey();
    const answers = await Promise.all(Array.from({ length: 10 }, () => cache.lookup(key)));
    assert.deepEqual(
      answers,
      Array.from({ length: 10 }, () => null),
    );
    assert.equal(queries(), 1);
    await assert.rejects(cache.lookup(newKey()), KeyLookupThrottledError);
    assert.equal(await cache.lookup(key), null, "the unknown key is remembered");
    assert.equal(queries(), 1);
  });

  it("refreshes an expired valid key even when the bucket is empty, and notices its revocation", async () => {
    const valid = await createKey(t.db, { userId: "legit" });
    const { db, queries } = counted(t.db);
    let clock = 0;
    const cache = new KeyCache(db, 60_000, 100, {
      now: () => clock,
      lookupsPerSecond: 0.001,
      lookupBurst: 2,
    });
    assert.equal((await cache.lookup(valid.key))?.userId, "legit");
    assert.equal(await cache.lookup(newKey()), null);
    await assert.rejects(cache.lookup(newKey()), KeyLookupThrottledError);
    clock += 60_001;
    assert.equal((await cache.lookup(valid.key))?.userId, "legit");
    assert.equal(queries(), 3, "refreshed from PostgreSQL");
    await assert.rejects(cache.lookup(newKey()), KeyLookupThrottledError);
    await t.db.verificationToken.delete({ where: { token: valid.token } });
    clock += 60_001;
    assert.equal(await cache.lookup(valid.key), null);
    assert.equal(cache.size, 0);
    clock += 1_001;
    await assert.rejects(
      cache.lookup(valid.key),
      KeyLookupThrottledError,
      "now a key like any other",
    );
  });

  it("bounds the unknown keys it remembers without touching the valid ones", async () => {
    const valid = await createKey(t.db, { userId: "legit" });
    const { db, queries } = counted(t.db);
    const cache = new KeyCache(db, 60_000, 5, {
      maxUnknownEntries: 10,
      lookupsPerSecond: Infinity,
    });
    await cache.lookup(valid.key);
    for (let i = 0; i < 100; i++) assert.equal(await cache.lookup(newKey()), null);
    assert.equal(cache.unknownSize, 10);
    assert.equal(cache.size, 1);
    const before = queries();
    await cache.lookup(valid.key);
    assert.equal(queries(), before);
  });
});

describe("KeyCache following key changes (KeySync over a real Redis)", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("keysync");
  let redis: Redis;
  before(async () => {
    t = await createTestDatabase("virtual_keys_sync");
    redis = new Redis(TEST_REDIS_URL);
  });
  after(async () => {
    redis.disconnect();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("drops a key announced as changed at its next read of the stream, and re-reads keys older than the bound while the stream is not read", async () => {
    const clock = new ManualClock(Date.now());
    const names = redisKeys(prefix);
    let applied = 0;
    const sync = new KeySync(redis, names, 1_000, silentLogger, (n) => (applied += n), clock);
    const { db, queries } = counted(t.db);
    const cache = new KeyCache(db, 60_000, 100, { now: () => clock.now(), sync });
    await sync.start(cache);
    const k = await createKey(t.db, { userId: "synced" });
    assert.equal((await cache.lookup(k.key))?.blocked, false);
    assert.equal((await cache.lookup(k.key))?.blocked, false);
    assert.equal(queries(), 1);

    await t.db.verificationToken.update({ where: { token: k.token }, data: { blocked: true } });
    await announceKeyChanges(redis, names, [k.token]);
    assert.equal((await cache.lookup(k.key))?.blocked, false, "not read yet");
    await clock.advance(250);
    assert.equal(applied, 1);
    assert.equal((await cache.lookup(k.key))?.blocked, true, "read again after the announcement");
    assert.equal(queries(), 2);

    // The stream not read for longer than the bound (a pause, Redis away):
    // an entry older than the bound is read again.
    await t.db.verificationToken.update({ where: { token: k.token }, data: { blocked: false } });
    clock.skip(1_500);
    assert.equal((await cache.lookup(k.key))?.blocked, false, "re-read without an announcement");
    assert.equal(queries(), 3);
    assert.equal((await cache.lookup(k.key))?.blocked, false);
    assert.equal(queries(), 3, "a fresh entry is answered from memory");
    // Back in sync after a lapse: everything cached is read again once.
    await clock.advance(250);
    await cache.lookup(k.key);
    assert.equal(queries(), 4);
    await cache.lookup(k.key);
    assert.equal(queries(), 4);
    sync.stop();
  });

  it("does not cache what a lookup read while its key was announced as changed", async () => {
    const k = await createKey(t.db, { userId: "racing" });
    const { db, queries } = counted(t.db);
    const cache = new KeyCache(db, 60_000, 100);
    const running = cache.lookup(k.key);
    cache.invalidate([k.token]);
    assert.equal((await running)?.userId, "racing", "answered");
    // A lookup starting in the same millisecond as the announcement is not cached either.
    await new Promise((r) => setTimeout(r, 5));
    await cache.lookup(k.key);
    assert.equal(queries(), 2, "but not cached: it may predate the change");
    await cache.lookup(k.key);
    assert.equal(queries(), 2);
    cache.expireAll();
    await new Promise((r) => setTimeout(r, 5));
    await cache.lookup(k.key);
    assert.equal(queries(), 3, "expireAll: read again");
  });
});

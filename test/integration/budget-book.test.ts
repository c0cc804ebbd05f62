import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { BudgetBook } from "../../src/budget/budget-book.js";
import {
  ChargeList,
  chargedEntity,
  EntityGroup,
  type ChargedEntity,
} from "../../src/budget/budget-guard.js";
import { budgetMetrics } from "../../src/budget/budget-metrics.js";
import { setBudget } from "../../src/budget/budget-store.js";
import { usdStringToPico } from "../../src/contract/money.js";
import { silentLogger } from "../../src/observe/logger.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { createRedis, type RedisClient } from "../../src/redis/connection.js";
import { budgetKey } from "../../src/redis/keys.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * One gateway's BudgetBook against real Redis and PostgreSQL, through what
 * the request path calls: costs charged on the fast path (doubles in the
 * book's meter) reach Redis exactly, including costs too large for it; and a
 * check that found an entity able to pay does not keep trusting that once
 * its share is spent, whichever object the spend was charged through.
 */
describe("budget book: the request path's fast path", () => {
  let t: TestDatabase;
  let redis: RedisClient;
  const prefix = uniquePrefix("budget-book");

  before(async () => {
    t = await createTestDatabase("budget_book");
    redis = createRedis(testConfig(prefix, t.url).redis, "producer");
  });

  after(async () => {
    redis.disconnect();
    await cleanRedis(prefix);
    await t.drop();
  });

  const book = (leaseFraction: number, keyPrefix: string): BudgetBook =>
    new BudgetBook({
      db: t.db,
      redis,
      keyPrefix,
      logger: silentLogger,
      metrics: budgetMetrics(new SpendMetrics()),
      liveSpend: () => Promise.resolve(0n),
      refreshMs: 3_600_000,
      leaseFraction,
    });

  /** The entity's state in Redis, nanodollars: what remains to lease, and the spend reported. */
  const state = async (
    keyPrefix: string,
    kind: "key" | "user" | "team" | "org",
    id: string,
  ): Promise<[bigint, bigint]> => {
    const h = await redis.hgetall(budgetKey(keyPrefix, kind, id));
    return [BigInt(h.remaining ?? "-1"), BigInt(h.spent ?? "0")];
  };

  it("costs charged request by request reach Redis exactly, a cost past the meter's limit too", async () => {
    const p = `${prefix}:exact`;
    await setBudget(t.db, "team", "exact", { maxBudget: "2000000" }, 0n);
    const b = book(0.01, p);
    await b.start();
    const team = chargedEntity("team", "exact");
    // Nanodollar multiples (reports are whole nanodollars), odd ones, so a
    // lost or doubled charge shows. Slices of 20,000 USD: more than the
    // meter holds between settles (2^51 picodollars, 2,251.8 USD), and two
    // costs above that, which take the BigInt path.
    const costs: bigint[] = [];
    for (let i = 0; i < 5_000; i++)
      costs.push(usdStringToPico("0.123456789") * BigInt(1 + (i % 7)));
    costs.push(usdStringToPico("2500.000000001"), usdStringToPico("3000.5"));
    for (let i = 0; i < 20_000; i++) costs.push(usdStringToPico("0.000000001"));
    let total = 0n;
    for (const [n, cost] of costs.entries()) {
      assert.equal(b.check(ChargeList.of([team])), undefined, `request ${n} refused`);
      b.charge(ChargeList.of([team]), cost);
      total += cost;
      // Leases renew in the background, as on a gateway.
      if (n % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    await b.close();
    const [remaining, spent] = await state(p, "team", "exact");
    const totalNano = total / 1_000n;
    assert.equal(spent, totalNano, "reported spend");
    assert.equal(remaining, 2_000_000n * 10n ** 9n - totalNano, "what remains after the give-back");
  });

  it("an entity seen able to pay is looked at again once its share is spent through another object", async () => {
    const p = `${prefix}:narrow`;
    const C = usdStringToPico("0.01");
    await setBudget(t.db, "team", "narrow", { maxBudget: "0.1" }, 0n);
    // The whole budget in one slice: once it is spent, Redis has nothing more.
    const b = book(1, p);
    await b.start();
    const held: ChargedEntity = chargedEntity("team", "narrow");
    assert.equal(b.check(ChargeList.of([held])), undefined);
    assert.equal(b.check(ChargeList.of([held])), undefined, "passes again from its mark");
    // The same team as a plain object: another route's, or another key's.
    const other: ChargedEntity = { kind: "team", id: "narrow" };
    for (let i = 0; i < 10; i++) b.charge(ChargeList.of([other]), C);
    // Spent: one request goes ahead while the next lease is asked, then none.
    assert.equal(b.check(ChargeList.of([held])), undefined, "the one let through while leasing");
    assert.equal(b.check(ChargeList.of([other]))?.reason, "pending");
    assert.equal(b.check(ChargeList.of([held]))?.reason, "pending");
    await waitFor(
      "refused as exhausted",
      () => b.check(ChargeList.of([held]))?.reason === "exhausted",
      5_000,
    );
    assert.equal(b.check(ChargeList.of([other]))?.reason, "exhausted");
    await b.close();
    const [remaining, spent] = await state(p, "team", "narrow");
    assert.equal(remaining, 0n);
    assert.equal(spent, (10n * C) / 1_000n);
  });

  it("a key's group, marked as one, is looked at again once one of its entities is spent elsewhere", async () => {
    const p = `${prefix}:group`;
    const C = usdStringToPico("0.01");
    await setBudget(t.db, "team", "grouped", { maxBudget: "0.1" }, 0n);
    const b = book(1, p);
    await b.start();
    // As the gateway holds them: the key's own entities in one group, and a tag.
    const group = new EntityGroup([chargedEntity("key", "k-1"), chargedEntity("team", "grouped")]);
    const list = new ChargeList(group, [chargedEntity("tag", "env:prod")]);
    assert.equal(b.check(list), undefined);
    assert.equal(b.check(list), undefined, "passes again from the group's mark");
    // Charged through the group's kept slots, then through another object for the team.
    for (let i = 0; i < 4; i++) b.charge(list, C);
    const other = ChargeList.of([{ kind: "team", id: "grouped" }]);
    for (let i = 0; i < 6; i++) b.charge(other, C);
    assert.equal(b.check(list), undefined, "the one let through while leasing");
    assert.equal(b.check(list)?.reason, "pending");
    await waitFor("refused as exhausted", () => b.check(list)?.reason === "exhausted", 5_000);
    assert.deepEqual(b.check(list)?.kind, "team", "the group's team, named");
    await b.close();
    const [remaining, spent] = await state(p, "team", "grouped");
    assert.equal(remaining, 0n);
    assert.equal(spent, (10n * C) / 1_000n, "every charge, through the group or not");
  });

  /** A key's group as the gateway holds it: the key, its user, team and organization. */
  const keyGroup = (n: string, team: string, org: string): EntityGroup =>
    new EntityGroup([
      chargedEntity("key", `key-${n}`),
      chargedEntity("user", `user-${n}`),
      chargedEntity("team", team),
      chargedEntity("org", org),
    ]);

  it("a key's reservation: each budget of the group gets exactly what was served, the unspent rest goes back", async () => {
    const p = `${prefix}:reserve`;
    for (const [kind, id] of [
      ["key", "key-a"],
      ["user", "user-a"],
      ["key", "key-b"],
      ["user", "user-b"],
      ["team", "shared"],
      ["org", "org"],
    ] as const)
      await setBudget(t.db, kind, id, { maxBudget: "1000" }, 0n);
    // Slices of 100 USD: room for reservations of 64 requests' cost.
    const b = book(0.1, p);
    await b.start();
    const a = new ChargeList(keyGroup("a", "shared", "org"), [chargedEntity("tag", "t")]);
    const bee = new ChargeList(keyGroup("b", "shared", "org"), []);
    // The team charged the long way as well (spend ingested from another route).
    const team = ChargeList.of([{ kind: "team", id: "shared" }]);
    const totals = { a: 0n, b: 0n, team: 0n };
    for (let i = 0; i < 3_000; i++) {
      // Odd nanodollar multiples: a lost, doubled or stranded charge shows.
      const cost = usdStringToPico("0.000123457") * BigInt(1 + (i % 11));
      const [list, who] = i % 3 === 0 ? [a, "a"] : i % 3 === 1 ? [bee, "b"] : [team, "team"];
      assert.equal(b.check(list), undefined, `request ${i} refused`);
      b.charge(list, cost);
      totals[who as keyof typeof totals] += cost;
      if (i % 100 === 0) await new Promise((r) => setImmediate(r));
    }
    // Each group's reservation was taken (one place for four budgets) and is
    // partly spent: what it did not spend must not count as spend anywhere.
    await b.close();
    const nano = (x: bigint): bigint => x / 1_000n;
    const max = 1_000n * 10n ** 9n;
    const expect: [Parameters<typeof state>[1], string, bigint][] = [
      ["key", "key-a", totals.a],
      ["user", "user-a", totals.a],
      ["key", "key-b", totals.b],
      ["user", "user-b", totals.b],
      ["team", "shared", totals.a + totals.b + totals.team],
      ["org", "org", totals.a + totals.b],
    ];
    for (const [kind, id, total] of expect) {
      const [remaining, spent] = await state(p, kind, id);
      assert.equal(spent, nano(total), `${kind} ${id}: reported spend`);
      assert.equal(remaining, max - nano(total), `${kind} ${id}: what remains after the give-back`);
    }
  });

  it("a reservation taken in one period pays for nothing in the next: the new period gets every charge after the boundary", async () => {
    const p = `${prefix}:reserve-period`;
    for (const kind of ["key", "user", "team", "org"] as const)
      await setBudget(
        t.db,
        kind,
        kind === "key" ? "key-p" : kind === "user" ? "user-p" : `${kind}-p`,
        { maxBudget: "1000", budgetDuration: "2s" },
        0n,
      );
    const b = book(0.1, p);
    await b.start();
    const list = new ChargeList(keyGroup("p", "team-p", "org-p"), []);
    const cost = usdStringToPico("0.000123457");
    // Each budget's period starts when it was set, one after another: the
    // charges below must all fall after the last of the four boundaries (with
    // the first one's, a slow machine put some in the org's old period).
    const resets = await t.db.spendBudget.findMany({
      where: { entityId: { in: ["key-p", "user-p", "team-p", "org-p"] } },
    });
    assert.equal(resets.length, 4);
    const firstReset = Math.min(...resets.map((r) => (r.budgetResetAt as Date).getTime()));
    const lastReset = Math.max(...resets.map((r) => (r.budgetResetAt as Date).getTime()));
    // Before the boundary: a reservation of 64 requests, a few of them spent.
    for (let i = 0; i < 5; i++) b.charge(list, cost);
    assert.ok(Date.now() < firstReset - 100, "charged well within the first period");
    await new Promise((r) => setTimeout(r, lastReset - Date.now() + 50));
    let after = 0n;
    for (let i = 0; i < 200; i++) {
      b.charge(list, cost);
      after += cost;
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
    }
    await b.close();
    for (const [kind, id] of [
      ["key", "key-p"],
      ["user", "user-p"],
      ["team", "team-p"],
      ["org", "org-p"],
    ] as const) {
      // What the new period was charged (not what remains: its seed reads an
      // entity's live spend, which this book's stand-in does not have).
      const [, spent] = await state(p, kind, id);
      assert.equal(spent, after / 1_000n, `${kind}: the new period's spend`);
    }
  });

  it("a budget set after a key's reservation was taken gets every charge from then on", async () => {
    const p = `${prefix}:reserve-new`;
    for (const [kind, id] of [
      ["key", "key-n"],
      ["team", "team-n"],
    ] as const)
      await setBudget(t.db, kind, id, { maxBudget: "1000" }, 0n);
    // Set last, so the reload below reads only it and the user's budget: the
    // key's and team's are not looked at again (which would give the
    // reservation back on its own).
    await new Promise((r) => setTimeout(r, 5));
    await setBudget(t.db, "tag", "later", { maxBudget: "1000" }, 0n);
    const b = book(0.1, p);
    await b.start();
    const list = new ChargeList(keyGroup("n", "team-n", "org-n"), []);
    const cost = usdStringToPico("0.000123457");
    let before = 0n;
    for (let i = 0; i < 10; i++) {
      b.charge(list, cost);
      before += cost;
    }
    // The key's user gets a budget while the key holds a reservation.
    await setBudget(t.db, "user", "user-n", { maxBudget: "1000" }, 0n);
    await b.refresh();
    await waitFor(
      "the user's first lease",
      async () => (await state(p, "user", "user-n"))[0] >= 0n,
      5_000,
    );
    let after = 0n;
    for (let i = 0; i < 100; i++) {
      b.charge(list, cost);
      after += cost;
    }
    await b.close();
    assert.equal((await state(p, "user", "user-n"))[1], after / 1_000n, "the user's spend");
    assert.equal((await state(p, "key", "key-n"))[1], (before + after) / 1_000n, "the key's");
    assert.equal((await state(p, "team", "team-n"))[1], (before + after) / 1_000n, "the team's");
  });

  it("requests let through while a gateway's first lease is on its way stay charged when another gateway seeded", async () => {
    const p = `${prefix}:debt`;
    const C = usdStringToPico("0.01");
    const seeder = book(0.1, p);
    const late = book(0.1, p);
    await seeder.start();
    await late.start();
    // A budget made while both run: one gateway seeds the period and leases first.
    await setBudget(t.db, "team", "debt", { maxBudget: "1" }, 0n);
    await seeder.refresh();
    await waitFor("the seed", async () => (await state(p, "team", "debt"))[0] >= 0n, 5_000);
    // The other reads it and starts its first lease; requests served before the
    // lease lands are charged to what it is about to get (spend the seed never saw).
    await late.refresh();
    const team = ChargeList.of([chargedEntity("team", "debt")]);
    for (let i = 0; i < 3; i++) late.charge(team, C);
    await seeder.close();
    await late.close();
    const [remaining, spent] = await state(p, "team", "debt");
    assert.equal(spent, (3n * C) / 1_000n, "reported spend");
    assert.equal(
      remaining,
      10n ** 9n - (3n * C) / 1_000n,
      "what remains: the three requests stay spent",
    );
  });
});

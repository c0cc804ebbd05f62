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
  const state = async (keyPrefix: string, kind: "team", id: string): Promise<[bigint, bigint]> => {
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
});

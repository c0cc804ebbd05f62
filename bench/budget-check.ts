import { BudgetBook } from "../src/budget/budget-book.js";
import { ChargeList, chargedEntity, EntityGroup } from "../src/budget/budget-guard.js";
import { budgetMetrics } from "../src/budget/budget-metrics.js";
import { setBudget } from "../src/budget/budget-store.js";
import { usdStringToPico } from "../src/contract/money.js";
import { silentLogger } from "../src/observe/logger.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import { createRedis } from "../src/redis/connection.js";
import { testConfig } from "../test/support/redis.js";
import type { Resources } from "./resources.js";
import { median, progress, round } from "./util.js";

export interface BudgetCheckResult {
  /** Budgeted entities the gateway holds shares of (the realistic cardinality). */
  budgets: number;
  /** Median ns per request: the check before it and the charge after it, budgets on. */
  nsPerRequestOn: number;
  /** The same requests with no budgets defined (the check's fast path). */
  nsPerRequestOff: number;
  /** Added per request by budgets, ns (on − off). */
  addedNs: number;
}

/**
 * Goal of the budgets issue: the budget check adds at most 1 µs per request
 * and no round trip. A gateway's BudgetBook holds shares of `budgets`
 * budgets (keys, users, teams and tags, as a fleet would: every request
 * charged to five entities, three with a budget); the loop times the check
 * before each request and the charge after it, against the same loop with no
 * budget defined, in one process, alternating reps. Both are synchronous
 * functions: no round trip can hide in them (leases renew on timers).
 */
export async function measureBudgetCheck(
  res: Resources,
  opts: { budgets: number; requests: number; reps: number },
): Promise<BudgetCheckResult> {
  const t = await res.database("budget_check");
  const prefix = res.prefix("budget-check");
  const config = testConfig(prefix, t.url);
  const redis = createRedis(config.redis, "producer");
  const book = (db: typeof t.db): BudgetBook =>
    new BudgetBook({
      db,
      redis,
      keyPrefix: prefix,
      logger: silentLogger,
      metrics: budgetMetrics(new SpendMetrics()),
      liveSpend: () => Promise.resolve(0n),
      refreshMs: 250,
      leaseFraction: 0.01,
    });
  try {
    progress("budgets", `${opts.budgets} budgets, ${opts.requests} requests x ${opts.reps} reps`);
    const big = "1000";
    for (let i = 0; i < opts.budgets / 3; i++) {
      await setBudget(t.db, "key", `key-${i}`, { maxBudget: big }, 0n);
      await setBudget(t.db, "user", `user-${i}`, { maxBudget: big }, 0n);
      await setBudget(t.db, "team", `team-${i % 50}`, { maxBudget: big }, 0n);
    }
    const on = book(t.db);
    await on.start();
    const off = new BudgetBook({
      db: t.db,
      redis,
      keyPrefix: `${prefix}-off`,
      logger: silentLogger,
      metrics: budgetMetrics(new SpendMetrics()),
      liveSpend: () => Promise.resolve(0n),
      refreshMs: 3_600_000,
      leaseFraction: 0.01,
    });
    // The off book holds no budget: it never loads any (a prefix and table with none).
    // As the gateway holds them: a group per key, made once, and the tag's entity kept.
    const requests: ChargeList[] = [];
    const n = Math.floor(opts.budgets / 3);
    const groups = new Map<number, EntityGroup>();
    const tags = new Map<number, ReturnType<typeof chargedEntity>>();
    for (let i = 0; i < 4096; i++) {
      const k = (i * 7919) % n;
      let group = groups.get(k);
      if (group === undefined)
        groups.set(
          k,
          (group = new EntityGroup([
            chargedEntity("key", `key-${k}`),
            chargedEntity("user", `user-${k}`),
            chargedEntity("team", `team-${k % 50}`),
            chargedEntity("org", "org-1"),
          ])),
        );
      let tag = tags.get(k % 20);
      if (tag === undefined) tags.set(k % 20, (tag = chargedEntity("tag", `tag-${k % 20}`)));
      requests.push(new ChargeList(group, [tag]));
    }
    const cost = usdStringToPico("0.000002");
    const loop = (b: BudgetBook): number => {
      const started = process.hrtime.bigint();
      for (let i = 0; i < opts.requests; i++) {
        const r = requests[i & 4095] as ChargeList;
        if (b.check(r) === undefined) b.charge(r, cost);
      }
      return Number(process.hrtime.bigint() - started) / opts.requests;
    };
    // Warm both paths and let the first leases land.
    loop(on);
    loop(off);
    await new Promise((r) => setTimeout(r, 500));
    const onNs: number[] = [];
    const offNs: number[] = [];
    for (let rep = 0; rep < opts.reps; rep++) {
      onNs.push(loop(on));
      offNs.push(loop(off));
    }
    await on.close();
    const nsOn = median(onNs);
    const nsOff = median(offNs);
    return {
      budgets: n * 3,
      nsPerRequestOn: round(nsOn, 3),
      nsPerRequestOff: round(nsOff, 3),
      addedNs: round(nsOn - nsOff, 3),
    };
  } finally {
    redis.disconnect();
    await res.cleanPrefix(prefix);
    await res.dropDatabase(t);
  }
}

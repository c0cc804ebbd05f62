import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { loadBudget } from "../../src/budget/budget-store.js";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { picoToDecimal, usdStringToPico } from "../../src/contract/money.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { createKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { budgetKey } from "../../src/redis/keys.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * Budgets on two gateways sharing Redis and PostgreSQL: set through
 * LiteLLM's routes, enforced in memory from leases, refused in LiteLLM's
 * shape once spent, raised, reset at a period's boundary, and charged by
 * ingested spend too. The bound under concurrency, with gateway processes, is
 * test/system/budgets.test.ts.
 */

const MASTER = "sk-master-budget-test";
/** 4 words in, 4 out: 4 × 0.0000001 + 4 × 0.0000003. */
const COST = usdStringToPico("0.0000016");

describe("budgets: routes, refusal, raise, reset, ingest", () => {
  let t: TestDatabase;
  let config: AppConfig;
  let key: CreatedKey;
  const gateways: GatewayService[] = [];
  const prefix = uniquePrefix("budgets");
  const base = (i: number): string => `http://127.0.0.1:${gateways[i]?.port ?? 0}`;

  const admin = async (
    i: number,
    path: string,
    body?: unknown,
  ): Promise<[number, Record<string, unknown>]> => {
    const res = await fetch(`${base(i)}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return [res.status, (await res.json()) as Record<string, unknown>];
  };
  /** One chat request to gateway i, with the suite's key unless another is given. */
  const chat = async (
    i: number,
    tags?: string[],
    bearer = key.key,
  ): Promise<[number, { error?: { type: string; code: string; message: string } }]> => {
    const res = await fetch(`${base(i)}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "mock-small",
        messages: [{ role: "user", content: "a b c d" }],
        ...(tags !== undefined ? { metadata: { tags } } : {}),
      }),
    });
    return [
      res.status,
      (await res.json()) as { error?: { type: string; code: string; message: string } },
    ];
  };
  /**
   * Requests alternating between the gateways until each has refused (one
   * may refuse while the other still holds a slice): how many were served.
   */
  const spendUntilRefused = async (tags?: string[]): Promise<number> => {
    let served = 0;
    const refused = [false, false];
    for (let n = 0; n < 2_000 && !(refused[0] && refused[1]); n++) {
      const i = refused[n % 2] ? (n + 1) % 2 : n % 2;
      const [status, body] = await chat(i, tags);
      if (status === 400 && body.error?.code === "budget_exceeded") {
        refused[i] = true;
        continue;
      }
      // A gateway renewing its share answers 503 for a moment: retry it.
      if (status === 503 && body.error?.code === "budget_pending") {
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      assert.equal(status, 200, JSON.stringify(body));
      served++;
      if (served > 1_000) assert.fail("never refused");
    }
    return served;
  };

  before(async () => {
    t = await createTestDatabase("budgets");
    config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 0.2,
          master_key: MASTER,
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: {
          key_prefix: prefix,
          flush_jitter_seconds: 0,
          budget_refresh_seconds: 0.05,
          budget_lease_fraction: 0.1,
          model_prices: {
            "mock-small": { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" },
          },
        },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    key = await createKey(t.db, { userId: "bu-user", teamId: "bu-team" });
    for (let i = 0; i < 2; i++)
      gateways.push(await startGateway(config, { port: 0, host: "127.0.0.1" }));
  });
  after(async () => {
    for (const g of gateways) await g.close().catch(() => undefined);
    await cleanRedis(prefix);
    await t.drop();
  });

  it("refuses once a team's budget is spent, on every gateway, within the stated bound", async () => {
    const [status, view] = await admin(0, "/team/new", {
      team_id: "bu-team",
      max_budget: "0.00002",
    });
    assert.equal(status, 200, JSON.stringify(view));
    assert.equal(view.max_budget, "0.000020000000");
    assert.equal(view.budget_duration, null);
    // Both gateways load it within a refresh.
    await new Promise((r) => setTimeout(r, 200));
    const served = await spendUntilRefused();
    const budget = usdStringToPico("0.00002");
    // Both refused: every lease was spent. Sequential requests (F = 1) on N = 2 gateways.
    assert.ok(BigInt(served) * COST >= budget, `${served} served: refused under the budget`);
    assert.ok(
      BigInt(served) * COST <= budget + 2n * 2n * COST,
      `${served} served: past max_budget + N × (F + 1) × C`,
    );
    for (const i of [0, 1]) {
      const [s, body] = await chat(i);
      assert.equal(s, 400);
      assert.equal(body.error?.type, "budget_exceeded");
      assert.match(
        body.error?.message ?? "",
        /Budget has been exceeded! team "bu-team": max budget 0\.000020000000 USD/,
      );
    }
    // Live spend: committed, in Redis, and this gateway's own; the other
    // gateway's is seen once it has sealed it (proxy_batch_write_at, 0.2 s).
    let info: Record<string, unknown> = {};
    await waitFor(
      "the team's live spend to include both gateways'",
      async () => {
        info = (await admin(1, "/team/info?team_id=bu-team"))[1];
        return info.spend === picoToDecimal(BigInt(served) * COST);
      },
      3_000,
      50,
      () => JSON.stringify(info),
    );
    assert.equal(info.remaining_budget, "0.000000000000");
  });

  it("a budget set after a key has served requests is enforced on it at once", async () => {
    // Each gateway serves this key first, with no budget on its team: the key's
    // entity objects are reused by later requests, marked "no budget" by then.
    const late = await createKey(t.db, { userId: "bu-late-user", teamId: "bu-late-team" });
    const ask = async (i: number): Promise<number> => (await chat(i, undefined, late.key))[0];
    for (let n = 0; n < 6; n++) assert.equal(await ask(n % 2), 200);
    const [status] = await admin(0, "/team/new", {
      team_id: "bu-late-team",
      max_budget: "0.000005",
    });
    assert.equal(status, 200);
    await new Promise((r) => setTimeout(r, 200));
    // 6 requests (9.6 µUSD) are already spent against 5 µUSD. Each gateway
    // refuses within a few requests: the first may go ahead on debt, and a
    // seed may not yet see spend the other gateway still holds (the stated
    // bound). With the key's entities still marked "no budget", none would.
    for (const i of [0, 1]) {
      const statuses: number[] = [];
      while (statuses.length < 10 && statuses.at(-1) !== 400) statuses.push(await ask(i));
      assert.equal(statuses.at(-1), 400, `gateway ${i}: ${statuses.join(",")}`);
    }
  });

  it("a raised budget is spendable again on every gateway within a refresh", async () => {
    const old = await loadBudget(t.db, "team", "bu-team");
    assert.ok(old !== null);
    const [status] = await admin(1, "/team/update", { team_id: "bu-team", max_budget: 0.0001 });
    assert.equal(status, 200);
    // A gateway that has not yet seen the change seeds what remains under the
    // old limit (nothing) just after: the seed must not hold the new limit hostage.
    const redis = new Redis(TEST_REDIS_URL);
    try {
      const key = budgetKey(prefix, "team", "bu-team");
      // What seed-1.lua writes for a seeder holding the old definition, in one
      // step with the delete, so no up-to-date gateway can seed in between.
      await redis
        .multi()
        .del(key)
        .hset(key, {
          period: old.periodStart.getTime(),
          remaining: 0,
          epoch: randomUUID(),
          spent: 0,
          version: old.updatedAt.getTime(),
        })
        .pexpire(key, 60_000)
        .exec();
    } finally {
      redis.disconnect();
    }
    for (const i of [0, 1]) {
      let last: unknown;
      await waitFor(
        `gateway ${i} to admit again`,
        async () => {
          const r = await chat(i);
          last = r;
          return r[0] === 200;
        },
        3_000,
        50,
        () => JSON.stringify(last),
      );
    }
    assert.deepEqual(
      await admin(0, "/team/update", { team_id: "nobody", max_budget: 1 }).then((r) => r[0]),
      404,
    );
  });

  it("resets at the period's boundary for every gateway, keeping the closed period's spend", async () => {
    const [status, view] = await admin(0, "/user/new", {
      user_id: "bu-user",
      max_budget: "0.000008",
      budget_duration: "2s",
    });
    assert.equal(status, 200, JSON.stringify(view));
    const resetAt = Date.parse(String(view.budget_reset_at));
    await new Promise((r) => setTimeout(r, 200));
    await spendUntilRefused();
    assert.ok(Date.now() < resetAt, "spent within the period");
    await new Promise((r) => setTimeout(r, resetAt - Date.now() + 50));
    for (const i of [0, 1]) {
      let last: unknown;
      await waitFor(
        `gateway ${i} to admit in the new period`,
        async () => {
          const r = await chat(i);
          last = r;
          return r[0] === 200;
        },
        2_000,
        20,
        () => JSON.stringify(last),
      );
    }
    // One gateway closed the period in PostgreSQL (the others found it done).
    let periods: { spend: string; max_budget: string; period_end: string }[] = [];
    await waitFor(
      "the closed period in PostgreSQL",
      async () => {
        periods = (await admin(1, "/user/info?user_id=bu-user"))[1]
          .previous_periods as typeof periods;
        return periods.length >= 1;
      },
      3_000,
      20,
    );
    const closed = periods[0];
    assert.equal(closed?.max_budget, "0.000008000000");
    // The period closed at its exact boundary, with what was spent in it: most
    // of the budget (gateways may still have held a slice each, and a seal
    // interval of the other gateway's spend may land in the next period), never
    // more than the bound over it.
    assert.equal(
      Date.parse((closed as { period_end?: string } | undefined)?.period_end ?? ""),
      resetAt,
    );
    const spent = usdStringToPico(closed?.spend ?? "0");
    assert.ok(
      spent > 0n && spent <= usdStringToPico("0.000008") + 4n * COST,
      JSON.stringify(periods),
    );
  });

  it("spend ingested from other gateways counts against the same budgets", async () => {
    const [status] = await admin(0, "/tag/new", { name: "bu-tag", max_budget: "0.5" });
    assert.equal(status, 200);
    await new Promise((r) => setTimeout(r, 200));
    const [ingested, body] = await admin(0, "/spend/events", {
      events: [{ spend: "0.75", tags: ["bu-tag"] }],
    });
    assert.equal(ingested, 200, JSON.stringify(body));
    for (const i of [0, 1])
      await waitFor(
        `gateway ${i} to refuse the tag`,
        async () => (await chat(i, ["bu-tag"]))[0] === 400,
        3_000,
        20,
      );
  });

  it("a key's budget, set on /key/generate, is enforced and shown by /key/info", async () => {
    const [status, made] = await admin(0, "/key/generate", {
      user_id: "bu-key-owner",
      max_budget: "0.000005",
      budget_duration: "1d",
    });
    assert.equal(status, 200, JSON.stringify(made));
    const budget = made.budget as { max_budget: string; budget_duration: string };
    assert.equal(budget.max_budget, "0.000005000000");
    assert.equal(budget.budget_duration, "1d");
    const own = { ...key, key: String(made.key) };
    // The other gateway enforces a new budget within budget_refresh_seconds (0.05 s).
    await new Promise((r) => setTimeout(r, 200));
    const asKey = async (i: number): Promise<number> => (await chat(i, undefined, own.key))[0];
    let served = 0;
    for (let n = 0; n < 50; n++) {
      const s = await asKey(n % 2);
      if (s === 400) break;
      if (s === 200) served++;
    }
    // 5 µUSD is 3.1 requests of 1.6 µUSD. Stopped at the first refusal: the
    // other gateway may still hold a slice (0.5 µUSD each); at most N × (F + 1) over.
    assert.ok(served >= 3 && served <= 4 + 4, `${served} served`);
    const [, info] = await admin(1, `/key/info?key=${encodeURIComponent(own.key)}`);
    const shown = (info.info as { budget: { max_budget: string; remaining_budget: string } })
      .budget;
    assert.equal(shown.max_budget, "0.000005000000");
    const [bad] = await admin(0, "/key/update", { key: own.key, budget_duration: "1y" });
    assert.equal(bad, 400);
    // A soft_budget above the stored max_budget: its alert would never come first.
    const [crossed, why] = await admin(0, "/key/update", { key: own.key, soft_budget: "0.00001" });
    assert.equal(crossed, 400, JSON.stringify(why));
    assert.match(
      (why.error as { message: string }).message,
      /soft_budget 0\.000010000000 is above max_budget 0\.000005000000/,
    );
    const [fine] = await admin(0, "/key/update", { key: own.key, soft_budget: "0.000004" });
    assert.equal(fine, 200);
  });

  it("refuses bad budget input with a specific 400", async () => {
    for (const bad of [
      { team_id: "t", max_budget: -1 },
      { team_id: "t", max_budget: "1e3" },
      { team_id: "t", max_budget: "0.0000000000001" },
      { team_id: "t", max_budget: 1e12 },
      { team_id: "t", budget_duration: "1y" },
      { team_id: "t", max_budget: "1", soft_budget: "2" },
      { team_id: "bad\u0000id", max_budget: 1 },
      { max_budget: 1 },
    ]) {
      const [status, body] = await admin(0, "/team/new", bad);
      assert.equal(status, 400, JSON.stringify(bad));
      assert.ok(typeof (body.error as { message?: unknown }).message === "string");
    }
    const [s] = await admin(0, "/team/info?team_id=unknown-team");
    assert.equal(s, 404);
    // Checked against the stored budget: lowering max_budget under the soft one is refused too.
    assert.equal(
      (await admin(0, "/team/new", { team_id: "bu-soft", max_budget: "2", soft_budget: "1" }))[0],
      200,
    );
    const [lowered, body] = await admin(0, "/team/update", {
      team_id: "bu-soft",
      max_budget: "0.5",
    });
    assert.equal(lowered, 400, JSON.stringify(body));
    const [cleared] = await admin(0, "/team/update", {
      team_id: "bu-soft",
      soft_budget: null,
      max_budget: "0.5",
    });
    assert.equal(cleared, 200);
    const [, info] = await admin(0, "/team/info?team_id=bu-soft");
    assert.equal(info.max_budget, "0.500000000000");
    assert.equal(info.soft_budget, null);
    const [generated] = await admin(0, "/key/generate", { max_budget: "1", soft_budget: "3" });
    assert.equal(generated, 400);
  });

  it("the flush commits what was served: PostgreSQL agrees with the budgets' view", async () => {
    for (const g of gateways.splice(0)) await g.close();
    const h = new Harness(config, t.db);
    try {
      for (let i = 0; i < 20 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
    } finally {
      await h.close();
    }
    const team = await t.db.teamTable.findUnique({ where: { teamId: "bu-team" } });
    assert.ok(team !== null && team.spend.toNumber() > 0);
  });
});
